//! The raft driver. One task owns the `RawNode`; it ticks, takes proposals, peer messages and read
//! requests, and handles `Ready` in the order raft-rs and the raft thesis require: send `messages()`
//! at once (followers may append while the leader fsyncs), persist entries and hard state durably
//! while applying the committed entries (already persisted by earlier Readys; the append runs on
//! [`log_writer`]'s thread, apply on this task: see [`crate::apply`]), only then send
//! `persisted_messages()`, advance, and handle the `LightReady` the same way. It knows nothing of
//! keys and values: commands are opaque bytes.
//!
//! A snapshot in a Ready (a member far behind, or new) was received into a file by the peer
//! service; it is installed first ([`Applier::restore`]). Committed conf changes go to raft-rs as
//! apply meets them; afterwards the transport follows the member table, and a member that finds
//! itself removed stops.
//!
//! [`Node`] is the handle the API uses: `propose` (waits for the applied result), `propose_change`
//! (membership), `read_barrier` (linearizable reads through batched ReadIndex) and `progress`
//! (the leader's view of its followers).

pub mod defrag;
mod log_writer;
mod logger;
pub mod proposal;
pub mod read_index;
pub mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conclave_proto::conclave::internal::v1::{RaftCommand, raft_command::Op};
use prost::Message as _;
use raft::prelude::{ConfChange, ConfState, Message};
use raft::raw_node::Ready;
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::{Applier, ApplyOutcome};
use crate::error::ServerError;
use crate::membership::{self, Change};
use crate::storage::raft_log::RaftLog;
use crate::storage::{Db, StorageError, snapshot};
use defrag::{DefragReply, DefragReport, Defragmenter};
use log_writer::LogWriter;
use proposal::{ProposalBatch, Waiters};
use read_index::{ReadIndexBatch, ReadWaiter};
use transport::{PeerReport, Transport};

/// A leader keeps up to this many times the retention for a follower that is behind but still
/// replicating, rather than make it fetch a snapshot.
const SLOW_FOLLOWER_ALLOWANCE: u64 = 10;
/// Most proposals taken from the queue before handling a Ready.
const MAX_PROPOSALS_PER_READY: usize = 1024;

/// Timing of the raft loop.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    /// One raft tick; the heartbeat interval.
    pub tick: Duration,
    /// Election timeout, in ticks.
    pub election_ticks: usize,
}

/// What the rest of the member may know of raft.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub last_index: u64,
    pub is_leader: bool,
}

enum Proposal {
    Command {
        data: Vec<u8>,
        request_id: u64,
        /// Non-zero: append only while leading in this term (see [`Node::propose_as_leader`]).
        leader_term: u64,
    },
    ConfChange {
        cc: ConfChange,
        request_id: u64,
    },
}

impl LeaderProgress {
    /// The voter to hand leadership to instead of `leaving`: the most up-to-date active one.
    pub fn successor(&self, leaving: u64) -> Option<u64> {
        self.voters
            .iter()
            .filter(|v| **v != leaving && self.active.get(v).copied().unwrap_or(false))
            .max_by_key(|v| self.matched.get(v).copied().unwrap_or(0))
            .copied()
    }
}

/// The leader's view of replication, for membership decisions.
#[derive(Debug, Clone, Default)]
pub struct LeaderProgress {
    /// The leader's last log index.
    pub last_index: u64,
    /// Per member (the leader included): highest index known to be replicated there.
    pub matched: HashMap<u64, u64>,
    /// Members heard from within the last election timeout (the leader counts itself).
    pub active: HashMap<u64, bool>,
    pub voters: Vec<u64>,
}

/// The API's handle on this member's raft node.
pub struct Node {
    pub member_id: u64,
    pub cluster_id: u64,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<ReadWaiter>,
    peer_messages: mpsc::Sender<Message>,
    transfers: mpsc::Sender<u64>,
    progress: mpsc::Sender<oneshot::Sender<Option<LeaderProgress>>>,
    defrags: mpsc::Sender<DefragReply>,
    waiters: Arc<Waiters>,
    status: watch::Receiver<RaftStatus>,
    leading: watch::Receiver<Option<u64>>,
    applied: watch::Receiver<u64>,
    next_request_id: AtomicU64,
    request_timeout: Duration,
}

impl Node {
    /// Current raft status.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// The term this member leads in (`None` while it does not lead). Changes only with
    /// leadership, not with every commit as the status does.
    pub fn leadership_watch(&self) -> watch::Receiver<Option<u64>> {
        self.leading.clone()
    }

