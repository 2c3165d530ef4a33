//! The member table: who is in the cluster, with names, peer URLs and client URLs. Static bootstrap
//! from `--initial-cluster` derives every id deterministically, so all members agree without talking.
//! Members announce their client URLs through raft (`PublishMember`), like etcd's attribute publish.
//!
//! Membership changes are raft conf changes; [`Membership::check`] decides whether one is valid
//! against the table (the API asks before proposing, and apply asks again, because the table may
//! have changed in between), and [`Membership::apply_change`] records it inside apply's
//! transaction. A member that joins a running cluster takes its identity from the cluster's table
//! ([`Membership::join`]).

pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use conclave_proto::conclave::internal::v1::{ConfChangeContext, MemberRecord, PublishMember};
use prost::Message as _;
use raft::prelude::{ConfChange, ConfChangeType};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use crate::error::ServerError;
use crate::storage::{
    MEMBERS, META, META_CLUSTER_ID, META_MEMBER_ID, REMOVED_MEMBERS, StorageError, StorageResult,
};

/// Learners allowed at once (etcd's default).
pub const MAX_LEARNERS: usize = 1;

/// One membership change, as carried by a raft conf change entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new voter, or a new learner if `is_learner`.
    Add(MemberRecord),
    /// A learner becomes a voter.
    Promote(u64),
    Remove(u64),
    /// New peer URLs for a member.
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

/// The raft conf change that carries `change` (not `Update`: that is an ordinary command), with
/// the proposer's `origin` and `request_id` in its context for the waiter.
pub fn conf_change(change: &Change, origin: u64, request_id: u64) -> Option<ConfChange> {
    let (change_type, node_id, member) = match change {
        Change::Add(m) if m.is_learner => (ConfChangeType::AddLearnerNode, m.id, Some(m.clone())),
        Change::Add(m) => (ConfChangeType::AddNode, m.id, Some(m.clone())),
        Change::Promote(id) => (ConfChangeType::AddNode, *id, None),
        Change::Remove(id) => (ConfChangeType::RemoveNode, *id, None),
        Change::Update { .. } => return None,
    };
    let context = ConfChangeContext {
        origin,
        request_id,
        member,
    };
    let mut cc = ConfChange::default();
    cc.set_change_type(change_type);
    cc.node_id = node_id;
    cc.context = context.encode_to_vec().into();
    Some(cc)
}

/// The change a committed conf change carries. `AddNode` of a current learner is a promotion.
pub fn change_of(cc: &ConfChange, member: Option<MemberRecord>, table: &Membership) -> Change {
    let id = cc.node_id;
    match cc.get_change_type() {
        ConfChangeType::RemoveNode => Change::Remove(id),
        ConfChangeType::AddNode if table.get(id).is_some_and(|m| m.is_learner) => {
            Change::Promote(id)
        }
        kind => {
            let mut m = member.unwrap_or_default();
            m.id = id;
            m.is_learner = kind == ConfChangeType::AddLearnerNode;
            Change::Add(m)
        }
    }
}

/// Checks that peer URLs are given, each `http(s)://host:port` (as etcd requires).
pub fn check_urls(urls: &[String]) -> Result<(), ServerError> {
    let valid = |u: &String| {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"));
        rest.and_then(|r| r.rsplit_once(':'))
            .is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
            })
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(ServerError::MemberBadUrls);
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable hash for deriving ids (identical on every member and every version).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h == 0 { 1 } else { h }
}

/// A member's id, from its peer URLs and the cluster token (as etcd derives it, with another hash).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    fnv1a(&[joined.as_bytes(), token.as_bytes()])
}

/// The cluster's id, from its initial members' ids and the token.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a(&[&bytes, token.as_bytes()])
}

/// One entry of `--initial-cluster`.
#[derive(Debug, Clone)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// This member's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
}

/// The member table of one member, cached in memory.
pub struct Membership {
    members: RwLock<BTreeMap<u64, MemberRecord>>,
    /// Ids of members removed from the cluster, forever (ids are never reused).
    removed: RwLock<BTreeSet<u64>>,
}

