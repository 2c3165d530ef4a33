//! The rules a membership change must pass before the leader proposes it: etcd's strict
//! reconfiguration check (the recently active voters must still form a quorum afterwards), the
//! learner readiness rule for promotion (90% of the leader's log, etcd's value), and fresh ids for
//! added members. Pure functions of the leader's view of replication ([`LeaderProgress`]).

use crate::node::LeaderProgress;

use super::{Change, member_id};

/// A learner may be promoted once it has this share of the leader's log (etcd's value).
const LEARNER_READY: f64 = 0.9;

/// A fresh member id for `peer_urls`: derived like the bootstrap ids, plus the time, so that
/// re-adding a removed member's URLs gives a new id (as etcd).
pub fn new_member_id(peer_urls: &[String], cluster_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    member_id(peer_urls, &format!("{cluster_id:x}/{nanos}"))
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The strict reconfiguration check: after the change, the recently active voters must still
/// form a quorum of the voters.
pub fn enough_started(progress: &LeaderProgress, change: &Change) -> bool {
    let active = |id: &u64| progress.active.get(id).copied().unwrap_or(false);
    let (voters, live): (usize, usize) = match change {
        Change::Add(m) if !m.is_learner => {
            let live = progress.voters.iter().filter(|id| active(id)).count();
            (progress.voters.len() + 1, live)
        }
        Change::Promote(id) => {
            let live = progress.voters.iter().filter(|id| active(id)).count();
            (progress.voters.len() + 1, live + usize::from(active(id)))
        }
        Change::Remove(id) if progress.voters.contains(id) => {
            let rest: Vec<&u64> = progress.voters.iter().filter(|v| *v != id).collect();
            (rest.len(), rest.iter().filter(|v| active(v)).count())
        }
        _ => return true,
    };
    live >= quorum(voters)
}

/// Whether learner `id` has caught up enough to vote.
pub fn learner_ready(progress: &LeaderProgress, id: u64) -> bool {
    let learner = progress.matched.get(&id).copied().unwrap_or(0) as f64;
    learner >= progress.last_index as f64 * LEARNER_READY
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::conclave::internal::v1::MemberRecord;
    use std::collections::HashMap;

    fn progress(voters: &[u64], active: &[u64], matched: &[(u64, u64)]) -> LeaderProgress {
        LeaderProgress {
            last_index: 100,
            voters: voters.to_vec(),
            active: voters
                .iter()
                .chain(matched.iter().map(|(id, _)| id))
                .map(|id| (*id, active.contains(id)))
                .collect(),
            matched: matched.iter().copied().collect::<HashMap<_, _>>(),
        }
    }

    fn voter(id: u64) -> MemberRecord {
        MemberRecord {
            id,
            ..Default::default()
        }
    }

    #[test]
    fn strict_reconfiguration_keeps_a_live_quorum() {
        // 3 voters, all up: growing to 4 needs 3 live, fine.
        let all = progress(&[1, 2, 3], &[1, 2, 3], &[]);
        assert!(enough_started(&all, &Change::Add(voter(4))));
        // One down: 2 live of 4 voters is no quorum.
        let one_down = progress(&[1, 2, 3], &[1, 2], &[]);
        assert!(!enough_started(&one_down, &Change::Add(voter(4))));
        // Adding a learner never counts.
        let learner = MemberRecord {
            is_learner: true,
            ..voter(4)
        };
        assert!(enough_started(&one_down, &Change::Add(learner)));
        // Removing the dead one leaves 2 of 2; removing a live one leaves 1 of 2.
        assert!(enough_started(&one_down, &Change::Remove(3)));
        assert!(!enough_started(&one_down, &Change::Remove(2)));
        // Promoting a live learner into a cluster with one voter down: 3 live of 4.
        let with_learner = progress(&[1, 2, 3], &[1, 2, 4], &[(4, 95)]);
        assert!(enough_started(&with_learner, &Change::Promote(4)));
    }

    #[test]
    fn a_learner_is_ready_at_ninety_percent_of_the_leaders_log() {
        let p = progress(&[1], &[1, 4], &[(4, 89)]);
        assert!(!learner_ready(&p, 4));
        let p = progress(&[1], &[1, 4], &[(4, 90)]);
        assert!(learner_ready(&p, 4));
        assert!(!learner_ready(&p, 5), "unknown member");
    }
}
