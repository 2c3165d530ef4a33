//! The append workload: each key holds a list of integers (a comma-separated value); workers run
//! transactions of one to four micro-operations, each reading a key's list or appending a unique
//! value to it. A read-only transaction is one Txn of Ranges (one snapshot). A transaction with
//! appends reads its keys first, then commits in one Txn that compares every key's mod revision
//! with what it read and writes the new lists: it commits only if nothing changed in between, so
//! its reads and writes take effect at one revision. A failed compare is a definite failure; an
//! error of the commit is an unknown outcome. Transactions pick from `--keys` active keys; a key
//! that got [`MAX_APPENDS_PER_KEY`] appends is retired for a fresh one (as Elle's workloads do), so
//! lists stay short. At the end, transactions of up to 64 reads read every key used (the final
//! read that reveals lost appends). [`crate::append_check`] checks the history.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_client::proto::TxnResponse;
use conclave_client::proto::response_op::Response;
use conclave_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use rand::Rng;
use tokio::time::Instant;

use crate::append_check::{Mop, Outcome, TxnRecord};
use crate::connect::client;

/// Settings of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub workers: usize,
    pub keys: u32,
    pub duration: Duration,
}

/// Keys read by one transaction of the final read.
const FINAL_READ_CHUNK: usize = 64;

fn key_name(k: u32) -> String {
    format!("jepsen/append/{k}")
}

