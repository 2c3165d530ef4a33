//! The member table: who is in the cluster, with names, peer URLs and client URLs. Static bootstrap
//! from `--initial-cluster` derives every id deterministically, so all members agree without talking.
//! Members announce their client URLs through raft (`PublishMember`), like etcd's attribute publish.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use conclave_proto::conclave::internal::v1::{MemberRecord, PublishMember};
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use crate::storage::{MEMBERS, META, META_CLUSTER_ID, META_MEMBER_ID, StorageError, StorageResult};

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
            let table = read.open_table(MEMBERS).map_err(StorageError::from)?;
            let mut members = BTreeMap::new();
            for row in table.iter().map_err(StorageError::from)? {
                let (k, v) = row.map_err(StorageError::from)?;
                let rec = MemberRecord::decode(v.value()).map_err(|e| StorageError::Corrupt {
                    table: "members",
                    detail: e.to_string(),
                })?;
                members.insert(k.value(), rec);
            }
            let identity = Identity {
                member_id,
                cluster_id,
            };
            return Ok((
                Arc::new(Membership {
                    members: RwLock::new(members),
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
        let txn = db.begin_write().map_err(StorageError::from)?;
        {
            let mut table = txn.open_table(MEMBERS).map_err(StorageError::from)?;
            for (id, rec) in &members {
                table
                    .insert(*id, rec.encode_to_vec().as_slice())
                    .map_err(StorageError::from)?;
            }
            let mut meta = txn.open_table(META).map_err(StorageError::from)?;
            meta.insert(META_MEMBER_ID, identity.member_id)
                .map_err(StorageError::from)?;
            meta.insert(META_CLUSTER_ID, identity.cluster_id)
                .map_err(StorageError::from)?;
        }
        txn.commit().map_err(StorageError::from)?;
        Ok((
            Arc::new(Membership {
                members: RwLock::new(members),
            }),
            identity,
            true,
        ))
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

/// Why a member could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--initial-cluster does not contain this member's --name {0:?}")]
    NotInInitialCluster(String),
    #[error("--initial-cluster: member {0:?} has the same peer URLs as another member")]
    DuplicatePeerUrls(String),
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
        let (m, id, fresh) = Membership::open_or_bootstrap(&db, "n2", &initial, "tok").unwrap();
        assert!(fresh);
        assert_eq!(m.list().len(), 2);
        // A restart ignores the flags and keeps the stored identity.
        let (m2, id2, fresh2) = Membership::open_or_bootstrap(&db, "n2", &[], "other").unwrap();
        assert!(!fresh2);
        assert_eq!(id, id2);
        assert_eq!(m2.list().len(), 2);
        let err = Membership::open_or_bootstrap(
            &crate::storage::open(tempfile::tempdir().unwrap().path()).unwrap(),
            "n9",
            &initial,
            "tok",
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("n9"));
    }
}
