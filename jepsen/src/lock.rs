//! The lock workload: workers take one lease-backed lock in turn and, while holding it, increment
//! a shared counter twice with fenced read-modify-writes: read the counter, then a Txn that writes
//! read + 1 only if the worker's lock key still exists with its create revision (the fencing
//! token). The counter itself is not compared: only the lock protects it. Now and then a holder
//! **stalls**: it stops renewing its lease (as a paused or partitioned process would) and sleeps
//! past the TTL before its write, which the fence must refuse once anyone else may hold the lock.
//!
//! The lock is `conclave_client::Mutex`, etcd's recipe (the one behind etcd's `concurrency.Mutex`),
//! so the workload runs against etcd unchanged; with [`LockVia::Service`] it is taken through the
//! server's v3lock `Lock` RPC instead (on the worker's member, moving to the next one after a
//! failure), which runs the same recipe inside the server. [`crate::lock_check`] checks the
//! history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use conclave_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Mutex, PutOptions, Session,
    SessionOptions, Txn, TxnOp,
};
use conclave_proto::v3lockpb::LockRequest;
use conclave_proto::v3lockpb::lock_client::LockClient;
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::connect::client;
use crate::history::Kind;
use crate::lock_check::FencedWrite;

const NAME: &str = "jepsen/lock/mutex";
const COUNTER: &str = "jepsen/lock/counter";
/// Fenced increments per tenure: with two, another holder writing between them shows.
const INCREMENTS_PER_TENURE: usize = 2;
/// How long a worker waits for the lock before giving up and trying again.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub workers: usize,
    /// Session (lease) TTL in seconds.
    pub ttl: i64,
    pub duration: Duration,
    /// Chance that a holder stalls before a fenced write.
    pub stall_probability: f64,
    pub via: LockVia,
}

/// How workers take the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockVia {
    /// The client recipe (`conclave_client::Mutex`).
    Recipe,
    /// The server's v3lock service.
    Service,
}

/// What the run recorded.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub acquisitions: u64,
    pub acquire_failures: u64,
    pub stalls: u64,
    pub final_value: i64,
    pub writes: Vec<FencedWrite>,
}

/// Counters shared by the workers.
#[derive(Default)]
struct Shared {
    tenures: AtomicU64,
    acquire_failures: AtomicU64,
    stalls: AtomicU64,
    writes: std::sync::Mutex<Vec<FencedWrite>>,
}

