//! The lock checker. Holders of a lease-backed lock increment a shared counter with fenced writes
//! (a Txn that writes only while the holder's lock key still exists with its create revision), and
//! without comparing the counter itself: only mutual exclusion protects it. The checker looks at
//! the fenced writes that succeeded, in the order of their revisions:
//! - **no lost update**: each one wrote a value greater than every value written before it (two
//!   holders that read the same value, or one that read a stale value, show up here);
//! - **one holder at a time**: the writes of one tenure (one acquisition) are contiguous — no write
//!   of another holder falls between two writes of the same tenure;
//! - **the final read is explained**: the counter read at the end is the value of the last
//!   successful write, or of a write with an unknown outcome that wrote more.

use serde::Serialize;

use crate::history::Kind;

/// One fenced write attempt.
#[derive(Debug, Clone, Serialize)]
pub struct FencedWrite {
    pub worker: usize,
    /// The acquisition it was made under (unique over the run).
    pub tenure: u64,
    /// The lock key's create revision (the fencing token).
    pub token: i64,
    /// The counter value it read, and the value it wrote (read + 1).
    pub read: i64,
    pub wrote: i64,
    /// Whether the holder had stalled (stopped renewing its lease) before writing.
    pub stalled: bool,
    /// Ok: written; Fail: the fence refused it; Info: unknown.
    pub outcome: Kind,
    /// The revision of the write, when it succeeded.
    pub revision: Option<i64>,
    pub invoke_ns: u64,
    pub complete_ns: u64,
}

/// What the checker found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub valid: bool,
    pub writes_ok: usize,
    pub writes_refused: usize,
    pub writes_unknown: usize,
    /// Refused writes of holders that had stalled past their lease.
    pub stalled_refused: usize,
    pub final_value: i64,
    /// The first [`MAX_REPORTED`] anomalies.
    pub anomalies: Vec<String>,
    pub anomaly_count: usize,
}

/// Anomalies described in the report at most.
pub const MAX_REPORTED: usize = 20;

/// Checks the fenced writes against the counter's final value.
pub fn check(writes: &[FencedWrite], final_value: i64) -> Report {
    let mut ok: Vec<&FencedWrite> = writes
        .iter()
        .filter(|w| w.outcome == Kind::Ok && w.revision.is_some())
        .collect();
    ok.sort_by_key(|w| w.revision);
    let mut anomalies = Vec::new();
    let mut highest: Option<&FencedWrite> = None;
    for w in &ok {
        if let Some(h) = highest
            && w.wrote <= h.wrote
        {
            anomalies.push(format!(
                "lost update: worker {} (token {}) wrote {} at revision {:?} after worker {} \
                 (token {}) wrote {} at revision {:?}",
                w.worker, w.token, w.wrote, w.revision, h.worker, h.token, h.wrote, h.revision
            ));
        }
        if highest.is_none_or(|h| w.wrote > h.wrote) {
            highest = Some(w);
        }
    }
    // Tenures whose run of writes ended; seeing one again means another holder wrote in between.
    let mut closed = std::collections::HashSet::new();
    for pair in ok.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.tenure != b.tenure {
            closed.insert(a.tenure);
            if closed.contains(&b.tenure) {
                anomalies.push(format!(
                    "lock held twice: worker {} (token {}) wrote at revision {:?} after worker {} \
                     (token {}) had written inside its tenure",
                    b.worker, b.token, b.revision, a.worker, a.token
                ));
            }
        }
    }
    let last_ok = highest.map_or(0, |h| h.wrote);
    let explained = final_value == last_ok
        || writes
            .iter()
            .any(|w| w.outcome == Kind::Info && w.wrote == final_value && w.wrote > last_ok);
    if !explained {
        anomalies.push(format!(
            "final counter {final_value} is neither the last acknowledged value {last_ok} nor \
             one written with an unknown outcome"
        ));
    }
    let count = |k: Kind| writes.iter().filter(|w| w.outcome == k).count();
    let anomaly_count = anomalies.len();
    anomalies.truncate(MAX_REPORTED);
    Report {
        valid: anomaly_count == 0,
        anomaly_count,
        writes_ok: ok.len(),
        writes_refused: count(Kind::Fail),
        writes_unknown: count(Kind::Info),
        stalled_refused: writes
            .iter()
            .filter(|w| w.stalled && w.outcome == Kind::Fail)
            .count(),
        final_value,
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tenure: u64, read: i64, outcome: Kind, revision: Option<i64>) -> FencedWrite {
        FencedWrite {
            worker: tenure as usize % 3,
            tenure,
            token: tenure as i64 * 10,
            read,
            wrote: read + 1,
            stalled: false,
            outcome,
            revision,
            invoke_ns: 0,
            complete_ns: 0,
        }
    }

    fn correct() -> Vec<FencedWrite> {
        vec![
            write(1, 0, Kind::Ok, Some(11)),
            write(1, 1, Kind::Ok, Some(12)),
            // A stalled holder's write refused by the fence.
            FencedWrite {
                stalled: true,
                ..write(2, 2, Kind::Fail, None)
            },
            write(3, 2, Kind::Ok, Some(20)),
            write(3, 3, Kind::Info, None),
            write(4, 4, Kind::Ok, Some(25)),
        ]
    }

    #[test]
    fn a_correct_history_passes() {
        let report = check(&correct(), 5);
        assert!(report.valid, "{:?}", report.anomalies);
        assert_eq!(
            (
                report.writes_ok,
                report.writes_refused,
                report.writes_unknown
            ),
            (4, 1, 1)
        );
        assert_eq!(report.stalled_refused, 1);
        // An unknown write that took effect last explains a higher final value.
        let mut writes = correct();
        writes.push(write(5, 5, Kind::Info, None));
        assert!(check(&writes, 6).valid);
    }

    #[test]
    fn a_lost_update_is_flagged() {
        let mut writes = correct();
        // A stalled holder's write got through: it read 2, like tenure 3, and wrote 3 again.
        writes[2] = FencedWrite {
            stalled: true,
            ..write(2, 2, Kind::Ok, Some(21))
        };
        let report = check(&writes, 5);
        assert!(!report.valid);
        assert!(
            report.anomalies[0].contains("lost update"),
            "{:?}",
            report.anomalies
        );
    }

    #[test]
    fn a_lock_held_twice_is_flagged() {
        let writes = vec![
            write(1, 0, Kind::Ok, Some(11)),
            write(2, 1, Kind::Ok, Some(12)),
            write(1, 2, Kind::Ok, Some(13)),
        ];
        let report = check(&writes, 3);
        assert!(!report.valid);
        assert!(
            report
                .anomalies
                .iter()
                .any(|a| a.contains("lock held twice")),
            "{:?}",
            report.anomalies
        );
    }

    #[test]
    fn an_unexplained_final_value_is_flagged() {
        let report = check(&correct(), 3);
        assert!(!report.valid);
        assert!(
            report.anomalies[0].contains("final counter 3"),
            "{:?}",
            report.anomalies
        );
        // Lower than an acknowledged write: the acknowledged increment was lost.
        assert!(!check(&correct(), 4).valid);
    }
}