impl Membership {
    /// Loads the stored identity and member table, or — for a new data dir — creates them from
    /// the initial cluster, with `me` being this member's name.
    pub fn open_or_bootstrap(
        db: &Database,
        me: &str,
        initial: &[InitialMember],
        token: &str,
    ) -> Result<(Arc<Membership>, Identity, bool), BootstrapError> {
        let read = db.begin_read().map_err(StorageError::from)?;
        let meta = read.open_table(META).map_err(StorageError::from)?;
        let stored_member = meta
            .get(META_MEMBER_ID)
            .map_err(StorageError::from)?
            .map(|v| v.value());
        let stored_cluster = meta
            .get(META_CLUSTER_ID)
            .map_err(StorageError::from)?
            .map(|v| v.value());
        drop(meta);
        if let (Some(member_id), Some(cluster_id)) = (stored_member, stored_cluster) {
            drop(read);
            let (members, removed) = load(db)?;
            let identity = Identity {
                member_id,
                cluster_id,
            };
            return Ok((
                Arc::new(Membership {
                    members: RwLock::new(members),
                    removed: RwLock::new(removed),
                }),
                identity,
                false,
            ));
        }
        drop(read);

        let mut members = BTreeMap::new();
        for m in initial {
            let id = member_id(&m.peer_urls, token);
            if members.contains_key(&id) {
                return Err(BootstrapError::DuplicatePeerUrls(m.name.clone()));
            }
            members.insert(
                id,
                MemberRecord {
                    id,
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    client_urls: Vec::new(),
                    is_learner: false,
                },
            );
        }
        let me_id = members
            .values()
            .find(|m| m.name == me)
            .map(|m| m.id)
            .ok_or_else(|| BootstrapError::NotInInitialCluster(me.to_string()))?;
        let ids: Vec<u64> = members.keys().copied().collect();
        let identity = Identity {
            member_id: me_id,
            cluster_id: cluster_id(&ids, token),
        };
        store(db, &members, identity)?;
        Ok((
            Arc::new(Membership {
                members: RwLock::new(members),
                removed: RwLock::new(BTreeSet::new()),
            }),
            identity,
            true,
        ))
    }

    /// Stores the identity and member table of a member joining a running cluster (with
    /// `--initial-cluster-state existing`), as the cluster told it. The member finds itself by
    /// its peer URLs.
    pub fn join(
        db: &Database,
        my_peer_urls: &[String],
        cluster_id: u64,
        members: Vec<MemberRecord>,
    ) -> Result<(Arc<Membership>, Identity), BootstrapError> {
        let mut mine: Vec<&String> = my_peer_urls.iter().collect();
        mine.sort();
        let me = members
            .iter()
            .find(|m| {
                let mut theirs: Vec<&String> = m.peer_urls.iter().collect();
                theirs.sort();
                theirs == mine
            })
            .ok_or_else(|| BootstrapError::NotAdded(my_peer_urls.join(",")))?;
        let identity = Identity {
            member_id: me.id,
            cluster_id,
        };
        let members: BTreeMap<u64, MemberRecord> = members.into_iter().map(|m| (m.id, m)).collect();
        store(db, &members, identity)?;
        Ok((
            Arc::new(Membership {
                members: RwLock::new(members),
                removed: RwLock::new(BTreeSet::new()),
            }),
            identity,
        ))
    }

    /// Reloads the table after a snapshot replaced it.
    pub fn reload(&self, db: &Database) -> StorageResult<()> {
        let (members, removed) = load(db)?;
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = members;
        *self.removed.write().unwrap_or_else(|e| e.into_inner()) = removed;
        Ok(())
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Whether `change` is valid against the current table.
    pub fn check(&self, change: &Change) -> Result<(), ServerError> {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        let url_taken = |urls: &[String], except: u64| {
            members
                .values()
                .filter(|m| m.id != except)
                .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
        };
        match change {
            Change::Add(m) => {
                check_urls(&m.peer_urls)?;
                if members.contains_key(&m.id) || self.is_removed(m.id) {
                    return Err(ServerError::MemberExist);
                }
                if url_taken(&m.peer_urls, m.id) {
                    return Err(ServerError::PeerUrlExist);
                }
                let learners = members.values().filter(|m| m.is_learner).count();
                if m.is_learner && learners >= MAX_LEARNERS {
                    return Err(ServerError::TooManyLearners);
                }
            }
            Change::Promote(id) => match members.get(id) {
                None => return Err(ServerError::MemberNotFound),
                Some(m) if !m.is_learner => return Err(ServerError::MemberNotLearner),
                Some(_) => {}
            },
            Change::Remove(id) => {
                if !members.contains_key(id) {
                    return Err(ServerError::MemberNotFound);
                }
            }
            Change::Update { id, peer_urls } => {
                check_urls(peer_urls)?;
                if !members.contains_key(id) {
                    return Err(ServerError::MemberNotFound);
                }
                if url_taken(peer_urls, *id) {
                    return Err(ServerError::PeerUrlExist);
                }
            }
        }
        Ok(())
    }

    /// Records `change` (already checked) inside apply's transaction.
    pub fn apply_change(&self, txn: &WriteTransaction, change: &Change) -> StorageResult<()> {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let mut table = txn.open_table(MEMBERS)?;
        match change {
            Change::Add(m) => {
                table.insert(m.id, m.encode_to_vec().as_slice())?;
                members.insert(m.id, m.clone());
            }
            Change::Promote(id) => {
                if let Some(m) = members.get_mut(id) {
                    m.is_learner = false;
                    table.insert(*id, m.encode_to_vec().as_slice())?;
                }
            }
            Change::Remove(id) => {
                table.remove(*id)?;
                members.remove(id);
                txn.open_table(REMOVED_MEMBERS)?.insert(*id, ())?;
                self.removed
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*id);
            }
            Change::Update { id, peer_urls } => {
                if let Some(m) = members.get_mut(id) {
                    m.peer_urls = peer_urls.clone();
                    table.insert(*id, m.encode_to_vec().as_slice())?;
                }
            }
        }
        Ok(())
    }