    /// Whether the raft task still runs.
    pub fn is_running(&self) -> bool {
        !self.proposals.is_closed()
    }

    /// Index of the last entry applied to the state machine.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Delivers messages from a peer to the raft task (waits if the task is busy).
    pub async fn step(&self, messages: Vec<Message>) -> Result<(), ServerError> {
        for m in messages {
            self.peer_messages
                .send(m)
                .await
                .map_err(|_| ServerError::Stopped)?;
        }
        Ok(())
    }

    /// Proposes `op` and waits until it is applied on this member. A proposal that raft dropped
    /// (no leader known) is retried until the deadline; one that was handed to raft and got no
    /// answer in time is reported as `Timeout`: its outcome is unknown.
    pub async fn propose(&self, op: Op, max_bytes: usize) -> ApplyOutcome {
        self.propose_in_term(op, 0, max_bytes).await
    }

    /// Proposes a command the leader makes on its own authority (expiring a lease, recording
    /// remaining TTLs), valid only while this member leads in `term`. Fails with `NotLeader` if it
    /// no longer does: never forwarded to a successor, and ignored by apply if its entry ends up in
    /// another term.
    pub async fn propose_as_leader(&self, op: Op, term: u64, max_bytes: usize) -> ApplyOutcome {
        self.propose_in_term(op, term, max_bytes).await
    }

    async fn propose_in_term(&self, op: Op, leader_term: u64, max_bytes: usize) -> ApplyOutcome {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut cmd = RaftCommand {
            origin: self.member_id,
            request_id: 0,
            op: Some(op),
            leader_term,
        };
        loop {
            // A new id for each attempt: the waiter of a dropped one may still fire.
            let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            cmd.request_id = request_id;
            let data = cmd.encode_to_vec();
            if data.len() > max_bytes {
                return Err(ServerError::RequestTooLarge);
            }
            let waiter = self.waiters.register(request_id);
            if self
                .proposals
                .send(Proposal::Command {
                    data,
                    request_id,
                    leader_term,
                })
                .await
                .is_err()
            {
                self.waiters.cancel(request_id);
                return Err(ServerError::Stopped);
            }
            match tokio::time::timeout_at(deadline, waiter).await {
                Ok(Ok(Err(ServerError::NoLeader))) => {
                    // Dropped before reaching the log: safe to retry once a leader is known.
                    let mut status = self.status.clone();
                    let known =
                        tokio::time::timeout_at(deadline, status.wait_for(|s| s.leader != 0));
                    if known.await.is_err() {
                        return Err(ServerError::NoLeader);
                    }
                }
                Ok(Ok(outcome)) => return outcome,
                Ok(Err(_)) => return Err(ServerError::Stopped),
                Err(_) => {
                    self.waiters.cancel(request_id);
                    crate::metrics::inc(&crate::metrics::get().proposals_failed);
                    return Err(ServerError::Timeout);
                }
            }
        }
    }

    /// Proposes a membership change and waits until it is applied here. A peer URL update is an
    /// ordinary command; the others are raft conf changes, one at a time (another one not yet
    /// applied answers `Unhealthy`).
    pub async fn propose_change(&self, change: Change, max_bytes: usize) -> ApplyOutcome {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let Some(cc) = membership::conf_change(&change, self.member_id, request_id) else {
            let Change::Update { id, peer_urls } = change else {
                return Err(ServerError::NotCapable);
            };
            let record = conclave_proto::conclave::internal::v1::MemberRecord {
                id,
                peer_urls,
                ..Default::default()
            };
            return self.propose(Op::MemberUpdate(record), max_bytes).await;
        };
        let waiter = self.waiters.register(request_id);
        if self
            .proposals
            .send(Proposal::ConfChange { cc, request_id })
            .await
            .is_err()
        {
            self.waiters.cancel(request_id);
            return Err(ServerError::Stopped);
        }
        match tokio::time::timeout(self.request_timeout, waiter).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                self.waiters.cancel(request_id);
                Err(ServerError::Timeout)
            }
        }
    }

    /// The leader's view of its followers; `None` on a member that does not lead.
    pub async fn progress(&self) -> Result<Option<LeaderProgress>, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.progress
            .send(tx)
            .await
            .map_err(|_| ServerError::Stopped)?;
        rx.await.map_err(|_| ServerError::Stopped)
    }

    /// Defragments this member's database (see [`defrag`]); answers when done.
    pub async fn defragment(&self) -> Result<DefragReport, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.defrags
            .send(tx)
            .await
            .map_err(|_| ServerError::Stopped)?;
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    /// Moves leadership to `target` (a voting member) and waits until it leads. Only the leader
    /// can do this; the caller checks that `target` is a voter.
    pub async fn transfer_leadership(&self, target: u64) -> Result<(), ServerError> {
        if !self.status.borrow().is_leader {
            return Err(ServerError::NotLeader);
        }
        if target == self.member_id {
            return Ok(());
        }
        self.transfers
            .send(target)
            .await
            .map_err(|_| ServerError::Stopped)?;
        let mut status = self.status.clone();
        match tokio::time::timeout(
            self.request_timeout,
            status.wait_for(|s| s.leader == target),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::LeaderTransferTimeout),
        }
    }

    /// Waits until this member has applied everything committed before the call: after it returns,
    /// a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let (tx, rx) = oneshot::channel();
        self.reads
            .send(tx)
            .await
            .map_err(|_| ServerError::Stopped)?;
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(index)) => index,
            Ok(Err(_)) => return Err(ServerError::Stopped),
            Err(_) => {
                return Err(if self.status.borrow().leader == 0 {
                    ServerError::NoLeader
                } else {
                    ServerError::Timeout
                });
            }
        };
        let mut applied = self.applied.clone();
        match tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }
}

