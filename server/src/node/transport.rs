//! Sends raft messages to peers. `send` never blocks the raft task: each peer has a bounded queue
//! drained by its own sender task into one long-lived gRPC stream (no round trip per batch: a
//! message goes out as soon as it is queued), and a message that does not fit is dropped — raft tolerates lost
//! messages (it retries appends and heartbeats), but it must never stall waiting for a slow peer.
//! A failed delivery is reported so raft-rs can slow down its probes to that peer.

use std::collections::HashMap;
use std::time::Duration;

use conclave_proto::conclave::peer::v1::raft_transport_client::RaftTransportClient;
use conclave_proto::conclave::peer::v1::{RaftBatch, StreamEnd};
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

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
        if !reported {
            tracing::warn!(peer = format!("{to:x}"), %why, "cannot reach peer");
            reported = true;
        }
        let _ = unreachable.try_send(to);
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
