//! Sends raft messages to peers. `send` never blocks the raft task: each peer has a bounded queue
//! drained by its own sender task into one long-lived gRPC stream (no round trip per batch: a
//! message goes out as soon as it is queued), and a message that does not fit is dropped — raft tolerates lost
//! messages (it retries appends and heartbeats), but it must never stall waiting for a slow peer.
//! A failed delivery is reported so raft-rs can slow down its probes to that peer.
//!
//! A snapshot message is not queued: it gets its own task and its own connection (a large
//! transfer must not hold up heartbeats), which streams the parked read transaction in checked
//! chunks (see [`crate::storage::snapshot`]) and reports the outcome to raft-rs. The set of peers
//! follows the member table ([`Transport::set_peers`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_proto::conclave::peer::v1::raft_transport_client::RaftTransportClient;
use conclave_proto::conclave::peer::v1::{RaftBatch, SnapshotChunk, StreamEnd};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use crate::storage::snapshot::{self, CHUNK_BYTES, Registry};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages sent in one batch at most.
const MAX_BATCH: usize = 256;
/// How long opening a stream, or a stream that takes nothing, may last before the peer counts as
/// unreachable.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// Batches buffered per stream (beyond HTTP/2's own window) before the sender waits.
const STREAM_BUFFER: usize = 64;
/// Pause after a failed delivery before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a member answers a removed member's messages with.
pub const REMOVED: &str = "conclave: the member has been permanently removed from the cluster";

/// What the transport tells the raft task about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerReport {
    /// A delivery failed.
    Unreachable(u64),
    /// A peer refused our messages because this member was removed from the cluster.
    Removed,
    /// A snapshot transfer ended, successfully or not.
    Snapshot { to: u64, sent: bool },
}

struct Peer {
    url: String,
    queue: mpsc::Sender<Message>,
}

/// Outgoing raft messages of one member.
pub struct Transport {
    /// Runs the per-peer sender tasks and their connections: the raft thread's own runtime, so
    /// a message queued by the raft task is written out by the same thread, with no wake-up of
    /// another thread in between.
    peer_io: tokio::runtime::Handle,
    /// Runs snapshot transfers, which must not hold up the raft thread.
    background: tokio::runtime::Handle,
    cluster_id: u64,
    from: u64,
    peers: HashMap<u64, Peer>,
    snapshots: Arc<Registry>,
    reports: mpsc::Sender<PeerReport>,
}

impl Transport {
    /// A transport with no peers yet; sender tasks run on `peer_io`, snapshot transfers on
    /// `background`, snapshots come from `snapshots`, and failed deliveries and snapshot outcomes
    /// are reported on `reports`.
    pub fn new(
        peer_io: tokio::runtime::Handle,
        background: tokio::runtime::Handle,
        cluster_id: u64,
        from: u64,
        snapshots: Arc<Registry>,
        reports: mpsc::Sender<PeerReport>,
    ) -> Transport {
        Transport {
            peer_io,
            background,
            cluster_id,
            from,
            peers: HashMap::new(),
            snapshots,
            reports,
        }
    }

    /// Makes the peers exactly `peers` (member id to peer URL): starts a sender task for each
    /// new one (or one whose URL changed) and stops those of members that are gone.
    pub fn set_peers(&mut self, peers: HashMap<u64, String>) {
        self.peers
            .retain(|id, p| peers.get(id).is_some_and(|url| *url == p.url));
        for (id, url) in peers {
            if id == self.from || self.peers.contains_key(&id) {
                continue;
            }
            let (queue, rx) = mpsc::channel(PEER_QUEUE);
            self.peer_io.spawn(deliver(
                self.cluster_id,
                self.from,
                id,
                url.clone(),
                rx,
                self.reports.clone(),
            ));
            self.peers.insert(id, Peer { url, queue });
        }
    }