/// Everything the raft task needs to start.
pub struct NodeParts {
    pub member_id: u64,
    pub cluster_id: u64,
    pub log: RaftLog,
    pub voters: Vec<u64>,
    pub peers: HashMap<u64, String>,
    pub timing: RaftTiming,
    pub applied_index: u64,
    /// Log entries kept behind the applied index (`--experimental-snapshot-catchup-entries`).
    pub log_retention: u64,
    pub request_timeout: Duration,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Receiver<u64>,
    /// Where received snapshots wait to be installed.
    pub snapshot_dir: PathBuf,
    /// The member's database and data dir (defragmentation replaces the database file).
    pub db: Db,
    pub data_dir: PathBuf,
}

/// Errors that stop the raft task (and the member).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the member has been permanently removed from the cluster")]
    Removed,
}

/// Creates the raft node and returns the handle plus the task to run (on a dedicated thread: it
/// does blocking fsyncs). `peer_io` is that thread's runtime (raft messages are sent from it);
/// `background` runs snapshot transfers.
pub fn create(
    parts: NodeParts,
    peer_io: &tokio::runtime::Handle,
    background: &tokio::runtime::Handle,
) -> Result<(Arc<Node>, Driver), NodeError> {
    // A member of a new cluster stores the initial voters; one joining a running cluster starts
    // with none and learns the configuration from the snapshot the leader sends.
    if !parts.log.is_initialized() && !parts.voters.is_empty() {
        parts
            .log
            .bootstrap(ConfState::from((parts.voters.clone(), vec![])))?;
    }
    let config = raft::Config {
        id: parts.member_id,
        election_tick: parts.timing.election_ticks,
        heartbeat_tick: 1,
        applied: parts.applied_index,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        // Appends to one follower that pile up between two Readys (proposals stepped one after
        // another, forwarded batches from several followers) leave as one message.
        batch_append: true,
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::Safe,
        ..Default::default()
    };
    config.validate()?;
    let raw = RawNode::new(
        &config,
        parts.log.clone(),
        &logger::raft_logger(parts.member_id),
    )?;
    let (proposals_tx, proposals_rx) = mpsc::channel(4096);
    let (reads_tx, reads_rx) = mpsc::channel(4096);
    let (peer_tx, peer_rx) = mpsc::channel(4096);
    let (reports_tx, reports_rx) = mpsc::channel(64);
    let (transfers_tx, transfers_rx) = mpsc::channel(8);
    let (progress_tx, progress_rx) = mpsc::channel(8);
    let (defrags_tx, defrags_rx) = mpsc::channel(8);
    let (status_tx, status_rx) = watch::channel(RaftStatus::default());
    let (leading_tx, leading_rx) = watch::channel(None);
    let mut transport = Transport::new(
        peer_io.clone(),
        background.clone(),
        parts.cluster_id,
        parts.member_id,
        parts.log.snapshots(),
        reports_tx,
    );
    transport.set_peers(parts.peers);
    let node = Arc::new(Node {
        member_id: parts.member_id,
        cluster_id: parts.cluster_id,
        proposals: proposals_tx,
        reads: reads_tx,
        peer_messages: peer_tx,
        transfers: transfers_tx,
        progress: progress_tx,
        defrags: defrags_tx,
        waiters: parts.waiters.clone(),
        status: status_rx,
        leading: leading_rx,
        applied: parts.applied.clone(),
        // Unique across restarts: results of an old incarnation's proposals never reach new waiters.
        next_request_id: AtomicU64::new(rand::random::<u64>() >> 1),
        request_timeout: parts.request_timeout,
    });
    let log_writer = LogWriter::start(parts.log.clone()).map_err(StorageError::Io)?;
    let driver = Driver {
        raw,
        log: parts.log,
        log_writer,
        timing: parts.timing,
        proposals: proposals_rx,
        reads: reads_rx,
        peer_messages: peer_rx,
        reports: reports_rx,
        transfers: transfers_rx,
        progress: progress_rx,
        defrags: defrags_rx,
        defragmenter: Defragmenter::new(parts.db, parts.data_dir),
        transport,
        snapshot_dir: parts.snapshot_dir,
        log_retention: parts.log_retention,
        waiters: parts.waiters,
        status: status_tx,
        leading: leading_tx,
        applied: parts.applied,
        reads_batch: ReadIndexBatch::default(),
        proposal_batch: ProposalBatch::default(),
        heard: HashMap::new(),
    };
    Ok((node, driver))
}

