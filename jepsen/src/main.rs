//! `conclave-jepsen`: runs a workload against a real cluster under faults, records the history,
//! checks it, and writes `store/<workload>-<unix time>/{history.jsonl,results.json}`. Exit status:
//! 0 when the checker says valid, 1 when it found an anomaly, 2 when it could not decide (search
//! budget) or the run could not start. The last line printed is a one-line summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use conclave_jepsen::history::Kind;
use conclave_jepsen::history::{Recorder, write_jsonl};
use conclave_jepsen::nemesis::{self, Fault};
use conclave_jepsen::netns::Network;
use conclave_jepsen::{
    append, append_check, edn, lease, linearizable, lock, lock_check, register, report, watch,
};
use conclave_testkit::{Cluster, locate_binary};

#[derive(Parser)]
#[command(
    name = "conclave-jepsen",
    version,
    about = "Fault-injection and linearizability harness"
)]
struct Cli {
    /// Workload: register (read / write / compare-and-set per key), append (multi-key
    /// transactions, strict serializability), watch (watch guarantees), lease (kept-alive leases
    /// never expire early, abandoned ones expire in time) or lock (fenced increments under a
    /// lease-backed lock: no lost update, one holder at a time).
    #[arg(long, default_value = "register")]
    workload: String,
    /// lock workload: take the lock with the client recipe (recipe) or through the server's
    /// v3lock service (service).
    #[arg(long, default_value = "recipe")]
    lock_via: String,
    /// Faults, comma separated: kill, kill-leader, kill-majority, pause, pause-leader,
    /// partition-one, partition-leader, partition-halves, partition-bridge (partition: all four;
    /// they need --net netns), compact (a compaction storm; not with the watch workload), defrag
    /// (a defragmentation storm), member (remove a member, add it back empty) (empty: none).
    #[arg(long, default_value = "kill,pause", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Network: loopback (nodes on 127.0.0.1 ports; kill and pause faults only) or netns (Linux,
    /// root: every node in its own network namespace on a private bridge, partitions with
    /// iptables).
    #[arg(long, default_value = "loopback")]
    net: String,
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
    /// Register keys (append: active list keys, each retired after 128 appends).
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
    // Warnings (a fault that could not be injected, …) on stderr; RUST_LOG for more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Made before the runtime and dropped after it: the nodes (killed when the runtime's tasks
    // drop the cluster) leave their namespaces before these are removed.
    let network = match cli.net.as_str() {
        "loopback" => None,
        "netns" => match Network::create(cli.nodes) {
            Ok(network) => Some(Arc::new(network)),
            Err(e) => {
                eprintln!("conclave-jepsen: {e:#}");
                return ExitCode::from(2);
            }
        },
        other => {
            eprintln!("conclave-jepsen: unknown --net {other:?} (loopback, netns)");
            return ExitCode::from(2);
        }
    };
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
    let outcome = rt.block_on(async {
        tokio::select! {
            outcome = run(cli, network.clone()) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    drop(rt);
    drop(network);
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("conclave-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The end of a run: exit status (0 valid, 1 anomaly, 2 undecided) and the summary line.
struct Verdict {
    code: u8,
    summary: String,
}

fn verdict(valid: bool, summary: String) -> Verdict {
    Verdict {
        code: if valid { 0 } else { 1 },
        summary: format!("{}: {summary}", if valid { "valid" } else { "INVALID" }),
    }
}

async fn run(cli: Cli, network: Option<Arc<Network>>) -> anyhow::Result<u8> {
    if !["register", "append", "watch", "lease", "lock"].contains(&cli.workload.as_str()) {
        anyhow::bail!(
            "unknown --workload {:?} (register, append, watch, lease, lock)",
            cli.workload
        );
    }
    if !["recipe", "service"].contains(&cli.lock_via.as_str()) {
        anyhow::bail!("unknown --lock-via {:?} (recipe, service)", cli.lock_via);
    }
    let faults = Fault::parse_list(&cli.nemesis).map_err(anyhow::Error::msg)?;
    let compaction = faults.contains(&Fault::Compact);
    if network.is_none() && faults.iter().any(|f| f.is_partition()) {
        anyhow::bail!("partition faults need --net netns (root, ip, iptables)");
    }
    if cli.workload == "lease" && !faults.is_empty() && cli.interval < LEASE_MIN_INTERVAL {
        // A new leader gives every lease its checkpointed remaining TTL (else its full TTL) plus
        // an election timeout: with faults less than TTL + an election timeout apart, one leader
        // change after another can keep an abandoned lease alive past any fixed grace, as designed.
        anyhow::bail!(
            "the lease workload needs --interval {LEASE_MIN_INTERVAL} or more (its TTL is {LEASE_TTL} s)"
        );
    }
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
    let mut builder = Cluster::builder(&binary, cli.nodes)
        .base_dir(dir.join("nodes"))
        .keep_dir(true);
    if let Some(network) = &network {
        builder = builder.hosts(network.hosts());
    }
    let cluster = Arc::new(builder.start().await?);
    let recorder = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nemesis = tokio::spawn(nemesis::run(
        cluster.clone(),
        network,
        faults,
        Duration::from_secs(cli.interval),
        recorder.clone(),
        stop_rx,
    ));
    // Faults stop after --time; some workloads go on a little (to let leases expire, or
    // watchers catch up) on a healed cluster.
    let time = Duration::from_secs(cli.time);
    tokio::spawn(async move {
        tokio::time::sleep(time).await;
        let _ = stop_tx.send(true);
    });
    let endpoints = cluster.endpoints();
    let outcome = match cli.workload.as_str() {
        "register" => run_register(&cli, endpoints, &recorder).await,
        "append" => run_append(&cli, endpoints, &recorder, &dir).await,
        "watch" => run_watch(&cli, endpoints, compaction, &dir).await,
        "lock" => run_lock(&cli, endpoints, &recorder, &dir).await,
        _ => run_lease(&cli, endpoints, &dir).await,
    };
    nemesis.await?;
    // Stop the cluster now, so its messages come before the summary line.
    drop(cluster);
    let events = recorder.events();
    let faults: Vec<_> = events
        .iter()
        .filter(|e| e.nemesis.is_some())
        .cloned()
        .collect();
    write_jsonl(&dir.join("nemesis.jsonl"), &faults)?;
    let finish = outcome?;
    if cli.workload == "register" {
        write_jsonl(&dir.join("history.jsonl"), &events)?;
        std::fs::write(dir.join("history.edn"), edn::register_history(&events))?;
    }
    std::fs::write(dir.join("results.json"), &finish.results)?;
    let summary = format!("{}, target {}", finish.verdict.summary, cli.target);
    let windows = report::windows(&faults);
    let timeline = finish
        .violation
        .unwrap_or_else(|| report::around_first_fault(&finish.ops, &windows));
    let page = report::Page {
        title: format!("{} on {}", cli.workload, cli.target),
        valid: finish.verdict.code == 0,
        summary: &summary,
        faults: windows,
        ops: finish.ops,
        timeline,
        results_json: &finish.results,
    };
    std::fs::write(dir.join("report.html"), report::render(&page))?;
    println!("{summary}, results in {}", dir.display());
    Ok(finish.verdict.code)
}

/// What a workload leaves for the run's tail.
struct Finish {
    /// results.json
    results: String,
    verdict: Verdict,
    /// Timed operations for the report's charts (none for watch and lease).
    ops: Vec<report::Timed>,
    /// The violation to draw, when the checker found one it can show as operations.
    violation: Option<report::Timeline>,
}

type Finished = anyhow::Result<Finish>;

async fn run_register(cli: &Cli, endpoints: Vec<String>, recorder: &Arc<Recorder>) -> Finished {
    let settings = register::Settings {
        workers: cli.workers,
        keys: cli.keys,
        duration: Duration::from_secs(cli.time),
    };
    register::run(endpoints, settings, recorder.clone()).await?;
    let history = recorder.events();
    let report = linearizable::check(&history, cli.budget);
    let summary = format!(
        "{} operations on {} keys, {} nemesis events",
        report.operations,
        report.keys.len(),
        history.iter().filter(|e| e.nemesis.is_some()).count(),
    );
    let mut v = verdict(report.valid, summary);
    if !report.valid && report.unknown {
        v.code = 2;
        v.summary = v.summary.replacen("INVALID", "unknown", 1);
    }
    Ok(Finish {
        results: serde_json::to_string_pretty(&report)?,
        verdict: v,
        ops: report::register_ops(&history),
        violation: report::register_violation(&history, &report),
    })
}

async fn run_append(
    cli: &Cli,
    endpoints: Vec<String>,
    recorder: &Recorder,
    dir: &Path,
) -> Finished {
    let settings = append::Settings {
        workers: cli.workers,
        keys: cli.keys,
        duration: Duration::from_secs(cli.time),
    };
    let history = append::run(endpoints, settings, recorder.start()).await?;
    write_jsonl(&dir.join("history.jsonl"), &history)?;
    let faults: Vec<(String, u64)> = recorder
        .events()
        .into_iter()
        .filter_map(|e| e.nemesis.map(|what| (what, e.time_ns)))
        .collect();
    std::fs::write(
        dir.join("history.edn"),
        edn::append_history(&history, &faults),
    )?;
    let report = append_check::check(&history);
    let count = |o| history.iter().filter(|t| t.outcome == o).count();
    let summary = format!(
        "{} transactions ({} ok, {} failed, {} unknown; {} committed), {} anomalies",
        report.transactions,
        count(append_check::Outcome::Ok),
        count(append_check::Outcome::Fail),
        count(append_check::Outcome::Info),
        report.committed,
        report.anomaly_count,
    );
    let ops = history
        .iter()
        .map(|t| report::Timed {
            process: t.process,
            invoke: t.invoke_ns as f64 / 1e9,
            complete: t.complete_ns as f64 / 1e9,
            kind: match t.outcome {
                append_check::Outcome::Ok => Kind::Ok,
                append_check::Outcome::Fail => Kind::Fail,
                append_check::Outcome::Info => Kind::Info,
            },
        })
        .collect();
    Ok(Finish {
        results: serde_json::to_string_pretty(&report)?,
        verdict: verdict(report.valid, summary),
        ops,
        violation: None,
    })
}

async fn run_watch(cli: &Cli, endpoints: Vec<String>, compaction: bool, dir: &Path) -> Finished {
    let settings = watch::Settings {
        writers: cli.workers.div_ceil(2),
        watchers: cli.workers / 2 + 1,
        keys: cli.keys,
        duration: Duration::from_secs(cli.time),
        compaction,
    };
    let outcome = watch::run(endpoints, settings).await?;
    // The history: every acknowledged write, then every event each watcher delivered.
    let mut lines = Vec::new();
    for (revision, (key, value)) in &outcome.acked {
        lines.push(serde_json::json!({
            "process": "writers", "type": "ok",
            "f": if value.is_some() { "put" } else { "delete" },
            "key": key, "value": value, "revision": revision,
        }));
    }
    for log in &outcome.logs {
        for e in &log.events {
            lines.push(serde_json::json!({ "process": log.name, "f": "event", "event": e }));
        }
        for (first, last) in &log.gaps {
            lines.push(serde_json::json!({
                "process": log.name, "f": "compacted-gap", "first": first, "last": last,
            }));
        }
    }
    write_jsonl(&dir.join("history.jsonl"), &lines)?;
    let valid = outcome.reference_ok.is_ok() && outcome.anomalies.is_empty();
    let summary = format!(
        "{} acknowledged writes, {} reference events, watchers delivered {:?}, {} compacted gaps, {} anomalies{}",
        outcome.writes,
        outcome.reference_events,
        outcome.delivered,
        outcome.gaps,
        outcome.anomalies.len(),
        outcome
            .reference_ok
            .as_ref()
            .err()
            .map(|e| format!(" (reference: {e})"))
            .unwrap_or_default(),
    );
    Ok(Finish {
        results: serde_json::to_string_pretty(&outcome)?,
        verdict: verdict(valid, summary),
        ops: Vec::new(),
        violation: None,
    })
}

async fn run_lock(cli: &Cli, endpoints: Vec<String>, recorder: &Recorder, dir: &Path) -> Finished {
    let settings = lock::Settings {
        workers: cli.workers,
        ttl: 3,
        duration: Duration::from_secs(cli.time),
        stall_probability: 0.01,
        via: if cli.lock_via == "service" {
            lock::LockVia::Service
        } else {
            lock::LockVia::Recipe
        },
    };
    let outcome = lock::run(endpoints, settings, recorder.start()).await?;
    write_jsonl(&dir.join("history.jsonl"), &outcome.writes)?;
    let report = lock_check::check(&outcome.writes, outcome.final_value);
    let summary = format!(
        "{} acquisitions ({} gave up), {} fenced writes ({} ok, {} refused, {} unknown), {} stalls \
         ({} stalled writes refused), final counter {}, {} anomalies",
        outcome.acquisitions,
        outcome.acquire_failures,
        outcome.writes.len(),
        report.writes_ok,
        report.writes_refused,
        report.writes_unknown,
        outcome.stalls,
        report.stalled_refused,
        outcome.final_value,
        report.anomaly_count,
    );
    let ops = outcome
        .writes
        .iter()
        .map(|w| report::Timed {
            process: w.worker,
            invoke: w.invoke_ns as f64 / 1e9,
            complete: w.complete_ns as f64 / 1e9,
            kind: w.outcome,
        })
        .collect();
    Ok(Finish {
        results: serde_json::to_string_pretty(&serde_json::json!({
            "report": report,
            "acquisitions": outcome.acquisitions,
            "acquire_failures": outcome.acquire_failures,
            "stalls": outcome.stalls,
        }))?,
        verdict: verdict(report.valid, summary),
        ops,
        violation: None,
    })
}

/// The lease workload's TTL in seconds.
const LEASE_TTL: i64 = 3;

/// The shortest `--interval` the lease workload accepts with faults: two intervals (fault and
/// quiet) must exceed TTL + an election timeout, so that at most one leader change extends a lease.
const LEASE_MIN_INTERVAL: u64 = 3;

async fn run_lease(cli: &Cli, endpoints: Vec<String>, dir: &Path) -> Finished {
    let settings = lease::Settings {
        kept: cli.workers,
        abandoned_per_second: 5,
        ttl: LEASE_TTL,
        duration: Duration::from_secs(cli.time),
        grace: Duration::from_secs(2 * cli.interval + 2),
    };
    let outcome = lease::run(endpoints, settings).await?;
    // The history: each abandoned lease (grant, and when its key was seen gone), then each
    // session that lost its lease on the client side.
    let mut lines = Vec::new();
    for a in &outcome.abandoned_leases {
        lines.push(serde_json::json!({ "process": "granter", "f": "abandoned", "lease": a }));
    }
    for (key, how, at_ms) in &outcome.losses {
        lines.push(serde_json::json!({ "process": key, "f": "lost", "how": how, "at_ms": at_ms }));
    }
    write_jsonl(&dir.join("history.jsonl"), &lines)?;
    let summary = format!(
        "{} kept-alive leases ({} lost by their client), {} abandoned ({} expired, slowest {} ms after grant), {} anomalies",
        outcome.kept,
        outcome.kept_lost_by_client,
        outcome.abandoned,
        outcome.abandoned_expired,
        outcome.slowest_expiry_ms,
        outcome.anomalies.len(),
    );
    Ok(Finish {
        results: serde_json::to_string_pretty(&outcome)?,
        verdict: verdict(outcome.anomalies.is_empty(), summary),
        ops: Vec::new(),
        violation: None,
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
