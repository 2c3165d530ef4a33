//! Group membership: named groups of live members with metadata, that disappear with their lease.
//! Built on plain keys, leases and watches, so it works against etcd as well; Conclave also serves
//! it as the `conclave.v1.Membership` service.
//!
//! Contract: a member of group `G` with id `I` is the key `__conclave/groups/G/I` (value: its
//! metadata) attached to the member's lease. [`Group::list`] answers the members at one revision
//! (the header's); [`Group::watch`] from that revision + 1 reports every later join, update and
//! leave, in revision order, so list + watch misses nothing. A join is the key's first version
//! (`join_revision` = its create revision), an update a later put, a leave its delete — by
//! [`Group::leave`] or because the lease ended.

use conclave_proto::conclave::v1::group_event::EventType;
use conclave_proto::conclave::v1::{GroupEvent, Member};
use conclave_proto::etcdserverpb::ResponseHeader;
use conclave_proto::mvccpb::KeyValue;
use conclave_proto::mvccpb::event::EventType as KvEventType;

use crate::client::Client;
use crate::error::Error;
use crate::kv::{DeleteOptions, GetOptions, PutOptions};
use crate::session::Session;
use crate::watch::{WatchMessage, WatchOptions, WatchStream};

/// Where every group's members live.
pub const GROUPS_PREFIX: &str = "__conclave/groups/";

/// A membership group.
///
/// # Example
///
/// ```no_run
/// # async fn example() -> Result<(), conclave_client::Error> {
/// # let client = conclave_client::Client::connect(
/// #     ["127.0.0.1:2379"],
/// #     conclave_client::ConnectOptions::new(),
/// # )
/// # .await?;
/// use conclave_client::{Group, Session, SessionOptions};
///
/// let workers = Group::new(&client, "workers")?;
/// let session = Session::new(&client, SessionOptions::new(10)).await?;
/// workers.join_session(&session, "worker-7", "10.0.0.7:7000").await?;
/// let (revision, members) = workers.list().await?;
/// let mut changes = workers.watch(revision + 1).await?;
/// while let Some(events) = changes.next().await {
///     for event in events? {
///         println!("{event:?}");
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Group {
    client: Client,
    prefix: Vec<u8>,
}

impl Group {
    /// The group `name` (not empty, no `/`).
    pub fn new(client: &Client, name: &str) -> Result<Group, Error> {
        if name.is_empty() || name.contains('/') {
            return Err(Error::InvalidGroup(name.to_string()));
        }
        Ok(Group {
            client: client.clone(),
            prefix: format!("{GROUPS_PREFIX}{name}/").into_bytes(),
        })
    }

    fn key(&self, id: &[u8]) -> Result<Vec<u8>, Error> {
        if id.is_empty() {
            return Err(Error::EmptyKey);
        }
        let mut key = self.prefix.clone();
        key.extend_from_slice(id);
        Ok(key)
    }

    /// Joins (or updates the metadata of) member `id`, living on `lease`.
    pub async fn join(
        &self,
        lease: i64,
        id: impl Into<Vec<u8>>,
        metadata: impl Into<Vec<u8>>,
    ) -> Result<(Option<ResponseHeader>, Member), Error> {
        let id = id.into();
        let metadata = metadata.into();
        let r = self
            .client
            .kv()
            .put(
                self.key(&id)?,
                metadata.clone(),
                PutOptions::new().with_lease(lease).with_prev_kv(),
            )
            .await?;
        let revision = r.header.map_or(0, |h| h.revision);
        let member = Member {
            id,
            metadata,
            join_revision: r.prev_kv.map_or(revision, |kv| kv.create_revision),
            update_revision: revision,
            lease,
        };
        Ok((r.header, member))
    }

    /// Joins on `session`'s lease: the member leaves when the session ends.
    pub async fn join_session(
        &self,
        session: &Session,
        id: impl Into<Vec<u8>>,
        metadata: impl Into<Vec<u8>>,
    ) -> Result<Member, Error> {
        Ok(self.join(session.lease_id(), id, metadata).await?.1)
    }

    /// Removes member `id`; whether it was there.
    pub async fn leave(
        &self,
        id: impl Into<Vec<u8>>,
    ) -> Result<(Option<ResponseHeader>, bool), Error> {
        let r = self
            .client
            .kv()
            .delete(self.key(&id.into())?, DeleteOptions::new())
            .await?;
        Ok((r.header, r.deleted > 0))
    }

    /// The members, and the revision they were read at.
    pub async fn list(&self) -> Result<(i64, Vec<Member>), Error> {
        let (header, members) = self.list_with_header().await?;
        Ok((header.map_or(0, |h| h.revision), members))
    }

    /// [`Group::list`] with the whole response header.
    pub async fn list_with_header(&self) -> Result<(Option<ResponseHeader>, Vec<Member>), Error> {
        let r = self
            .client
            .kv()
            .get(self.prefix.clone(), GetOptions::new().with_prefix())
            .await?;
        let members = r.kvs.into_iter().map(|kv| self.member(kv)).collect();
        Ok((r.header, members))
    }

    /// Joins, updates and leaves from `start_revision` on (0: from now).
    pub async fn watch(&self, start_revision: i64) -> Result<GroupWatch, Error> {
        let mut options = WatchOptions::new().with_prefix().with_prev_kv();
        if start_revision > 0 {
            options = options.with_start_revision(start_revision);
        }
        let stream = self
            .client
            .watch()
            .watch(self.prefix.clone(), options)
            .await?;
        Ok(GroupWatch {
            group: self.clone(),
            stream,
        })
    }

    fn member(&self, kv: KeyValue) -> Member {
        Member {
            id: kv.key.get(self.prefix.len()..).unwrap_or_default().to_vec(),
            metadata: kv.value,
            join_revision: kv.create_revision,
            update_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// The changes of a group (see [`Group::watch`]).
pub struct GroupWatch {
    group: Group,
    stream: WatchStream,
}

impl GroupWatch {
    /// The next batch of events (one revision's, or several), in revision order; `None` when the
    /// watch ended.
    pub async fn next(&mut self) -> Option<Result<Vec<GroupEvent>, Error>> {
        loop {
            let events = match self.stream.next().await? {
                Err(e) => return Some(Err(e)),
                Ok(WatchMessage::Events { events, .. }) => events,
                Ok(WatchMessage::Progress { .. }) => continue,
            };
            let out: Vec<GroupEvent> = events
                .into_iter()
                .filter_map(|e| {
                    let kv = e.kv?;
                    let revision = kv.mod_revision;
                    let (kind, member) = if e.r#type == KvEventType::Delete as i32 {
                        let before = e.prev_kv.unwrap_or(KeyValue {
                            key: kv.key,
                            ..Default::default()
                        });
                        (EventType::Leave, self.group.member(before))
                    } else if kv.create_revision == kv.mod_revision {
                        (EventType::Join, self.group.member(kv))
                    } else {
                        (EventType::Update, self.group.member(kv))
                    };
                    Some(GroupEvent {
                        r#type: kind as i32,
                        member: Some(member),
                        revision,
                    })
                })
                .collect();
            if !out.is_empty() {
                return Some(Ok(out));
            }
        }
    }
}
