//! `conclave-bench`: a load generator for the etcd v3 gRPC API, modelled on etcd's own `benchmark`
//! tool (same flags, same key scheme, same report), so Conclave and etcd can be measured side by side.
//!
//! Exit status: 0 when every request succeeded, 1 when some failed (the report is still printed),
//! 2 when the run could not start (bad flags, endpoint unreachable).

mod keys;
mod report;
mod run;
mod unary;
mod watch_lease;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc malloc: the tool shares the machine with the cluster it measures, and
/// glibc's malloc and free were a tenth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "conclave-bench",
    version,
    about = "Benchmark an etcd v3 API server (Conclave or etcd), like etcd's `benchmark` tool"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// gRPC endpoints, comma separated (`host:port` or `http://host:port`).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections; spread over the endpoints round-robin.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent in-flight requests; spread over the connections round-robin.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Total number of requests.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub total: u64,
    /// Key size in bytes (put, txn-put).
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes (put, txn-put).
    #[arg(long, global = true, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys (put, txn-put).
    #[arg(long, global = true, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use keys 0, 1, 2, ... (mod key-space-size) instead of random ones.
    #[arg(long, global = true)]
    pub sequential_keys: bool,
    /// Range consistency: l (linearizable) or s (serializable).
    #[arg(long, global = true, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
    /// Maximum requests per second over all clients; 0 is unlimited.
    #[arg(long, global = true, default_value_t = 0)]
    pub rate: u64,
    /// Per-request timeout, e.g. `10s`, `500ms`, `1m` (a bare number is seconds).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Timeout for establishing each connection.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Send every request to the leader only (found with Maintenance.Status), like etcd's flag.
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Print the results as one JSON line on stdout (the text report goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    #[value(name = "l")]
    L,
    /// Serializable.
    #[value(name = "s")]
    S,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Cmd {
    /// Benchmark Put.
    Put {
        /// Put this one key every time instead of generated keys (e.g. to seed a range benchmark).
        #[arg(long)]
        key: Option<String>,
    },
    /// Benchmark Range over KEY, or [KEY, END) when END is given.
    Range {
        /// The key to read (the start of the range when END is given).
        key: String,
        /// Exclusive end of the range.
        end: Option<String>,
        /// Maximum number of keys returned per request; 0 is no limit.
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// Benchmark Txn with puts only (no compares), like etcd's txn-put.
    TxnPut {
        /// Number of puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: u64,
    },
    /// Watch fan-out: put-to-event latency over many watchers (`--total` writes at `--rate`).
    WatchLatency {
        /// Number of watches, all on the same prefix.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Number of watch streams carrying them.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Server process ids on this machine: report their memory per watcher.
        #[arg(long, value_delimiter = ',')]
        rss_pids: Vec<u32>,
    },
    /// Lease keep-alive throughput: one lease and one keep-alive stream per client.
    LeaseKeepalive,
}

/// Parses `10s`, `250ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 10s, 500ms, 1m"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Duration::try_from_secs_f64(v * scale).map_err(|e| format!("duration {s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conclave-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run::run(cli)) {
        Ok(run::Outcome::AllOk) => ExitCode::SUCCESS,
        Ok(run::Outcome::SomeFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("conclave-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = Cli::try_parse_from([
            "conclave-bench",
            "range",
            "foo",
            "--consistency",
            "s",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "--clients",
            "8",
        ])
        .expect("parse");
        assert_eq!(cli.global.consistency, Consistency::S);
        assert_eq!(cli.global.endpoints, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(cli.global.clients, 8);
        match cli.cmd {
            Cmd::Range { key, end, limit } => {
                assert_eq!(key, "foo");
                assert_eq!(end, None);
                assert_eq!(limit, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
