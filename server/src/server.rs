//! Assembles a member: opens storage, loads or bootstraps identity, starts the raft task (which also
//! applies committed entries) on its own thread (it does blocking disk I/O), serves clients and peers, and stops
//! everything when `shutdown` completes or a fatal error occurs.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_proto::conclave::internal::v1::MemberRecord;
use conclave_proto::conclave::internal::v1::{PublishMember, raft_command::Op};
use conclave_proto::conclave::peer::v1::cluster_forward_client::ClusterForwardClient;
use conclave_proto::conclave::peer::v1::cluster_forward_server::ClusterForwardServer;
use conclave_proto::conclave::peer::v1::lease_forward_server::LeaseForwardServer;
use conclave_proto::conclave::peer::v1::raft_transport_server::RaftTransportServer;
use conclave_proto::conclave::v1::membership_server::MembershipServer;
use conclave_proto::etcdserverpb::cluster_server::ClusterServer;
use conclave_proto::etcdserverpb::kv_server::KvServer;
use conclave_proto::etcdserverpb::lease_server::LeaseServer;
use conclave_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use conclave_proto::etcdserverpb::watch_server::WatchServer;
use conclave_proto::etcdserverpb::{MemberListRequest, ResponseHeader};
use conclave_proto::v3electionpb::election_server::ElectionServer;
use conclave_proto::v3lockpb::lock_server::LockServer;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::transport::server::TcpIncoming;

use crate::alarm::{self, Alarms};
use crate::api::cluster::{ClusterForwardService, ClusterService};
use crate::api::election::ElectionService;
use crate::api::kv::KvService;
use crate::api::leader::PeerChannels;
use crate::api::lease::{LeaseForwardService, LeaseService};
use crate::api::lock::LockService;
use crate::api::loopback::Loopback;
use crate::api::maintenance::MaintenanceService;
use crate::api::membership::MembershipService;
use crate::api::on_runtime::{InFlight, OnRuntime};
use crate::api::peer::PeerService;
use crate::api::watch::WatchService;
use crate::api::{Context, Limits};
use crate::apply::Applier;
use crate::authority_fix::AuthorityFix;
use crate::config::{ClusterState, Settings};
use crate::http;
use crate::lease::{self, Lessor, duties};
use crate::membership::{BootstrapError, Membership};
use crate::mvcc::{MvccError, Store};
use crate::node::proposal::Waiters;
use crate::node::{self, Node, NodeError, NodeParts, RaftTiming};
use crate::storage::raft_log::RaftLog;
use crate::storage::{self, META_APPLIED_INDEX, StorageError, snapshot};
use crate::watch::{HubSettings, WatchHub, catch_up};

/// gRPC framing overhead allowed on top of --max-request-bytes (etcd allows the same).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Why the member could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Startup(String),
    #[error("member stopped: {0}")]
    Fatal(String),
    #[error("the member has been permanently removed from the cluster")]
    Removed,
}

/// This member's peer URLs, as `--initial-cluster` lists them under its `--name`.
fn my_peer_urls(settings: &Settings) -> Result<Vec<String>, RunError> {
    settings
        .initial_cluster
        .iter()
        .find(|m| m.name == settings.name)
        .map(|m| m.peer_urls.clone())
        .ok_or_else(|| {
            RunError::Bootstrap(BootstrapError::NotInInitialCluster(settings.name.clone()))
        })
}

