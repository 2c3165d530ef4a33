//! One client `Watch` stream: reads the client's create / cancel / progress requests and hands
//! them to the hub, and yields the responses the hub queued for the stream. The stream ends when
//! the client stops sending (as etcd), when the client goes away, or with an error status when the
//! hub gives up on a client that stopped reading.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use conclave_proto::etcdserverpb::{
    WatchCreateRequest, WatchResponse, watch_create_request::FilterType, watch_request,
};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::{Outbox, STREAM_BUFFER, StreamId, WatchHub, WatchSpec};

/// The responses of one client stream, as tonic sends them.
pub struct ResponseStream {
    hub: Arc<WatchHub>,
    id: StreamId,
    abort: Option<oneshot::Receiver<Status>>,
    responses: mpsc::Receiver<Result<WatchResponse, Status>>,
    ended: bool,
}

impl Stream for ResponseStream {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(abort) = self.abort.as_mut()
            && let Poll::Ready(outcome) = Pin::new(abort).poll(cx)
        {
            self.abort = None;
            if let Ok(status) = outcome {
                // Ahead of anything still buffered: the client is not reading anyway, and it
                // resumes from the last revision it did receive.
                self.ended = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        self.responses.poll_recv(cx)
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        self.hub.close_stream(self.id);
    }
}

/// Starts serving one client stream.
pub fn serve(
    hub: Arc<WatchHub>,
    requests: Streaming<conclave_proto::etcdserverpb::WatchRequest>,
) -> ResponseStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let (id, abort) = hub.open_stream(tx.clone());
    tokio::spawn(session(hub.clone(), id, requests, tx));
    ResponseStream {
        hub,
        id,
        abort: Some(abort),
        responses: rx,
        ended: false,
    }
}

/// The watch a create request asks for.
pub fn spec(c: &WatchCreateRequest) -> WatchSpec {
    WatchSpec {
        // etcd watches "\0" when no key is given.
        key: if c.key.is_empty() {
            vec![0]
        } else {
            c.key.clone()
        },
        range_end: c.range_end.clone(),
        prev_kv: c.prev_kv,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        progress_notify: c.progress_notify,
        fragment: c.fragment,
    }
}

async fn session(
    hub: Arc<WatchHub>,
    id: StreamId,
    mut requests: Streaming<conclave_proto::etcdserverpb::WatchRequest>,
    outbox: Outbox,
) {
    while let Ok(Some(req)) = requests.message().await {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => {
                let Ok(permit) = outbox.reserve().await else {
                    break;
                };
                hub.create(id, c.watch_id, spec(&c), c.start_revision, permit);
            }
            Some(watch_request::RequestUnion::CancelRequest(c)) if hub.cancel(id, c.watch_id) => {
                let resp = WatchResponse {
                    header: Some(hub.header(0)),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                if outbox.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            // etcd ignores a cancel for a watch it does not have.
            Some(watch_request::RequestUnion::CancelRequest(_)) => {}
            Some(watch_request::RequestUnion::ProgressRequest(_)) => hub.request_progress(id),
            None => {}
        }
    }
    // The client closed its side (or went away): end the response stream too, as etcd does.
    hub.close_stream(id);
}