fn parse_list(value: &[u8]) -> Vec<i64> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn format_list(list: &[i64]) -> String {
    list.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Each key's list and mod revision (0: absent), from a Txn of Ranges over `keys` in order.
fn lists(keys: &[u32], r: &TxnResponse) -> BTreeMap<u32, (Vec<i64>, i64)> {
    keys.iter()
        .zip(&r.responses)
        .map(|(k, op)| {
            let found = match &op.response {
                Some(Response::ResponseRange(range)) => range
                    .kvs
                    .first()
                    .map(|kv| (parse_list(&kv.value), kv.mod_revision)),
                _ => None,
            };
            (*k, found.unwrap_or_default())
        })
        .collect()
}

fn read_all(keys: &[u32]) -> Txn {
    Txn::new().and_then(
        keys.iter()
            .map(|k| TxnOp::get(key_name(*k), GetOptions::new())),
    )
}

/// Runs `mops`; returns the outcome and the micro-operations completed with what the reads saw.
async fn perform(client: &Client, mops: Vec<Mop>) -> (Outcome, Vec<Mop>) {
    let mut keys: Vec<u32> = mops
        .iter()
        .map(|m| match m {
            Mop::R { key, .. } | Mop::Append { key, .. } => *key,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let Ok(read) = client.kv().txn(read_all(&keys)).await else {
        // Nothing was written: the reads alone failed.
        return (Outcome::Fail, mops);
    };
    let mut state = lists(&keys, &read);
    let observed: Vec<(u32, i64)> = state.iter().map(|(k, (_, rev))| (*k, *rev)).collect();
    let mut done = Vec::with_capacity(mops.len());
    let mut appended = BTreeMap::new();
    for m in mops {
        match m {
            Mop::R { key, .. } => done.push(Mop::R {
                key,
                value: Some(state[&key].0.clone()),
            }),
            Mop::Append { key, value } => {
                if let Some((list, _)) = state.get_mut(&key) {
                    list.push(value);
                    appended.insert(key, list.clone());
                }
                done.push(Mop::Append { key, value });
            }
        }
    }
    if appended.is_empty() {
        return (Outcome::Ok, done);
    }
    let commit = Txn::new()
        .when(
            observed
                .iter()
                .map(|(k, rev)| Compare::mod_revision(key_name(*k), CompareOp::Equal, *rev)),
        )
        .and_then(
            appended
                .iter()
                .map(|(k, list)| TxnOp::put(key_name(*k), format_list(list), PutOptions::new())),
        );
    match client.kv().txn(commit).await {
        Ok(r) if r.succeeded => (Outcome::Ok, done),
        Ok(_) => (Outcome::Fail, done),
        Err(_) => (Outcome::Info, done),
    }
}

/// The keys transactions pick from: `--keys` active keys, each retired for a fresh one after
/// [`MAX_APPENDS_PER_KEY`] appends. Lists stay short, so reads, the history and the checker's
/// version orders stay small however long the run (with a fixed set of keys, every read copies an
/// ever longer list: 4 GB of history after 5 minutes).
struct KeySpace {
    active: Vec<u32>,
    appends: Vec<u32>,
    next: u32,
}

/// Appends issued to one key before it is retired.
pub const MAX_APPENDS_PER_KEY: u32 = 128;

impl KeySpace {
    fn new(keys: u32) -> Self {
        KeySpace {
            active: (0..keys).collect(),
            appends: vec![0; keys as usize],
            next: keys,
        }
    }

    /// A random active key, for a read (`append` false) or an append.
    fn pick(&mut self, append: bool) -> u32 {
        let slot = rand::rng().random_range(0..self.active.len());
        let key = self.active[slot];
        if append {
            self.appends[slot] += 1;
            if self.appends[slot] >= MAX_APPENDS_PER_KEY {
                self.active[slot] = self.next;
                self.appends[slot] = 0;
                self.next += 1;
            }
        }
        key
    }

    /// Every key used so far.
    fn used(&self) -> u32 {
        self.next
    }
}

fn random_txn(keys: &Mutex<KeySpace>, next_value: &mut impl FnMut() -> i64) -> Vec<Mop> {
    let mut rng = rand::rng();
    let n = rng.random_range(1..=4);
    let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
    (0..n)
        .map(|_| {
            if rng.random_bool(0.5) {
                Mop::R {
                    key: keys.pick(false),
                    value: None,
                }
            } else {
                Mop::Append {
                    key: keys.pick(true),
                    value: next_value(),
                }
            }
        })
        .collect()
}

/// Runs the workload; returns the history (transactions in completion order), with times counted
/// from `origin` (the recorder's start, so that they line up with the nemesis events).
pub async fn run(
    endpoints: Vec<String>,
    s: Settings,
    origin: std::time::Instant,
) -> anyhow::Result<Vec<TxnRecord>> {
    let start = Instant::from_std(origin);
    let history = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let history = history.clone();
        move |process: usize, invoked: Instant, outcome: Outcome, mops: Vec<Mop>| {
            let r = TxnRecord {
                process,
                invoke_ns: (invoked - start).as_nanos() as u64,
                complete_ns: start.elapsed().as_nanos() as u64,
                outcome,
                mops,
            };
            history.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        }
    };
    let deadline = Instant::now() + s.duration;
    let space = Arc::new(Mutex::new(KeySpace::new(s.keys.max(1))));
    let mut tasks = Vec::new();
    for id in 0..s.workers {
        let c = client(&endpoints, id).await?;
        let record = record.clone();
        let space = space.clone();
        tasks.push(tokio::spawn(async move {
            let mut counter: i64 = 0;
            let mut next_value = || {
                counter += 1;
                (id as i64) * 1_000_000_000 + counter
            };
            while Instant::now() < deadline {
                let mops = random_txn(&space, &mut next_value);
                let invoked = Instant::now();
                let (outcome, done) = perform(&c, mops).await;
                record(id, invoked, outcome, done);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    // The final read of every key used, retried until the healed cluster answers; in chunks, as
    // a transaction holds at most 128 operations by default.
    let c = client(&endpoints, 0).await?;
    let used = space.lock().unwrap_or_else(|p| p.into_inner()).used();
    let keys: Vec<u32> = (0..used).collect();
    for chunk in keys.chunks(FINAL_READ_CHUNK) {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let invoked = Instant::now();
            match c.kv().txn(read_all(chunk)).await {
                Ok(r) => {
                    let mops = lists(chunk, &r)
                        .into_iter()
                        .map(|(key, (list, _))| Mop::R {
                            key,
                            value: Some(list),
                        })
                        .collect();
                    record(s.workers, invoked, Outcome::Ok, mops);
                    break;
                }
                Err(e) if Instant::now() > give_up => anyhow::bail!("final read failed: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let out = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(out)
}
