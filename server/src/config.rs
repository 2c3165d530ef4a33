//! Flags (etcd's names and defaults) and an optional TOML file with the same keys; `validate` turns
//! them into `Settings` or a one-line error that names the offending flag. Flags given on the
//! command line win over the file.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Deserialize;

use crate::membership::InitialMember;

/// Whether this member starts a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    New,
    Existing,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (for log shippers).
    Json,
}

/// Command line of the `conclave` server.
#[derive(Debug, Clone, Parser, Deserialize)]
#[command(
    name = "conclave",
    version,
    about = "Conclave: an etcd-v3-compatible coordination service"
)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Flags {
    /// TOML file with the same keys as the flags (e.g. `data-dir = "/var/lib/conclave"`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory of the member's database.
    #[arg(long, default_value = "conclave.data")]
    pub data_dir: PathBuf,
    /// Comma-separated URLs to serve clients on.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Comma-separated client URLs announced to the cluster (default: --listen-client-urls).
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// Comma-separated URLs to serve peers on.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// Comma-separated peer URLs announced to the cluster (default: --listen-peer-urls).
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial members, `name=peer-url,...` (default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Distinguishes clusters bootstrapped from the same member list.
    #[arg(long, default_value = "conclave-cluster")]
    pub initial_cluster_token: String,
    /// Heartbeat interval in milliseconds (one raft tick).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Database size above which writes are refused (bytes).
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    pub quota_backend_bytes: u64,
    /// Largest request accepted (bytes).
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Most operations in one Txn branch.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Interval of watch progress notifications (`progress_notify` watches), e.g. 10m, 30s, 500ms.
    #[arg(long, default_value = "10m")]
    pub experimental_watch_progress_notify_interval: String,
    /// A lease's remaining TTL is checkpointed through raft once it drifted this far from the
    /// stored one (bounds how much leader changes can extend a lease).
    #[arg(long, default_value = "5s")]
    pub experimental_lease_checkpoint_interval: String,
    /// Raft log entries kept behind the applied index, so a briefly lagging member catches up
    /// from the log; one further behind receives a snapshot (etcd's flag and default).
    #[arg(long, default_value_t = 5000)]
    pub experimental_snapshot_catchup_entries: u64,
    /// How often the leader compares the members' HashKV and raises CORRUPT on a mismatch
    /// (0 turns the check off).
    #[arg(long, default_value = "5m")]
    pub experimental_corrupt_check_time: String,
    /// A watch stream whose client reads nothing for this long is ended with an error.
    #[arg(long, default_value = "30s")]
    pub watch_slow_consumer_timeout: String,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Threads serving client requests (default: the cores available, minus one for the raft
    /// thread, at least one). Lower it when several members share a machine.
    #[arg(long)]
    pub worker_threads: Option<usize>,
}

impl Default for Flags {
    fn default() -> Self {
        Flags::parse_from(["conclave"])
    }
}

/// Validated settings of one member.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer: Vec<SocketAddr>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    pub quota_backend_bytes: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub watch_progress_notify_interval: Duration,
    pub lease_checkpoint_interval: Duration,
    pub snapshot_catchup_entries: u64,
    /// `None`: no periodic corruption check.
    pub corrupt_check: Option<Duration>,
    pub watch_slow_consumer_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub worker_threads: usize,
}

/// The default number of client-serving threads: every core but one, which the raft thread (a
/// thread of its own that applies, writes the log and runs the peer traffic) keeps busy under load.
/// With a worker per core, three members of a benchmark cluster on two cores ran nine busy
/// threads: 256-client puts cost 8-14% more CPU per put than with one worker each.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

impl Settings {
    /// How long a request may wait for raft before answering "timed out" (etcd: 5 s + 2 elections).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.heartbeat * self.election_ticks as u32
    }
}

/// A configuration problem, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn bad(flag: &str, value: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid --{flag} {value:?}: {why}"))
}

/// Parses the process's arguments (and the --config file, if any).
pub fn from_args() -> Result<Flags, ConfigError> {
    let matches = match Flags::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => return Err(one_line(&e)),
    };
    let mut flags = Flags::from_arg_matches(&matches).map_err(|e| ConfigError(e.to_string()))?;
    if let Some(path) = flags.config.clone() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad("config", &path.display().to_string(), e))?;
        let file: Flags = toml::from_str(&text).map_err(|e| {
            bad(
                "config",
                &path.display().to_string(),
                e.message().to_string(),
            )
        })?;
        flags = merge(flags, file, &matches);
    }
    Ok(flags)
}

/// clap's first line ("unexpected argument '--x' found", "invalid value 'y' for '--z …'"),
/// without its usage and tips: an operator sees one line that names the flag.
fn one_line(e: &clap::Error) -> ConfigError {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    ConfigError(first.trim_start_matches("error: ").to_string())
}

