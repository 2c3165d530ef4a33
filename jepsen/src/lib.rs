//! The fault-injection harness: history recording; the register, append, watch, lease and lock workloads
//! against a real cluster started with `conclave-testkit`, on loopback or with every node in its own
//! network namespace; a nemesis (kill -9, pause, partitions, compaction storms, with heals); a
//! linearizability checker, a strict-serializability checker for multi-key
//! transactions, a watch-guarantee checker, lease-expiry checks and a fenced-lock checker. The binary `conclave-jepsen`
//! runs a workload under faults and exits non-zero on any anomaly; histories are also written in
//! Jepsen's EDN format for Jepsen's own checkers, and every run gets an HTML report.

pub mod append;
pub mod append_check;
pub mod connect;
pub mod edn;
pub mod history;
pub mod lease;
pub mod linearizable;
pub mod lock;
pub mod lock_check;
pub mod nemesis;
pub mod netns;
pub mod register;
pub mod report;
pub mod watch;
pub mod watch_check;
