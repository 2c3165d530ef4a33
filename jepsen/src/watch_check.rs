//! The watch checker: every watcher's delivered events against the reference history (a
//! fault-free watch of the whole run, itself cross-checked against the final state). Checks the
//! guarantees of docs/guarantees.md: ordered, unique, reliable (no gap from the watch's start to
//! the last revision it reached), atomic (a revision never split across messages), and faithful
//! (type, value, version — create vs update — and prev_kv equal the reference).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

/// One event as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub revision: i64,
    pub key: String,
    pub delete: bool,
    pub value: String,
    pub version: i64,
    pub prev_value: Option<String>,
    /// Which delivered message (batch) it came in.
    pub batch: usize,
}

/// What one watcher recorded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatcherLog {
    pub name: String,
    /// The revision the watch started at.
    pub start: i64,
    pub events: Vec<Seen>,
}

/// A violated guarantee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    pub watcher: String,
    pub guarantee: &'static str,
    pub detail: String,
}

/// The reference history must explain the final state: replaying it gives `final_state`.
pub fn reference_matches_state(
    reference: &[Seen],
    final_state: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    for e in reference {
        if e.delete {
            state.remove(&e.key);
        } else {
            state.insert(e.key.clone(), e.value.clone());
        }
    }
    if &state == final_state {
        Ok(())
    } else {
        Err(format!(
            "replaying the reference gives {} keys, the final read has {}; first difference: {:?}",
            state.len(),
            final_state.len(),
            state
                .iter()
                .find(|(k, v)| final_state.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .or_else(|| final_state.keys().find(|k| !state.contains_key(*k)))
        ))
    }
}

/// Checks every watcher against the reference.
pub fn check(reference: &[Seen], watchers: &[WatcherLog]) -> Vec<Anomaly> {
    let by_key: BTreeMap<(i64, &str), &Seen> = reference
        .iter()
        .map(|e| ((e.revision, e.key.as_str()), e))
        .collect();
    let mut anomalies = Vec::new();
    for w in watchers {
        let mut flag = |guarantee: &'static str, detail: String| {
            anomalies.push(Anomaly {
                watcher: w.name.clone(),
                guarantee,
                detail,
            })
        };
        let mut seen: HashSet<(i64, &str)> = HashSet::new();
        let mut last: Option<(i64, &str)> = None;
        let mut batches_of_revision: BTreeMap<i64, HashSet<usize>> = BTreeMap::new();
        for e in &w.events {
            let id = (e.revision, e.key.as_str());
            if !seen.insert(id) {
                flag(
                    "unique",
                    format!("revision {} key {} delivered twice", e.revision, e.key),
                );
                continue;
            }
            if let Some(prev) = last
                && e.revision < prev.0
            {
                flag(
                    "ordered",
                    format!("revision {} after revision {}", e.revision, prev.0),
                );
            }
            last = Some(id);
            batches_of_revision
                .entry(e.revision)
                .or_default()
                .insert(e.batch);
            match by_key.get(&id) {
                None => flag(
                    "faithful",
                    format!("revision {} key {} never happened", e.revision, e.key),
                ),
                Some(truth) => {
                    let mut expected = (*truth).clone();
                    expected.batch = e.batch;
                    if expected != *e {
                        flag(
                            "faithful",
                            format!(
                                "revision {} key {}: got {e:?}, happened {truth:?}",
                                e.revision, e.key
                            ),
                        );
                    }
                }
            }
        }
        for (rev, batches) in &batches_of_revision {
            if batches.len() > 1 {
                flag(
                    "atomic",
                    format!("revision {rev} split across {} messages", batches.len()),
                );
            }
        }
        // Reliable: everything from the start up to the last revision delivered.
        if let Some((upto, _)) = last {
            for e in reference
                .iter()
                .filter(|e| e.revision >= w.start && e.revision <= upto)
            {
                if !seen.contains(&(e.revision, e.key.as_str())) {
                    flag(
                        "reliable",
                        format!("revision {} key {} missing (gap)", e.revision, e.key),
                    );
                }
            }
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        rev: i64,
        key: &str,
        value: &str,
        version: i64,
        prev: Option<&str>,
        batch: usize,
    ) -> Seen {
        Seen {
            revision: rev,
            key: key.into(),
            delete: false,
            value: value.into(),
            version,
            prev_value: prev.map(String::from),
            batch,
        }
    }

    fn reference() -> Vec<Seen> {
        vec![
            ev(2, "a", "1", 1, None, 0),
            ev(3, "a", "2", 2, Some("1"), 0),
            ev(4, "b", "1", 1, None, 0),
            ev(4, "c", "1", 1, None, 0),
            ev(5, "a", "3", 3, Some("2"), 0),
        ]
    }

    fn log(events: Vec<Seen>) -> WatcherLog {
        WatcherLog {
            name: "w".into(),
            start: 2,
            events,
        }
    }

    fn guarantees(events: Vec<Seen>) -> Vec<&'static str> {
        check(&reference(), &[log(events)])
            .into_iter()
            .map(|a| a.guarantee)
            .collect()
    }

    #[test]
    fn a_correct_stream_passes() {
        let mut events = reference();
        for (i, e) in events.iter_mut().enumerate() {
            e.batch = if e.revision == 4 { 2 } else { i };
        }
        assert!(check(&reference(), &[log(events)]).is_empty());
    }

    #[test]
    fn a_duplicated_event_is_flagged() {
        let mut events = reference();
        events.insert(2, events[1].clone());
        assert_eq!(guarantees(events), vec!["unique"]);
    }

    #[test]
    fn a_missing_event_is_flagged() {
        let mut events = reference();
        events.remove(1);
        assert_eq!(guarantees(events), vec!["reliable"]);
    }

    #[test]
    fn out_of_order_events_are_flagged() {
        let mut events = reference();
        events.swap(0, 1);
        assert!(guarantees(events).contains(&"ordered"));
    }

    #[test]
    fn a_wrong_prev_kv_or_version_is_flagged() {
        let mut events = reference();
        events[1].prev_value = None;
        assert_eq!(guarantees(events), vec!["faithful"]);
        let mut events = reference();
        events[2].version = 2;
        assert_eq!(guarantees(events), vec!["faithful"]);
    }

    #[test]
    fn a_split_revision_is_flagged() {
        let mut events = reference();
        events[3].batch = 9;
        assert_eq!(guarantees(events), vec!["atomic"]);
    }

    #[test]
    fn the_reference_must_explain_the_final_state() {
        let mut state = BTreeMap::new();
        state.insert("a".to_string(), "3".to_string());
        state.insert("b".to_string(), "1".to_string());
        state.insert("c".to_string(), "1".to_string());
        assert!(reference_matches_state(&reference(), &state).is_ok());
        state.insert("d".to_string(), "x".to_string());
        assert!(reference_matches_state(&reference(), &state).is_err());
    }
}
