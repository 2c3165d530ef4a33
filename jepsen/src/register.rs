//! The register workload: workers read, write and compare-and-set random keys through the
//! client (reads are linearizable Ranges, CAS is a Txn comparing the value). Written values are
//! unique, so the checker's search stays small. A worker whose operation has an unknown outcome
//! continues as a new process, as in Jepsen: the old operation may still be in flight.

use std::sync::Arc;
use std::time::Duration;

use conclave_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use rand::Rng;
use tokio::time::Instant;

use crate::history::{Kind, Op, Recorder};

/// Settings of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub workers: usize,
    pub keys: u32,
    pub duration: Duration,
}

fn key_name(k: u32) -> String {
    format!("jepsen/register/{k}")
}

async fn perform(client: &Client, key: u32, op: Op) -> Result<Op, conclave_client::Error> {
    let name = key_name(key);
    match op {
        Op::Read { .. } => {
            let r = client.kv().get(name, GetOptions::new()).await?;
            let value = r
                .kvs
                .first()
                .and_then(|kv| String::from_utf8_lossy(&kv.value).parse().ok());
            Ok(Op::Read { value })
        }
        Op::Write { value } => {
            client
                .kv()
                .put(name, value.to_string(), PutOptions::new())
                .await?;
            Ok(op)
        }
        Op::Cas { expected, new, .. } => {
            let txn = Txn::new()
                .when([Compare::value(
                    name.clone(),
                    CompareOp::Equal,
                    expected.to_string(),
                )])
                .and_then([TxnOp::put(name, new.to_string(), PutOptions::new())]);
            let r = client.kv().txn(txn).await?;
            Ok(Op::Cas {
                expected,
                new,
                succeeded: Some(r.succeeded),
            })
        }
    }
}

/// Runs one worker until the deadline.
async fn worker(
    id: usize,
    client: Client,
    s: Settings,
    recorder: Arc<Recorder>,
    deadline: Instant,
) {
    let mut process = id;
    let mut counter: i64 = 0;
    let mut last_seen: Option<i64> = None;
    while Instant::now() < deadline {
        let key = rand::rng().random_range(0..s.keys);
        counter += 1;
        let fresh = (id as i64) * 1_000_000_000 + counter;
        let op = match rand::rng().random_range(0..3) {
            0 => Op::Read { value: None },
            1 => Op::Write { value: fresh },
            _ => Op::Cas {
                expected: last_seen.unwrap_or(0),
                new: fresh,
                succeeded: None,
            },
        };
        recorder.op(process, Kind::Invoke, key, op);
        match perform(&client, key, op).await {
            Ok(done) => {
                if let Op::Read { value } = done {
                    last_seen = value;
                }
                recorder.op(process, Kind::Ok, key, done);
            }
            Err(e) if e.is_unknown_outcome() => {
                recorder.op(process, Kind::Info, key, op);
                process += s.workers;
            }
            Err(_) => recorder.op(process, Kind::Fail, key, op),
        }
    }
}

/// Runs the workload against `endpoints` for `s.duration`.
pub async fn run(
    endpoints: Vec<String>,
    s: Settings,
    recorder: Arc<Recorder>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + s.duration;
    let mut tasks = Vec::new();
    for id in 0..s.workers {
        let client = crate::connect::client(&endpoints, id).await?;
        tasks.push(tokio::spawn(worker(
            id,
            client,
            s,
            recorder.clone(),
            deadline,
        )));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
