//! conclave.peer.v1.RaftTransport: raft messages from other members, checked for cluster identity
//! and handed to the raft task.

use std::sync::Arc;

use conclave_proto::conclave::peer::v1::raft_transport_server::RaftTransport;
use conclave_proto::conclave::peer::v1::{RaftBatch, SendAck};
use protobuf::Message as _;
use raft::prelude::Message;
use tonic::{Request, Response, Status};

use crate::node::Node;

pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        PeerService { node }
    }
}

#[tonic::async_trait]
impl RaftTransport for PeerService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<SendAck>, Status> {
        let batch = req.into_inner();
        if batch.cluster_id != self.node.cluster_id {
            return Err(Status::failed_precondition(format!(
                "conclave: cluster id mismatch (mine {:x}, sender's {:x})",
                self.node.cluster_id, batch.cluster_id
            )));
        }
        let mut messages = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            let m = Message::parse_from_bytes(bytes).map_err(|e| {
                Status::invalid_argument(format!("conclave: bad raft message: {e}"))
            })?;
            messages.push(m);
        }
        self.node.step(messages).await?;
        Ok(Response::new(SendAck {}))
    }
}
