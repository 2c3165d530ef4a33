//! A real multi-node Conclave cluster made of child processes on loopback.
//!
//! The [`Cluster`] owns the processes and one temporary directory (data dirs and logs); dropping it
//! SIGKILLs and reaps every child, so a test never leaves processes behind, and removes the
//! directory unless `CONCLAVE_TESTKIT_KEEP=1` (or [`ClusterBuilder::keep_dir`]) asks to keep it.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_client::proto::StatusResponse;
use conclave_client::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::error::Error;
use crate::ports::free_port;

/// Environment variable: when set to `1` (or `true`), cluster directories (data and logs) are kept
/// after the cluster is dropped and their path is printed to stderr.
pub const KEEP_ENV: &str = "CONCLAVE_TESTKIT_KEEP";

/// Environment variable naming the `conclave` binary for [`locate_binary`].
pub const BIN_ENV: &str = "CONCLAVE_BIN";

/// Default heartbeat interval passed to nodes, in milliseconds (fast, for tests).
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;

/// Default election timeout passed to nodes, in milliseconds (fast, for tests).
pub const DEFAULT_ELECTION_MS: u64 = 500;

/// Default time [`ClusterBuilder::start`] waits for a leader.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of each node's log printed when a cluster is dropped during a panic.
const PANIC_LOG_LINES: usize = 40;

/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Finds the `conclave` binary: `$CONCLAVE_BIN` if set, else `target/debug/conclave` of this
/// workspace (honouring `$CARGO_TARGET_DIR`). Integration tests inside `conclave-server` should
/// prefer `env!("CARGO_BIN_EXE_conclave")`, which cargo keeps up to date.
pub fn locate_binary() -> Result<PathBuf, Error> {
    let path = match std::env::var_os(BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("debug")
            .join("conclave"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::BinaryNotFound(path))
    }
}

/// What a node is doing, as far as the test kit knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// The process is running.
    Running,
    /// The process is stopped with SIGSTOP (see [`Cluster::pause`]).
    Paused,
    /// The process was killed or terminated by the test kit (see [`Cluster::kill`]).
    Stopped,
    /// The process exited on its own (a crash, or a clean exit nobody asked for).
    Exited,
}

impl NodeState {
    fn describe(self) -> &'static str {
        match self {
            NodeState::Running => "running",
            NodeState::Paused => "paused",
            NodeState::Stopped => "stopped",
            NodeState::Exited => "exited",
        }
    }
}

/// Where a node runs when it is not on loopback: its own address (it listens on `address:2379` for
/// clients and `address:2380` for peers) and the command that launches a program there, e.g.
/// `ip netns exec NS` (the binary and its arguments are appended). The launcher must `exec` the
/// program, so that signals sent to the child's pid reach the node itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// IP address the node listens on and advertises.
    pub address: String,
    /// Program and arguments placed before the node's binary (empty: run it directly).
    pub launcher: Vec<OsString>,
}

/// Client port of a node placed on its own [`Host`] (etcd's default).
pub const HOST_CLIENT_PORT: u16 = 2379;

/// Peer port of a node placed on its own [`Host`] (etcd's default).
pub const HOST_PEER_PORT: u16 = 2380;

/// Configures and starts a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    binary: PathBuf,
    nodes: usize,
    heartbeat_ms: u64,
    election_ms: u64,
    common_args: Vec<OsString>,
    node_args: Vec<(usize, Vec<OsString>)>,
    envs: Vec<(OsString, OsString)>,
    keep: bool,
    base_dir: Option<PathBuf>,
    ready_timeout: Duration,
    client_options: ConnectOptions,
    hosts: Vec<Host>,
}

impl ClusterBuilder {
    /// A cluster of `nodes` members running `binary`, with the test defaults: heartbeat 50 ms,
    /// election timeout 500 ms, ready timeout 30 s, directory kept only if `$CONCLAVE_TESTKIT_KEEP`
    /// says so.
    pub fn new(binary: impl Into<PathBuf>, nodes: usize) -> Self {
        let keep = std::env::var(KEEP_ENV)
            .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        ClusterBuilder {
            binary: binary.into(),
            nodes,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_ms: DEFAULT_ELECTION_MS,
            common_args: Vec::new(),
            node_args: Vec::new(),
            envs: Vec::new(),
            keep,
            base_dir: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            client_options: ConnectOptions::new()
                .with_dial_timeout(Duration::from_secs(1))
                .with_request_timeout(Duration::from_secs(5)),
            hosts: Vec::new(),
        }
    }

