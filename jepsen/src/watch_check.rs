//! The watch checker: every watcher's delivered events against the reference history, itself
//! cross-checked against the final state and the writers' acknowledged writes. Checks the
//! guarantees of docs/guarantees.md: ordered, unique, reliable (no gap from the watch's start to
//! the last revision it reached, except where the server said the history was compacted), atomic
//! (a revision never split across messages), and faithful (type, value, version — create vs
//! update — and prev_kv equal the reference).
//!
//! Without compaction the reference is a fault-free watch of the whole run made afterwards. Under a
//! compaction storm no such watch exists; the reference is then the merge of all watchers, which
//! must agree on every event, must contain every acknowledged write some watcher covered, may hold
//! no write nobody attempted, and must explain the final read where it covers it.

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
    /// Revisions (first, last) the watcher skipped because the server said they were compacted
    /// when it resumed.
    pub gaps: Vec<(i64, i64)>,
    /// Whether it reached the revision of the final read.
    pub complete: bool,
    /// When complete, the revision it was complete through (events or a progress response said
    /// every event up to it was delivered): it is bound to have delivered everything up to it.
    pub through: i64,
    /// Why it stopped early, when it did.
    pub ended: String,
}

impl WatcherLog {
    /// Whether the watcher was bound to deliver revision `rev`: from its start to its last
    /// delivered event (to the end of the run if it said it got there: **bookmarkable**),
    /// outside its compaction gaps.
    pub fn covers(&self, rev: i64) -> bool {
        let last_event = self.events.last().map_or(self.start - 1, |e| e.revision);
        let upto = if self.complete {
            last_event.max(self.through)
        } else {
            last_event
        };
        rev >= self.start && rev <= upto && !self.gaps.iter().any(|&(a, b)| rev >= a && rev <= b)
    }
}

/// A write the writers made: its key and value (None: a delete).
pub type Write = (String, Option<String>);

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
        if !w.complete {
            flag(
                "reliable",
                format!("the watch never reached the end of the run: {}", w.ended),
            );
        }
        for (rev, batches) in &batches_of_revision {
            if batches.len() > 1 {
                flag(
                    "atomic",
                    format!("revision {rev} split across {} messages", batches.len()),
                );
            }
        }
        // Reliable: everything from the start up to the last revision delivered (or the revision
        // a bookmark said it was complete through), except what the server said was compacted.
        for e in reference.iter().filter(|e| w.covers(e.revision)) {
            if !seen.contains(&(e.revision, e.key.as_str())) {
                flag(
                    "reliable",
                    format!(
                        "revision {} key {} ({}) missing (gap)",
                        e.revision,
                        e.key,
                        if e.delete { "delete" } else { "put" }
                    ),
                );
            }
        }
    }
    anomalies
}

/// Merges every watcher's events into one history (by revision, then key); an event two watchers
/// deliver differently is an "agreement" anomaly.
pub fn merge(watchers: &[WatcherLog]) -> (Vec<Seen>, Vec<Anomaly>) {
    let mut merged: BTreeMap<(i64, &str), (&Seen, &str)> = BTreeMap::new();
    let mut anomalies = Vec::new();
    for w in watchers {
        for e in &w.events {
            let (first, by) = *merged
                .entry((e.revision, e.key.as_str()))
                .or_insert((e, &w.name));
            if !same_event(first, e) {
                anomalies.push(Anomaly {
                    watcher: w.name.clone(),
                    guarantee: "agreement",
                    detail: format!(
                        "revision {} key {}: got {e:?}, {by} got {first:?}",
                        e.revision, e.key
                    ),
                });
            }
        }
    }
    let events = merged
        .into_values()
        .map(|(e, _)| Seen {
            batch: 0,
            ..e.clone()
        })
        .collect();
    (events, anomalies)
}

fn same_event(a: &Seen, b: &Seen) -> bool {
    Seen {
        batch: 0,
        ..a.clone()
    } == Seen {
        batch: 0,
        ..b.clone()
    }
}

/// Checks a merged history against the writers: each acknowledged write (`acked`: revision →
/// write) is in it when some watcher covered its revision, with its key, type and value; and each
/// event is a write somebody attempted (`attempted`; values are unique per write).
pub fn check_writes(
    merged: &[Seen],
    acked: &BTreeMap<i64, Write>,
    attempted: &HashSet<Write>,
    watchers: &[WatcherLog],
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut flag = |detail: String| {
        anomalies.push(Anomaly {
            watcher: "merged".into(),
            guarantee: "writes",
            detail,
        })
    };
    let at: BTreeMap<i64, &Seen> = merged.iter().map(|e| (e.revision, e)).collect();
    for (rev, (key, value)) in acked {
        match at.get(rev) {
            Some(e) if e.key == *key && (!e.delete).then(|| e.value.clone()) == *value => {}
            Some(e) => flag(format!(
                "revision {rev}: acknowledged {key} = {value:?}, watchers saw {e:?}"
            )),
            None if watchers.iter().any(|w| w.covers(*rev)) => flag(format!(
                "revision {rev}: acknowledged {key} = {value:?}, no watcher delivered it"
            )),
            None => {}
        }
    }
    for e in merged {
        let write = (e.key.clone(), (!e.delete).then(|| e.value.clone()));
        if !attempted.contains(&write) {
            flag(format!(
                "revision {}: {write:?} was never written",
                e.revision
            ));
        }
    }
    anomalies
}

