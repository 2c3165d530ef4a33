//! The checker of the append workload (list-append, in the manner of Jepsen's Elle): every key holds
//! a list, transactions read lists and append unique values. Because values are unique and lists
//! only grow, the reads reveal each key's version order, and from it the dependencies between
//! transactions:
//! - *ww*: the transaction that appended element i of a key precedes the one that appended i+1;
//! - *wr*: the transaction that appended the last element a read saw precedes the reader;
//! - *rw*: a reader precedes the transaction that appended the element right after what it saw;
//! - *realtime*: a transaction that completed precedes every transaction invoked afterwards (strict
//!   serializability), encoded through a chain of time barriers so the graph stays linear in size.
//!
//! The history is strictly serializable only if this graph has no cycle. Before that, reads are
//! checked on their own: no duplicates, no value nobody appended, no value of a failed transaction,
//! and every read of a key a prefix of the longest one. An acknowledged append missing from the
//! final read makes a cycle (the final read precedes it by rw, follows it in real time): a lost write.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// One micro-operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Mop {
    /// Read `key`'s list; on completion `value` is what was read (empty: the key did not exist).
    R { key: u32, value: Option<Vec<i64>> },
    /// Append `value` to `key`'s list.
    Append { key: u32, value: i64 },
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Committed; its reads carry what they saw.
    Ok,
    /// Definitely not committed.
    Fail,
    /// Unknown: it may have committed at any time after its invocation.
    Info,
}

/// One transaction of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub process: usize,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Outcome,
    pub mops: Vec<Mop>,
}

/// What the checker found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub valid: bool,
    pub transactions: usize,
    /// Transactions known to have committed (ok, and unknown ones whose appends were read).
    pub committed: usize,
    /// Anomalies found (each described; at most [`MAX_REPORTED`] kept).
    pub anomalies: Vec<String>,
    pub anomaly_count: usize,
}

/// Anomalies described in the report at most.
pub const MAX_REPORTED: usize = 20;

struct Findings {
    list: Vec<String>,
    count: usize,
}

impl Findings {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.list.len() < MAX_REPORTED {
            self.list.push(what);
        }
    }
}

/// Checks a list-append history for strict serializability.
pub fn check(history: &[TxnRecord]) -> Report {
    let mut found = Findings {
        list: Vec::new(),
        count: 0,
    };
    // Who appended what; appends of failed transactions must never be seen.
    let mut writer: HashMap<(u32, i64), usize> = HashMap::new();
    let mut failed: HashSet<(u32, i64)> = HashSet::new();
    for (t, txn) in history.iter().enumerate() {
        for m in &txn.mops {
            if let Mop::Append { key, value } = m {
                if txn.outcome == Outcome::Fail {
                    failed.insert((*key, *value));
                } else {
                    writer.insert((*key, *value), t);
                }
            }
        }
    }
    // Reads on their own, and each key's version order: its longest read.
    let mut longest: HashMap<u32, Vec<i64>> = HashMap::new();
    for (t, txn) in history.iter().enumerate() {
        if txn.outcome != Outcome::Ok {
            continue;
        }
        for m in &txn.mops {
            let Mop::R {
                key,
                value: Some(list),
            } = m
            else {
                continue;
            };
            let mut seen = HashSet::new();
            for v in list {
                if !seen.insert(*v) {
                    found.add(format!("txn {t}: duplicate {v} in key {key}: {list:?}"));
                } else if failed.contains(&(*key, *v)) {
                    found.add(format!(
                        "txn {t}: read {v} in key {key}, appended by a failed txn"
                    ));
                } else if !writer.contains_key(&(*key, *v)) {
                    found.add(format!("txn {t}: read {v} in key {key}, never appended"));
                }
            }
            let l = longest.entry(*key).or_default();
            if list.len() > l.len() {
                *l = list.clone();
            }
        }
    }
    for (t, txn) in history.iter().enumerate() {
        if txn.outcome != Outcome::Ok {
            continue;
        }
        for m in &txn.mops {
            if let Mop::R {
                key,
                value: Some(list),
            } = m
            {
                let full = &longest[key];
                if !full.starts_with(list) {
                    found.add(format!(
                        "txn {t}: read of key {key} {list:?} is not a prefix of {full:?}: no single order of appends"
                    ));
                }
            }
        }
    }
    // Committed: ok, or unknown with an append someone read.
    let observed: HashSet<(u32, i64)> = longest
        .iter()
        .flat_map(|(k, l)| l.iter().map(move |v| (*k, *v)))
        .collect();
    let committed: Vec<bool> = history
        .iter()
        .map(|txn| match txn.outcome {
            Outcome::Ok => true,
            Outcome::Fail => false,
            Outcome::Info => txn.mops.iter().any(|m| match m {
                Mop::Append { key, value } => observed.contains(&(*key, *value)),
                Mop::R { .. } => false,
            }),
        })
        .collect();
    if found.count == 0 {
        let graph = Graph::build(history, &committed, &writer, &longest);
        for cycle in graph.cycles() {
            let members: Vec<String> = cycle
                .iter()
                .take(8)
                .map(|&t| format!("txn {t} {:?}", history[t].mops))
                .collect();
            found.add(format!(
                "dependency cycle through {} transactions: {}",
                cycle.len(),
                members.join("; ")
            ));
        }
    }
    Report {
        valid: found.count == 0,
        transactions: history.len(),
        committed: committed.iter().filter(|c| **c).count(),
        anomalies: found.list,
        anomaly_count: found.count,
    }
}

