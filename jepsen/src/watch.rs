//! The watch workload: writers put and delete keys under one prefix while watchers — each
//! preferring a different member, resuming through the client after faults — record every event
//! they get. After the run, a fault-free watch of the whole run is the reference; it must replay
//! into the final linearizable read of the prefix, and every watcher is checked against it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_client::mvccpb::{Event, event::EventType};
use conclave_client::{Client, DeleteOptions, GetOptions, PutOptions, WatchMessage, WatchOptions};
use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::connect::client;
use crate::watch_check::{self, Anomaly, Seen, WatcherLog};

const PREFIX: &str = "jepsen/watch/";

/// Settings of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub writers: usize,
    pub watchers: usize,
    pub keys: u32,
    pub duration: Duration,
}

/// What the run found.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub writes: usize,
    pub reference_events: usize,
    pub delivered: Vec<usize>,
    pub reference_ok: Result<(), String>,
    pub anomalies: Vec<Anomaly>,
}

fn seen(e: &Event, batch: usize) -> Seen {
    let kv = e.kv.clone().unwrap_or_default();
    Seen {
        revision: kv.mod_revision,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        delete: e.r#type == EventType::Delete as i32,
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        version: kv.version,
        prev_value: e
            .prev_kv
            .as_ref()
            .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
        batch,
    }
}

/// Records a watch from `start` until it has seen `until` (read from the shared cell once set)
/// or `give_up` passes. How far it got is known from event revisions and, when `bookmarks` is
/// set, from progress responses. Never from a response's header revision: etcd sets that to its
/// current revision while it is still sending older events.
async fn record(
    client: Client,
    name: String,
    start: i64,
    until: Arc<Mutex<Option<i64>>>,
    give_up: Arc<Mutex<Option<Instant>>>,
    bookmarks: bool,
) -> anyhow::Result<WatcherLog> {
    let mut log = WatcherLog {
        name,
        start,
        events: Vec::new(),
    };
    let options = WatchOptions::new()
        .with_prefix()
        .with_prev_kv()
        .with_start_revision(start);
    let mut stream = client.watch().watch(PREFIX, options).await?;
    let mut batch = 0;
    let mut reached = start - 1;
    loop {
        if let Some(u) = *until.lock().await
            && reached >= u
        {
            return Ok(log);
        }
        if let Some(g) = *give_up.lock().await
            && Instant::now() >= g
        {
            return Ok(log);
        }
        let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
        match next {
            Err(_) => continue,
            Ok(None) => return Ok(log),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(WatchMessage::Progress { revision }))) => {
                if bookmarks {
                    reached = reached.max(revision);
                }
            }
            Ok(Some(Ok(WatchMessage::Events { events, .. }))) => {
                batch += 1;
                log.events.extend(events.iter().map(|e| seen(e, batch)));
                if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
                    reached = reached.max(last.mod_revision);
                }
            }
        }
        if bookmarks {
            // Ask for a bookmark, so an idle watcher learns it is up to date.
            stream.request_progress();
        }
    }
}

/// Runs the workload; the nemesis runs beside it and stops when the writers do.
pub async fn run(endpoints: Vec<String>, s: Settings) -> anyhow::Result<Outcome> {
    let setup = client(&endpoints, 0).await?;
    let start = setup
        .kv()
        .get(PREFIX, GetOptions::new())
        .await?
        .header
        .map_or(1, |h| h.revision)
        + 1;
    let until = Arc::new(Mutex::new(None));
    let give_up = Arc::new(Mutex::new(None));
    let mut watchers = Vec::new();
    for w in 0..s.watchers {
        let c = client(&endpoints, w).await?;
        watchers.push(tokio::spawn(record(
            c,
            format!("watcher-{w}"),
            start,
            until.clone(),
            give_up.clone(),
            true,
        )));
    }
    let deadline = Instant::now() + s.duration;
    let mut writers = Vec::new();
    for w in 0..s.writers {
        let c = client(&endpoints, w).await?;
        let keys = s.keys;
        writers.push(tokio::spawn(async move {
            let mut acked = 0;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let key = format!("{PREFIX}{}", rand::rng().random_range(0..keys));
                let done = if rand::rng().random_range(0..5) == 0 {
                    c.kv().delete(key, DeleteOptions::new()).await.map(|_| ())
                } else {
                    c.kv()
                        .put(key, format!("{w}-{n}"), PutOptions::new())
                        .await
                        .map(|_| ())
                };
                if done.is_ok() {
                    acked += 1;
                }
            }
            acked
        }));
    }
    let mut writes = 0;
    for t in writers {
        writes += t.await?;
    }
    finish(endpoints, start, writes, until, give_up, watchers).await
}

async fn finish(
    endpoints: Vec<String>,
    start: i64,
    writes: usize,
    until: Arc<Mutex<Option<i64>>>,
    give_up: Arc<Mutex<Option<Instant>>>,
    watchers: Vec<tokio::task::JoinHandle<anyhow::Result<WatcherLog>>>,
) -> anyhow::Result<Outcome> {
    // The final state, read linearizably once the writers are done (retried while faults heal:
    // the nemesis stops with the writers).
    let c = client(&endpoints, 0).await?;
    let mut final_read = None;
    for _ in 0..30 {
        match c.kv().get(PREFIX, GetOptions::new().with_prefix()).await {
            Ok(r) => {
                final_read = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    let final_read = final_read.ok_or_else(|| anyhow::anyhow!("the final read never succeeded"))?;
    let last = final_read.header.map_or(0, |h| h.revision);
    *until.lock().await = Some(last);
    *give_up.lock().await = Some(Instant::now() + Duration::from_secs(30));
    let final_state: BTreeMap<String, String> = final_read
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    let reference = record(
        c,
        "reference".into(),
        start,
        Arc::new(Mutex::new(Some(last))),
        Arc::new(Mutex::new(Some(Instant::now() + Duration::from_secs(60)))),
        false,
    )
    .await?;
    let reference: Vec<Seen> = reference
        .events
        .into_iter()
        .filter(|e| e.revision <= last)
        .collect();
    let mut logs = Vec::new();
    for w in watchers {
        logs.push(w.await??);
    }
    let reference_ok = watch_check::reference_matches_state(&reference, &final_state);
    let anomalies = watch_check::check(&reference, &logs);
    Ok(Outcome {
        writes,
        reference_events: reference.len(),
        delivered: logs.iter().map(|l| l.events.len()).collect(),
        reference_ok,
        anomalies,
    })
}
