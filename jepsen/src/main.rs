//! `conclave-jepsen`: runs a workload against a real cluster under faults, records the history,
//! checks it, and writes `store/<workload>-<unix time>/{history.jsonl,results.json}`. Exit status:
//! 0 when the checker says valid, 1 when it found an anomaly, 2 when it could not decide (search
//! budget) or the run could not start. The last line printed is a one-line summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use conclave_jepsen::history::{Recorder, write_jsonl};
use conclave_jepsen::nemesis::{self, Fault};
use conclave_jepsen::{append, append_check, edn, lease, linearizable, register, watch};
use conclave_testkit::{Cluster, locate_binary};

#[derive(Parser)]
#[command(
    name = "conclave-jepsen",
    version,
    about = "Fault-injection and linearizability harness"
)]
struct Cli {
    /// Workload: register (read / write / compare-and-set per key), append (multi-key
    /// transactions, strict serializability), watch (watch guarantees) or lease (kept-alive leases
    /// never expire early, abandoned ones expire in time).
    #[arg(long, default_value = "register")]
    workload: String,
    /// Faults, comma separated: kill, kill-leader, pause, pause-leader (empty: none).
    #[arg(long, default_value = "kill,pause", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Seconds between a fault and its heal, and between heal and the next fault.
    #[arg(long, default_value_t = 3)]
    interval: u64,
    /// Length of the run in seconds.
    #[arg(long, default_value_t = 30)]
    time: u64,
    /// Members of the cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    workers: usize,
    /// Register keys (append: list keys).
    #[arg(long, default_value_t = 8)]
    keys: u32,
    /// conclave (default: the built binary, or $CONCLAVE_BIN) or etcd (from PATH).
    #[arg(long, default_value = "conclave")]
    target: String,
    /// Where runs are stored.
    #[arg(long, default_value = "store")]
    store: PathBuf,
    /// Linearizability search steps per key before answering unknown.
    #[arg(long, default_value_t = 20_000_000)]
    budget: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conclave-jepsen: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("conclave-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    if !["register", "append", "watch", "lease"].contains(&cli.workload.as_str()) {
        anyhow::bail!(
            "unknown --workload {:?} (register, append, watch, lease)",
            cli.workload
        );
    }
    let faults = cli
        .nemesis
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Fault>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let binary = match cli.target.as_str() {
        "conclave" => locate_binary()?,
        "etcd" => which("etcd").ok_or_else(|| anyhow::anyhow!("etcd not found in PATH"))?,
        other => anyhow::bail!("unknown --target {other:?} (conclave, etcd)"),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = cli
        .store
        .join(format!("{}-{}-{stamp}", cli.workload, cli.target));
    std::fs::create_dir_all(dir.join("nodes"))?;
    let cluster = Arc::new(
        Cluster::builder(&binary, cli.nodes)
            .base_dir(dir.join("nodes"))
            .keep_dir(true)
            .start()
            .await?,
    );
    let recorder = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nemesis = tokio::spawn(nemesis::run(
        cluster.clone(),
        faults,
        Duration::from_secs(cli.interval),
        recorder.clone(),
        stop_rx,
    ));
    if cli.workload == "lease" {
        let grace = Duration::from_secs(2 * cli.interval + 2);
        let run = lease::run(
            cluster.endpoints(),
            lease::Settings {
                kept: cli.workers,
                abandoned_per_second: 5,
                ttl: 3,
                duration: Duration::from_secs(cli.time),
                grace,
            },
        );
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(cli.time)).await;
            let _ = stop_tx.send(true);
        };
        let (outcome, ()) = tokio::join!(run, stopper);
        nemesis.await?;
        let outcome = outcome?;
        drop(cluster);
        write_jsonl(&dir.join("nemesis.jsonl"), &recorder.events())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&outcome)?,
        )?;
        let valid = outcome.anomalies.is_empty();
        println!(
            "{}: {} kept-alive leases ({} lost by their client), {} abandoned ({} expired, slowest {} ms after grant), {} anomalies, target {}, results in {}",
            if valid { "valid" } else { "INVALID" },
            outcome.kept,
            outcome.kept_lost_by_client,
            outcome.abandoned,
            outcome.abandoned_expired,
            outcome.slowest_expiry_ms,
            outcome.anomalies.len(),
            cli.target,
            dir.display()
        );
        return Ok(if valid { 0 } else { 1 });
    }
    if cli.workload == "append" {
        let history = append::run(
            cluster.endpoints(),
            append::Settings {
                workers: cli.workers,
                keys: cli.keys,
                duration: Duration::from_secs(cli.time),
            },
            recorder.start(),
        )
        .await?;
        let _ = stop_tx.send(true);
        nemesis.await?;
        drop(cluster);
        let faults = recorder.events();
        write_jsonl(&dir.join("nemesis.jsonl"), &faults)?;
        let faults: Vec<(String, u64)> = faults
            .into_iter()
            .filter_map(|e| e.nemesis.map(|what| (what, e.time_ns)))
            .collect();
        std::fs::write(
            dir.join("history.edn"),
            edn::append_history(&history, &faults),
        )?;
        let mut lines = String::new();
        for t in &history {
            lines.push_str(&serde_json::to_string(t)?);
            lines.push('\n');
        }
        std::fs::write(dir.join("history.jsonl"), lines)?;
        let report = append_check::check(&history);
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        let count = |o| history.iter().filter(|t| t.outcome == o).count();
        println!(
            "{}: {} transactions ({} ok, {} failed, {} unknown; {} committed), {} anomalies, target {}, results in {}",
            if report.valid { "valid" } else { "INVALID" },
            report.transactions,
            count(append_check::Outcome::Ok),
            count(append_check::Outcome::Fail),
            count(append_check::Outcome::Info),
            report.committed,
            report.anomaly_count,
            cli.target,
            dir.display()
        );
        return Ok(if report.valid { 0 } else { 1 });
    }
    if cli.workload == "watch" {
        let run = watch::run(
            cluster.endpoints(),
            watch::Settings {
                writers: cli.workers.div_ceil(2),
                watchers: cli.workers / 2 + 1,
                keys: cli.keys,
                duration: Duration::from_secs(cli.time),
            },
        );
        // Faults stop when the writers do; the watchers then catch up on a healed cluster.
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(cli.time)).await;
            let _ = stop_tx.send(true);
        };
        let (outcome, ()) = tokio::join!(run, stopper);
        nemesis.await?;
        let outcome = outcome?;
        drop(cluster);
        write_jsonl(&dir.join("nemesis.jsonl"), &recorder.events())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&outcome)?,
        )?;
        let valid = outcome.reference_ok.is_ok() && outcome.anomalies.is_empty();
        println!(
            "{}: {} acknowledged writes, {} reference events, watchers delivered {:?}, {} anomalies{}, target {}, results in {}",
            if valid { "valid" } else { "INVALID" },
            outcome.writes,
            outcome.reference_events,
            outcome.delivered,
            outcome.anomalies.len(),
            outcome
                .reference_ok
                .as_ref()
                .err()
                .map(|e| format!(" (reference: {e})"))
                .unwrap_or_default(),
            cli.target,
            dir.display()
        );
        return Ok(if valid { 0 } else { 1 });
    }
    register::run(
        cluster.endpoints(),
        register::Settings {
            workers: cli.workers,
            keys: cli.keys,
            duration: Duration::from_secs(cli.time),
        },
        recorder.clone(),
    )
    .await?;
    let _ = stop_tx.send(true);
    nemesis.await?;
    // Stop the cluster now, so its messages come before the summary line.
    drop(cluster);
    let history = recorder.events();
    write_jsonl(&dir.join("history.jsonl"), &history)?;
    std::fs::write(dir.join("history.edn"), edn::register_history(&history))?;
    let report = linearizable::check(&history, cli.budget);
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let faults = history.iter().filter(|e| e.nemesis.is_some()).count();
    let verdict = if report.valid {
        "valid"
    } else if report.unknown {
        "unknown"
    } else {
        "INVALID"
    };
    println!(
        "{verdict}: {} operations on {} keys, {} nemesis events, target {}, history in {}",
        report.operations,
        report.keys.len(),
        faults,
        cli.target,
        dir.display()
    );
    Ok(if report.valid {
        0
    } else if report.unknown {
        2
    } else {
        1
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
