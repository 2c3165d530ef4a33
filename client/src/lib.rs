//! Async client for Conclave and etcd v3 over gRPC: KV with a transaction builder, watches,
//! leases with keep-alive, maintenance status and membership listing. Contract: reads (Range,
//! read-only Txn, LeaseTimeToLive, LeaseLeases, Status, MemberList) fail over between endpoints;
//! writes (including LeaseGrant and LeaseRevoke) are sent at most once unless the connection
//! provably never reached a server, and an ambiguous write fails with [`Error::Unknown`], never
//! with a plain failure. Watches resume on another endpoint from the last delivered revision + 1,
//! without gaps or duplicates; a lease keep-alive reports the loss of its lease at once. On top of
//! these, a [`Session`] keeps a lease alive in the background and makes its loss observable, and an
//! [`Informer`] mirrors a prefix locally (list, then watch; re-list after compaction). Responses
//! are the generated etcd types, unchanged. The guide is `docs/client.md` in the repository.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), conclave_client::Error> {
//! use conclave_client::{Client, ConnectOptions, GetOptions, PutOptions};
//!
//! let client = Client::connect(["127.0.0.1:2379"], ConnectOptions::new()).await?;
//! client.kv().put("greeting", "hello", PutOptions::new()).await?;
//! let response = client.kv().get("greeting", GetOptions::new()).await?;
//! for kv in &response.kvs {
//!     println!("{}", String::from_utf8_lossy(&kv.value));
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod client;
mod cluster;
mod config;
mod election;
mod error;
mod group;
mod informer;
mod kv;
mod lease;
mod maintenance;
mod mutex;
mod session;
mod stream;
mod txn;
mod watch;

pub use client::{Client, ConnectOptions};
pub use cluster::Cluster;
pub use config::{Config, ConfigWatch, Versioned};
pub use election::{Election, Leadership, Observer};
pub use error::Error;
pub use group::{GROUPS_PREFIX, Group, GroupWatch};
pub use informer::{Informer, InformerEvent, InformerOptions};
pub use kv::{DeleteOptions, GetOptions, Kv, PutOptions, SortOrder, SortTarget, prefix_range_end};
pub use lease::{KeepAlive, Lease, LeaseLoss};
pub use maintenance::Maintenance;
pub use mutex::{LockHeld, Mutex};
pub use session::{Session, SessionOptions};
pub use txn::{Compare, CompareOp, Txn, TxnOp};
pub use watch::{Watch, WatchMessage, WatchOptions, WatchStream};

/// Conclave's extension messages (`conclave.v1`: group membership).
pub use conclave_proto::conclave::v1 as conclavepb;
/// The generated protobuf types, re-exported so users need not depend on `conclave-proto`.
pub use conclave_proto::{etcdserverpb as proto, mvccpb};