/// Asks the other members of `--initial-cluster` (on their peer URLs) for the cluster id and
/// member table, for a member joining a running cluster. Tries each until one answers.
async fn ask_members(settings: &Settings) -> Result<(u64, Vec<MemberRecord>), RunError> {
    let mine = my_peer_urls(settings)?;
    let mut errors = Vec::new();
    for url in settings
        .initial_cluster
        .iter()
        .flat_map(|m| m.peer_urls.iter())
        .filter(|u| !mine.contains(u))
    {
        let answer = async {
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            ClusterForwardClient::new(channel)
                .member_list(MemberListRequest { linearizable: true })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        };
        match answer.await {
            Ok(list) => {
                let cluster_id = list.header.map_or(0, |h| h.cluster_id);
                let members = list
                    .members
                    .into_iter()
                    .map(|m| MemberRecord {
                        id: m.id,
                        name: m.name,
                        peer_urls: m.peer_ur_ls,
                        client_urls: m.client_ur_ls,
                        is_learner: m.is_learner,
                    })
                    .collect();
                tracing::info!(peer = %url, cluster = format!("{cluster_id:x}"), "joining a running cluster");
                return Ok((cluster_id, members));
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(RunError::Startup(format!(
        "--initial-cluster-state existing: no member of --initial-cluster answered ({})",
        errors.join("; ")
    )))
}

/// Runs a member until `shutdown` completes. Returns an error if it could not start or failed.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let handle = storage::open(&settings.data_dir)?;
    let log_db = storage::open_log(&settings.data_dir, &handle)?;
    let db = handle.get();
    let snapshot_dir = settings.data_dir.join("snap");
    snapshot::clear_dir(&snapshot_dir)?;
    let joining = settings.initial_cluster_state == ClusterState::Existing
        && storage::read_meta(&db, storage::META_MEMBER_ID)? == 0;
    let (membership, identity, fresh) = if joining {
        let (cluster_id, members) = ask_members(&settings).await?;
        let mine = my_peer_urls(&settings)?;
        let (membership, identity) = Membership::join(&db, &mine, cluster_id, members)?;
        (membership, identity, true)
    } else {
        Membership::open_or_bootstrap(
            &db,
            &settings.name,
            &settings.initial_cluster,
            &settings.initial_cluster_token,
        )?
    };
    tracing::info!(
        member = format!("{:x}", identity.member_id),
        cluster = format!("{:x}", identity.cluster_id),
        data_dir = %settings.data_dir.display(),
        restarted = !fresh,
        "starting member"
    );
    let log = RaftLog::open(log_db, handle.clone())?;
    let log_handle = log.clone();
    let started = Instant::now();
    let store = Arc::new(Store::open(handle.clone())?);
    tracing::info!(
        revision = store.revision(),
        keys = store.key_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rebuilt key index"
    );
    let election_timeout = settings.heartbeat * settings.election_ticks as u32;
    let lessor = Arc::new(Lessor::open(&db, &store, lease::min_ttl(election_timeout))?);
    let alarms = Arc::new(Alarms::open(&db)?);
    let applied_index = storage::read_meta(&db, META_APPLIED_INDEX)?;
    // From here on everything goes through `handle`: a defragmentation replaces the database, and
    // a reference kept here would keep the old file (and its page cache) until the member stops.
    drop(db);
    let members = membership.list();
    // Only the members of a new cluster store the initial voters; a joining member learns them
    // from a snapshot, and a restarted one has them stored.
    let voters: Vec<u64> = if fresh && !joining {
        members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    } else {
        Vec::new()
    };
    let peers: HashMap<u64, String> = members
        .iter()
        .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
        .collect();

    let (applied_tx, applied_rx) = watch::channel(applied_index);
    let waiters = Arc::new(Waiters::default());
    // The raft thread's runtime: the raft task, its peer senders and the peer server all run on
    // it, so a raft message crosses from the socket to raft (and back) without waking another
    // thread.
    let raft_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Startup(format!("cannot start the raft runtime: {e}")))?;
    let raft_io = raft_runtime.handle().clone();
    let raft_runtime = RaftRuntime(Some(raft_runtime));
    let (node, driver) = node::create(
        NodeParts {
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            log,
            voters,
            peers,
            timing: RaftTiming {
                tick: settings.heartbeat,
                election_ticks: settings.election_ticks,
            },
            applied_index,
            log_retention: settings.snapshot_catchup_entries,
            request_timeout: settings.request_timeout(),
            waiters: waiters.clone(),
            applied: applied_rx,
            db: handle.clone(),
            data_dir: settings.data_dir.clone(),
            snapshot_dir: snapshot_dir.clone(),
        },
        &raft_io,
        &tokio::runtime::Handle::current(),
    )?;

    let header_node = node.clone();
    let header_store = store.clone();
    let hub = Arc::new(WatchHub::new(
        store.revision(),
        Box::new(move |revision| ResponseHeader {
            cluster_id: header_node.cluster_id,
            member_id: header_node.member_id,
            revision: if revision > 0 {
                revision
            } else {
                header_store.revision()
            },
            raft_term: header_node.status().term,
        }),
        HubSettings {
            max_response_bytes: settings.max_request_bytes,
            progress_interval: settings.watch_progress_notify_interval,
            slow_stream_timeout: settings.watch_slow_consumer_timeout,
        },
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    // The raft thread stops last: in-flight requests still need it while the servers drain.
    let (raft_stop_tx, raft_stop_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(4);
    let applier = Applier {
        db: handle.clone(),
        store: store.clone(),
        lessor: lessor.clone(),
        hub: hub.clone(),
        membership: membership.clone(),
        alarms: alarms.clone(),
        log: log_handle,
        waiters,
        applied: applied_tx,
        member_id: identity.member_id,
    };
    let raft_thread = spawn_raft_thread(
        raft_runtime,
        driver,
        applier,
        raft_stop_rx,
        fatal_tx.clone(),
    )?;

    tokio::spawn(catch_up::run(hub.clone(), store.clone(), stop_rx.clone()));
    tokio::spawn(duties::run(
        lessor.clone(),
        node.clone(),
        duties::DutySettings {
            extend: election_timeout,
            checkpoint_interval: settings.lease_checkpoint_interval,
            max_request_bytes: settings.max_request_bytes,
        },
        stop_rx.clone(),
    ));
    tokio::spawn(alarm::auto_clear(
        node.clone(),
        alarms.clone(),
        store.clone(),
        settings.quota_backend_bytes,
        settings.max_request_bytes,
        stop_rx.clone(),
    ));
    if let Some(every) = settings.corrupt_check {
        let checker = crate::corrupt::Checker {
            node: node.clone(),
            store: store.clone(),
            membership: membership.clone(),
            alarms: alarms.clone(),
            max_request_bytes: settings.max_request_bytes,
        };
        tokio::spawn(checker.run(every, stop_rx.clone()));
    }
    let ctx = Arc::new(Context {
        node: node.clone(),
        store,
        lessor,
        hub: hub.clone(),
        membership: membership.clone(),
        alarms,
        limits: Limits {
            max_request_bytes: settings.max_request_bytes,
            max_txn_ops: settings.max_txn_ops,
            quota_bytes: settings.quota_backend_bytes,
        },
        data_dir: settings.data_dir.clone(),
        request_timeout: settings.request_timeout(),
    });
    let peer_channels = Arc::new(PeerChannels::default());
    let mut servers = Vec::new();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(
        node.clone(),
        health_reporter,
        stop_rx.clone(),
    ));
    for addr in &settings.listen_client {
        let listener = bind(*addr).await?;
        let local = listener.local_addr().unwrap_or(*addr);
        let loopback = Arc::new(Loopback::new(loopback_url(local)));
        let max = settings.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let kv = KvServer::new(KvService::new(ctx.clone())).max_decoding_message_size(max);
        let routes = tonic::service::Routes::new(kv.clone())
            .add_service(
                MaintenanceServer::new(MaintenanceService::new(ctx.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                ClusterServer::new(ClusterService::new(ctx.clone(), peer_channels.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(WatchServer::new(WatchService::new(hub.clone())))
            .add_service(LeaseServer::new(LeaseService::new(
                ctx.clone(),
                peer_channels.clone(),
            )))
            .add_service(LockServer::new(LockService::new(loopback.clone())))
            .add_service(ElectionServer::new(ElectionService::new(
                loopback.clone(),
                ctx.clone(),
            )))
            .add_service(MembershipServer::new(MembershipService::new(
                loopback,
                ctx.clone(),
            )))
            .add_service(health_service.clone());
        // Plain HTTP (/health, /metrics, ...) on the same port; in front, every gRPC call
        // counted and KV calls sent straight to their service.
        let app = routes.into_axum_router().merge(http::router(ctx.clone()));
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .accept_http1(true)
            .layer(http::FrontLayer::new(kv))
            .add_routes(tonic::service::Routes::from(app));
        let stop = stopped(stop_rx.clone());
        servers.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(
                    incoming(listener).map(|conn| conn.map(AuthorityFix::new)),
                    stop,
                )
                .await
        }));
        tracing::info!(%addr, "serving clients");
    }
    // Requests other members forwarded to this one (leases, membership), still being handled.
    let forwarded = InFlight::default();
    for addr in &settings.listen_peer {
        let listener = bind(*addr).await?;
        // Served by the raft thread (see `raft_runtime`): its sockets belong to that runtime.
        let listener = listener
            .into_std()
            .and_then(|l| {
                let _in_raft_runtime = raft_io.enter();
                TcpListener::from_std(l)
            })
            .map_err(|source| RunError::Listen {
                addr: *addr,
                source,
            })?;
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                RaftTransportServer::new(PeerService::new(
                    node.clone(),
                    membership.clone(),
                    snapshot_dir.clone(),
                    tokio::runtime::Handle::current(),
                ))
                .max_decoding_message_size(usize::MAX),
            )
            .add_service(OnRuntime::new(
                LeaseForwardServer::new(LeaseForwardService::new(ctx.clone())),
                tokio::runtime::Handle::current(),
                forwarded.clone(),
            ))
            .add_service(OnRuntime::new(
                ClusterForwardServer::new(ClusterForwardService::new(ctx.clone())),
                tokio::runtime::Handle::current(),
                forwarded.clone(),
            ));
        // Not drained at shutdown with the client servers: peer streams never end by themselves
        // (every stop waited out the 5 s drain bound for them), and the client requests being
        // drained need raft, hence this server, until they are answered. It ends with the raft
        // thread, whose runtime runs it.
        raft_io.spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming(listener)).await {
                tracing::error!(error = %e, "the peer server failed");
            }
        });
        tracing::info!(%addr, "serving peers");
    }
    let publisher = tokio::spawn(publish_attributes(
        node.clone(),
        membership,
        settings.name.clone(),
        settings.advertise_client_urls.clone(),
        settings.max_request_bytes,
    ));

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down");
            hand_over_leadership(&node).await;
            Ok(())
        }
        Some(why) = fatal_rx.recv() => {
            if why.ends_with(&NodeError::Removed.to_string()) {
                // Requests in flight (a forwarded MemberRemove) are drained below.
                tracing::warn!("this member was removed from the cluster; stopping");
                Err(RunError::Removed)
            } else {
                tracing::error!(%why, "fatal error; stopping");
                Err(RunError::Fatal(why))
            }
        }
    };
    publisher.abort();
    // Stop accepting requests and let those in flight finish (bounded: watch streams never end
    // by themselves), then stop raft and wait for its last write.
    let _ = stop_tx.send(true);
    hub.end_all_streams(&crate::error::ServerError::Stopped.into());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let drained = futures::future::join_all(servers);
    if tokio::time::timeout_at(deadline, drained).await.is_err() {
        tracing::warn!("requests still in flight after 5 s; stopping anyway");
    } else if tokio::time::timeout_at(deadline, forwarded.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            requests = forwarded.count(),
            "forwarded requests still in flight after 5 s; stopping anyway"
        );
    }
    let _ = raft_stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || raft_thread.join());
    if tokio::time::timeout(Duration::from_secs(5), joined)
        .await
        .is_err()
    {
        tracing::warn!("the raft thread did not stop within 5 s");
    }
    tracing::info!("stopped");
    result
}

