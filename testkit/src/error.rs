//! The test kit's error type. Messages carry what a failing test needs to see (the node, its exit
//! status, the last lines of its log) so a CI failure can be read without rerunning it.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the test kit can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The server binary does not exist.
    #[error(
        "conclave binary not found at {0} (build it with `cargo build -p conclave-server --bin conclave` or set CONCLAVE_BIN)"
    )]
    BinaryNotFound(PathBuf),

    /// No free loopback port could be found.
    #[error("no free loopback port found")]
    NoFreePort,

    /// A cluster needs at least one node.
    #[error("a cluster needs at least one node")]
    NoNodes,

    /// [`crate::ClusterBuilder::hosts`] was given a list whose length is not the node count.
    #[error("{hosts} hosts given for {nodes} nodes (one host per node)")]
    HostCount {
        /// Hosts given.
        hosts: usize,
        /// Nodes asked for.
        nodes: usize,
    },

    /// A node index outside the cluster.
    #[error("node index {index} out of range (the cluster has {len} nodes)")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// The number of nodes.
        len: usize,
    },

    /// The operation does not apply to the node in its current state (e.g. pausing a killed node).
    #[error("node {name}: cannot {action} a node that is {state}")]
    InvalidState {
        /// The node's name.
        name: String,
        /// The operation refused.
        action: &'static str,
        /// The node's state.
        state: &'static str,
    },

    /// A node that should be running has exited on its own.
    #[error("node {name} exited unexpectedly ({status}); last log lines:\n{log_tail}")]
    NodeExited {
        /// The node's index.
        index: usize,
        /// The node's name.
        name: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },

    /// The cluster did not agree on a leader in time.
    #[error("cluster not ready after {timeout:?}:\n{detail}")]
    NotReady {
        /// How long was waited.
        timeout: Duration,
        /// What each node said last.
        detail: String,
    },

    /// No running node reports itself as leader.
    #[error("no running node reports itself as leader:\n{detail}")]
    NoLeader {
        /// What each node said.
        detail: String,
    },

    /// A client could not be built or a call failed.
    #[error(transparent)]
    Client(#[from] conclave_client::Error),
}
