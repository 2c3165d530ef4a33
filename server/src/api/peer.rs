//! conclave.peer.v1.RaftTransport: streams of raft messages from other members, checked for
//! cluster identity and handed to the raft task in the order they were sent. The response stream
//! carries nothing; it ends (with the reason, if reading failed) when this side stops reading.

use std::pin::Pin;
use std::sync::Arc;

use conclave_proto::conclave::peer::v1::raft_transport_server::RaftTransport;
use conclave_proto::conclave::peer::v1::{RaftBatch, StreamEnd};
use futures::{Stream, StreamExt};
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;

pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        PeerService { node }
    }
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

/// Steps every batch of `batches` into the raft task until the sender closes the stream.
async fn receive(node: &Node, mut batches: Streaming<RaftBatch>) -> Result<(), Status> {
    while let Some(batch) = batches.message().await? {
        node.step(decode(node, &batch)?).await?;
    }
    Ok(())
}

type EndStream = Pin<Box<dyn Stream<Item = Result<StreamEnd, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftTransport for PeerService {
    type StreamStream = EndStream;

    async fn stream(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<EndStream>, Status> {
        let batches = req.into_inner();
        let node = self.node.clone();
        let (ended, end) = oneshot::channel();
        tokio::spawn(async move {
            let _ = ended.send(receive(&node, batches).await);
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