    /// All members, by id.
    pub fn list(&self) -> Vec<MemberRecord> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Whether member `id` is a learner (without copying its record: asked on every request).
    pub fn is_learner(&self, id: u64) -> bool {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|m| m.is_learner)
    }

    /// One member.
    pub fn get(&self, id: u64) -> Option<MemberRecord> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Records a member's published name and client URLs (inside the apply transaction).
    pub fn apply_publish(&self, txn: &WriteTransaction, p: &PublishMember) -> StorageResult<()> {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let Some(rec) = members.get_mut(&p.member_id) else {
            tracing::warn!(
                member = format!("{:x}", p.member_id),
                "publish from an unknown member"
            );
            return Ok(());
        };
        rec.name = p.name.clone();
        rec.client_urls = p.client_urls.clone();
        txn.open_table(MEMBERS)?
            .insert(p.member_id, rec.encode_to_vec().as_slice())?;
        Ok(())
    }
}

/// Stores a new member's identity and initial member table.
fn store(
    db: &Database,
    members: &BTreeMap<u64, MemberRecord>,
    identity: Identity,
) -> StorageResult<()> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(MEMBERS)?;
        for (id, rec) in members {
            table.insert(*id, rec.encode_to_vec().as_slice())?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(META_MEMBER_ID, identity.member_id)?;
        meta.insert(META_CLUSTER_ID, identity.cluster_id)?;
    }
    txn.commit()?;
    Ok(())
}

/// The stored member table and removed ids.
type Tables = (BTreeMap<u64, MemberRecord>, BTreeSet<u64>);

fn load(db: &Database) -> StorageResult<Tables> {
    let read = db.begin_read()?;
    let mut removed = BTreeSet::new();
    for row in read.open_table(REMOVED_MEMBERS)?.iter()? {
        removed.insert(row?.0.value());
    }
    let table = read.open_table(MEMBERS)?;
    let mut members = BTreeMap::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let rec = MemberRecord::decode(v.value()).map_err(|e| StorageError::Corrupt {
            table: "members",
            detail: e.to_string(),
        })?;
        members.insert(k.value(), rec);
    }
    Ok((members, removed))
}

