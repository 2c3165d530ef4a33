//! The nemesis: scheduled faults, each followed by a heal after one interval, then a quiet
//! interval. Process faults need no root: kill -9 (a random member, the leader, or a majority) and
//! pause (SIGSTOP, a random member or the leader), healed by a restart or SIGCONT. Partitions need
//! the netns network ([`crate::netns`]): isolate a random member or the leader, split the cluster
//! into random majority and minority halves, or a bridge (two halves that each see one middle
//! member, which sees everyone); healed by removing every rule. A compaction storm compacts the
//! history up to the current revision every [`STORM_EVERY`] through random members; a
//! defragmentation storm defragments random members (the leader too) as often. Every fault and
//! heal is an event in the history: "<action> <target>" then "heal <target>".

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use conclave_client::GetOptions;
use conclave_testkit::Cluster;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::sync::watch;

use crate::connect::client;
use crate::history::{Kind, Recorder};
use crate::netns::{self, Network};

/// How often a compaction or defragmentation storm acts.
pub const STORM_EVERY: Duration = Duration::from_millis(200);

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 a random member, restart it at the heal.
    Kill,
    /// kill -9 the leader, restart it at the heal.
    KillLeader,
    /// kill -9 a random majority of the members, restart them at the heal.
    KillMajority,
    /// SIGSTOP a random member, SIGCONT at the heal.
    Pause,
    /// SIGSTOP the leader, SIGCONT at the heal.
    PauseLeader,
    /// Cut a random member off from every other member (netns).
    PartitionOne,
    /// Cut the leader off from every other member (netns).
    PartitionLeader,
    /// Split the members into a random majority and minority (netns).
    PartitionHalves,
    /// Two random halves that cannot talk, and one member that talks to both (netns).
    PartitionBridge,
    /// Compact at the current revision again and again until the heal.
    Compact,
    /// Defragment random members again and again until the heal.
    Defrag,
    /// Remove a random member (the leader included) from the cluster with MemberRemove, wipe its
    /// data dir; at the heal add it back (MemberAdd, a new id) and start it empty, to join by
    /// snapshot.
    Member,
}

/// Every name `--nemesis` accepts; `partition` stands for all four partition faults.
pub const FAULT_NAMES: &str = "kill, kill-leader, kill-majority, pause, pause-leader, \
    partition (= partition-one, partition-leader, partition-halves, partition-bridge), compact, \
    defrag, member";

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Fault::Kill),
            "kill-leader" => Ok(Fault::KillLeader),
            "kill-majority" => Ok(Fault::KillMajority),
            "pause" => Ok(Fault::Pause),
            "pause-leader" => Ok(Fault::PauseLeader),
            "partition-one" => Ok(Fault::PartitionOne),
            "partition-leader" => Ok(Fault::PartitionLeader),
            "partition-halves" => Ok(Fault::PartitionHalves),
            "partition-bridge" => Ok(Fault::PartitionBridge),
            "compact" => Ok(Fault::Compact),
            "defrag" => Ok(Fault::Defrag),
            "member" => Ok(Fault::Member),
            other => Err(format!("unknown nemesis {other:?} ({FAULT_NAMES})")),
        }
    }
}

impl Fault {
    /// Parses a `--nemesis` list; empty names are skipped and `partition` expands to every
    /// partition fault.
    pub fn parse_list(names: &[String]) -> Result<Vec<Fault>, String> {
        let mut faults = Vec::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if name == "partition" {
                faults.extend([
                    Fault::PartitionOne,
                    Fault::PartitionLeader,
                    Fault::PartitionHalves,
                    Fault::PartitionBridge,
                ]);
            } else {
                faults.push(name.parse()?);
            }
        }
        Ok(faults)
    }

    /// Whether the fault cuts links, which only the netns network can do.
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            Fault::PartitionOne
                | Fault::PartitionLeader
                | Fault::PartitionHalves
                | Fault::PartitionBridge
        )
    }
}

async fn target(cluster: &Cluster, leader: bool) -> usize {
    if leader && let Ok(i) = cluster.leader_index().await {
        return i;
    }
    rand::rng().random_range(0..cluster.len())
}

/// Members as the history names them: "n1 n3".
fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|n| format!("n{}", n + 1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `len` members in random order.
fn shuffled(len: usize) -> Vec<usize> {
    let mut nodes: Vec<usize> = (0..len).collect();
    nodes.shuffle(&mut rand::rng());
    nodes
}

/// A partition: the groups (for the history) and the links it cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The groups, e.g. "n1 | n2 n3", or for a bridge "n1 | n2 | n3 (bridge)".
    pub target: String,
    /// Links cut, both directions.
    pub links: Vec<netns::Link>,
}

/// `isolated` alone against the rest.
pub fn isolate(len: usize, isolated: usize) -> Partition {
    let rest: Vec<usize> = (0..len).filter(|&n| n != isolated).collect();
    Partition {
        target: format!("{} | {}", names(&[isolated]), names(&rest)),
        links: netns::split(&[vec![isolated], rest]),
    }
}

