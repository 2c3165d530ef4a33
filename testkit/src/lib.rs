//! Starts real multi-node Conclave clusters as child processes on loopback, for integration tests,
//! the Jepsen-style harness and benchmarks. Contract: every process started here is SIGKILLed and
//! reaped when its [`Cluster`] is dropped; ports are never handed out twice within a process; each
//! node's stdout and stderr go to a log file in the cluster's temporary directory, which is kept
//! when `CONCLAVE_TESTKIT_KEEP=1`.

mod cluster;
mod error;
mod ports;

pub use cluster::{
    BIN_ENV, Cluster, ClusterBuilder, DEFAULT_ELECTION_MS, DEFAULT_HEARTBEAT_MS,
    DEFAULT_READY_TIMEOUT, HOST_CLIENT_PORT, HOST_PEER_PORT, Host, KEEP_ENV, NodeState,
    locate_binary,
};
pub use error::Error;
pub use ports::free_port;

/// The client crate, re-exported so users of the test kit need not name it separately.
pub use conclave_client as client;
