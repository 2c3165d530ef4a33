//! The history of a run: every operation's invocation and completion, and every nemesis event, in
//! the order the recorder saw them (a total order consistent with real time: an invocation is
//! recorded before its request is sent, a completion after its answer arrived). Written as JSON
//! lines, one event per line.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What kind of event a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A client started an operation.
    Invoke,
    /// The operation completed and took effect (for reads: returned this value).
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// Unknown outcome: it may take effect at any time after its invocation, or never.
    Info,
}

/// A register operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Op {
    /// Read; on completion `value` is what was read (None: the key does not exist).
    Read { value: Option<i64> },
    /// Write `value`.
    Write { value: i64 },
    /// If the value is `expected`, set it to `new`; on completion `succeeded` tells which.
    Cas {
        expected: i64,
        new: i64,
        succeeded: Option<bool>,
    },
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history.
    pub index: usize,
    /// The client (worker) that did it; `None` for the nemesis.
    pub process: Option<usize>,
    pub kind: Kind,
    /// The register key.
    pub key: Option<u32>,
    pub op: Option<Op>,
    /// Nemesis events: what was done ("kill n2", "heal").
    pub nemesis: Option<String>,
    /// Nanoseconds since the start of the run.
    pub time_ns: u64,
}

/// Records events from many tasks.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }
}

impl Recorder {
    fn push(&self, mut e: Event) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.index = events.len();
        e.time_ns = self.start.elapsed().as_nanos() as u64;
        events.push(e);
    }

    /// Records an operation event of `process` on `key`.
    pub fn op(&self, process: usize, kind: Kind, key: u32, op: Op) {
        self.push(Event {
            index: 0,
            process: Some(process),
            kind,
            key: Some(key),
            op: Some(op),
            nemesis: None,
            time_ns: 0,
        });
    }

    /// Records a nemesis action or heal.
    pub fn nemesis(&self, kind: Kind, what: impl Into<String>) {
        self.push(Event {
            index: 0,
            process: None,
            kind,
            key: None,
            op: None,
            nemesis: Some(what.into()),
            time_ns: 0,
        });
    }

    /// When the run started: every `time_ns` counts from here.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Writes `events` (history events, transactions, fenced writes, …) as JSON lines.
pub fn write_jsonl<T: Serialize>(path: &Path, events: &[T]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for e in events {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

/// Reads a JSON-lines history.
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}