/// The members in `order` split into a minority (the first `len / 2`) and a majority.
pub fn halves(order: &[usize]) -> Partition {
    let (minority, majority) = order.split_at(order.len() / 2);
    let (mut minority, mut majority) = (minority.to_vec(), majority.to_vec());
    minority.sort_unstable();
    majority.sort_unstable();
    Partition {
        target: format!("{} | {}", names(&minority), names(&majority)),
        links: netns::split(&[minority, majority]),
    }
}

/// The members in `order`: the middle one sees everyone, the halves on either side of it see only
/// their own half and the middle member.
pub fn bridge(order: &[usize]) -> Partition {
    let middle = order.len() / 2;
    let mut left = order[..middle].to_vec();
    let mut right = order[middle + 1..].to_vec();
    left.sort_unstable();
    right.sort_unstable();
    Partition {
        target: format!(
            "{} | {} | {} (bridge)",
            names(&left),
            names(&order[middle..=middle]),
            names(&right)
        ),
        links: netns::split(&[left, right]),
    }
}

/// What a heal has to undo.
enum Injected {
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Cut,
    /// Removed from the cluster, data wiped: add back.
    Removed(usize),
    Nothing,
}

/// Injects `faults` in turn (random choice) until `stop` turns true, then heals everything.
/// Partition faults need `network`.
pub async fn run(
    cluster: Arc<Cluster>,
    network: Option<Arc<Network>>,
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
        let stopping = if matches!(fault, Fault::Compact | Fault::Defrag) {
            let action = if fault == Fault::Compact {
                "compact"
            } else {
                "defrag"
            };
            recorder.nemesis(Kind::Info, format!("{action} all"));
            let stopping = storm(&cluster, fault, interval, &mut stop).await;
            recorder.nemesis(Kind::Ok, "heal all");
            stopping
        } else {
            let (action, target, injected) = inject(fault, &cluster, network.as_deref()).await;
            recorder.nemesis(Kind::Info, format!("{action} {target}"));
            let stopping = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = stop.changed() => true,
            };
            heal(&cluster, network.as_deref(), injected).await;
            recorder.nemesis(Kind::Ok, format!("heal {target}"));
            stopping
        };
        if stopping {
            break;
        }
    }
}

/// Injects a process or network fault: (action, target, what to heal).
async fn inject(
    fault: Fault,
    cluster: &Cluster,
    network: Option<&Network>,
) -> (&'static str, String, Injected) {
    let len = cluster.len();
    match fault {
        Fault::Kill | Fault::KillLeader | Fault::KillMajority => {
            let nodes = if fault == Fault::KillMajority {
                shuffled(len)[..len / 2 + 1].to_vec()
            } else {
                vec![target(cluster, fault == Fault::KillLeader).await]
            };
            for &node in &nodes {
                report(cluster.kill(node));
            }
            ("kill", names(&nodes), Injected::Killed(nodes))
        }
        Fault::Pause | Fault::PauseLeader => {
            let node = target(cluster, fault == Fault::PauseLeader).await;
            report(cluster.pause(node));
            ("pause", names(&[node]), Injected::Paused(vec![node]))
        }
        Fault::PartitionOne
        | Fault::PartitionLeader
        | Fault::PartitionHalves
        | Fault::PartitionBridge => {
            let partition = match fault {
                Fault::PartitionOne | Fault::PartitionLeader => {
                    isolate(len, target(cluster, fault == Fault::PartitionLeader).await)
                }
                Fault::PartitionHalves => halves(&shuffled(len)),
                _ => bridge(&shuffled(len)),
            };
            match network {
                Some(network) => report(network.cut(&partition.links)),
                None => tracing::warn!("partition faults need --net netns"),
            }
            ("partition", partition.target, Injected::Cut)
        }
        // Storms are run by `run` itself, not injected and healed.
        Fault::Compact | Fault::Defrag => ("storm", "all".into(), Injected::Nothing),
        Fault::Member => {
            let node = rand::rng().random_range(0..len);
            match remove_member(cluster, node).await {
                Ok(()) => ("remove", names(&[node]), Injected::Removed(node)),
                Err(e) => {
                    tracing::warn!(error = %e, node, "member removal failed");
                    ("remove-failed", names(&[node]), Injected::Nothing)
                }
            }
        }
    }
}

/// A client of every member but `node`.
async fn client_without(cluster: &Cluster, node: usize) -> anyhow::Result<conclave_client::Client> {
    let others: Vec<String> = cluster
        .endpoints()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != node)
        .map(|(_, e)| e)
        .collect();
    client(&others, 0).await
}

