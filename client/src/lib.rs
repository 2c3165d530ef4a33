//! Async client for Conclave and etcd v3 over gRPC: KV with a transaction builder, maintenance
//! status and membership listing. Contract: reads (Range, read-only Txn, Status, MemberList) fail
//! over between endpoints; writes are sent at most once unless the connection provably never
//! reached a server, and an ambiguous write fails with [`Error::Unknown`], never with a plain
//! failure. Responses are the generated etcd types, unchanged.

mod client;
mod cluster;
mod error;
mod kv;
mod maintenance;
mod txn;

pub use client::{Client, ConnectOptions};
pub use cluster::Cluster;
pub use error::Error;
pub use kv::{DeleteOptions, GetOptions, Kv, PutOptions, SortOrder, SortTarget, prefix_range_end};
pub use maintenance::Maintenance;
pub use txn::{Compare, CompareOp, Txn, TxnOp};

/// The generated protobuf types, re-exported so users need not depend on `conclave-proto`.
pub use conclave_proto::{etcdserverpb as proto, mvccpb};
