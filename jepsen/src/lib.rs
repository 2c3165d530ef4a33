//! The fault-injection harness: history recording, the register workload against a real
//! cluster started with `conclave-testkit`, a loopback nemesis (kill -9 and pause, with heals),
//! and a linearizability checker. The binary `conclave-jepsen` runs a workload under faults and
//! exits non-zero on any anomaly.

pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod register;