/// The dependency graph. Nodes 0..n are transactions; then one "after everything observed" node
/// per key (unobserved appends follow it), then the realtime barriers.
struct Graph {
    transactions: usize,
    edges: Vec<Vec<usize>>,
}

impl Graph {
    fn build(
        history: &[TxnRecord],
        committed: &[bool],
        writer: &HashMap<(u32, i64), usize>,
        longest: &HashMap<u32, Vec<i64>>,
    ) -> Graph {
        let n = history.len();
        let mut keys: Vec<u32> = longest.keys().copied().collect();
        for txn in history {
            for m in &txn.mops {
                if let Mop::Append { key, .. } = m {
                    keys.push(*key);
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let after: HashMap<u32, usize> =
            keys.iter().enumerate().map(|(i, k)| (*k, n + i)).collect();
        let mut g = Graph {
            transactions: n,
            edges: vec![Vec::new(); n + keys.len()],
        };
        let empty = Vec::new();
        // ww: along each key's version order, then to the appends nobody saw.
        for key in &keys {
            let order = longest.get(key).unwrap_or(&empty);
            let writers: Vec<usize> = order.iter().map(|v| writer[&(*key, *v)]).collect();
            for w in writers.windows(2) {
                g.edge(w[0], w[1]);
            }
            if let Some(&last) = writers.last() {
                g.edge(last, after[key]);
            }
        }
        for (t, txn) in history.iter().enumerate() {
            if !committed[t] {
                continue;
            }
            for m in &txn.mops {
                match m {
                    Mop::Append { key, value } => {
                        let seen = longest.get(key).is_some_and(|l| l.contains(value));
                        if !seen {
                            g.edge(after[key], t);
                        }
                    }
                    Mop::R {
                        key,
                        value: Some(list),
                    } => {
                        let order = longest.get(key).unwrap_or(&empty);
                        // wr: from the writer of the last element seen.
                        if let Some(last) = list.last() {
                            g.edge(writer[&(*key, *last)], t);
                        }
                        // rw: to the writer of the next element, or past everything seen.
                        match order.get(list.len()) {
                            Some(next) => g.edge(t, writer[&(*key, *next)]),
                            None => g.edge(t, after[key]),
                        }
                    }
                    Mop::R { value: None, .. } => {}
                }
            }
        }
        g.add_realtime(history, committed);
        g
    }

    fn edge(&mut self, from: usize, to: usize) {
        if from != to {
            self.edges[from].push(to);
        }
    }

    fn node(&mut self) -> usize {
        self.edges.push(Vec::new());
        self.edges.len() - 1
    }

    /// Realtime order through barriers: one barrier per completion of an ok transaction, chained in
    /// time order; a transaction leads to the barrier of its completion, and the latest barrier
    /// before its invocation leads to it. Unknown outcomes have no completion.
    fn add_realtime(&mut self, history: &[TxnRecord], committed: &[bool]) {
        let mut completions: Vec<(u64, usize)> = history
            .iter()
            .enumerate()
            .filter(|(t, txn)| committed[*t] && txn.outcome == Outcome::Ok)
            .map(|(t, txn)| (txn.complete_ns, t))
            .collect();
        completions.sort_unstable();
        let mut barriers: Vec<(u64, usize)> = Vec::with_capacity(completions.len());
        for (at, t) in completions {
            let b = self.node();
            if let Some(&(_, prev)) = barriers.last() {
                self.edge(prev, b);
            }
            self.edge(t, b);
            barriers.push((at, b));
        }
        for (t, txn) in history.iter().enumerate() {
            if !committed[t] {
                continue;
            }
            let before = barriers.partition_point(|(at, _)| *at < txn.invoke_ns);
            if before > 0 {
                let b = barriers[before - 1].1;
                self.edge(b, t);
            }
        }
    }

    /// The transactions of every strongly connected component with more than one transaction
    /// (iterative Tarjan: histories have hundreds of thousands of nodes).
    fn cycles(&self) -> Vec<Vec<usize>> {
        let n = self.edges.len();
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut next = 0;
        let mut out = Vec::new();
        for root in 0..n {
            if index[root] != usize::MAX {
                continue;
            }
            let mut work: Vec<(usize, usize)> = vec![(root, 0)];
            index[root] = next;
            low[root] = next;
            next += 1;
            stack.push(root);
            on_stack[root] = true;
            while let Some(&mut (v, ref mut i)) = work.last_mut() {
                if let Some(&w) = self.edges[v].get(*i) {
                    *i += 1;
                    if index[w] == usize::MAX {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        work.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                work.pop();
                if let Some(&(parent, _)) = work.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        if w < self.transactions {
                            component.push(w);
                        }
                        if w == v {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort_unstable();
                        out.push(component);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(invoke: u64, complete: u64, outcome: Outcome, mops: Vec<Mop>) -> TxnRecord {
        TxnRecord {
            process: 0,
            invoke_ns: invoke,
            complete_ns: complete,
            outcome,
            mops,
        }
    }

    fn r(key: u32, value: &[i64]) -> Mop {
        Mop::R {
            key,
            value: Some(value.to_vec()),
        }
    }

    fn a(key: u32, value: i64) -> Mop {
        Mop::Append { key, value }
    }

    #[test]
    fn a_serial_history_is_valid() {
        let h = vec![
            txn(0, 1, Outcome::Ok, vec![a(1, 1), a(2, 1)]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[1]), a(1, 2)]),
            txn(4, 5, Outcome::Ok, vec![r(1, &[1, 2]), r(2, &[1])]),
        ];
        let report = check(&h);
        assert!(report.valid, "{:?}", report.anomalies);
        assert_eq!(report.committed, 3);
    }

    #[test]
    fn concurrent_transactions_may_commit_in_either_order() {
        let h = vec![
            txn(0, 10, Outcome::Ok, vec![a(1, 1)]),
            txn(0, 10, Outcome::Ok, vec![a(1, 2)]),
            txn(11, 12, Outcome::Ok, vec![r(1, &[2, 1])]),
        ];
        assert!(check(&h).valid);
    }

    #[test]
    fn a_stale_read_after_completion_is_a_cycle() {
        // The append completed before the read began, yet the read does not see it.
        let h = vec![
            txn(0, 1, Outcome::Ok, vec![a(1, 1)]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[])]),
            txn(4, 5, Outcome::Ok, vec![r(1, &[1])]),
        ];
        let report = check(&h);
        assert!(!report.valid);
        assert!(
            report.anomalies[0].contains("cycle"),
            "{:?}",
            report.anomalies
        );
    }

    #[test]
    fn a_lost_acknowledged_append_is_a_cycle() {
        let h = vec![
            txn(0, 1, Outcome::Ok, vec![a(1, 1)]),
            txn(0, 1, Outcome::Ok, vec![a(1, 2)]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[1])]),
        ];
        assert!(!check(&h).valid);
    }

    #[test]
    fn write_skew_between_two_keys_is_a_cycle() {
        // Each reads the key the other appends to and misses the other's append: no serial order.
        let h = vec![
            txn(0, 5, Outcome::Ok, vec![r(1, &[]), a(2, 1)]),
            txn(0, 5, Outcome::Ok, vec![r(2, &[]), a(1, 1)]),
            txn(6, 7, Outcome::Ok, vec![r(1, &[1]), r(2, &[1])]),
        ];
        assert!(!check(&h).valid);
    }

    #[test]
    fn reads_alone_catch_impossible_values() {
        let dup = vec![
            txn(0, 1, Outcome::Ok, vec![a(1, 1)]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[1, 1])]),
        ];
        assert!(check(&dup).anomalies[0].contains("duplicate"));
        let aborted = vec![
            txn(0, 1, Outcome::Fail, vec![a(1, 1)]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[1])]),
        ];
        assert!(check(&aborted).anomalies[0].contains("failed"));
        let garbage = vec![txn(0, 1, Outcome::Ok, vec![r(1, &[7])])];
        assert!(check(&garbage).anomalies[0].contains("never appended"));
        let diverging = vec![
            txn(0, 1, Outcome::Ok, vec![a(1, 1)]),
            txn(0, 1, Outcome::Ok, vec![a(1, 2)]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[1])]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[2, 1])]),
        ];
        assert!(check(&diverging).anomalies[0].contains("prefix"));
    }

    #[test]
    fn an_unknown_outcome_counts_only_if_seen() {
        let h = vec![
            txn(0, 1, Outcome::Info, vec![a(1, 1)]),
            txn(0, 1, Outcome::Info, vec![a(1, 2)]),
            txn(2, 3, Outcome::Ok, vec![r(1, &[2])]),
        ];
        let report = check(&h);
        assert!(report.valid, "{:?}", report.anomalies);
        assert_eq!(
            report.committed, 2,
            "the read and the unknown append it saw"
        );
    }
}