/// Runs the workload; times are counted from `origin` (the recorder's start, so that they line up
/// with the nemesis events).
pub async fn run(
    endpoints: Vec<String>,
    s: Settings,
    origin: std::time::Instant,
) -> anyhow::Result<Outcome> {
    let origin = Instant::from_std(origin);
    let shared = Arc::new(Shared::default());
    let deadline = Instant::now() + s.duration;
    let mut tasks = Vec::new();
    for id in 0..s.workers {
        let c = client(&endpoints, id).await?;
        let shared = shared.clone();
        let endpoints = endpoints.clone();
        tasks.push(tokio::spawn(worker(
            id, c, endpoints, s, deadline, origin, shared,
        )));
    }
    for t in tasks {
        t.await?;
    }
    let c = client(&endpoints, 0).await?;
    let give_up = Instant::now() + Duration::from_secs(60);
    let final_value = loop {
        match read_counter(&c).await {
            Ok(v) => break v,
            Err(e) if Instant::now() > give_up => bail!("final read failed: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let writes = std::mem::take(&mut *shared.writes.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Outcome {
        acquisitions: shared.tenures.load(Ordering::Relaxed),
        acquire_failures: shared.acquire_failures.load(Ordering::Relaxed),
        stalls: shared.stalls.load(Ordering::Relaxed),
        final_value,
        writes,
    })
}

async fn worker(
    id: usize,
    client: Client,
    endpoints: Vec<String>,
    s: Settings,
    deadline: Instant,
    origin: Instant,
    shared: Arc<Shared>,
) {
    let mut session: Option<Session> = None;
    let mut member = id;
    while Instant::now() < deadline {
        let lease = match &session {
            Some(live) if !live.is_lost() => live.lease_id(),
            _ => match Session::new(&client, SessionOptions::new(s.ttl)).await {
                Ok(fresh) => {
                    let lease = fresh.lease_id();
                    session = Some(fresh);
                    lease
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let mut service = match s.via {
            LockVia::Recipe => None,
            LockVia::Service => {
                let endpoint = &endpoints[member % endpoints.len()];
                let endpoint = if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                };
                match LockClient::connect(endpoint).await {
                    Ok(c) => Some(c),
                    Err(_) => {
                        member += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        };
        let taken = acquire(&client, service.as_mut(), lease);
        let (key, token) = match tokio::time::timeout(ACQUIRE_TIMEOUT, taken).await {
            Ok(Ok(held)) => held,
            _ => {
                shared.acquire_failures.fetch_add(1, Ordering::Relaxed);
                member += 1;
                continue;
            }
        };
        let tenure = shared.tenures.fetch_add(1, Ordering::Relaxed);
        for _ in 0..INCREMENTS_PER_TENURE {
            let Ok(read) = read_counter(&client).await else {
                break;
            };
            let stalled = rand::rng().random_bool(s.stall_probability);
            if stalled {
                // Renewals stop, as if this process were paused; the lease runs out meanwhile.
                shared.stalls.fetch_add(1, Ordering::Relaxed);
                drop(session.take());
                tokio::time::sleep(Duration::from_secs(s.ttl as u64 + 2)).await;
            }
            let invoked = Instant::now();
            let fenced = Txn::new()
                .when([Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    token,
                )])
                .and_then([TxnOp::put(
                    COUNTER,
                    (read + 1).to_string(),
                    PutOptions::new(),
                )]);
            let (outcome, revision) = match client.kv().txn(fenced).await {
                Ok(r) if r.succeeded => (Kind::Ok, r.header.map(|h| h.revision)),
                Ok(_) => (Kind::Fail, None),
                Err(_) => (Kind::Info, None),
            };
            let write = FencedWrite {
                worker: id,
                tenure,
                token,
                read,
                wrote: read + 1,
                stalled,
                outcome,
                revision,
                invoke_ns: (invoked - origin).as_nanos() as u64,
                complete_ns: origin.elapsed().as_nanos() as u64,
            };
            shared
                .writes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(write);
            if outcome != Kind::Ok {
                break;
            }
        }
        // Release; if this fails the lease expiry releases it.
        let _ = client.kv().delete(key, DeleteOptions::new()).await;
    }
    if let Some(session) = session {
        let _ = session.close().await;
    }
}

/// The counter's value (0 before the first write), read linearizably.
async fn read_counter(client: &Client) -> anyhow::Result<i64> {
    let r = client.kv().get(COUNTER, GetOptions::new()).await?;
    match r.kvs.first() {
        None => Ok(0),
        Some(kv) => String::from_utf8_lossy(&kv.value)
            .parse()
            .context("counter value"),
    }
}

/// Takes the lock for `lease`: returns the lock key and its create revision (the fencing token).
async fn acquire(
    client: &Client,
    service: Option<&mut LockClient<Channel>>,
    lease: i64,
) -> anyhow::Result<(Vec<u8>, i64)> {
    match service {
        None => {
            let held = Mutex::with_lease(client, NAME, lease).lock().await?;
            Ok((held.key().to_vec(), held.fencing_token()))
        }
        Some(service) => {
            let held = service
                .lock(LockRequest {
                    name: NAME.into(),
                    lease,
                })
                .await?
                .into_inner();
            // The service answers the key; its create revision is the token.
            let r = client.kv().get(held.key.clone(), GetOptions::new()).await?;
            let token = r
                .kvs
                .first()
                .map(|kv| kv.create_revision)
                .context("the lock key vanished right after the lock was granted")?;
            Ok((held.key, token))
        }
    }
}