    /// Queues messages for their receivers; drops what does not fit.
    pub fn send(&self, messages: Vec<Message>) {
        for m in messages {
            let Some(peer) = self.peers.get(&m.to) else {
                tracing::debug!(to = m.to, "raft message for a member not in the table");
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let txn = self.snapshots.take(&m.get_snapshot().data);
                self.background.spawn(send_snapshot(
                    self.cluster_id,
                    peer.url.clone(),
                    m,
                    txn,
                    self.reports.clone(),
                ));
                continue;
            }
            if peer.queue.try_send(m).is_err() {
                tracing::debug!("peer queue full; dropping a raft message");
            }
        }
    }
}

/// Streams one snapshot to its receiver and reports the outcome to raft-rs.
async fn send_snapshot(
    cluster_id: u64,
    url: String,
    message: Message,
    txn: Option<redb::ReadTransaction>,
    reports: mpsc::Sender<PeerReport>,
) {
    let to = message.to;
    let meta = message.get_snapshot().get_metadata().clone();
    let started = Instant::now();
    tracing::info!(
        peer = format!("{to:x}"),
        index = meta.index,
        term = meta.term,
        "sending snapshot"
    );
    let outcome = match txn {
        Some(txn) => stream_snapshot(cluster_id, &url, &message, txn).await,
        None => Err("the snapshot is no longer parked".to_string()),
    };
    let m = crate::metrics::get();
    match &outcome {
        Ok(bytes) => {
            crate::metrics::inc(&m.snapshots_sent);
            m.snapshot_bytes_sent
                .fetch_add(*bytes, std::sync::atomic::Ordering::Relaxed);
        }
        Err(_) => crate::metrics::inc(&m.snapshots_send_failed),
    }
    match &outcome {
        Ok(bytes) => tracing::info!(
            peer = format!("{to:x}"),
            index = meta.index,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot sent"
        ),
        Err(why) => {
            tracing::warn!(peer = format!("{to:x}"), index = meta.index, %why, "snapshot not sent")
        }
    }
    let _ = reports
        .send(PeerReport::Snapshot {
            to,
            sent: outcome.is_ok(),
        })
        .await;
}

/// Sends the header chunk, then the rows of `txn` in chunks produced on a blocking thread while
/// the stream sends them (at most a few chunks in memory). Returns the bytes sent.
async fn stream_snapshot(
    cluster_id: u64,
    url: &str,
    message: &Message,
    txn: redb::ReadTransaction,
) -> Result<u64, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let mut header = message.clone();
    header.mut_snapshot().data = Default::default();
    let (chunks, outgoing) = mpsc::channel(4);
    let first = SnapshotChunk {
        cluster_id,
        message: header.write_to_bytes().map_err(|e| e.to_string())?,
        ..Default::default()
    };
    chunks.send(first).await.map_err(|e| e.to_string())?;
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            chunks,
            buf: Vec::with_capacity(CHUNK_BYTES),
            hasher: crc32fast::Hasher::new(),
            total: 0,
        };
        snapshot::write_rows(&txn, &mut out).map_err(|e| e.to_string())?;
        out.finish()
    });
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut client = RaftTransportClient::new(channel).max_encoding_message_size(usize::MAX);
    let sent = client
        .snapshot(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await;
    let produced = producer.await.map_err(|e| e.to_string())?;
    sent.map_err(|s| s.message().to_string())?;
    produced
}

/// Cuts the snapshot byte stream into checked chunks and hands them to the sending stream.
struct ChunkWriter {
    chunks: mpsc::Sender<SnapshotChunk>,
    buf: Vec<u8>,
    hasher: crc32fast::Hasher,
    total: u64,
}

