//! The loopback nemesis: faults that need no root — kill -9 (a random member or the leader) and
//! pause (SIGSTOP, a random member or the leader) — each followed by a heal (restart, SIGCONT)
//! after one interval, then a quiet interval. Every fault and heal is an event in the history.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use conclave_testkit::Cluster;
use rand::Rng;
use tokio::sync::watch;

use crate::history::{Kind, Recorder};

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
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Fault::Kill),
            "kill-leader" => Ok(Fault::KillLeader),
            "pause" => Ok(Fault::Pause),
            "pause-leader" => Ok(Fault::PauseLeader),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, kill-leader, pause, pause-leader)"
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
        let leader = matches!(fault, Fault::KillLeader | Fault::PauseLeader);
        let node = target(&cluster, leader).await;
        let name = format!("n{}", node + 1);
        let (what, done) = match fault {
            Fault::Kill | Fault::KillLeader => ("kill", cluster.kill(node)),
            Fault::Pause | Fault::PauseLeader => ("pause", cluster.pause(node)),
        };
        recorder.nemesis(Kind::Info, format!("{what} {name}"));
        if let Err(e) = done {
            tracing::warn!(error = %e, "nemesis fault failed");
        }
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = stop.changed() => true,
        };
        heal(&cluster, node, what, &recorder);
        if stopping {
            break;
        }
    }
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
