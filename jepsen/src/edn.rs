//! Histories as Jepsen writes them (`history.edn`: one EDN map per line), so Jepsen's own checkers
//! can read our runs: Knossos for the register workload (independent keys: `:value [key value]`,
//! compare-and-set values `[expected new]`), Elle's list-append for the append workload (`:f :txn`,
//! `:value [[:r key list] [:append key value]]`, reads `nil` in the invocation). Nemesis events are
//! `:process :nemesis` with `:type :info`, `:f` the action and `:value` the member.

use std::fmt::Write as _;

use crate::append_check::{Mop, Outcome, TxnRecord};
use crate::history::{Event, Kind, Op};

fn kind(k: Kind) -> &'static str {
    match k {
        Kind::Invoke => ":invoke",
        Kind::Ok => ":ok",
        Kind::Fail => ":fail",
        Kind::Info => ":info",
    }
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

/// A nemesis event ("kill n2", "heal n2") as `:f :kill :value "n2"`, without its index and the
/// closing brace.
fn nemesis_fields(what: &str, time_ns: u64) -> String {
    let (f, value) = what.split_once(' ').unwrap_or((what, ""));
    format!("{{:type :info, :f :{f}, :value \"{value}\", :process :nemesis, :time {time_ns}")
}

/// The register workload's history.
pub fn register_history(events: &[Event]) -> String {
    let mut out = String::new();
    for e in events {
        let fields = match (&e.nemesis, e.op, e.key, e.process) {
            (Some(what), ..) => nemesis_fields(what, e.time_ns),
            (None, Some(op), Some(key), Some(process)) => {
                let (f, value) = match op {
                    Op::Read { value } => ("read", opt(value)),
                    Op::Write { value } => ("write", value.to_string()),
                    Op::Cas { expected, new, .. } => ("cas", format!("[{expected} {new}]")),
                };
                format!(
                    "{{:type {}, :f :{f}, :value [{key} {value}], :process {process}, :time {}",
                    kind(e.kind),
                    e.time_ns,
                )
            }
            _ => continue,
        };
        let _ = writeln!(out, "{fields}, :index {}}}", e.index);
    }
    out
}

fn mops(mops: &[Mop], with_reads: bool) -> String {
    let mut out = String::from("[");
    for (i, m) in mops.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match m {
            Mop::R { key, value } => {
                let list = match value {
                    Some(list) if with_reads => {
                        let items: Vec<String> = list.iter().map(i64::to_string).collect();
                        format!("[{}]", items.join(" "))
                    }
                    _ => "nil".to_string(),
                };
                let _ = write!(out, "[:r {key} {list}]");
            }
            Mop::Append { key, value } => {
                let _ = write!(out, "[:append {key} {value}]");
            }
        }
    }
    out.push(']');
    out
}

/// The append workload's history: an invocation and a completion per transaction, in time order,
/// with the nemesis events (`(what, time_ns)`, on the same clock) interleaved.
pub fn append_history(txns: &[TxnRecord], nemesis: &[(String, u64)]) -> String {
    // (time, order within the same time, fields without the index)
    let mut lines: Vec<(u64, u8, String)> = Vec::with_capacity(txns.len() * 2 + nemesis.len());
    for t in txns {
        lines.push((
            t.invoke_ns,
            0,
            format!(
                "{{:type :invoke, :f :txn, :value {}, :process {}, :time {}",
                mops(&t.mops, false),
                t.process,
                t.invoke_ns
            ),
        ));
        let (k, with_reads) = match t.outcome {
            Outcome::Ok => (":ok", true),
            Outcome::Fail => (":fail", false),
            Outcome::Info => (":info", false),
        };
        lines.push((
            t.complete_ns,
            1,
            format!(
                "{{:type {k}, :f :txn, :value {}, :process {}, :time {}",
                mops(&t.mops, with_reads),
                t.process,
                t.complete_ns
            ),
        ));
    }
    for (what, at) in nemesis {
        lines.push((*at, 2, nemesis_fields(what, *at)));
    }
    lines.sort_by_key(|(at, order, _)| (*at, *order));
    let mut out = String::new();
    for (index, (_, _, fields)) in lines.into_iter().enumerate() {
        let _ = writeln!(out, "{fields}, :index {index}}}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_events_become_knossos_ops() {
        let events = vec![
            Event {
                index: 0,
                process: Some(3),
                kind: Kind::Invoke,
                key: Some(7),
                op: Some(Op::Cas {
                    expected: 1,
                    new: 2,
                    succeeded: None,
                }),
                nemesis: None,
                time_ns: 10,
            },
            Event {
                index: 1,
                process: None,
                kind: Kind::Info,
                key: None,
                op: None,
                nemesis: Some("kill n2".into()),
                time_ns: 11,
            },
            Event {
                index: 2,
                process: Some(3),
                kind: Kind::Ok,
                key: Some(7),
                op: Some(Op::Read { value: None }),
                nemesis: None,
                time_ns: 12,
            },
        ];
        assert_eq!(
            register_history(&events),
            "{:type :invoke, :f :cas, :value [7 [1 2]], :process 3, :time 10, :index 0}\n\
             {:type :info, :f :kill, :value \"n2\", :process :nemesis, :time 11, :index 1}\n\
             {:type :ok, :f :read, :value [7 nil], :process 3, :time 12, :index 2}\n"
        );
    }

    #[test]
    fn transactions_become_elle_list_append_ops() {
        let txns = vec![TxnRecord {
            process: 1,
            invoke_ns: 5,
            complete_ns: 9,
            outcome: Outcome::Ok,
            mops: vec![
                Mop::R {
                    key: 2,
                    value: Some(vec![4, 6]),
                },
                Mop::Append { key: 2, value: 8 },
            ],
        }];
        assert_eq!(
            append_history(&txns, &[("pause n1".into(), 7)]),
            "{:type :invoke, :f :txn, :value [[:r 2 nil] [:append 2 8]], :process 1, :time 5, :index 0}\n\
             {:type :info, :f :pause, :value \"n1\", :process :nemesis, :time 7, :index 1}\n\
             {:type :ok, :f :txn, :value [[:r 2 [4 6]] [:append 2 8]], :process 1, :time 9, :index 2}\n"
        );
    }
}