/// Checks a merged history against the final read (`final_state`: key → (value, mod revision),
/// made at revision `last`) where watchers covered it: a key's last event is its final value,
/// nothing happened to a key after its final mod revision, and a key that is gone was deleted.
pub fn merged_matches_state(
    merged: &[Seen],
    final_state: &BTreeMap<String, (String, i64)>,
    last: i64,
    watchers: &[WatcherLog],
) -> Result<(), String> {
    let covered = |rev: i64| watchers.iter().any(|w| w.covers(rev));
    let mut latest: BTreeMap<&str, &Seen> = BTreeMap::new();
    for e in merged.iter().filter(|e| e.revision <= last) {
        latest.insert(&e.key, e);
    }
    for (key, e) in &latest {
        match final_state.get(*key) {
            Some((_, m)) if e.revision > *m => {
                return Err(format!(
                    "{key}: event at revision {} after its final mod revision {m}",
                    e.revision
                ));
            }
            Some((value_now, m)) if e.revision == *m && (e.delete || e.value != *value_now) => {
                return Err(format!(
                    "{key}: final value {value_now:?}, last event {e:?}"
                ));
            }
            Some((_, m)) if e.revision == *m => {}
            Some((_, m)) if covered(*m) => {
                return Err(format!("{key}: no event at its final mod revision {m}"));
            }
            None if !e.delete && (e.revision + 1..=last).all(covered) => {
                return Err(format!(
                    "{key}: gone at the end, but its last event {e:?} is a put"
                ));
            }
            _ => {}
        }
    }
    for (key, (_, m)) in final_state {
        if !latest.contains_key(key.as_str()) && covered(*m) {
            return Err(format!("{key}: no event at its final mod revision {m}"));
        }
    }
    Ok(())
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
            gaps: Vec::new(),
            complete: true,
            through: 0,
            ended: String::new(),
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

    #[test]
    fn a_compacted_gap_is_excused_only_where_the_server_said_so() {
        let mut events = reference();
        events.remove(1);
        let mut watcher = log(events);
        watcher.gaps.push((3, 3));
        assert!(check(&reference(), std::slice::from_ref(&watcher)).is_empty());
        watcher.gaps = vec![(4, 4)];
        let found = check(&reference(), &[watcher]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].guarantee, "reliable");
    }

    fn writes() -> (BTreeMap<i64, Write>, HashSet<Write>) {
        let mut acked = BTreeMap::new();
        let mut attempted = HashSet::new();
        for e in reference() {
            let w = (e.key.clone(), Some(e.value.clone()));
            attempted.insert(w.clone());
            // Revision 4 holds two keys, as from one transaction; the writers here put one key
            // per request, so only the other revisions stand for acknowledged puts.
            if e.revision != 4 {
                acked.insert(e.revision, w);
            }
        }
        (acked, attempted)
    }

    #[test]
    fn watchers_that_disagree_are_flagged() {
        let a = log(reference());
        let mut b = log(reference());
        b.name = "v".into();
        let (merged, anomalies) = merge(&[a.clone(), b.clone()]);
        assert!(anomalies.is_empty());
        assert_eq!(merged, reference());
        b.events[2].value = "9".into();
        let (_, anomalies) = merge(&[a, b]);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].guarantee, "agreement");
    }

    #[test]
    fn the_merged_history_must_hold_the_acknowledged_writes() {
        let (acked, attempted) = writes();
        let watchers = [log(reference())];
        assert!(check_writes(&reference(), &acked, &attempted, &watchers).is_empty());
        // An acknowledged write that a watcher covered but nobody delivered.
        let mut merged = reference();
        merged.remove(1);
        let mut short = log(merged.clone());
        assert_eq!(
            check_writes(&merged, &acked, &attempted, &[short.clone()]).len(),
            1
        );
        // Excused when the only watcher skipped it as compacted.
        short.gaps.push((3, 3));
        assert!(check_writes(&merged, &acked, &attempted, &[short]).is_empty());
        // A value nobody wrote.
        let mut merged = reference();
        merged[0].value = "never".into();
        let found = check_writes(&merged, &acked, &attempted, &watchers);
        assert!(
            found.iter().any(|a| a.detail.contains("never written")),
            "{found:?}"
        );
    }

    #[test]
    fn the_merged_history_must_explain_the_final_read_where_covered() {
        let watchers = [log(reference())];
        let mut state = BTreeMap::new();
        state.insert("a".to_string(), ("3".to_string(), 5));
        state.insert("b".to_string(), ("1".to_string(), 4));
        state.insert("c".to_string(), ("1".to_string(), 4));
        assert!(merged_matches_state(&reference(), &state, 5, &watchers).is_ok());
        // A final value no event explains.
        state.insert("a".to_string(), ("2".to_string(), 5));
        assert!(merged_matches_state(&reference(), &state, 5, &watchers).is_err());
        // A key gone at the end whose last event is a put, with every later revision covered.
        state.insert("a".to_string(), ("3".to_string(), 5));
        state.remove("c");
        assert!(merged_matches_state(&reference(), &state, 5, &watchers).is_err());
        // A key whose final mod revision no watcher covered is not judged.
        let mut state = BTreeMap::new();
        state.insert("a".to_string(), ("3".to_string(), 5));
        state.insert("b".to_string(), ("1".to_string(), 4));
        state.insert("c".to_string(), ("1".to_string(), 4));
        state.insert("d".to_string(), ("x".to_string(), 7));
        assert!(merged_matches_state(&reference(), &state, 7, &watchers).is_ok());
    }

    #[test]
    fn a_bookmark_past_undelivered_events_is_flagged() {
        // The watcher stopped after revision 3, but a progress response had told it it was
        // complete through 5: revisions 4 and 5 were owed.
        let mut events = reference();
        events.truncate(2);
        let mut watcher = log(events);
        watcher.through = 5;
        let found = check(&reference(), &[watcher]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().all(|a| a.guarantee == "reliable"));
    }
}
