//! The fault-injection harness (issue 5) lives here: cluster control on top of `conclave-testkit`,
//! nemeses, workloads, history recording and checkers. Nothing is built yet; the crate exists so the
//! workspace has its final shape.
