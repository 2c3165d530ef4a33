//! The loopback nemesis: faults that need no root — kill -9 (a random member or the leader), pause
//! (SIGSTOP, a random member or the leader) and a compaction storm (the history compacted up to
//! the current revision every [`COMPACT_EVERY`], through random members) — each followed by a heal
//! (restart, SIGCONT, end of the storm) after one interval, then a quiet interval. Every fault and
//! heal is an event in the history.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use conclave_client::GetOptions;
use conclave_testkit::Cluster;
use rand::Rng;
use tokio::sync::watch;

use crate::connect::client;
use crate::history::{Kind, Recorder};

/// How often a compaction storm compacts.
pub const COMPACT_EVERY: Duration = Duration::from_millis(200);

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 a random member, restart it at the heal.
    Kill,
    /// kill -9 the leader, restart it at the heal.
    KillLeader,
    /// SIGSTOP a random member, SIGCONT at the heal.
    Pause,
    /// SIGSTOP the leader, SIGCONT at the heal.
    PauseLeader,
    /// Compact at the current revision again and again until the heal.
    Compact,
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Fault::Kill),
            "kill-leader" => Ok(Fault::KillLeader),
            "pause" => Ok(Fault::Pause),
            "pause-leader" => Ok(Fault::PauseLeader),
            "compact" => Ok(Fault::Compact),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, kill-leader, pause, pause-leader, compact)"
            )),
        }
    }
}

async fn target(cluster: &Cluster, leader: bool) -> usize {
    if leader && let Ok(i) = cluster.leader_index().await {
        return i;
    }
    rand::rng().random_range(0..cluster.len())
}

/// Injects `faults` in turn (random choice) until `stop` turns true, then heals everything.
pub async fn run(
    cluster: Arc<Cluster>,
    faults: Vec<Fault>,
    interval: Duration,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    if faults.is_empty() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => break,
        }
        let fault = faults[rand::rng().random_range(0..faults.len())];
        let stopping = match fault {
            Fault::Kill => {
                process_fault(&cluster, false, true, interval, &recorder, &mut stop).await
            }
            Fault::KillLeader => {
                process_fault(&cluster, true, true, interval, &recorder, &mut stop).await
            }
            Fault::Pause => {
                process_fault(&cluster, false, false, interval, &recorder, &mut stop).await
            }
            Fault::PauseLeader => {
                process_fault(&cluster, true, false, interval, &recorder, &mut stop).await
            }
            Fault::Compact => {
                recorder.nemesis(Kind::Info, "compact all");
                let stopping = compaction_storm(&cluster, interval, &mut stop).await;
                recorder.nemesis(Kind::Ok, "heal all");
                stopping
            }
        };
        if stopping {
            break;
        }
    }
}

/// Kills (`kill`) or pauses a member (the leader if `leader`), and heals it after `interval` or
/// when `stop` fires. Returns whether `stop` fired.
async fn process_fault(
    cluster: &Cluster,
    leader: bool,
    kill: bool,
    interval: Duration,
    recorder: &Recorder,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let node = target(cluster, leader).await;
    let (what, done) = if kill {
        ("kill", cluster.kill(node))
    } else {
        ("pause", cluster.pause(node))
    };
    recorder.nemesis(Kind::Info, format!("{what} n{}", node + 1));
    if let Err(e) = done {
        tracing::warn!(error = %e, "nemesis fault failed");
    }
    let stopping = tokio::select! {
        _ = tokio::time::sleep(interval) => false,
        _ = stop.changed() => true,
    };
    heal(cluster, node, what, recorder);
    stopping
}

/// Compacts at the latest revision every [`COMPACT_EVERY`] for `length`, through a random member
/// each time (failures are expected while other faults run and are ignored). Returns whether `stop`
/// fired meanwhile.
async fn compaction_storm(
    cluster: &Cluster,
    length: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let end = tokio::time::Instant::now() + length;
    let mut compacted = 0;
    let mut stopping = false;
    while !stopping && tokio::time::Instant::now() < end {
        let member = rand::rng().random_range(0..cluster.len());
        if let Ok(c) = client(&cluster.endpoints(), member).await
            && let Ok(r) = c.kv().get("jepsen", GetOptions::new()).await
            && let Some(revision) = r.header.map(|h| h.revision)
        {
            match c.kv().compact(revision, false).await {
                Ok(_) => compacted += 1,
                Err(e) => tracing::debug!(error = %e, "compaction failed"),
            }
        }
        stopping = tokio::select! {
            _ = tokio::time::sleep(COMPACT_EVERY) => false,
            _ = stop.changed() => true,
        };
    }
    tracing::info!(compacted, "compaction storm over");
    stopping
}

fn heal(cluster: &Cluster, node: usize, what: &str, recorder: &Recorder) {
    let outcome = if what == "kill" {
        cluster.restart(node)
    } else {
        cluster.resume(node)
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "nemesis heal failed");
    }
    recorder.nemesis(Kind::Ok, format!("heal n{}", node + 1));
}
