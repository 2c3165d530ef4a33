//! The checker must accept correct histories and flag crafted bad ones.

use super::*;
use crate::history::Recorder;

const BUDGET: u64 = 1_000_000;

fn read(v: Option<i64>) -> Op {
    Op::Read { value: v }
}

fn write(v: i64) -> Op {
    Op::Write { value: v }
}

fn cas(expected: i64, new: i64, succeeded: Option<bool>) -> Op {
    Op::Cas {
        expected,
        new,
        succeeded,
    }
}

/// Builds a history from (process, kind, op) lines on key 0.
fn history(lines: &[(usize, Kind, Op)]) -> Vec<Event> {
    let r = Recorder::default();
    for (p, k, op) in lines {
        r.op(*p, *k, 0, *op);
    }
    r.events()
}

fn verdict(lines: &[(usize, Kind, Op)]) -> Verdict {
    check(&history(lines), BUDGET).keys[&0].clone()
}

use Kind::{Fail, Info, Invoke, Ok as Done};

#[test]
fn sequential_history_is_valid() {
    let v = verdict(&[
        (0, Invoke, read(None)),
        (0, Done, read(None)),
        (0, Invoke, write(1)),
        (0, Done, write(1)),
        (1, Invoke, cas(1, 2, None)),
        (1, Done, cas(1, 2, Some(true))),
        (1, Invoke, cas(1, 3, None)),
        (1, Done, cas(1, 3, Some(false))),
        (0, Invoke, read(None)),
        (0, Done, read(Some(2))),
    ]);
    assert_eq!(v, Verdict::Valid);
}

#[test]
fn concurrent_write_may_be_seen_or_not() {
    // p1's read overlaps p0's write: both old and new values are fine.
    for seen in [None, Some(5)] {
        let v = verdict(&[
            (0, Invoke, write(5)),
            (1, Invoke, read(None)),
            (1, Done, read(seen)),
            (0, Done, write(5)),
        ]);
        assert_eq!(v, Verdict::Valid, "read {seen:?}");
    }
}

#[test]
fn stale_read_is_flagged() {
    // The write completed before the read started, yet the read saw the old value.
    let v = verdict(&[
        (0, Invoke, write(1)),
        (0, Done, write(1)),
        (0, Invoke, write(2)),
        (0, Done, write(2)),
        (1, Invoke, read(None)),
        (1, Done, read(Some(1))),
    ]);
    assert!(matches!(v, Verdict::Invalid { .. }), "{v:?}");
}

#[test]
fn lost_acknowledged_write_is_flagged() {
    let v = verdict(&[
        (0, Invoke, write(7)),
        (0, Done, write(7)),
        (1, Invoke, read(None)),
        (1, Done, read(None)),
    ]);
    assert!(matches!(v, Verdict::Invalid { .. }), "{v:?}");
}

#[test]
fn cas_results_constrain_the_value() {
    // A CAS that reported success on a value that was never there.
    let v = verdict(&[
        (0, Invoke, write(1)),
        (0, Done, write(1)),
        (1, Invoke, cas(9, 2, None)),
        (1, Done, cas(9, 2, Some(true))),
    ]);
    assert!(matches!(v, Verdict::Invalid { .. }), "{v:?}");
}

#[test]
fn unknown_writes_may_happen_late_or_never_and_failures_never() {
    // The info write may take effect after the first read...
    let late = verdict(&[
        (0, Invoke, write(3)),
        (0, Info, write(3)),
        (1, Invoke, read(None)),
        (1, Done, read(None)),
        (1, Invoke, read(None)),
        (1, Done, read(Some(3))),
    ]);
    assert_eq!(late, Verdict::Valid);
    // ...or never.
    let never = verdict(&[
        (0, Invoke, write(3)),
        (0, Info, write(3)),
        (1, Invoke, read(None)),
        (1, Done, read(None)),
    ]);
    assert_eq!(never, Verdict::Valid);
    // A failed write never happened: reading it is an anomaly.
    let failed = verdict(&[
        (0, Invoke, write(4)),
        (0, Fail, write(4)),
        (1, Invoke, read(None)),
        (1, Done, read(Some(4))),
    ]);
    assert!(matches!(failed, Verdict::Invalid { .. }), "{failed:?}");
    // But an unknown write cannot be read before it was invoked.
    let early = verdict(&[
        (1, Invoke, read(None)),
        (1, Done, read(Some(8))),
        (0, Invoke, write(8)),
        (0, Info, write(8)),
    ]);
    assert!(matches!(early, Verdict::Invalid { .. }), "{early:?}");
}

#[test]
fn many_concurrent_operations_finish_within_budget() {
    // 8 processes writing distinct values concurrently, then a read of one of them.
    let mut lines = Vec::new();
    for p in 0..8 {
        lines.push((p, Invoke, write(p as i64)));
    }
    for p in 0..8 {
        lines.push((p, Done, write(p as i64)));
    }
    lines.push((9, Invoke, read(None)));
    lines.push((9, Done, read(Some(3))));
    assert_eq!(verdict(&lines), Verdict::Valid);
}

#[test]
fn a_tiny_budget_answers_unknown_not_a_guess() {
    let mut lines = Vec::new();
    for p in 0..8 {
        lines.push((p, Invoke, write(p as i64)));
    }
    for p in 0..8 {
        lines.push((p, Done, write(p as i64)));
    }
    let r = check(&history(&lines), 3);
    assert_eq!(r.keys[&0], Verdict::Unknown);
    assert!(r.unknown && !r.valid);
}
