//! Leader election: etcd's recipe (the one behind etcd's `concurrency.Election` and its
//! `v3election` service), so it interoperates with etcd clients campaigning on the same name.
//!
//! Contract: candidates put `<name>/<lease in hex>` (value: their proposal) attached to their
//! lease; the leader is the candidate whose key has the lowest create revision. [`Election::campaign`]
//! waits for leadership in that order, watching only its predecessor, then checks that its key
//! still exists ([`Error::SessionExpired`] otherwise). The leader changes its value with
//! [`Leadership::proclaim`] and steps down with [`Leadership::resign`]; both act only while the key
//! still has the campaign's create revision ([`Error::NotLeader`] otherwise). [`Election::leader`]
//! answers the current leader's key-value ([`Error::NoLeader`] when there is none), and
//! [`Election::observe`] streams every leader and every value it proclaims, in order.
//! Leadership ends with the lease: [`Leadership::lost`] resolves when the key goes away.

use conclave_proto::etcdserverpb::ResponseHeader;
use conclave_proto::mvccpb::KeyValue;
use conclave_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::Error;
use crate::kv::{DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};
use crate::mutex::{Release, claim, first_event, wait_deleted, wait_for_predecessors};
use crate::session::Session;
use crate::txn::{Compare, CompareOp, Txn, TxnOp};
use crate::watch::{WatchMessage, WatchOptions};

/// An election named `name`: its candidates' keys live under `<name>/`.
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
/// use conclave_client::{Election, Session, SessionOptions};
///
/// let session = Session::new(&client, SessionOptions::new(10)).await?;
/// let election = Election::new(&client, "services/scheduler");
/// let leadership = election.campaign(&session, "10.0.0.7:9000").await?;
/// // Lead until the lease or the key goes away.
/// tokio::select! {
///     _ = session.lost() => {}
///     _ = leadership.lost(&client) => {}
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Election {
    client: Client,
    name: Vec<u8>,
    prefix: Vec<u8>,
}

/// Leadership won by a campaign (etcd's `LeaderKey`).
#[derive(Clone, Debug)]
pub struct Leadership {
    name: Vec<u8>,
    key: Vec<u8>,
    revision: i64,
    lease: i64,
    header: Option<ResponseHeader>,
}

impl Election {
    /// The election `name`.
    pub fn new(client: &Client, name: impl Into<Vec<u8>>) -> Election {
        let name = name.into();
        let mut prefix = name.clone();
        prefix.push(b'/');
        Election {
            client: client.clone(),
            name,
            prefix,
        }
    }

