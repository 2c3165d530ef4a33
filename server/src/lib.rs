//! Conclave server library: an etcd-v3-compatible coordination service, replicated with raft-rs and
//! stored in redb. `main.rs` is a thin wrapper around [`server::run`].

pub mod alarm;
pub mod api;
pub mod apply;
mod authority_fix;
pub mod config;
pub mod corrupt;
pub mod error;
pub mod http;
pub mod kv_ops;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod server;
pub mod storage;
pub mod watch;