/// Tries a membership change until it is done; `done` recognises the error of an attempt that
/// already took effect (a retry after an unknown outcome).
async fn until_done<F, Fut, T>(what: &str, mut attempt: F, done: &str) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, conclave_client::Error>>,
{
    let mut last = String::new();
    for _ in 0..20 {
        match attempt().await {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains(done) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("{what}: {last}")
}

/// Removes member `node` and wipes its data dir once it has stopped.
async fn remove_member(cluster: &Cluster, node: usize) -> anyhow::Result<()> {
    let id = cluster.member_id(node).await?;
    let c = client_without(cluster, node).await?;
    let members = c.cluster();
    until_done(
        "member remove",
        || members.member_remove(id),
        "member not found",
    )
    .await?;
    if !cluster.wait_exit(node, Duration::from_secs(15)).await? {
        tracing::warn!(node, "a removed member did not stop by itself; killed");
    }
    std::fs::remove_dir_all(cluster.data_dir(node)?)?;
    Ok(())
}

/// Adds `node` back (a new member id, the same peer URL) and starts it empty.
async fn add_member(cluster: &Cluster, node: usize) -> anyhow::Result<()> {
    let url = cluster.peer_url(node)?;
    let c = client_without(cluster, node).await?;
    let members = c.cluster();
    until_done(
        "member add",
        || members.member_add([url.clone()], false),
        "Peer URLs already exists",
    )
    .await?;
    cluster.rejoin(node)?;
    Ok(())
}

async fn heal(cluster: &Cluster, network: Option<&Network>, injected: Injected) {
    match injected {
        Injected::Killed(nodes) => nodes.into_iter().for_each(|n| report(cluster.restart(n))),
        Injected::Paused(nodes) => nodes.into_iter().for_each(|n| report(cluster.resume(n))),
        Injected::Cut => {
            if let Some(network) = network {
                report(network.heal());
            }
        }
        Injected::Removed(node) => {
            if let Err(e) = add_member(cluster, node).await {
                tracing::warn!(error = %e, node, "adding a removed member back failed");
            }
        }
        Injected::Nothing => {}
    }
}

/// Logs a fault or heal that could not be carried out (the run goes on).
fn report<E: std::fmt::Display>(outcome: Result<(), E>) {
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "nemesis action failed");
    }
}

/// Compacts at the latest revision (`Compact`) or defragments a random member (`Defrag`) every
/// [`STORM_EVERY`] for `length`, through a random member each time (failures are expected while
/// other faults run and are ignored). Returns whether `stop` fired meanwhile.
async fn storm(
    cluster: &Cluster,
    fault: Fault,
    length: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let end = tokio::time::Instant::now() + length;
    let mut done = 0;
    let mut stopping = false;
    while !stopping && tokio::time::Instant::now() < end {
        let member = rand::rng().random_range(0..cluster.len());
        if let Ok(c) = client(&cluster.endpoints(), member).await {
            let acted = if fault == Fault::Compact {
                compact_now(&c).await
            } else {
                c.maintenance()
                    .defragment_on(&cluster.client_endpoint(member))
                    .await
                    .map(|_| ())
            };
            match acted {
                Ok(()) => done += 1,
                Err(e) => tracing::debug!(error = %e, ?fault, member, "storm action failed"),
            }
        }
        stopping = tokio::select! {
            _ = tokio::time::sleep(STORM_EVERY) => false,
            _ = stop.changed() => true,
        };
    }
    tracing::info!(?fault, done, "storm over");
    stopping
}

/// Compacts the history up to the current revision.
async fn compact_now(c: &conclave_client::Client) -> Result<(), conclave_client::Error> {
    let r = c.kv().get("jepsen", GetOptions::new()).await?;
    let revision = r.header.map_or(0, |h| h.revision);
    c.kv().compact(revision, false).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_shapes() {
        let one = isolate(3, 1);
        assert_eq!(one.target, "n2 | n1 n3");
        assert_eq!(one.links, vec![(0, 1), (1, 2)]);
        let split = halves(&[4, 0, 2, 1, 3]);
        assert_eq!(split.target, "n1 n5 | n2 n3 n4");
        assert_eq!(split.links.len(), 6);
        let five = bridge(&[4, 0, 2, 1, 3]);
        assert_eq!(five.target, "n1 n5 | n3 | n2 n4 (bridge)");
        // n3 keeps every link; n1 and n5 lose n2 and n4.
        assert_eq!(five.links, vec![(0, 1), (0, 3), (1, 4), (3, 4)]);
        assert_eq!(bridge(&[2, 0, 1]).links, vec![(1, 2)]);
    }

    #[test]
    fn nemesis_lists() {
        assert_eq!(
            Fault::parse_list(&["member".into()]).unwrap(),
            vec![Fault::Member]
        );
        let all = Fault::parse_list(&["kill".into(), "".into(), "partition".into()]).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all.iter().filter(|f| f.is_partition()).count(), 4);
        assert!(Fault::parse_list(&["kill-majority".into()]).is_ok());
        let err = Fault::parse_list(&["split".into()]).unwrap_err();
        assert!(err.contains("partition-bridge"), "{err}");
    }
}
