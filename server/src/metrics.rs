//! Process-wide metrics, rendered in the Prometheus text format by `/metrics`.
//!
//! Contract: recording is lock-free (atomics in tables built once), allocates nothing, never fails
//! and never blocks a request. Counters only grow. Gauges that
//! mirror state owned elsewhere (raft indexes, database size, watchers) are not stored here: the
//! HTTP layer reads them from their owners when rendering. Names follow etcd's where etcd has the
//! same metric (`etcd_server_*`, `etcd_disk_*`, `etcd_mvcc_*`, `grpc_server_*`), so existing
//! dashboards and alerts work; Conclave-only ones are `conclave_*`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The gRPC methods served on the client port, counted one by one; anything else counts as
/// `other`.
const METHODS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/other/other",
];

/// gRPC code names, by number.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Upper bounds of the latency buckets, in seconds (etcd's disk histograms use 1 ms .. 8 s).
const BUCKETS: [f64; 15] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.024, 2.048,
];

/// A latency histogram with fixed buckets.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// One RPC's counters.
pub struct Rpc {
    started: AtomicU64,
    /// Answered calls by gRPC code number.
    handled: [AtomicU64; CODES.len()],
    latency: Histogram,
}

impl Rpc {
    /// A call started.
    pub fn started(&self) {
        inc(&self.started);
    }

    /// A call answered with gRPC code number `code` after `elapsed`.
    pub fn handled(&self, code: usize, elapsed: Duration) {
        if let Some(c) = self.handled.get(code) {
            inc(c);
        }
        self.latency.observe(elapsed);
    }
}