impl ChunkWriter {
    fn ship(&mut self, last: bool) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.hasher.update(&data);
        self.total += data.len() as u64;
        let chunk = SnapshotChunk {
            crc32: crc32fast::hash(&data),
            data,
            last,
            total_bytes: if last { self.total } else { 0 },
            total_crc32: if last {
                self.hasher.clone().finalize()
            } else {
                0
            },
            ..Default::default()
        };
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the receiver stopped reading"))
    }

    fn finish(mut self) -> Result<u64, String> {
        self.ship(true).map_err(|e| e.to_string())?;
        Ok(self.total)
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.ship(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes `first` and whatever else is queued (up to [`MAX_BATCH`]) into one encoded batch.
fn next_batch(
    cluster_id: u64,
    from: u64,
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
) -> RaftBatch {
    let mut messages = Vec::with_capacity(8);
    let mut next = Some(first);
    while let Some(m) = next {
        match m.write_to_bytes() {
            Ok(b) => messages.push(b),
            Err(e) => tracing::error!(error = %e, "cannot encode raft message"),
        }
        next = if messages.len() < MAX_BATCH {
            queue.try_recv().ok()
        } else {
            None
        };
    }
    RaftBatch {
        cluster_id,
        from,
        messages,
    }
}

/// The sender task of one peer: keeps one stream open to it and writes every queued message into
/// it, batching what accumulated meanwhile. A stream that fails, or that takes nothing for
/// [`SEND_TIMEOUT`] (the peer stopped reading), is dropped: the peer is reported unreachable and a
/// new stream is opened after [`RETRY_PAUSE`]. Messages lost with a stream are retried by raft.
async fn deliver(
    cluster_id: u64,
    from: u64,
    to: u64,
    url: String,
    mut queue: mpsc::Receiver<Message>,
    reports: mpsc::Sender<PeerReport>,
) {
    let endpoint = match Endpoint::from_shared(url.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10)),
        Err(e) => {
            tracing::error!(%url, error = %e, "bad peer URL; no messages will reach this peer");
            return;
        }
    };
    let mut client = RaftTransportClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut reported = false;
    while let Some(first) = queue.recv().await {
        let (batches, outgoing) = mpsc::channel(STREAM_BUFFER);
        // Queued before opening: the stream starts with the message that asked for it.
        let _ = batches.try_send(next_batch(cluster_id, from, first, &mut queue));
        let opened = tokio::time::timeout(
            SEND_TIMEOUT,
            client.stream(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
        )
        .await;
        let why = match opened {
            Ok(Ok(response)) => {
                if reported {
                    tracing::info!(peer = format!("{to:x}"), "peer reachable again");
                    reported = false;
                }
                pump(
                    cluster_id,
                    from,
                    &mut queue,
                    &batches,
                    response.into_inner(),
                )
                .await
            }
            Ok(Err(status)) => Some(status.message().to_string()),
            Err(_) => Some("timed out".to_string()),
        };
        let Some(why) = why else {
            return;
        };
        if why == REMOVED {
            tracing::warn!(
                peer = format!("{to:x}"),
                "the peer says this member was removed"
            );
            let _ = reports.send(PeerReport::Removed).await;
            return;
        }
        if !reported {
            tracing::warn!(peer = format!("{to:x}"), %why, "cannot reach peer");
            reported = true;
        }
        let _ = reports.try_send(PeerReport::Unreachable(to));
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Writes queued messages into an open stream until it fails (returns why) or the transport is
/// dropped (returns `None`).
async fn pump(
    cluster_id: u64,
    from: u64,
    queue: &mut mpsc::Receiver<Message>,
    batches: &mpsc::Sender<RaftBatch>,
    mut end: tonic::Streaming<StreamEnd>,
) -> Option<String> {
    loop {
        tokio::select! {
            biased;
            ended = end.message() => {
                return Some(match ended {
                    Ok(_) => "the peer closed the stream".to_string(),
                    Err(status) => status.message().to_string(),
                });
            }
            next = queue.recv() => {
                let first = next?;
                let batch = next_batch(cluster_id, from, first, queue);
                match tokio::time::timeout(SEND_TIMEOUT, batches.send(batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Some("stream closed".to_string()),
                    Err(_) => return Some("timed out".to_string()),
                }
            }
        }
    }
}