/// Takes each value from `file` unless it was given on the command line.
fn merge(cli: Flags, file: Flags, m: &ArgMatches) -> Flags {
    let from_cli = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    macro_rules! pick {
        ($($f:ident),*) => {
            Flags {
                config: cli.config.clone(),
                $($f: if from_cli(stringify!($f)) { cli.$f.clone() } else { file.$f.clone() },)*
            }
        };
    }
    pick!(
        name,
        data_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state,
        initial_cluster_token,
        heartbeat_interval,
        election_timeout,
        quota_backend_bytes,
        max_request_bytes,
        max_txn_ops,
        experimental_watch_progress_notify_interval,
        experimental_lease_checkpoint_interval,
        experimental_snapshot_catchup_entries,
        experimental_corrupt_check_time,
        watch_slow_consumer_timeout,
        log_level,
        log_format,
        worker_threads
    )
}

fn split_urls(flag: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if urls.is_empty() {
        return Err(bad(flag, value, "no URL given"));
    }
    for u in &urls {
        url_addr(flag, u)?;
    }
    Ok(urls)
}

/// `http://host:port` (or `host:port`) to a socket address.
fn url_addr(flag: &str, url: &str) -> Result<SocketAddr, ConfigError> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(bad(flag, url, "TLS is not supported yet; use http://"));
    } else if url.contains("://") {
        return Err(bad(flag, url, "scheme must be http://"));
    } else {
        url
    };
    let hostport = rest.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| bad(flag, url, e))?
        .next()
        .ok_or_else(|| bad(flag, url, "address does not resolve"))
}

impl Flags {
    /// Checks every flag and resolves defaults that depend on others.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.name.is_empty() {
            return Err(bad("name", &self.name, "must not be empty"));
        }
        let listen_client_urls = split_urls("listen-client-urls", &self.listen_client_urls)?;
        let listen_client = listen_client_urls
            .iter()
            .map(|u| url_addr("listen-client-urls", u))
            .collect::<Result<Vec<_>, _>>()?;
        let advertise_client_urls = match &self.advertise_client_urls {
            Some(v) => split_urls("advertise-client-urls", v)?,
            None => listen_client_urls,
        };
        let listen_peer_urls = split_urls("listen-peer-urls", &self.listen_peer_urls)?;
        let listen_peer = listen_peer_urls
            .iter()
            .map(|u| url_addr("listen-peer-urls", u))
            .collect::<Result<Vec<_>, _>>()?;
        let advertise_peer_urls = match &self.initial_advertise_peer_urls {
            Some(v) => split_urls("initial-advertise-peer-urls", v)?,
            None => listen_peer_urls,
        };
        let cluster_text = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, advertise_peer_urls.join(",")));
        let initial_cluster = parse_initial_cluster(&cluster_text)?;
        let me = initial_cluster
            .iter()
            .find(|m| m.name == self.name)
            .ok_or_else(|| {
                bad(
                    "initial-cluster",
                    &cluster_text,
                    format!("has no member named {:?} (--name)", self.name),
                )
            })?;
        let mut mine = me.peer_urls.clone();
        let mut advertised = advertise_peer_urls.clone();
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return Err(bad(
                "initial-cluster",
                &cluster_text,
                format!(
                    "lists {:?} for {:?} but --initial-advertise-peer-urls is {:?}",
                    me.peer_urls, self.name, advertise_peer_urls
                ),
            ));
        }
        if self.heartbeat_interval == 0 {
            return Err(bad(
                "heartbeat-interval",
                &self.heartbeat_interval.to_string(),
                "must be positive",
            ));
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(bad(
                "election-timeout",
                &self.election_timeout.to_string(),
                format!(
                    "must be at least 5 times --heartbeat-interval ({})",
                    self.heartbeat_interval
                ),
            ));
        }
        if self.max_request_bytes == 0 {
            return Err(bad("max-request-bytes", "0", "must be positive"));
        }
        if self.worker_threads == Some(0) {
            return Err(bad("worker-threads", "0", "must be positive"));
        }
        if self.max_txn_ops == 0 {
            return Err(bad("max-txn-ops", "0", "must be positive"));
        }
        if self.experimental_snapshot_catchup_entries == 0 {
            return Err(bad(
                "experimental-snapshot-catchup-entries",
                "0",
                "must be positive",
            ));
        }
        Ok(Settings {
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            listen_client,
            advertise_client_urls,
            listen_peer,
            initial_cluster,
            initial_cluster_state: self.initial_cluster_state,
            initial_cluster_token: self.initial_cluster_token.clone(),
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_ticks: (self.election_timeout / self.heartbeat_interval) as usize,
            quota_backend_bytes: self.quota_backend_bytes,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            watch_progress_notify_interval: parse_duration(
                "experimental-watch-progress-notify-interval",
                &self.experimental_watch_progress_notify_interval,
            )?,
            lease_checkpoint_interval: parse_duration(
                "experimental-lease-checkpoint-interval",
                &self.experimental_lease_checkpoint_interval,
            )?,
            snapshot_catchup_entries: self.experimental_snapshot_catchup_entries,
            corrupt_check: parse_optional_duration(
                "experimental-corrupt-check-time",
                &self.experimental_corrupt_check_time,
            )?,
            watch_slow_consumer_timeout: parse_duration(
                "watch-slow-consumer-timeout",
                &self.watch_slow_consumer_timeout,
            )?,
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            worker_threads: self.worker_threads.unwrap_or_else(default_worker_threads),
        })
    }
}

