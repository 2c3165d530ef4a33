//! The watch workload: writers put and delete keys under one prefix while watchers — each
//! preferring a different member, resuming through the client after faults — record every event
//! they get. Without compaction, a fault-free watch of the whole run made afterwards is the
//! reference: it must replay into the final linearizable read of the prefix, and every watcher is
//! checked against it. Under a compaction storm a watcher that resumes into compacted history is
//! told so, records the skipped revisions as a gap and starts again from the compaction; the
//! reference is then the merge of all watchers. In both cases the merged events are checked
//! against the writers' acknowledged writes (see [`crate::watch_check`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use conclave_client::mvccpb::{Event, event::EventType};
use conclave_client::{
    Client, DeleteOptions, Error, GetOptions, PutOptions, Watch, WatchMessage, WatchOptions,
    WatchStream,
};
use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::connect::client;
use crate::watch_check::{self, Anomaly, Seen, WatcherLog, Write};

const PREFIX: &str = "jepsen/watch/";
/// How long a watcher stays away when it leaves and resumes on purpose.
const REOPEN_PAUSE: Duration = Duration::from_millis(300);
/// How long a watcher keeps trying to resume while members are down.
const RESUME_PATIENCE: Duration = Duration::from_secs(60);

/// Settings of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub writers: usize,
    pub watchers: usize,
    pub keys: u32,
    pub duration: Duration,
    /// A compaction storm runs: watchers resume past compacted history, and the reference is the
    /// merge of the watchers.
    pub compaction: bool,
}

/// What the run found.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub writes: usize,
    pub reference_events: usize,
    pub delivered: Vec<usize>,
    /// Compacted gaps the watchers resumed past.
    pub gaps: usize,
    /// The revision of the final read.
    pub final_revision: i64,
    /// What every watcher delivered, for the history file (not in results.json).
    #[serde(skip)]
    pub logs: Vec<WatcherLog>,
    /// The acknowledged writes that made a revision, for the history file.
    #[serde(skip)]
    pub acked: BTreeMap<i64, Write>,
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

/// How a recorded watch behaves.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    /// Ask for a progress response after every message, and count it as how far the watch got.
    bookmarks: bool,
    /// When the server says the resume revision is compacted, record the gap and go on from the
    /// revision it names (otherwise that ends the watch with an error).
    resume_compacted: bool,
    /// Leave and resume after the last event this often, as a restarted client would.
    reopen_every: Option<Duration>,
}

/// Records a watch from `start` until it has seen `until` (read from the shared cell once set)
/// or `give_up` passes. How far it got is known from event revisions and, with bookmarks, from
/// progress responses. Never from a response's header revision: etcd sets that to its current
/// revision while it is still sending older events.
async fn record(
    client: Client,
    name: String,
    start: i64,
    until: Arc<Mutex<Option<i64>>>,
    give_up: Arc<Mutex<Option<Instant>>>,
    behaviour: Behaviour,
) -> anyhow::Result<WatcherLog> {
    let Behaviour {
        bookmarks,
        resume_compacted,
        reopen_every,
    } = behaviour;
    let mut log = WatcherLog {
        name,
        start,
        events: Vec::new(),
        gaps: Vec::new(),
        complete: false,
        through: 0,
        ended: String::new(),
    };
    let watch = client.watch();
    let (mut stream, mut delivered) = resume(&watch, &mut log, start, resume_compacted).await?;
    let mut batch = 0;
    let mut reached = delivered;
    let mut next_reopen = reopen_every.map(|every| Instant::now() + every);
    loop {
        if let Some(u) = *until.lock().await
            && reached >= u
        {
            log.complete = true;
            log.through = reached;
            return Ok(log);
        }
        if let Some(g) = *give_up.lock().await
            && Instant::now() >= g
        {
            log.ended = format!("gave up at revision {reached}");
            return Ok(log);
        }
        if let (Some(at), Some(every)) = (next_reopen, reopen_every)
            && Instant::now() >= at
        {
            // Leave and come back, as a restarted client would: resume after the last event.
            drop(stream);
            tokio::time::sleep(REOPEN_PAUSE).await;
            (stream, delivered) = resume(&watch, &mut log, delivered + 1, resume_compacted).await?;
            reached = reached.max(delivered);
            next_reopen = Some(Instant::now() + every);
            continue;
        }
        let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
        match next {
            Err(_) => continue,
            Ok(None) => {
                log.ended = format!("the stream ended at revision {reached}");
                return Ok(log);
            }
            Ok(Some(Err(Error::WatchCompacted { compact_revision }))) if resume_compacted => {
                // Events from `delivered + 1` to before the compaction are gone, and the server
                // said so: a gap. Go on from the oldest revision still there.
                let from = compact_revision.max(delivered + 1);
                if from > delivered + 1 {
                    log.gaps.push((delivered + 1, from - 1));
                }
                (stream, delivered) = resume(&watch, &mut log, from, resume_compacted).await?;
                reached = reached.max(delivered);
                continue;
            }
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
                    delivered = last.mod_revision;
                }
            }
        }
        if bookmarks {
            // Ask for a bookmark, so an idle watcher learns it is up to date.
            stream.request_progress();
        }
    }
}