    /// Campaigns with `value` on `session`'s lease and waits until elected.
    pub async fn campaign(
        &self,
        session: &Session,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership, Error> {
        self.campaign_with_lease(session.lease_id(), value).await
    }

    /// Campaigns with `value` on `lease` (kept alive by the caller) and waits until elected.
    /// Campaigning again with the same lease keeps the place in line and updates the value.
    pub async fn campaign_with_lease(
        &self,
        lease: i64,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership, Error> {
        if lease == 0 {
            // A key without a lease would never expire, and every caller would share it.
            return Err(Error::LeaseNotFound);
        }
        let value = value.into();
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{lease:x}").as_bytes());
        let (claimed, revision, found) = claim(&self.client, &key, lease, &value).await?;
        // A key put here is deleted if this call ends early; one found (the same lease
        // campaigning again) belongs to the earlier campaign and is left alone.
        let guard = claimed.then(|| Release::new(&self.client, key.clone(), revision));
        let mut leadership = Leadership {
            name: self.name.clone(),
            key: key.clone(),
            revision,
            lease,
            header: None,
        };
        if found != value {
            leadership.proclaim(&self.client, value).await?;
        }
        wait_for_predecessors(&self.client, &self.prefix, leadership.revision).await?;
        let mine = self.client.kv().get(key, GetOptions::new()).await?;
        if mine.kvs.first().map(|kv| kv.create_revision) != Some(leadership.revision) {
            return Err(Error::SessionExpired);
        }
        if let Some(guard) = guard {
            guard.disarm();
        }
        leadership.header = mine.header;
        Ok(leadership)
    }

    /// The current leader's key-value, with the header of the read.
    pub async fn leader(&self) -> Result<(Option<ResponseHeader>, KeyValue), Error> {
        let r = self
            .client
            .kv()
            .get(self.prefix.clone(), first_created())
            .await?;
        match r.kvs.into_iter().next() {
            Some(kv) => Ok((r.header, kv)),
            None => Err(Error::NoLeader),
        }
    }

    /// Every leader in turn, and every value each proclaims: a new item when leadership passes
    /// or the leader's value changes. Ends (with an error) if a read or watch fails for good.
    pub fn observe(&self) -> Observer {
        let (tx, rx) = mpsc::channel(16);
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = follow(&client, &prefix, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Observer {
            rx,
            task: task.abort_handle(),
        }
    }
}

/// The leaders of an election as they come (see [`Election::observe`]).
pub struct Observer {
    rx: mpsc::Receiver<Result<KeyValue, Error>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Observer {
    fn drop(&mut self) {
        // Its watches end with it.
        self.task.abort();
    }
}

impl Observer {
    /// The next leader (or new value of the leader); `None` once the observer stopped.
    pub async fn next(&mut self) -> Option<Result<KeyValue, Error>> {
        self.rx.recv().await
    }
}

fn first_created() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortOrder::Ascend, SortTarget::Create)
        .with_limit(1)
}

/// Sends each leader and value change to `tx` until the receiver goes away.
async fn follow(
    client: &Client,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<KeyValue, Error>>,
) -> Result<(), Error> {
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        let r = client.kv().get(prefix.to_vec(), first_created()).await?;
        let at = r.header.map_or(0, |h| h.revision);
        let Some(leader) = r.kvs.into_iter().next() else {
            // No candidate: wait for the first one to appear.
            wait_for_put(client, prefix, at).await?;
            continue;
        };
        let seen = (leader.key.clone(), leader.mod_revision);
        if last.as_ref() != Some(&seen) {
            last = Some(seen);
            if tx.send(Ok(leader.clone())).await.is_err() {
                return Ok(());
            }
        }
        // Follow the leader's key: new values until it goes away. (Progress notifications keep
        // the resume point moving while it is idle; a compacted resume point means: read again.)
        let options = WatchOptions::new()
            .with_start_revision(at + 1)
            .with_progress_notify();
        let mut stream = match client.watch().watch(leader.key.clone(), options).await {
            Err(Error::WatchCompacted { .. }) => continue,
            other => other?,
        };
        'key: while let Some(message) = stream.next().await {
            let events = match message {
                Err(Error::WatchCompacted { .. }) => break 'key,
                Err(e) => return Err(e),
                Ok(WatchMessage::Events { events, .. }) => events,
                Ok(WatchMessage::Progress { .. }) => continue,
            };
            for event in events {
                if event.r#type == EventType::Delete as i32 {
                    break 'key;
                }
                if let Some(kv) = event.kv {
                    last = Some((kv.key.clone(), kv.mod_revision));
                    if tx.send(Ok(kv)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Waits for a put under `prefix` after revision `at` (or a compaction: the caller reads again).
async fn wait_for_put(client: &Client, prefix: &[u8], at: i64) -> Result<(), Error> {
    let puts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(at + 1)
        .with_filter_delete();
    first_event(client, prefix, puts).await
}

impl Leadership {
    /// Resumes leadership known from elsewhere (etcd's `LeaderKey`: name, key, create revision,
    /// lease), to proclaim or resign with it.
    pub fn resume(
        name: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
        revision: i64,
        lease: i64,
    ) -> Self {
        Leadership {
            name: name.into(),
            key: key.into(),
            revision,
            lease,
            header: None,
        }
    }

    /// The election's name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The leader's key (`<name>/<lease in hex>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key's create revision: the fencing token of this leadership.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The lease the leadership lives on.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The header of the response that confirmed the leadership (or the last proclaim).
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// A compare that holds only while this leadership lasts.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    /// Sets the leader's value; [`Error::NotLeader`] if the leadership is over.
    pub async fn proclaim(
        &mut self,
        client: &Client,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), Error> {
        let update = Txn::new().when([self.fence()]).and_then([TxnOp::put(
            self.key.clone(),
            value,
            PutOptions::new().with_lease(self.lease),
        )]);
        let r = client.kv().txn(update).await?;
        if !r.succeeded {
            return Err(Error::NotLeader);
        }
        self.header = r.header;
        Ok(())
    }

    /// Steps down (deletes the key if it is still this leadership's); the next candidate leads.
    pub async fn resign(self, client: &Client) -> Result<Option<ResponseHeader>, Error> {
        let step_down = Txn::new()
            .when([self.fence()])
            .and_then([TxnOp::delete(self.key.clone(), DeleteOptions::new())]);
        Ok(client.kv().txn(step_down).await?.header)
    }

    /// Resolves when the leadership is over: its key deleted (lease ended, resigned elsewhere) or
    /// replaced. An error if that cannot be watched.
    pub async fn lost(&self, client: &Client) -> Result<(), Error> {
        loop {
            let r = client.kv().get(self.key.clone(), GetOptions::new()).await?;
            if r.kvs.first().map(|kv| kv.create_revision) != Some(self.revision) {
                return Ok(());
            }
            let at = r.header.map_or(0, |h| h.revision);
            // Returns on the delete, or when its history was compacted: read again.
            wait_deleted(client, &self.key, at).await?;
        }
    }
}