/// A positive duration written as a number and a unit: `500ms`, `30s`, `10m`, `1h`.
/// Like [`parse_duration`], but `0` (with or without a unit) means "off".
fn parse_optional_duration(flag: &str, text: &str) -> Result<Option<Duration>, ConfigError> {
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !digits.is_empty() && digits.chars().all(|c| c == '0') {
        return Ok(None);
    }
    parse_duration(flag, text).map(Some)
}

fn parse_duration(flag: &str, text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        bad(
            flag,
            text,
            "must be a number with a unit (ms, s, m, h), e.g. 30s",
        )
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad(flag, text, "unit must be ms, s, m or h (e.g. 30s)")),
    };
    if d.is_zero() {
        return Err(bad(flag, text, "must be positive"));
    }
    Ok(d)
}

/// Parses `name=url,name=url,...` (a member may have several URLs).
pub fn parse_initial_cluster(text: &str) -> Result<Vec<InitialMember>, ConfigError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| bad("initial-cluster", text, format!("{part:?} is not name=url")))?;
        url_addr("initial-cluster", url)?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    if members.is_empty() {
        return Err(bad("initial-cluster", text, "no members"));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["conclave"];
        all.extend_from_slice(args);
        Flags::parse_from(all)
    }

    #[test]
    fn defaults_are_a_single_local_member() {
        let s = flags(&[]).validate().unwrap();
        assert_eq!(s.listen_client, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(s.listen_peer, vec!["127.0.0.1:2380".parse().unwrap()]);
        assert_eq!(s.data_dir, PathBuf::from("conclave.data"));
        assert_eq!(s.initial_cluster.len(), 1);
        assert_eq!(s.election_ticks, 10);
        assert_eq!(s.max_request_bytes, 1_572_864);
        assert_eq!(s.max_txn_ops, 128);
        assert_eq!(s.worker_threads, default_worker_threads());
        assert!(s.worker_threads >= 1);
        assert_eq!(s.watch_progress_notify_interval, Duration::from_secs(600));
        assert_eq!(s.lease_checkpoint_interval, Duration::from_secs(5));
        assert_eq!(s.watch_slow_consumer_timeout, Duration::from_secs(30));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(
            parse_duration("x", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("x", "2h").unwrap(),
            Duration::from_secs(7200)
        );
        assert!(parse_duration("x", "5 minutes").is_err());
    }

    #[test]
    fn three_member_cluster() {
        let s = flags(&[
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2381",
            "--initial-cluster",
            "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381,c=http://127.0.0.1:2382",
        ])
        .validate()
        .unwrap();
        assert_eq!(s.initial_cluster.len(), 3);
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--listen-client-urls", "nonsense"],
                "--listen-client-urls",
            ),
            (
                &["--listen-client-urls", "https://127.0.0.1:1"],
                "--listen-client-urls",
            ),
            (
                &["--initial-cluster", "x=http://127.0.0.1:1"],
                "--initial-cluster",
            ),
            (&["--initial-cluster", "garbage"], "--initial-cluster"),
            (&["--election-timeout", "200"], "--election-timeout"),
            (&["--max-txn-ops", "0"], "--max-txn-ops"),
            (&["--worker-threads", "0"], "--worker-threads"),
            (
                &["--watch-slow-consumer-timeout", "10"],
                "--watch-slow-consumer-timeout",
            ),
            (
                &["--experimental-lease-checkpoint-interval", "0s"],
                "--experimental-lease-checkpoint-interval",
            ),
        ];
        for (args, flag) in cases {
            let err = flags(args).validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn clap_errors_become_one_line() {
        for args in [
            &["conclave", "--no-such-flag"][..],
            &["conclave", "--heartbeat-interval", "x"],
        ] {
            let e = Flags::command().try_get_matches_from(args).unwrap_err();
            let msg = one_line(&e).to_string();
            assert!(msg.contains("--"), "{msg}");
            assert!(!msg.contains('\n') && !msg.starts_with("error"), "{msg}");
        }
    }

    #[test]
    fn toml_file_uses_flag_names() {
        let file: Flags = toml::from_str(
            "name = \"n1\"\ndata-dir = \"/tmp/x\"\nheartbeat-interval = 50\nelection-timeout = 500\nworker-threads = 3\n",
        )
        .unwrap();
        assert_eq!(file.name, "n1");
        assert_eq!(file.heartbeat_interval, 50);
        assert_eq!(file.validate().unwrap().worker_threads, 3);
        assert!(toml::from_str::<Flags>("no-such-key = 1").is_err());
    }
}
