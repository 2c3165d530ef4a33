//! Sends raft messages to peers. `send` never blocks the raft task: each peer has a bounded queue
//! drained by its own sender task, and a message that does not fit is dropped — raft tolerates lost
//! messages (it retries appends and heartbeats), but it must never stall waiting for a slow peer.
//! A failed delivery is reported so raft-rs can slow down its probes to that peer.

use std::collections::HashMap;
use std::time::Duration;

use conclave_proto::conclave::peer::v1::RaftBatch;
use conclave_proto::conclave::peer::v1::raft_transport_client::RaftTransportClient;
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages sent in one batch at most.
const MAX_BATCH: usize = 256;
/// How long one delivery may take before the peer counts as unreachable.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed delivery before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Outgoing raft messages of one member.
pub struct Transport {
    peers: HashMap<u64, mpsc::Sender<Message>>,
}

impl Transport {
    /// Starts one sender task per peer on `runtime`. `peers` maps member id to its peer URL.
    /// Failed deliveries are reported on `unreachable`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        cluster_id: u64,
        from: u64,
        peers: HashMap<u64, String>,
        unreachable: mpsc::Sender<u64>,
    ) -> Transport {
        let mut queues = HashMap::new();
        for (id, url) in peers {
            if id == from {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            runtime.spawn(deliver(cluster_id, from, id, url, rx, unreachable.clone()));
            queues.insert(id, tx);
        }
        Transport { peers: queues }
    }

    /// Queues messages for their receivers; drops what does not fit.
    pub fn send(&self, messages: Vec<Message>) {
        for m in messages {
            match self.peers.get(&m.to) {
                Some(queue) => {
                    if queue.try_send(m).is_err() {
                        tracing::debug!("peer queue full; dropping a raft message");
                    }
                }
                None => tracing::warn!(to = m.to, "raft message for an unknown member"),
            }
        }
    }
}

async fn deliver(
    cluster_id: u64,
    from: u64,
    to: u64,
    url: String,
    mut queue: mpsc::Receiver<Message>,
    unreachable: mpsc::Sender<u64>,
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
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut encoded = Vec::with_capacity(batch.len());
        for m in &batch {
            match m.write_to_bytes() {
                Ok(b) => encoded.push(b),
                Err(e) => tracing::error!(error = %e, "cannot encode raft message"),
            }
        }
        let request = RaftBatch {
            cluster_id,
            from,
            messages: encoded,
        };
        match tokio::time::timeout(SEND_TIMEOUT, client.send(request)).await {
            Ok(Ok(_)) => {
                if reported {
                    tracing::info!(peer = format!("{to:x}"), "peer reachable again");
                    reported = false;
                }
            }
            outcome => {
                if !reported {
                    let why = match outcome {
                        Ok(Err(status)) => status.message().to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::warn!(peer = format!("{to:x}"), %why, "cannot reach peer");
                    reported = true;
                }
                let _ = unreachable.try_send(to);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