/// The raft task.
pub struct Driver {
    raw: RawNode<RaftLog>,
    log: RaftLog,
    /// Appends a Ready's entries while its committed entries are applied.
    log_writer: LogWriter,
    timing: RaftTiming,
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<ReadWaiter>,
    peer_messages: mpsc::Receiver<Message>,
    reports: mpsc::Receiver<PeerReport>,
    transfers: mpsc::Receiver<u64>,
    progress: mpsc::Receiver<oneshot::Sender<Option<LeaderProgress>>>,
    defrags: mpsc::Receiver<DefragReply>,
    defragmenter: Defragmenter,
    transport: Transport,
    snapshot_dir: PathBuf,
    log_retention: u64,
    waiters: Arc<Waiters>,
    status: watch::Sender<RaftStatus>,
    leading: watch::Sender<Option<u64>>,
    applied: watch::Receiver<u64>,
    reads_batch: ReadIndexBatch,
    /// Commands taken this turn, proposed together by `flush_proposals`.
    proposal_batch: ProposalBatch,
    /// When each peer was last heard from. raft-rs's own "recently active" flag is cleared for
    /// every follower once per election timeout (check quorum) and set again by its next answer,
    /// so reading it can call a live follower down; this cannot.
    heard: HashMap<u64, Instant>,
}

