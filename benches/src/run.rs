//! Connections, the request loop of each client, pacing, and the final report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use conclave_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use conclave_proto::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, StatusRequest, TxnRequest,
    TxnResponse, request_op,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::keys::{KeyPicker, check_key_space, encode_key};
use crate::report::{RunInfo, Stats, render_text, summarize};
use crate::unary::UnaryConn;
use crate::{Cli, Cmd, Consistency, Global};

pub enum Outcome {
    AllOk,
    SomeFailed,
}

/// `host:port` -> `http://host:port`; URLs are kept as given.
pub fn endpoint_uri(ep: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

/// Which endpoint connection `i` goes to, and which connection client `c` uses: round-robin.
pub fn round_robin(i: usize, n: usize) -> usize {
    i % n.max(1)
}

async fn dial(ep: &str, g: &Global) -> anyhow::Result<Channel> {
    let uri = endpoint_uri(ep);
    Endpoint::from_shared(uri.clone())
        .with_context(|| format!("invalid endpoint {ep:?}"))?
        .connect_timeout(g.dial_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {uri}"))
}

/// `--conns` tonic channels, spread over the endpoints (for the watch and lease benchmarks).
async fn dial_all(endpoints: &[String], g: &Global) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(g.conns);
    for i in 0..g.conns {
        channels.push(dial(&endpoints[round_robin(i, endpoints.len())], g).await?);
    }
    Ok(channels)
}

/// Asks each endpoint for its status and returns the one that is the leader.
async fn find_leader(g: &Global) -> anyhow::Result<String> {
    let mut last_err = None;
    for ep in &g.endpoints {
        let ch = match dial(ep, g).await {
            Ok(ch) => ch,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let mut m = MaintenanceClient::new(ch);
        match tokio::time::timeout(g.timeout, m.status(StatusRequest {})).await {
            Ok(Ok(resp)) => {
                let st = resp.into_inner();
                let member = st.header.map(|h| h.member_id).unwrap_or(0);
                if st.leader != 0 && st.leader == member {
                    return Ok(ep.clone());
                }
            }
            Ok(Err(status)) => last_err = Some(anyhow::anyhow!("{ep}: status: {status}")),
            Err(_) => last_err = Some(anyhow::anyhow!("{ep}: status timed out")),
        }
    }
    match last_err {
        Some(e) => Err(e.context("--target-leader: no endpoint reported itself as leader")),
        None => bail!("--target-leader: no endpoint reported itself as leader"),
    }
}

/// What each request does.
enum Op {
    Put { fixed_key: Option<Vec<u8>> },
    Range { req: RangeRequest },
    TxnPut { ops: u64 },
}

struct Workload {
    op: Op,
    picker: KeyPicker,
    key_size: usize,
    value: Vec<u8>,
}

/// A request, built before its clock starts.
enum Request {
    Put(PutRequest),
    Range(RangeRequest),
    Txn(TxnRequest),
}

impl Workload {
    fn new(g: &Global, cmd: &Cmd) -> anyhow::Result<Self> {
        let op = match cmd {
            Cmd::Put { key } => Op::Put {
                fixed_key: key.as_ref().map(|k| k.as_bytes().to_vec()),
            },
            Cmd::Range { key, end, limit } => {
                if key.is_empty() {
                    bail!("range: KEY must not be empty");
                }
                Op::Range {
                    req: RangeRequest {
                        key: key.as_bytes().to_vec(),
                        range_end: end
                            .as_ref()
                            .map(|e| e.as_bytes().to_vec())
                            .unwrap_or_default(),
                        limit: *limit,
                        serializable: g.consistency == Consistency::S,
                        ..Default::default()
                    },
                }
            }
            Cmd::TxnPut { txn_ops } => {
                if *txn_ops == 0 {
                    bail!("--txn-ops must be at least 1");
                }
                if *txn_ops > g.key_space_size {
                    bail!(
                        "--txn-ops {txn_ops} exceeds --key-space-size {}: a txn may not put one key twice",
                        g.key_space_size
                    );
                }
                Op::TxnPut { ops: *txn_ops }
            }
            Cmd::WatchLatency { .. } | Cmd::LeaseKeepalive => bail!("not a key-value benchmark"),
        };
        if !matches!(op, Op::Range { .. } | Op::Put { fixed_key: Some(_) }) {
            check_key_space(g.key_size, g.key_space_size).map_err(anyhow::Error::msg)?;
        }
        Ok(Self {
            op,
            picker: KeyPicker {
                space: g.key_space_size.max(1),
                sequential: g.sequential_keys,
            },
            key_size: g.key_size,
            value: vec![b'x'; g.val_size],
        })
    }

    fn build(&self, i: u64, rng: &mut SmallRng) -> Request {
        match &self.op {
            Op::Put { fixed_key } => {
                let key = match fixed_key {
                    Some(k) => k.clone(),
                    None => encode_key(self.picker.pick(i, rng), self.key_size),
                };
                Request::Put(PutRequest {
                    key,
                    value: self.value.clone(),
                    ..Default::default()
                })
            }
            Op::Range { req } => Request::Range(req.clone()),
            Op::TxnPut { ops } => {
                let success = self
                    .picker
                    .pick_txn(i, *ops, rng)
                    .into_iter()
                    .map(|n| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: encode_key(n, self.key_size),
                            value: self.value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                Request::Txn(TxnRequest {
                    success,
                    ..Default::default()
                })
            }
        }
    }
}

async fn send(conn: &mut UnaryConn, req: Request) -> Result<(), tonic::Status> {
    match req {
        Request::Put(r) => conn
            .call::<_, PutResponse>("/etcdserverpb.KV/Put", &r)
            .await
            .map(drop),
        Request::Range(r) => conn
            .call::<_, RangeResponse>("/etcdserverpb.KV/Range", &r)
            .await
            .map(drop),
        Request::Txn(r) => conn
            .call::<_, TxnResponse>("/etcdserverpb.KV/Txn", &r)
            .await
            .map(drop),
    }
}

/// Spaces request starts `1/rate` apart over all clients, without blocking a thread.
struct Pacer {
    start: Instant,
    rate: u64,
    next: AtomicU64,
}

/// When slot `n` may start, relative to the start of the run.
pub fn slot_offset(n: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl Pacer {
    async fn wait(&self) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep_until(self.start + slot_offset(n, self.rate)).await;
    }
}

struct Shared {
    workload: Workload,
    next: AtomicU64,
    total: u64,
    timeout: Duration,
    pacer: Option<Pacer>,
}

async fn client_loop(mut conn: UnaryConn, shared: Arc<Shared>, seed: u64) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.total {
            break;
        }
        if let Some(p) = &shared.pacer {
            p.wait().await;
        }
        let req = shared.workload.build(i, &mut rng);
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(shared.timeout, send(&mut conn, req)).await;
        let latency = started.elapsed();
        match res {
            Ok(Ok(())) => stats.record_ok(latency),
            Ok(Err(status)) => stats.record_err(&status),
            Err(_) => stats.record_err(&tonic::Status::deadline_exceeded(format!(
                "no answer within {:?} (client timeout)",
                shared.timeout
            ))),
        }
    }
    Ok(stats)
}

fn op_name(cmd: &Cmd, c: Consistency) -> String {
    match (cmd, c) {
        (Cmd::Put { .. }, _) => "put".into(),
        (Cmd::Range { .. }, Consistency::L) => "range-l".into(),
        (Cmd::Range { .. }, Consistency::S) => "range-s".into(),
        (Cmd::TxnPut { .. }, _) => "txn-put".into(),
        (Cmd::WatchLatency { .. }, _) => "watch-latency".into(),
        (Cmd::LeaseKeepalive, _) => "lease-keepalive".into(),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let g = cli.global;
    if g.endpoints.iter().all(|e| e.trim().is_empty()) {
        bail!("--endpoints is empty");
    }
    if g.conns == 0 || g.clients == 0 || g.total == 0 {
        bail!("--conns, --clients and --total must be at least 1");
    }

    let endpoints: Vec<String> = if g.target_leader {
        vec![find_leader(&g).await?]
    } else {
        g.endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    };

    let (stats, elapsed, requests, extra) = match &cli.cmd {
        Cmd::WatchLatency {
            watchers,
            streams,
            rss_pids,
        } => {
            let channels = dial_all(&endpoints, &g).await?;
            let r = crate::watch_lease::watch_latency(
                &channels, *watchers, *streams, g.total, g.rate, rss_pids,
            )
            .await?;
            let requests = r.stats.ok;
            (r.stats, r.elapsed, requests, r.bytes_per_watcher)
        }
        Cmd::LeaseKeepalive => {
            let channels = dial_all(&endpoints, &g).await?;
            let (stats, elapsed) =
                crate::watch_lease::lease_keepalive(&channels, g.clients, g.total, g.timeout)
                    .await?;
            (stats, elapsed, g.total, None)
        }
        _ => {
            let workload = Workload::new(&g, &cli.cmd)?;
            let mut conns = Vec::with_capacity(g.conns);
            for i in 0..g.conns {
                let uri = endpoint_uri(&endpoints[round_robin(i, endpoints.len())]);
                conns.push(UnaryConn::connect(&uri, g.dial_timeout).await?);
            }
            let (stats, elapsed) = kv_load(&g, workload, &conns).await?;
            (stats, elapsed, g.total, None)
        }
    };

    let hist = stats.histogram()?;
    let mut summary = summarize(
        RunInfo {
            op: op_name(&cli.cmd, g.consistency),
            endpoints,
            conns: g.conns,
            clients: g.clients,
            requests,
            elapsed,
        },
        &stats,
        &hist,
    );
    summary.bytes_per_watcher = extra;
    let text = render_text(&summary, &stats, &hist);
    if g.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{text}");
    }
    Ok(if summary.errors == 0 {
        Outcome::AllOk
    } else {
        Outcome::SomeFailed
    })
}

/// The KV benchmarks: `--clients` request loops over the connections.
async fn kv_load(
    g: &Global,
    workload: Workload,
    conns: &[UnaryConn],
) -> anyhow::Result<(Stats, Duration)> {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        workload,
        next: AtomicU64::new(0),
        total: g.total,
        timeout: g.timeout,
        pacer: (g.rate > 0).then(|| Pacer {
            start,
            rate: g.rate,
            next: AtomicU64::new(0),
        }),
    });
    let base_seed: u64 = rand::random();
    let mut tasks = Vec::with_capacity(g.clients);
    for c in 0..g.clients {
        let conn = conns[round_robin(c, conns.len())].clone();
        tasks.push(tokio::spawn(client_loop(
            conn,
            shared.clone(),
            base_seed.wrapping_add(c as u64),
        )));
    }
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await.context("client task failed")??);
    }
    Ok((stats, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(endpoint_uri("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_uri("http://127.0.0.1:1"), "http://127.0.0.1:1");
    }

    #[test]
    fn round_robin_spreads() {
        // 16 connections over 3 endpoints: 6, 5, 5.
        let mut per = [0; 3];
        for i in 0..16 {
            per[round_robin(i, 3)] += 1;
        }
        assert_eq!(per, [6, 5, 5]);
    }

    #[test]
    fn pacing_slots() {
        assert_eq!(slot_offset(0, 100), Duration::ZERO);
        assert_eq!(slot_offset(1, 100), Duration::from_millis(10));
        assert_eq!(slot_offset(250, 100), Duration::from_millis(2500));
        assert_eq!(slot_offset(5, 0), Duration::ZERO);
    }
}