    /// Places node `i` on `hosts[i]` instead of on a free loopback port pair (one host per node).
    pub fn hosts(mut self, hosts: Vec<Host>) -> Self {
        self.hosts = hosts;
        self
    }

    /// `--heartbeat-interval` in milliseconds.
    pub fn heartbeat_interval(mut self, millis: u64) -> Self {
        self.heartbeat_ms = millis;
        self
    }

    /// `--election-timeout` in milliseconds.
    pub fn election_timeout(mut self, millis: u64) -> Self {
        self.election_ms = millis;
        self
    }

    /// Extra arguments for every node, placed after the generated ones.
    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Self {
        self.common_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Extra arguments for node `index` (0-based) only, placed after the common ones.
    pub fn node_args(
        mut self,
        index: usize,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> Self {
        self.node_args.push((
            index,
            args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
        ));
        self
    }

    /// An environment variable for every node process (e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Keep (or not) the cluster directory after drop, overriding `$CONCLAVE_TESTKIT_KEEP`.
    pub fn keep_dir(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Create the cluster directory under `dir` instead of the system temp directory.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// How long [`ClusterBuilder::start`] waits for a leader.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Options of the clients returned by [`Cluster::client`] and [`Cluster::client_all`].
    pub fn client_options(mut self, options: ConnectOptions) -> Self {
        self.client_options = options;
        self
    }

    /// Starts every node and waits until they agree on a leader (see [`Cluster::wait_ready`]).
    /// On failure every started process is killed.
    pub async fn start(self) -> Result<Cluster, Error> {
        let timeout = self.ready_timeout;
        let cluster = self.spawn().await?;
        cluster.wait_ready(timeout).await?;
        Ok(cluster)
    }

    /// Starts every node without waiting for anything (for tests of startup itself).
    pub async fn spawn(self) -> Result<Cluster, Error> {
        if self.nodes == 0 {
            return Err(Error::NoNodes);
        }
        if !self.binary.is_file() {
            return Err(Error::BinaryNotFound(self.binary));
        }
        if !self.hosts.is_empty() && self.hosts.len() != self.nodes {
            return Err(Error::HostCount {
                hosts: self.hosts.len(),
                nodes: self.nodes,
            });
        }
        let io = |context: String| move |source| Error::Io { context, source };
        let dir = match &self.base_dir {
            Some(base) => TempDir::with_prefix_in("conclave-testkit-", base),
            None => TempDir::with_prefix("conclave-testkit-"),
        }
        .map_err(io("creating the cluster directory".into()))?;
        let path = dir.path().to_owned();
        let token = cluster_token();

        let mut nodes = Vec::with_capacity(self.nodes);
        for index in 0..self.nodes {
            let (host, client_port, peer_port) = match self.hosts.get(index) {
                Some(host) => (host.clone(), HOST_CLIENT_PORT, HOST_PEER_PORT),
                None => (
                    Host {
                        address: "127.0.0.1".into(),
                        launcher: Vec::new(),
                    },
                    free_port()?,
                    free_port()?,
                ),
            };
            nodes.push(Node {
                name: format!("n{}", index + 1),
                host,
                client_port,
                peer_port,
                data_dir: path.join(format!("n{}", index + 1)),
                log_path: path.join(format!("n{}.log", index + 1)),
                args: Vec::new(),
                child: None,
                exited: None,
                paused: false,
                starts: 0,
            });
        }
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for (index, node) in nodes.iter_mut().enumerate() {
            let mut args: Vec<OsString> = vec![
                "--name".into(),
                node.name.clone().into(),
                "--data-dir".into(),
                node.data_dir.clone().into(),
                "--listen-client-urls".into(),
                node.client_url().into(),
                "--advertise-client-urls".into(),
                node.client_url().into(),
                "--listen-peer-urls".into(),
                node.peer_url().into(),
                "--initial-advertise-peer-urls".into(),
                node.peer_url().into(),
                "--initial-cluster".into(),
                initial_cluster.clone().into(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                token.clone().into(),
                "--heartbeat-interval".into(),
                self.heartbeat_ms.to_string().into(),
                "--election-timeout".into(),
                self.election_ms.to_string().into(),
            ];
            args.extend(self.common_args.iter().cloned());
            for (_, extra) in self.node_args.iter().filter(|(i, _)| *i == index) {
                args.extend(extra.iter().cloned());
            }
            node.args = args;
        }

        let probe_options = ConnectOptions::new()
            .with_dial_timeout(Duration::from_millis(500))
            .with_request_timeout(Duration::from_secs(1))
            .with_max_attempts(1);
        let mut probes = Vec::with_capacity(nodes.len());
        for node in &nodes {
            probes.push(Client::connect([node.client_url()], probe_options.clone()).await?);
        }

        let mut envs = self.envs;
        if std::env::var_os("RUST_BACKTRACE").is_none()
            && !envs.iter().any(|(k, _)| k == "RUST_BACKTRACE")
        {
            envs.insert(0, ("RUST_BACKTRACE".into(), "1".into()));
        }

        let cluster = Cluster {
            binary: self.binary,
            envs,
            token,
            path,
            keep: self.keep,
            dir: Some(dir),
            client_options: self.client_options,
            probes: Mutex::new(probes),
            nodes: Mutex::new(nodes),
        };
        tracing::info!(dir = %cluster.path.display(), nodes = self.nodes, "starting cluster");
        {
            let mut nodes = cluster.lock();
            for node in nodes.iter_mut() {
                // On error the cluster is dropped here, which kills the nodes already started.
                node.start(&cluster.binary, &cluster.envs)?;
            }
        }
        Ok(cluster)
    }
}

/// A token unique per cluster, even across test processes run one after the other.
fn cluster_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "conclave-testkit-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

struct Node {
    name: String,
    host: Host,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    /// Set when the process was found to have exited on its own.
    exited: Option<ExitStatus>,
    paused: bool,
    starts: u32,
}

impl Node {
    fn client_url(&self) -> String {
        format!("http://{}:{}", self.host.address, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host.address, self.peer_port)
    }

    /// Starts the process; stdout and stderr are appended to the node's log.
    fn start(&mut self, binary: &Path, envs: &[(OsString, OsString)]) -> Result<(), Error> {
        let io = |context: String| move |source| Error::Io { context, source };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io(format!("opening {}", self.log_path.display())))?;
        self.starts += 1;
        writeln!(
            log,
            "===== conclave-testkit: start #{} of {}: {} =====",
            self.starts,
            self.name,
            self.host
                .launcher
                .iter()
                .chain([&binary.as_os_str().to_owned()])
                .chain(&self.args)
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )
        .map_err(io(format!("writing {}", self.log_path.display())))?;
        let stderr = log
            .try_clone()
            .map_err(io(format!("duplicating {}", self.log_path.display())))?;
        let mut command = match self.host.launcher.split_first() {
            Some((program, launcher_args)) => {
                let mut command = Command::new(program);
                command.args(launcher_args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(&self.args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(io(format!("starting {} ({})", self.name, binary.display())))?;
        tracing::info!(node = %self.name, pid = child.id(), client = %self.client_url(), "node started");
        self.child = Some(child);
        self.exited = None;
        self.paused = false;
        Ok(())
    }

    /// SIGKILLs and reaps the process, if there is one.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a SIGSTOPped process.
            if let Err(err) = child.kill() {
                tracing::warn!(node = %self.name, %err, "kill failed");
            }
            if let Err(err) = child.wait() {
                tracing::warn!(node = %self.name, %err, "wait failed");
            }
        }
        self.paused = false;
    }

    /// Notices a process that exited on its own.
    fn poll_exit(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::warn!(node = %self.name, %status, "node exited on its own");
            self.exited = Some(status);
            self.child = None;
            self.paused = false;
        }
    }

    fn state(&mut self) -> NodeState {
        self.poll_exit();
        match (&self.child, self.paused, self.exited) {
            (Some(_), true, _) => NodeState::Paused,
            (Some(_), false, _) => NodeState::Running,
            (None, _, Some(_)) => NodeState::Exited,
            (None, _, None) => NodeState::Stopped,
        }
    }

    fn signal(&self, signal: &str) -> Result<(), Error> {
        let Some(child) = &self.child else {
            return Err(Error::InvalidState {
                name: self.name.clone(),
                action: "signal",
                state: "not running",
            });
        };
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .map_err(|source| Error::Io {
                context: format!("running kill {signal} {pid}"),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Io {
                context: format!("kill {signal} {pid}"),
                source: std::io::Error::other(status.to_string()),
            })
        }
    }
}

/// The last `lines` lines of the file at `path` (reads at most the last 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("<cannot read {}: {err}>", path.display()),
    }
}

/// A running test cluster. Node indexes are 0-based; node `i` is named `n{i+1}`.
///
/// All methods take `&self` (the process table sits behind a mutex that is never held across an
/// await), so a cluster can be shared, e.g. in an `Arc` between a nemesis and a checker.
pub struct Cluster {
    binary: PathBuf,
    envs: Vec<(OsString, OsString)>,
    token: String,
    path: PathBuf,
    keep: bool,
    /// Dropped after the children are killed (see `Drop`).
    dir: Option<TempDir>,
    client_options: ConnectOptions,
    /// One single-endpoint client per node with short timeouts, for readiness probes.
    probes: Mutex<Vec<Client>>,
    nodes: Mutex<Vec<Node>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.path)
            .field("token", &self.token)
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl Cluster {
    /// Starts `nodes` members of `binary` with the defaults of [`ClusterBuilder::new`] and waits
    /// until they agree on a leader.
    pub async fn start(binary: &Path, nodes: usize) -> Result<Cluster, Error> {
        ClusterBuilder::new(binary, nodes).start().await
    }

    /// A builder for a cluster of `nodes` members of `binary`.
    pub fn builder(binary: impl Into<PathBuf>, nodes: usize) -> ClusterBuilder {
        ClusterBuilder::new(binary, nodes)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Node>> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on node `index`, or reports that it does not exist.
    fn with_node<T>(&self, index: usize, f: impl FnOnce(&mut Node) -> T) -> Result<T, Error> {
        let mut nodes = self.lock();
        let len = nodes.len();
        nodes
            .get_mut(index)
            .map(f)
            .ok_or(Error::NoSuchNode { index, len })
    }

    fn probe_client(&self, index: usize) -> Result<Client, Error> {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.get(index).cloned().ok_or(Error::NoSuchNode {
            index,
            len: probes.len(),
        })
    }

    /// The number of nodes (including those added with [`Cluster::add_node`] and retired ones).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Prepares a new node (next index, fresh ports and data dir, not started) that joins the
    /// running cluster: `--initial-cluster-state existing`, with every node's peer URL in
    /// `--initial-cluster`. Its other flags are node 0's. Add it to the cluster with MemberAdd
    /// (its [`Cluster::peer_url`]), then start it with [`Cluster::restart`]. Loopback only.
    pub async fn add_node(&self) -> Result<usize, Error> {
        let (index, client_url) = {
            let mut nodes = self.lock();
            let index = nodes.len();
            let name = format!("n{}", index + 1);
            let mut node = Node {
                name: name.clone(),
                host: Host {
                    address: "127.0.0.1".into(),
                    launcher: Vec::new(),
                },
                client_port: free_port()?,
                peer_port: free_port()?,
                data_dir: self.path.join(&name),
                log_path: self.path.join(format!("{name}.log")),
                args: Vec::new(),
                child: None,
                exited: None,
                paused: false,
                starts: 0,
            };
            let initial_cluster = nodes
                .iter()
                .chain([&node])
                .map(|n| format!("{}={}", n.name, n.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            let replace = [
                ("--name", name.clone()),
                ("--data-dir", node.data_dir.display().to_string()),
                ("--listen-client-urls", node.client_url()),
                ("--advertise-client-urls", node.client_url()),
                ("--listen-peer-urls", node.peer_url()),
                ("--initial-advertise-peer-urls", node.peer_url()),
                ("--initial-cluster", initial_cluster),
                ("--initial-cluster-state", "existing".into()),
            ];
            let mut args = nodes.first().map(|n| n.args.clone()).unwrap_or_default();
            for (flag, value) in replace {
                if let Some(i) = args.iter().position(|a| a == flag)
                    && let Some(slot) = args.get_mut(i + 1)
                {
                    *slot = value.into();
                }
            }
            node.args = args;
            let client_url = node.client_url();
            nodes.push(node);
            (index, client_url)
        };
        let probe_options = ConnectOptions::new()
            .with_dial_timeout(Duration::from_millis(500))
            .with_request_timeout(Duration::from_secs(1))
            .with_max_attempts(1);
        let probe = Client::connect([client_url], probe_options).await?;
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(probe);
        Ok(index)
    }

    /// Waits up to `timeout` for node `index` to exit on its own (a removed member stops
    /// itself), then forgets the process: the node counts as stopped, not as failed. Returns
    /// whether it exited in time (if not, it is killed).
    pub async fn wait_exit(&self, index: usize, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.with_node(index, |n| {
                n.poll_exit();
                if n.child.is_none() {
                    n.exited = None;
                    true
                } else {
                    false
                }
            })?;
            if exited {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                self.kill(index)?;
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The cluster directory (data dirs `n1/`, `n2/`, ... and logs `n1.log`, ...).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The `--initial-cluster-token` of this cluster.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The name of node `index` (`n{index+1}`).
    pub fn name(&self, index: usize) -> Result<String, Error> {
        self.with_node(index, |n| n.name.clone())
    }

    /// The client URL of node `index`, e.g. `http://127.0.0.1:41234`.
    ///
    /// # Panics
    /// If `index` is out of range (a bug in the test).
    pub fn client_endpoint(&self, index: usize) -> String {
        let nodes = self.lock();
        assert!(index < nodes.len(), "node index {index} out of range");
        nodes[index].client_url()
    }

    /// The client URLs of all nodes, in index order.
    pub fn endpoints(&self) -> Vec<String> {
        self.lock().iter().map(Node::client_url).collect()
    }

    /// The peer URL of node `index`.
    pub fn peer_url(&self, index: usize) -> Result<String, Error> {
        self.with_node(index, |n| n.peer_url())
    }

    /// The data directory of node `index`.
    pub fn data_dir(&self, index: usize) -> Result<PathBuf, Error> {
        self.with_node(index, |n| n.data_dir.clone())
    }

    /// The log file of node `index` (stdout and stderr of every start, appended).
    pub fn log_path(&self, index: usize) -> Result<PathBuf, Error> {
        self.with_node(index, |n| n.log_path.clone())
    }

    /// The last `lines` lines of node `index`'s log.
    pub fn log_tail(&self, index: usize, lines: usize) -> Result<String, Error> {
        let path = self.log_path(index)?;
        Ok(tail(&path, lines))
    }

    /// The process id of node `index`, if it has a live process.
    pub fn pid(&self, index: usize) -> Result<Option<u32>, Error> {
        self.with_node(index, |n| {
            n.poll_exit();
            n.child.as_ref().map(Child::id)
        })
    }

    /// The state of node `index`.
    pub fn state(&self, index: usize) -> Result<NodeState, Error> {
        self.with_node(index, Node::state)
    }

    /// SIGKILLs node `index` and reaps it. Killing a node that is not running is a no-op.
    pub fn kill(&self, index: usize) -> Result<(), Error> {
        self.with_node(index, |n| {
            tracing::info!(node = %n.name, "killing node");
            n.stop();
        })
    }

    /// Sends SIGTERM to node `index` and waits up to `grace` for it to exit, then SIGKILLs it.
    /// Returns true if it exited on its own within `grace`. A paused node is resumed so it can
    /// handle the signal. A node that is not running is left alone (returns true).
    pub async fn terminate(&self, index: usize, grace: Duration) -> Result<bool, Error> {
        let live = self.with_node(index, |n| -> Result<bool, Error> {
            n.poll_exit();
            if n.child.is_none() {
                return Ok(false);
            }
            tracing::info!(node = %n.name, "terminating node");
            n.signal("-TERM")?;
            if n.paused {
                n.signal("-CONT")?;
                n.paused = false;
            }
            Ok(true)
        })??;
        if !live {
            return Ok(true);
        }
        let deadline = Instant::now() + grace;
        loop {
            let exited =
                self.with_node(index, |n| match n.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(_))) | None => {
                        n.child = None;
                        true
                    }
                    Some(_) => false,
                })?;
            if exited {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                self.kill(index)?;
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (Re)starts node `index` with the same arguments and data directory; a running or paused
    /// node is SIGKILLed first. Does not wait for the node to rejoin (see [`Cluster::wait_ready`]).
    pub fn restart(&self, index: usize) -> Result<(), Error> {
        self.with_node(index, |n| {
            n.stop();
            n.start(&self.binary, &self.envs)
        })?
    }

    /// Starts node `index` again, as a member joining the running cluster
    /// (`--initial-cluster-state existing` from now on): for a node that was removed from the
    /// cluster, had its data dir wiped and was added back with MemberAdd.
    pub fn rejoin(&self, index: usize) -> Result<(), Error> {
        self.with_node(index, |n| {
            if let Some(i) = n.args.iter().position(|a| a == "--initial-cluster-state")
                && let Some(state) = n.args.get_mut(i + 1)
            {
                *state = "existing".into();
            }
            n.stop();
            n.start(&self.binary, &self.envs)
        })?
    }

    /// Freezes node `index` with SIGSTOP: its sockets stay open but it answers nothing.
    pub fn pause(&self, index: usize) -> Result<(), Error> {
        self.with_node(index, |n| match n.state() {
            NodeState::Running => {
                tracing::info!(node = %n.name, "pausing node");
                n.signal("-STOP")?;
                n.paused = true;
                Ok(())
            }
            NodeState::Paused => Ok(()),
            state => Err(Error::InvalidState {
                name: n.name.clone(),
                action: "pause",
                state: state.describe(),
            }),
        })?
    }

    /// Resumes node `index` after [`Cluster::pause`] with SIGCONT. Resuming a running node is a
    /// no-op.
    pub fn resume(&self, index: usize) -> Result<(), Error> {
        self.with_node(index, |n| match n.state() {
            NodeState::Paused => {
                tracing::info!(node = %n.name, "resuming node");
                n.signal("-CONT")?;
                n.paused = false;
                Ok(())
            }
            NodeState::Running => Ok(()),
            state => Err(Error::InvalidState {
                name: n.name.clone(),
                action: "resume",
                state: state.describe(),
            }),
        })?
    }

    /// A new client connected to node `index` only (its own connection).
    pub async fn client(&self, index: usize) -> Result<Client, Error> {
        let len = self.len();
        if index >= len {
            return Err(Error::NoSuchNode { index, len });
        }
        let endpoint = self.client_endpoint(index);
        Ok(Client::connect([endpoint], self.client_options.clone()).await?)
    }

    /// A new client connected to every node (fails over between them).
    pub async fn client_all(&self) -> Result<Client, Error> {
        Ok(Client::connect(self.endpoints(), self.client_options.clone()).await?)
    }

    /// Indexes of the nodes that should answer (running, not paused). A node that exited on its
    /// own is reported as an error, with its log tail.
    fn running(&self) -> Result<Vec<usize>, Error> {
        let mut nodes = self.lock();
        let mut running = Vec::new();
        for (index, node) in nodes.iter_mut().enumerate() {
            match node.state() {
                NodeState::Running => running.push(index),
                NodeState::Exited => {
                    return Err(Error::NodeExited {
                        index,
                        name: node.name.clone(),
                        status: node
                            .exited
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "unknown status".into()),
                        log_tail: tail(&node.log_path, PANIC_LOG_LINES),
                    });
                }
                NodeState::Paused | NodeState::Stopped => {}
            }
        }
        Ok(running)
    }

    /// Asks every running node for its status, concurrently.
    async fn probe(&self) -> Result<Vec<Probe>, Error> {
        let running = self.running()?;
        let calls = running.into_iter().map(|index| {
            let probe = self.probe_client(index);
            async move {
                let Ok(probe) = probe else {
                    return Probe {
                        index,
                        status: Err(conclave_client::Error::NoEndpoints),
                    };
                };
                let status = probe.maintenance().status().await;
                Probe { index, status }
            }
        });
        Ok(futures::future::join_all(calls).await)
    }

    /// Waits until every running (not paused, not killed) node answers Status and all report the
    /// same non-zero leader, which must be one of them. Returns the leader's index. Fails at once
    /// if a node exited on its own, and with [`Error::NotReady`] (what each node said last) after
    /// `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<usize, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let probes = self.probe().await?;
            if let Some(leader) = agreed_leader(&probes) {
                tracing::info!(leader, "cluster ready");
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    timeout,
                    detail: describe(&probes),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The index of the node that currently reports itself as leader (`Status.leader ==
    /// header.member_id`), asking each running node once. With several claimants (a stale leader
    /// that has not noticed yet) the highest raft term wins.
    pub async fn leader_index(&self) -> Result<usize, Error> {
        let probes = self.probe().await?;
        probes
            .iter()
            .filter_map(|p| {
                let status = p.status.as_ref().ok()?;
                let member = status.header.as_ref()?.member_id;
                (member != 0 && status.leader == member).then_some((status.raft_term, p.index))
            })
            .max()
            .map(|(_, index)| index)
            .ok_or_else(|| Error::NoLeader {
                detail: describe(&probes),
            })
    }

    /// The member ID of node `index`, from its Status answer.
    pub async fn member_id(&self, index: usize) -> Result<u64, Error> {
        let probe = self.probe_client(index)?;
        let status = probe.maintenance().status().await?;
        Ok(status.header.map(|h| h.member_id).unwrap_or(0))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let nodes = self
            .nodes
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for node in nodes.iter_mut() {
            node.stop();
        }
        if std::thread::panicking() {
            for node in nodes.iter() {
                eprintln!(
                    "----- conclave-testkit: last {PANIC_LOG_LINES} lines of {} ({}) -----\n{}",
                    node.name,
                    node.log_path.display(),
                    tail(&node.log_path, PANIC_LOG_LINES)
                );
            }
            if !self.keep {
                eprintln!(
                    "----- conclave-testkit: set {KEEP_ENV}=1 to keep the cluster directory -----"
                );
            }
        }
        if self.keep
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "conclave-testkit: kept cluster directory {}",
                dir.keep().display()
            );
        }
    }
}

/// One node's answer to a readiness probe.
#[derive(Debug)]
struct Probe {
    index: usize,
    status: Result<StatusResponse, conclave_client::Error>,
}

/// The leader's index if every probed node answered, all name the same non-zero leader, and that
/// leader is one of the probed nodes.
fn agreed_leader(probes: &[Probe]) -> Option<usize> {
    let mut leader = None;
    for probe in probes {
        let status = probe.status.as_ref().ok()?;
        if status.leader == 0 || leader.is_some_and(|l| l != status.leader) {
            return None;
        }
        leader = Some(status.leader);
    }
    let leader = leader?;
    probes.iter().find_map(|p| {
        let member = p.status.as_ref().ok()?.header.as_ref()?.member_id;
        (member == leader).then_some(p.index)
    })
}

/// One line per probed node: what it answered.
fn describe(probes: &[Probe]) -> String {
    if probes.is_empty() {
        return "  no running node".into();
    }
    probes
        .iter()
        .map(|p| match &p.status {
            Ok(s) => format!(
                "  n{}: member {:x}, leader {:x}, term {}, applied {}",
                p.index + 1,
                s.header.as_ref().map(|h| h.member_id).unwrap_or(0),
                s.leader,
                s.raft_term,
                s.raft_applied_index
            ),
            Err(err) => format!("  n{}: {err}", p.index + 1),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use conclave_client::proto::ResponseHeader;

    fn answered(index: usize, member: u64, leader: u64) -> Probe {
        Probe {
            index,
            status: Ok(StatusResponse {
                header: Some(ResponseHeader {
                    member_id: member,
                    ..Default::default()
                }),
                leader,
                ..Default::default()
            }),
        }
    }

    fn failed(index: usize) -> Probe {
        Probe {
            index,
            status: Err(conclave_client::Error::Timeout(Duration::from_secs(1))),
        }
    }

    #[test]
    fn leader_agreement() {
        assert_eq!(agreed_leader(&[]), None);
        let all_agree = [
            answered(0, 11, 22),
            answered(1, 22, 22),
            answered(2, 33, 22),
        ];
        assert_eq!(agreed_leader(&all_agree), Some(1));
        let no_leader = [answered(0, 11, 0), answered(1, 22, 0)];
        assert_eq!(agreed_leader(&no_leader), None);
        let split = [answered(0, 11, 11), answered(1, 22, 22)];
        assert_eq!(agreed_leader(&split), None);
        let one_silent = [answered(0, 11, 11), failed(1)];
        assert_eq!(agreed_leader(&one_silent), None);
        // Everyone still names a leader that is not among the running nodes (it was killed).
        let stale = [answered(0, 11, 99), answered(2, 33, 99)];
        assert_eq!(agreed_leader(&stale), None);
    }

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        assert!(tail(&dir.path().join("missing"), 3).starts_with("<cannot read"));
    }

    #[test]
    fn tokens_are_unique() {
        assert_ne!(cluster_token(), cluster_token());
    }

    #[tokio::test]
    async fn missing_binary_is_reported() {
        let err = Cluster::builder("/nonexistent/conclave", 3)
            .spawn()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BinaryNotFound(_)), "{err:?}");
        let err = Cluster::builder("/nonexistent/conclave", 0)
            .spawn()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoNodes), "{err:?}");
    }
}