/// Keeps the gRPC health service (`grpc.health.v1`) in step with raft: SERVING while a leader is
/// known, NOT_SERVING otherwise (checked twice a second: the status changes with every commit).
async fn report_health(
    node: Arc<Node>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let serving = node.status().leader != 0;
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            last = Some(serving);
        }
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

/// On a graceful stop of the leader: hands leadership to the most up-to-date active voter first,
/// so the cluster does not wait an election timeout for a new leader.
async fn hand_over_leadership(node: &Node) {
    let Ok(Some(progress)) = node.progress().await else {
        return;
    };
    let Some(successor) = progress.successor(node.member_id) else {
        return;
    };
    let started = Instant::now();
    let moved =
        tokio::time::timeout(Duration::from_secs(3), node.transfer_leadership(successor)).await;
    match moved {
        Ok(Ok(())) => tracing::info!(
            successor = format!("{successor:x}"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "leadership handed over before stopping"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not hand over leadership"),
        Err(_) => tracing::warn!("leadership hand-over timed out"),
    }
}

/// The URL this member reaches its own client listener `addr` at (a wildcard address is reached
/// through loopback).
fn loopback_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { addr, source })
}

/// Accepted connections with Nagle's algorithm off: a small response must not wait for a delayed
/// ACK (a 40 ms stall per request otherwise). The builder's `tcp_nodelay` does not reach sockets of
/// a listener we bound ourselves.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The raft thread's runtime. Dropping it does not wait for its blocking tasks: when startup fails
/// it is dropped inside the main runtime, where a plain `Runtime` drop would panic.
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    fn block_on<F: std::future::Future>(&self, future: F) -> Option<F::Output> {
        self.0.as_ref().map(|rt| rt.block_on(future))
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn spawn_raft_thread(
    runtime: RaftRuntime,
    driver: node::Driver,
    applier: Applier,
    stop: watch::Receiver<bool>,
    fatal: mpsc::Sender<String>,
) -> Result<std::thread::JoinHandle<()>, RunError> {
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let outcome = catch_panic(|| match runtime.block_on(driver.run(applier, stop)) {
                Some(outcome) => outcome.map_err(|e| e.to_string()),
                None => Err("the raft runtime is gone".to_string()),
            });
            if let Err(why) = outcome {
                let _ = fatal.blocking_send(format!("raft: {why}"));
            }
        })
        .map_err(|e| RunError::Startup(format!("cannot start the raft thread: {e}")))
}

/// Runs `f`, turning a panic into an error: a panicking raft thread must stop the
/// member, never leave it running without them.
fn catch_panic(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(outcome) => outcome,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())),
    }
}

/// Announces this member's name and client URLs through raft until the member table has them.
async fn publish_attributes(
    node: Arc<Node>,
    membership: Arc<Membership>,
    name: String,
    client_urls: Vec<String>,
    max_bytes: usize,
) {
    loop {
        if membership
            .get(node.member_id)
            .is_some_and(|m| m.name == name && m.client_urls == client_urls)
        {
            return;
        }
        let op = Op::Publish(PublishMember {
            member_id: node.member_id,
            name: name.clone(),
            client_urls: client_urls.clone(),
        });
        if let Err(e) = node.propose(op, max_bytes).await {
            tracing::debug!(error = %e, "publishing member attributes; will retry");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
