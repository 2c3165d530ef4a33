//! conclave.peer.v1.RaftTransport: streams of raft messages from other members, checked for
//! cluster identity and handed to the raft task in the order they were sent. The response stream
//! carries nothing; it ends (with the reason, if reading failed) when this side stops reading.
//!
//! A snapshot arrives on its own stream: it is written to a file in the snapshot dir chunk by
//! chunk (each chunk's crc32 checked, then the whole's length and crc32), made durable, and only
//! then is its raft message handed to raft, which installs it in a Ready.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use conclave_proto::conclave::peer::v1::raft_transport_server::RaftTransport;
use conclave_proto::conclave::peer::v1::{RaftBatch, SnapshotAck, SnapshotChunk, StreamEnd};
use futures::{Stream, StreamExt};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use crate::membership::Membership;
use crate::node::Node;
use crate::node::transport::REMOVED;
use crate::storage::snapshot::{self, Receiving};

/// Served on the raft thread's runtime (raft messages reach the raft task without a thread
/// switch); snapshot files are received on `background`.
pub struct PeerService {
    node: Arc<Node>,
    membership: Arc<Membership>,
    snapshot_dir: PathBuf,
    background: tokio::runtime::Handle,
}

impl PeerService {
    pub fn new(
        node: Arc<Node>,
        membership: Arc<Membership>,
        snapshot_dir: PathBuf,
        background: tokio::runtime::Handle,
    ) -> Self {
        PeerService {
            node,
            membership,
            snapshot_dir,
            background,
        }
    }
}

/// Receives one snapshot of cluster `cluster_id` into its file in `snapshot_dir`; returns its
/// raft message.
async fn receive_snapshot(
    cluster_id: u64,
    snapshot_dir: PathBuf,
    mut chunks: Streaming<SnapshotChunk>,
) -> Result<Message, Status> {
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("conclave: empty snapshot stream"))?;
    if first.cluster_id != cluster_id {
        return Err(Status::failed_precondition(format!(
            "conclave: cluster id mismatch (mine {:x}, sender's {:x})",
            cluster_id, first.cluster_id
        )));
    }
    let message = Message::parse_from_bytes(&first.message)
        .map_err(|e| Status::invalid_argument(format!("conclave: bad raft message: {e}")))?;
    if message.get_msg_type() != MessageType::MsgSnapshot {
        return Err(Status::invalid_argument(
            "conclave: a snapshot stream must start with a snapshot message",
        ));
    }
    let meta = message.get_snapshot().get_metadata();
    let (index, term) = (meta.index, meta.term);
    tracing::info!(
        from = format!("{:x}", message.from),
        index,
        term,
        "receiving snapshot"
    );
    let started = Instant::now();
    let target = snapshot::file_path(&snapshot_dir, term, index);
    let storage = |e: crate::storage::StorageError| Status::data_loss(format!("conclave: {e}"));
    let mut file = Receiving::create(target).map_err(storage)?;
    let path = loop {
        let chunk = chunks.message().await?.ok_or_else(|| {
            Status::aborted(format!(
                "conclave: snapshot stream ended after {} bytes, before its last chunk",
                file.bytes()
            ))
        })?;
        // Blocking file writes: a chunk is at most 1 MiB, and this keeps memory flat.
        tokio::task::block_in_place(|| file.chunk(&chunk.data, chunk.crc32)).map_err(storage)?;
        if chunk.last {
            break tokio::task::block_in_place(|| {
                file.finish(chunk.total_bytes, chunk.total_crc32)
            })
            .map_err(storage)?;
        }
    };
    let m = crate::metrics::get();
    crate::metrics::inc(&m.snapshots_received);
    m.snapshot_bytes_received.fetch_add(
        std::fs::metadata(&path).map_or(0, |f| f.len()),
        std::sync::atomic::Ordering::Relaxed,
    );
    tracing::info!(
        index,
        term,
        path = %path.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot received"
    );
    Ok(message)
}

fn decode(node: &Node, batch: &RaftBatch) -> Result<Vec<Message>, Status> {
    if batch.cluster_id != node.cluster_id {
        return Err(Status::failed_precondition(format!(
            "conclave: cluster id mismatch (mine {:x}, sender's {:x})",
            node.cluster_id, batch.cluster_id
        )));
    }
    batch
        .messages
        .iter()
        .map(|bytes| {
            Message::parse_from_bytes(bytes)
                .map_err(|e| Status::invalid_argument(format!("conclave: bad raft message: {e}")))
        })
        .collect()
}

/// Steps every batch of `batches` into the raft task until the sender closes the stream. A
/// member removed from the cluster is told so (it may have missed its own removal: the leader
/// stops replicating to it as soon as the removal applies), and stops.
async fn receive(
    node: &Node,
    membership: &Membership,
    mut batches: Streaming<RaftBatch>,
) -> Result<(), Status> {
    while let Some(batch) = batches.message().await? {
        if membership.is_removed(batch.from) {
            return Err(Status::failed_precondition(REMOVED));
        }
        node.step(decode(node, &batch)?).await?;
    }
    Ok(())
}

type EndStream = Pin<Box<dyn Stream<Item = Result<StreamEnd, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftTransport for PeerService {
    type StreamStream = EndStream;

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        // Off the raft thread: checking and writing chunks must not hold up raft.
        let receiving = receive_snapshot(
            self.node.cluster_id,
            self.snapshot_dir.clone(),
            req.into_inner(),
        );
        let message =
            self.background.spawn(receiving).await.map_err(|e| {
                Status::internal(format!("conclave: snapshot receiver failed: {e}"))
            })??;
        self.node.step(vec![message]).await?;
        Ok(Response::new(SnapshotAck {}))
    }

    async fn stream(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<EndStream>, Status> {
        let batches = req.into_inner();
        let node = self.node.clone();
        let membership = self.membership.clone();
        let (ended, end) = oneshot::channel();
        tokio::spawn(async move {
            let _ = ended.send(receive(&node, &membership, batches).await);
        });
        // Answering at once sends the response headers: the sender knows the stream is open.
        let end = futures::stream::once(end).filter_map(|outcome| async move {
            match outcome {
                Ok(Err(status)) => Some(Err(status)),
                _ => None,
            }
        });
        Ok(Response::new(Box::pin(end)))
    }
}
