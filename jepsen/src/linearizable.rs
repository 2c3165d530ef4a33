//! Linearizability of a register history, per key: the Wing–Gong search with Lowe's memoization
//! (as in Porcupine and Knossos' WGL): walk the history's call/return events, linearize any
//! pending call whose effect the model accepts, and backtrack at a return whose call could not be
//! placed; visited (linearized set, state) pairs are never explored twice.
//!
//! Outcomes: `fail` operations never happened and are dropped; `info` operations (unknown
//! outcome, or no completion) may take effect at any point after their invocation, or never
//! (their return is placed after everything, and the model lets them have no effect); reads
//! without a known result constrain nothing and are dropped. A search that exceeds its budget
//! answers `Unknown` — never a guess.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{Event, Kind, Op};

/// One operation as the checker sees it.
#[derive(Debug, Clone, Copy)]
struct Operation {
    op: Op,
    /// `false` for info operations: result unknown.
    known: bool,
    /// History index of the invocation.
    invoke: usize,
}

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    /// No linearization exists. `op` is the history index of the invocation of an operation that
    /// could not be placed before its completion; `window` the invocations concurrent with it.
    Invalid {
        op: usize,
        window: Vec<usize>,
    },
    /// The search budget ran out.
    Unknown,
}

/// The register: its value, or `None` when never written.
type State = Option<i64>;

/// The states `op` may lead to from `state` (empty: impossible here).
fn step(state: State, op: &Operation) -> Vec<State> {
    match (op.op, op.known) {
        (Op::Read { value }, _) => {
            if state == value {
                vec![state]
            } else {
                vec![]
            }
        }
        (Op::Write { value }, true) => vec![Some(value)],
        (Op::Write { value }, false) => vec![Some(value), state],
        (
            Op::Cas {
                expected,
                new,
                succeeded,
            },
            known,
        ) => {
            let holds = state == Some(expected);
            match (known, succeeded) {
                (true, Some(true)) if holds => vec![Some(new)],
                (true, Some(false)) if !holds => vec![state],
                (true, _) => vec![],
                (false, _) if holds => vec![Some(new), state],
                (false, _) => vec![state],
            }
        }
    }
}

/// Pairs invocations with completions per key.
fn operations(history: &[Event]) -> BTreeMap<u32, Vec<(Operation, Option<usize>)>> {
    let mut pending: HashMap<usize, (u32, Op, usize)> = HashMap::new();
    let mut per_key: BTreeMap<u32, Vec<(Operation, Option<usize>)>> = BTreeMap::new();
    for e in history {
        let (Some(process), Some(key), Some(op)) = (e.process, e.key, e.op) else {
            continue;
        };
        match e.kind {
            Kind::Invoke => {
                pending.insert(process, (key, op, e.index));
            }
            Kind::Ok | Kind::Fail | Kind::Info => {
                let Some((key0, _, invoke)) = pending.remove(&process) else {
                    continue;
                };
                let ops = per_key.entry(key0).or_default();
                match e.kind {
                    Kind::Ok => ops.push((
                        Operation {
                            op,
                            known: true,
                            invoke,
                        },
                        Some(e.index),
                    )),
                    Kind::Info if !matches!(op, Op::Read { .. }) => ops.push((
                        Operation {
                            op,
                            known: false,
                            invoke,
                        },
                        None,
                    )),
                    _ => {}
                }
            }
        }
    }
    // Invocations never completed: unknown outcome.
    for (_, (key, op, invoke)) in pending {
        if !matches!(op, Op::Read { .. }) {
            per_key.entry(key).or_default().push((
                Operation {
                    op,
                    known: false,
                    invoke,
                },
                None,
            ));
        }
    }
    per_key
}

const HEAD: usize = 0;

/// Checks one key's operations; `budget` bounds the search steps.
fn check_key(ops: &[(Operation, Option<usize>)], budget: u64) -> Verdict {
    // Events: (time, is_call, op). Unknown completions go after everything.
    let mut events: Vec<(usize, bool, usize)> = Vec::new();
    for (i, (o, ret)) in ops.iter().enumerate() {
        events.push((o.invoke, true, i));
        events.push((ret.unwrap_or(usize::MAX), false, i));
    }
    events.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
    // Doubly linked list over nodes 1..=n (0 is the head sentinel, n+1 the end).
    let n = events.len();
    let end = n + 1;
    let mut next: Vec<usize> = (1..=n + 1).chain(std::iter::once(end)).collect();
    let mut prev: Vec<usize> = std::iter::once(HEAD).chain(0..=n).collect();
    let node_of = |i: usize| i + 1;
    let mut return_node = vec![0; ops.len()];
    for (pos, (_, is_call, op)) in events.iter().enumerate() {
        if !is_call {
            return_node[*op] = node_of(pos);
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = x;
        prev[q] = x;
    };
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State, usize)> = Vec::new();
    let mut state: State = None;
    let mut entry = next[HEAD];
    let mut first_candidate = 0;
    let mut steps = 0u64;
    while next[HEAD] != end {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        let (_, is_call, op_i) = events[entry - 1];
        if is_call {
            let candidates = step(state, &ops[op_i].0);
            let mut chosen = None;
            for (c, s) in candidates.iter().enumerate().skip(first_candidate) {
                let mut lin = linearized.clone();
                lin[op_i / 64] |= 1 << (op_i % 64);
                if cache.insert((lin, *s)) {
                    chosen = Some((c, *s));
                    break;
                }
            }
            first_candidate = 0;
            match chosen {
                Some((c, s)) => {
                    stack.push((entry, state, c + 1));
                    state = s;
                    linearized[op_i / 64] |= 1 << (op_i % 64);
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, return_node[op_i]);
                    entry = next[HEAD];
                }
                None => entry = next[entry],
            }
        } else {
            // A return whose call is not linearized: undo the last choice.
            let Some((call, s, c)) = stack.pop() else {
                let invoke = ops[op_i].0.invoke;
                let returned = events[entry - 1].0;
                let window = ops
                    .iter()
                    .filter(|(o, ret)| o.invoke <= returned && ret.is_none_or(|r| r >= invoke))
                    .map(|(o, _)| o.invoke)
                    .collect();
                return Verdict::Invalid { op: invoke, window };
            };
            let (_, _, undone) = events[call - 1];
            linearized[undone / 64] &= !(1 << (undone % 64));
            relink(&mut next, &mut prev, return_node[undone]);
            relink(&mut next, &mut prev, call);
            state = s;
            entry = call;
            first_candidate = c;
        }
    }
    Verdict::Valid
}

/// The checker's report: one verdict per key.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub valid: bool,
    pub unknown: bool,
    pub keys: BTreeMap<u32, Verdict>,
    pub operations: usize,
}

/// Checks every key of a register history.
pub fn check(history: &[Event], budget_per_key: u64) -> Report {
    let per_key = operations(history);
    let mut keys = BTreeMap::new();
    let mut operations = 0;
    for (key, ops) in per_key {
        operations += ops.len();
        keys.insert(key, check_key(&ops, budget_per_key));
    }
    Report {
        valid: keys.values().all(|v| *v == Verdict::Valid),
        unknown: keys.values().any(|v| *v == Verdict::Unknown),
        keys,
        operations,
    }
}

#[cfg(test)]
mod tests;