/// Every metric this process records.
pub struct Metrics {
    pub leader_changes: AtomicU64,
    pub proposals_applied: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_send_failed: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_bytes_sent: AtomicU64,
    pub snapshot_bytes_received: AtomicU64,
    pub snapshots_installed: AtomicU64,
    /// One apply transaction (a batch of committed entries).
    pub apply_duration: Histogram,
    /// One durable append of the raft log (the fsync path).
    pub wal_fsync_duration: Histogram,
    /// One durable commit of the state database (made before the log is truncated).
    pub backend_sync_duration: Histogram,
    /// One defragmentation, copy and swap.
    pub defrag_duration: Histogram,
    /// Writes held while a defragmentation's copy was caught up and swapped in.
    pub defrag_pause: Histogram,
    rpcs: HashMap<&'static str, Rpc>,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics {
        leader_changes: AtomicU64::new(0),
        proposals_applied: AtomicU64::new(0),
        proposals_failed: AtomicU64::new(0),
        snapshots_sent: AtomicU64::new(0),
        snapshots_send_failed: AtomicU64::new(0),
        snapshots_received: AtomicU64::new(0),
        snapshot_bytes_sent: AtomicU64::new(0),
        snapshot_bytes_received: AtomicU64::new(0),
        snapshots_installed: AtomicU64::new(0),
        apply_duration: Histogram::new(),
        wal_fsync_duration: Histogram::new(),
        backend_sync_duration: Histogram::new(),
        defrag_duration: Histogram::new(),
        defrag_pause: Histogram::new(),
        rpcs: METHODS
            .iter()
            .map(|m| {
                let rpc = Rpc {
                    started: AtomicU64::new(0),
                    handled: [const { AtomicU64::new(0) }; CODES.len()],
                    latency: Histogram::new(),
                };
                (*m, rpc)
            })
            .collect(),
    })
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The counters of `method` (`/package.Service/Method`; an unknown one counts as other).
    pub fn rpc(&self, method: &str) -> Option<&Rpc> {
        self.rpcs
            .get(method)
            .or_else(|| self.rpcs.get("/other/other"))
    }

    /// The metrics recorded here, in the Prometheus text format (gauges come from elsewhere).
    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "etcd_server_leader_changes_seen_total",
                "Leader changes seen by this member.",
                &self.leader_changes,
            ),
            (
                "etcd_server_proposals_applied_total",
                "Raft entries applied.",
                &self.proposals_applied,
            ),
            (
                "etcd_server_proposals_failed_total",
                "Proposals that failed or timed out.",
                &self.proposals_failed,
            ),
            (
                "conclave_snapshots_sent_total",
                "Raft snapshots streamed to another member.",
                &self.snapshots_sent,
            ),
            (
                "conclave_snapshots_send_failed_total",
                "Raft snapshot transfers that failed.",
                &self.snapshots_send_failed,
            ),
            (
                "conclave_snapshots_received_total",
                "Raft snapshots received and checked.",
                &self.snapshots_received,
            ),
            (
                "conclave_snapshot_sent_bytes_total",
                "Bytes of raft snapshots sent.",
                &self.snapshot_bytes_sent,
            ),
            (
                "conclave_snapshot_received_bytes_total",
                "Bytes of raft snapshots received.",
                &self.snapshot_bytes_received,
            ),
            (
                "conclave_snapshots_installed_total",
                "Raft snapshots installed.",
                &self.snapshots_installed,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        for (name, help, h) in [
            (
                "etcd_disk_backend_commit_duration_seconds",
                "Apply transactions (one batch of committed entries).",
                &self.apply_duration,
            ),
            (
                "etcd_disk_wal_fsync_duration_seconds",
                "Durable raft log appends.",
                &self.wal_fsync_duration,
            ),
            (
                "conclave_disk_backend_sync_duration_seconds",
                "Durable commits of the state database (apply commits without syncing).",
                &self.backend_sync_duration,
            ),
            (
                "etcd_disk_backend_defrag_duration_seconds",
                "Defragmentations, from the start of the copy to the swap.",
                &self.defrag_duration,
            ),
            (
                "conclave_defrag_pause_seconds",
                "Writes held while a defragmentation's copy was caught up and swapped in.",
                &self.defrag_pause,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(out, name, "");
        }
        let mut rpcs: Vec<(&&str, &Rpc)> = self
            .rpcs
            .iter()
            .filter(|(_, r)| r.started.load(Ordering::Relaxed) > 0)
            .collect();
        rpcs.sort_by_key(|(m, _)| **m);
        let _ = writeln!(
            out,
            "# HELP grpc_server_started_total RPCs started.\n# TYPE grpc_server_started_total counter"
        );
        for (method, rpc) in rpcs.iter() {
            let (service, name) = split_method(method);
            let _ = writeln!(
                out,
                "grpc_server_started_total{{grpc_service=\"{service}\",grpc_method=\"{name}\"}} {}",
                rpc.started.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP grpc_server_handled_total RPCs answered, by code.\n# TYPE grpc_server_handled_total counter"
        );
        for (method, rpc) in rpcs.iter() {
            let (service, name) = split_method(method);
            for (code, n) in CODES.iter().zip(&rpc.handled) {
                let n = n.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_service=\"{service}\",grpc_method=\"{name}\",grpc_code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP grpc_server_handling_seconds Time to the response (to its headers, for streams).\n# TYPE grpc_server_handling_seconds histogram"
        );
        for (method, rpc) in rpcs.iter() {
            let (service, name) = split_method(method);
            let labels = format!("grpc_service=\"{service}\",grpc_method=\"{name}\"");
            rpc.latency
                .render(out, "grpc_server_handling_seconds", &labels);
        }
    }
}

/// `/etcdserverpb.KV/Range` → (`etcdserverpb.KV`, `Range`).
fn split_method(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// Writes one gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_rpcs_are_labelled() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(150));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0002\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2.048\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");

        let m = get();
        let rpc = m.rpc("/etcdserverpb.KV/Range").unwrap();
        rpc.started();
        rpc.handled(0, Duration::from_millis(1));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "grpc_server_handled_total{grpc_service=\"etcdserverpb.KV\",grpc_method=\"Range\",grpc_code=\"OK\"}"
        ));
        assert!(out.contains("# TYPE etcd_disk_wal_fsync_duration_seconds histogram"));
    }
}