impl Driver {
    /// Runs until `shutdown` fires or a fatal error occurs; committed entries go to `applier`.
    pub async fn run(
        mut self,
        applier: Applier,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(self.timing.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let read_timeout = self.timing.tick * self.timing.election_ticks as u32;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    if let Some(ctx) = self.reads_batch.on_tick(Instant::now(), read_timeout) {
                        self.raw.read_index(ctx);
                    }
                }
                Some(p) = self.proposals.recv() => {
                    self.propose(p);
                    self.take_queued_proposals(MAX_PROPOSALS_PER_READY - 1);
                }
                Some(m) = self.peer_messages.recv() => {
                    self.step(m);
                    self.take_queued_peer_messages();
                }
                Some(reader) = self.reads.recv() => {
                    let now = Instant::now();
                    if let Some(ctx) = self.reads_batch.add(reader, now) {
                        self.raw.read_index(ctx);
                    }
                    while let Ok(reader) = self.reads.try_recv() {
                        if let Some(ctx) = self.reads_batch.add(reader, now) {
                            self.raw.read_index(ctx);
                        }
                    }
                }
                Some(report) = self.reports.recv() => match report {
                    PeerReport::Unreachable(peer) => self.raw.report_unreachable(peer),
                    PeerReport::Removed => return Err(NodeError::Removed),
                    PeerReport::Snapshot { to, sent } => {
                        let status = if sent {
                            raft::SnapshotStatus::Finish
                        } else {
                            raft::SnapshotStatus::Failure
                        };
                        self.raw.report_snapshot(to, status);
                    }
                },
                Some(target) = self.transfers.recv() => self.raw.transfer_leader(target),
                Some(reply) = self.progress.recv() => {
                    let _ = reply.send(self.leader_progress());
                }
                Some(reply) = self.defrags.recv() => self.defragmenter.request(reply),
                copy = self.defragmenter.copied() => self.defragmenter.finish(copy)?,
                _ = shutdown.changed() => {
                    // A restart after a clean stop replays nothing.
                    let applied = *self.applied.borrow();
                    self.log.sync_state(applied)?;
                    return Ok(());
                }
            }
            if self.raw.has_ready() {
                // The peer connections are served by this thread: let those already woken by
                // incoming data hand it over, so that one Ready (one fsync) covers it too. (Data
                // the runtime only discovers during this yield waits for the next turn.)
                tokio::task::yield_now().await;
                self.take_queued_peer_messages();
                self.take_queued_proposals(MAX_PROPOSALS_PER_READY);
                let mut ready = self.raw.ready();
                let early = ready.take_messages();
                let blocks = !ready.entries().is_empty()
                    || ready.hs().is_some()
                    || !ready.snapshot().is_empty();
                let sends = !early.is_empty();
                self.transport.send(early);
                if sends && blocks {
                    // The peer senders run on this thread: let them put the messages on the wire
                    // before this thread blocks in fsync, so that followers persist in parallel.
                    tokio::task::yield_now().await;
                }
                self.on_ready(ready, &applier)?;
            }
            self.maybe_truncate_log()?;
        }
    }

    /// Proposes up to `limit` proposals already queued, without waiting for more, and whatever
    /// `propose` batched before.
    fn take_queued_proposals(&mut self, limit: usize) {
        for _ in 0..limit {
            match self.proposals.try_recv() {
                Ok(p) => self.propose(p),
                Err(_) => break,
            }
        }
        self.flush_proposals();
    }

    /// Proposes the commands batched so far as one raft message.
    fn flush_proposals(&mut self) {
        let Some((m, request_ids)) = self.proposal_batch.take(self.raw.raft.id) else {
            return;
        };
        if let Err(e) = self.raw.raft.step(m) {
            self.refused(&e, request_ids);
        }
    }

    /// Steps every peer message already queued, without waiting for more.
    fn take_queued_peer_messages(&mut self) {
        while let Ok(m) = self.peer_messages.try_recv() {
            self.step(m);
        }
    }

    /// Batches a command (proposed by the caller's `take_queued_proposals`); proposes a conf change
    /// at once, after the commands batched before it.
    fn propose(&mut self, p: Proposal) {
        match p {
            Proposal::Command {
                data,
                request_id,
                leader_term,
            } => {
                let raft = &self.raw.raft;
                if leader_term != 0 && (raft.state != StateRole::Leader || raft.term != leader_term)
                {
                    self.waiters.fire(request_id, Err(ServerError::NotLeader));
                } else if self.proposal_batch.push(data, request_id) {
                    self.flush_proposals();
                }
            }
            Proposal::ConfChange { cc, request_id } => {
                self.flush_proposals();
                let raft = &self.raw.raft;
                // raft-rs would silently turn a second pending change into an empty entry.
                if raft.state == StateRole::Leader && raft.has_pending_conf() {
                    self.waiters.fire(request_id, Err(ServerError::Unhealthy));
                } else if let Err(e) = self.raw.propose_conf_change(vec![], cc) {
                    self.refused(&e, [request_id]);
                }
            }
        }
    }

    /// A proposal raft-rs refused (no leader known, a leadership transfer under way): none of its
    /// entries reached the log, so each waiter gets "no leader" and `Node::propose` retries.
    fn refused(&self, e: &raft::Error, request_ids: impl IntoIterator<Item = u64>) {
        if !matches!(e, raft::Error::ProposalDropped) {
            tracing::warn!(error = %e, "proposal refused by raft");
        }
        for id in request_ids {
            self.waiters.fire(id, Err(ServerError::NoLeader));
        }
    }

    fn leader_progress(&self) -> Option<LeaderProgress> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let mut view = LeaderProgress {
            last_index: raft.raft_log.last_index(),
            voters: raft.prs().conf().voters().ids().iter().collect(),
            ..Default::default()
        };
        let window = self.timing.tick * self.timing.election_ticks as u32;
        for (id, pr) in raft.prs().iter() {
            let me = *id == raft.id;
            view.matched
                .insert(*id, if me { view.last_index } else { pr.matched });
            let recent = self.heard.get(id).is_some_and(|t| t.elapsed() < window);
            view.active.insert(*id, me || recent);
        }
        view.voters.sort_unstable();
        Some(view)
    }

    fn step(&mut self, m: Message) {
        self.heard.insert(m.from, Instant::now());
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(error = %e, "raft refused a peer message");
        }
    }

    /// Persists, sends and applies what `ready` holds, its early messages already sent.
    fn on_ready(&mut self, mut ready: Ready, applier: &Applier) -> Result<(), NodeError> {
        let mut members_changed = false;
        if !ready.snapshot().is_empty() {
            let meta = ready.snapshot().get_metadata();
            let path = snapshot::file_path(&self.snapshot_dir, meta.term, meta.index);
            applier.restore(meta, &path)?;
            members_changed = true;
        }
        // The committed entries were persisted by earlier Readys: they are applied while this
        // Ready's entries are made durable (when there is both; otherwise on this thread alone).
        let committed = ready.take_committed_entries();
        let overlap = !committed.is_empty() && !ready.entries().is_empty();
        if overlap {
            self.log_writer
                .begin(ready.take_entries(), ready.hs().cloned())?;
        } else {
            self.log.append(ready.entries(), ready.hs())?;
        }
        let raw = &mut self.raw;
        let applied = applier.apply(&committed, &mut |cc| raw.apply_conf_change(cc));
        // Durable before anything that depends on it, even if apply failed.
        self.log_writer.finish()?;
        members_changed |= applied?;
        // Nothing may be stepped into raft between `ready()` and `advance_append()` (raft-rs
        // panics if a follower has new messages after advance): rounds to start wait until then.
        let now = Instant::now();
        let next_rounds: Vec<Vec<u8>> = ready
            .take_read_states()
            .into_iter()
            .filter_map(|rs| {
                self.reads_batch
                    .on_read_state(&rs.request_ctx, rs.index, now)
            })
            .collect();
        self.transport.send(ready.take_persisted_messages());
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit);
        }
        self.transport.send(light.take_messages());
        let committed = light.take_committed_entries();
        let raw = &mut self.raw;
        members_changed |= applier.apply(&committed, &mut |cc| raw.apply_conf_change(cc))?;
        self.raw.advance_apply();
        for ctx in next_rounds {
            self.raw.read_index(ctx);
        }
        self.publish_status();
        if members_changed {
            self.follow_members(applier)?;
        }
        Ok(())
    }

    /// After the member table changed: stop if this member was removed, otherwise point the
    /// transport at the members as they are now.
    fn follow_members(&mut self, applier: &Applier) -> Result<(), NodeError> {
        let members = applier.membership.list();
        if !members.iter().any(|m| m.id == self.raw.raft.id) {
            return Err(NodeError::Removed);
        }
        self.transport.set_peers(
            members
                .into_iter()
                .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
                .collect(),
        );
        Ok(())
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let next = RaftStatus {
            leader: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            last_index: raft.raft_log.last_index(),
            is_leader: raft.state == StateRole::Leader,
        };
        if next.leader != 0 && next.leader != self.status.borrow().leader {
            crate::metrics::inc(&crate::metrics::get().leader_changes);
        }
        let leading = next.is_leader.then_some(next.term);
        self.leading.send_if_modified(|l| {
            let changed = *l != leading;
            *l = leading;
            changed
        });
        self.status.send_if_modified(|s| {
            if *s != next {
                *s = next;
                true
            } else {
                false
            }
        });
    }

    /// Drops log entries far enough behind the applied index. A leader also keeps what its
    /// followers still need, unless they are far behind (they get a snapshot instead). Apply does
    /// not sync the state database; this does, before truncating and at least once per
    /// retention's worth of entries.
    fn maybe_truncate_log(&mut self) -> Result<(), NodeError> {
        let applied = *self.applied.borrow();
        let first = self.log.first_index();
        let retention = self.log_retention;
        let mut target = applied.saturating_sub(retention);
        if self.raw.raft.state == StateRole::Leader {
            let slowest = self
                .raw
                .raft
                .prs()
                .iter()
                .map(|(_, p)| p.matched + 1)
                .min()
                .unwrap_or(target);
            let allowance = SLOW_FOLLOWER_ALLOWANCE * retention;
            target = target.min(slowest.max(applied.saturating_sub(allowance)));
        }
        // In steps of a tenth of the retention: one durable delete per step, after making the
        // state database hold durably what the dropped entries did.
        if target >= first + (retention / 10).max(1) {
            if self.log.state_synced() + 1 < target {
                self.log.sync_state(applied)?;
            }
            self.log.truncate_prefix(target)?;
        } else if applied >= self.log.state_synced() + retention {
            // The log is kept (a follower is behind): still bound what a restart replays.
            self.log.sync_state(applied)?;
        }
        Ok(())
    }
}