/// Opens the watch at `from`. When the server says that revision is compacted (and
/// `resume_compacted`), records the skipped revisions as a gap and opens at the compaction.
/// Returns the stream and the revision before its first event.
async fn resume(
    watch: &Watch,
    log: &mut WatcherLog,
    from: i64,
    resume_compacted: bool,
) -> anyhow::Result<(WatchStream, i64)> {
    let open = |from: i64| {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_kv()
            .with_start_revision(from);
        watch.watch(PREFIX, options)
    };
    let give_up = Instant::now() + RESUME_PATIENCE;
    let mut from = from;
    loop {
        tracing::debug!(watcher = %log.name, from, "opening the watch");
        match open(from).await {
            Ok(stream) => return Ok((stream, from - 1)),
            Err(Error::WatchCompacted { compact_revision })
                if resume_compacted && compact_revision > from =>
            {
                log.gaps.push((from, compact_revision - 1));
                from = compact_revision;
            }
            // Members down or without a leader: try again while the faults heal.
            Err(e) if !matches!(e, Error::WatchCompacted { .. }) && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
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
            Behaviour {
                bookmarks: true,
                resume_compacted: s.compaction,
                reopen_every: Some(Duration::from_millis(rand::rng().random_range(1000..3000))),
            },
        )));
    }
    let deadline = Instant::now() + s.duration;
    let mut writers = Vec::new();
    for w in 0..s.writers {
        let c = client(&endpoints, w).await?;
        let keys = s.keys;
        writers.push(tokio::spawn(async move {
            let mut written = Written::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let key = format!("{PREFIX}{}", rand::rng().random_range(0..keys));
                let (write, done) = if rand::rng().random_range(0..5) == 0 {
                    let done = c.kv().delete(key.clone(), DeleteOptions::new()).await;
                    // Deleting an absent key makes no revision and no event.
                    let revision = done.map(|r| (r.deleted > 0).then(|| revision_of(&r.header)));
                    ((key, None), revision)
                } else {
                    let value = format!("{w}-{n}");
                    let done = c
                        .kv()
                        .put(key.clone(), value.clone(), PutOptions::new())
                        .await;
                    (
                        (key, Some(value)),
                        done.map(|r| Some(revision_of(&r.header))),
                    )
                };
                written.attempted.insert(write.clone());
                if let Ok(revision) = done {
                    written.acknowledged += 1;
                    if let Some(revision) = revision {
                        written.acked.insert(revision, write);
                    }
                }
            }
            written
        }));
    }
    let mut written = Written::default();
    for t in writers {
        let w = t.await?;
        written.acknowledged += w.acknowledged;
        written.acked.extend(w.acked);
        written.attempted.extend(w.attempted);
    }
    finish(
        endpoints,
        start,
        s.compaction,
        written,
        until,
        give_up,
        watchers,
    )
    .await
}

/// What the writers did.
#[derive(Default)]
struct Written {
    /// Writes acknowledged (deletes of absent keys included).
    acknowledged: usize,
    /// Acknowledged writes that made a revision, by revision.
    acked: BTreeMap<i64, Write>,
    /// Every write tried, acknowledged or not (values are unique).
    attempted: HashSet<Write>,
}

fn revision_of(header: &Option<conclave_client::proto::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

async fn finish(
    endpoints: Vec<String>,
    start: i64,
    compaction: bool,
    written: Written,
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
    let final_state: BTreeMap<String, (String, i64)> = final_read
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision,
                ),
            )
        })
        .collect();
    let mut logs = Vec::new();
    for w in watchers {
        logs.push(w.await??);
    }
    let (merged, mut anomalies) = watch_check::merge(&logs);
    let merged: Vec<Seen> = merged.into_iter().filter(|e| e.revision <= last).collect();
    anomalies.extend(watch_check::check_writes(
        &merged,
        &written.acked,
        &written.attempted,
        &logs,
    ));
    let (reference, reference_ok) = if compaction {
        let ok = watch_check::merged_matches_state(&merged, &final_state, last, &logs);
        (merged, ok)
    } else {
        let reference = record(
            c,
            "reference".into(),
            start,
            Arc::new(Mutex::new(Some(last))),
            Arc::new(Mutex::new(Some(Instant::now() + Duration::from_secs(60)))),
            Behaviour {
                bookmarks: false,
                resume_compacted: false,
                reopen_every: None,
            },
        )
        .await?;
        let complete = reference.complete;
        let ended = reference.ended.clone();
        let reference: Vec<Seen> = reference
            .events
            .into_iter()
            .filter(|e| e.revision <= last)
            .collect();
        let values = final_state
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let ok = if complete {
            watch_check::reference_matches_state(&reference, &values)
        } else {
            Err(format!("the reference watch stopped early: {ended}"))
        };
        (reference, ok)
    };
    anomalies.extend(watch_check::check(&reference, &logs));
    Ok(Outcome {
        writes: written.acknowledged,
        reference_events: reference.len(),
        delivered: logs.iter().map(|l| l.events.len()).collect(),
        gaps: logs.iter().map(|l| l.gaps.len()).sum(),
        final_revision: last,
        acked: written.acked,
        reference_ok,
        anomalies,
        logs,
    })
}