/// Why a member could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--initial-cluster does not contain this member's --name {0:?}")]
    NotInInitialCluster(String),
    #[error("--initial-cluster: member {0:?} has the same peer URLs as another member")]
    DuplicatePeerUrls(String),
    #[error(
        "--initial-cluster-state existing: the cluster has no member with this member's peer URLs ({0}); add it first (MemberAdd)"
    )]
    NotAdded(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = member_id(&["http://a:2380".into(), "http://b:2380".into()], "t");
        let b = member_id(&["http://b:2380".into(), "http://a:2380".into()], "t");
        assert_eq!(a, b);
        assert_ne!(a, member_id(&["http://a:2380".into()], "t"));
        assert_ne!(
            a,
            member_id(&["http://a:2380".into(), "http://b:2380".into()], "u")
        );
        assert_eq!(cluster_id(&[3, 1, 2], "t"), cluster_id(&[1, 2, 3], "t"));
    }

    fn member(id: u64, url: &str, is_learner: bool) -> MemberRecord {
        MemberRecord {
            id,
            peer_urls: vec![url.into()],
            is_learner,
            ..Default::default()
        }
    }

    #[test]
    fn changes_are_checked_against_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open(dir.path()).unwrap();
        let (m, _) = Membership::join(
            &db.get(),
            &["http://h:2".into()],
            7,
            vec![
                member(1, "http://h:1", false),
                member(2, "http://h:2", false),
            ],
        )
        .unwrap();
        let add = |id, url: &str, learner| Change::Add(member(id, url, learner));
        assert_eq!(m.check(&add(3, "http://h:3", false)), Ok(()));
        assert_eq!(
            m.check(&add(3, "http://h:1", false)),
            Err(ServerError::PeerUrlExist)
        );
        assert_eq!(
            m.check(&add(1, "http://h:3", false)),
            Err(ServerError::MemberExist)
        );
        assert_eq!(
            m.check(&add(3, "h:3", false)),
            Err(ServerError::MemberBadUrls)
        );
        assert_eq!(
            m.check(&add(3, "http://h", false)),
            Err(ServerError::MemberBadUrls)
        );
        assert_eq!(
            m.check(&Change::Remove(9)),
            Err(ServerError::MemberNotFound)
        );
        assert_eq!(
            m.check(&Change::Promote(1)),
            Err(ServerError::MemberNotLearner)
        );

        let txn = db.begin_write().unwrap();
        m.apply_change(&txn, &add(3, "http://h:3", true)).unwrap();
        txn.commit().unwrap();
        assert_eq!(
            m.check(&add(4, "http://h:4", true)),
            Err(ServerError::TooManyLearners)
        );
        assert_eq!(m.check(&Change::Promote(3)), Ok(()));
        let txn = db.begin_write().unwrap();
        m.apply_change(&txn, &Change::Promote(3)).unwrap();
        m.apply_change(&txn, &Change::Remove(1)).unwrap();
        m.apply_change(
            &txn,
            &Change::Update {
                id: 2,
                peer_urls: vec!["http://h:22".into()],
            },
        )
        .unwrap();
        txn.commit().unwrap();
        // The table on disk matches the one in memory.
        let m2 = Membership {
            members: RwLock::new(BTreeMap::new()),
            removed: RwLock::new(BTreeSet::new()),
        };
        m2.reload(&db.get()).unwrap();
        assert!(m2.is_removed(1) && !m2.is_removed(2));
        assert_eq!(
            m2.check(&add(1, "http://h:9", false)),
            Err(ServerError::MemberExist),
            "a removed id is never reused"
        );
        assert_eq!(m.list(), m2.list());
        let ids: Vec<(u64, bool)> = m2.list().iter().map(|r| (r.id, r.is_learner)).collect();
        assert_eq!(ids, vec![(2, false), (3, false)]);
        assert_eq!(
            m2.get(2).unwrap().peer_urls,
            vec!["http://h:22".to_string()]
        );
    }

    #[test]
    fn a_joining_member_must_have_been_added() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open(dir.path()).unwrap();
        let err = Membership::join(
            &db.get(),
            &["http://h:9".into()],
            7,
            vec![member(1, "http://h:1", false)],
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("http://h:9"), "{err}");
    }

    #[test]
    fn bootstrap_then_reload_keeps_identity() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open(dir.path()).unwrap();
        let initial = vec![
            InitialMember {
                name: "n1".into(),
                peer_urls: vec!["http://127.0.0.1:1".into()],
            },
            InitialMember {
                name: "n2".into(),
                peer_urls: vec!["http://127.0.0.1:2".into()],
            },
        ];
        let (m, id, fresh) =
            Membership::open_or_bootstrap(&db.get(), "n2", &initial, "tok").unwrap();
        assert!(fresh);
        assert_eq!(m.list().len(), 2);
        // A restart ignores the flags and keeps the stored identity.
        let (m2, id2, fresh2) =
            Membership::open_or_bootstrap(&db.get(), "n2", &[], "other").unwrap();
        assert!(!fresh2);
        assert_eq!(id, id2);
        assert_eq!(m2.list().len(), 2);
        let err = Membership::open_or_bootstrap(
            &crate::storage::open(tempfile::tempdir().unwrap().path())
                .unwrap()
                .get(),
            "n9",
            &initial,
            "tok",
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("n9"));
    }
}
