//! One bidirectional gRPC stream pinned to one endpoint, for the long-lived calls (Watch,
//! LeaseKeepAlive).
//!
//! Contract: the first request is queued before the call is made, so a server that reads the first
//! message before it answers with headers cannot deadlock the open; the stream remembers which
//! endpoint it runs on, so a failure can move the client's current endpoint past exactly that one.
//! Dropping it drops the request sender (ending the request side) and the response body (resetting
//! the stream), which makes the server release whatever the stream held.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::transport::Channel;

use crate::client::Connection;

/// Requests that may wait to be sent on one stream; more means the stream is stuck.
const REQUEST_QUEUE: usize = 16;

/// Why a stream could not be opened or stopped working, and where.
#[derive(Debug)]
pub(crate) struct Broken {
    /// The endpoint's index in the client's list.
    pub(crate) index: usize,
    /// The endpoint's URL.
    pub(crate) url: String,
    /// What went wrong.
    pub(crate) status: Status,
}

/// An open bidirectional stream on one endpoint.
#[derive(Debug)]
pub(crate) struct BidiStream<Req, Resp> {
    index: usize,
    url: String,
    requests: mpsc::Sender<Req>,
    responses: Streaming<Resp>,
}

impl<Req, Resp> BidiStream<Req, Resp> {
    /// Opens a stream on `connection` with `first` as its first request. `call` makes the generated
    /// streaming call on the channel with the given request stream; it returns once the server has
    /// answered with headers. No timeout is applied here.
    pub(crate) async fn open<F, Fut>(
        connection: Connection,
        first: Req,
        call: F,
    ) -> Result<Self, Broken>
    where
        F: FnOnce(Channel, ReceiverStream<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Streaming<Resp>>, Status>>,
    {
        let Connection {
            index,
            url,
            channel,
        } = connection;
        let (requests, outbound) = mpsc::channel(REQUEST_QUEUE);
        if requests.try_send(first).is_err() {
            // Cannot happen: the queue is new, empty and its receiver alive.
            return Err(Broken {
                index,
                url,
                status: Status::internal("stream request queue unusable"),
            });
        }
        match call(channel, ReceiverStream::new(outbound)).await {
            Ok(response) => Ok(BidiStream {
                index,
                url,
                requests,
                responses: response.into_inner(),
            }),
            Err(status) => Err(Broken { index, url, status }),
        }
    }

    /// Queues one more request. Fails when the queue is full (the stream is stuck) or the stream
    /// has ended.
    pub(crate) fn send(&self, request: Req) -> Result<(), Status> {
        self.requests
            .try_send(request)
            .map_err(|_| Status::unavailable("stream request queue full or closed"))
    }

    /// The next response: `Ok(None)` when the server ended the stream. Cancel-safe.
    pub(crate) async fn message(&mut self) -> Result<Option<Resp>, Status> {
        self.responses.message().await
    }

    /// The endpoint's index in the client's list.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The endpoint's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Describes a failure of this stream.
    pub(crate) fn broken(&self, status: Status) -> Broken {
        Broken {
            index: self.index,
            url: self.url.clone(),
            status,
        }
    }
}
