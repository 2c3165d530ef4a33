//! Watches: the changes to a key or range, as a stream that survives member failures.
//!
//! Contract: each [`WatchStream`] runs one bidirectional Watch stream carrying one watcher, on one
//! endpoint at a time. When that stream breaks (connection lost, member killed or stopped, member
//! unavailable) it is re-created on the next endpoint, after a backoff, starting at the revision
//! after the last one known to be complete: the last delivered event's revision, the revision of a
//! progress notification, or the revision the watch was created at when it asked for "from now".
//! Before anything is known it restarts at the requested start revision. Events at or below that
//! revision are dropped if a server sends them again. So the consumer sees every matching revision
//! exactly once, in order, across any number of reconnects. Fragmented responses are reassembled
//! before delivery, so a message always holds whole revisions. A compacted start (or resume)
//! revision ends the stream with [`Error::WatchCompacted`]; a cancellation by the server ends it
//! with [`Error::WatchCanceled`]. Reconnection never gives up on its own. Dropping the stream
//! cancels the watch.

use std::mem;

use conclave_proto::etcdserverpb::watch_client::WatchClient;
use conclave_proto::etcdserverpb::watch_create_request::FilterType;
use conclave_proto::etcdserverpb::watch_request::RequestUnion;
use conclave_proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use conclave_proto::mvccpb::Event;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

use crate::client::{Client, Connection, MAX_RESPONSE_BYTES};
use crate::error::{Disposition, Error, classify_stream};
use crate::kv::{KeyRange, key_range_options};
use crate::stream::{BidiStream, Broken};

/// Messages that may wait for the consumer before the stream stops reading from the server.
const MESSAGE_QUEUE: usize = 64;

/// The stream of one watch.
type WatchBidi = BidiStream<WatchRequest, WatchResponse>;

/// What the watch task hands the consumer.
type Outbox = mpsc::Sender<Result<WatchMessage, Error>>;

/// Options of a watch. The last of `with_prefix`, `with_from_key` and `with_range_end` wins.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    range: KeyRange,
    start_revision: i64,
    prev_kv: bool,
    filter_put: bool,
    filter_delete: bool,
    progress_notify: bool,
    fragment: bool,
}

key_range_options!(WatchOptions);

impl WatchOptions {
    /// Watch the single key, from the next change on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deliver events from `revision` on, inclusive (0 = from the next change on).
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }

    /// Include the previous key-value pair in each event.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Drop put events on the server (etcd's `NOPUT` filter).
    pub fn with_filter_put(mut self) -> Self {
        self.filter_put = true;
        self
    }

    /// Drop delete events on the server (etcd's `NODELETE` filter).
    pub fn with_filter_delete(mut self) -> Self {
        self.filter_delete = true;
        self
    }

    /// Ask the server for periodic progress notifications ([`WatchMessage::Progress`]) while
    /// nothing changes.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }

    /// Let the server split a large revision over several responses (they are reassembled here
    /// before delivery).
    pub fn with_fragment(mut self) -> Self {
        self.fragment = true;
        self
    }

    /// The wire create request for `key` with these options.
    pub fn into_request(self, key: impl Into<Vec<u8>>) -> WatchCreateRequest {
        let (key, range_end) = self.range.resolve(key.into());
        let mut filters = Vec::new();
        if self.filter_put {
            filters.push(FilterType::Noput as i32);
        }
        if self.filter_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        WatchCreateRequest {
            key,
            range_end,
            start_revision: self.start_revision,
            progress_notify: self.progress_notify,
            filters,
            prev_kv: self.prev_kv,
            watch_id: 0,
            fragment: self.fragment,
        }
    }
}

/// One item of a [`WatchStream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// The events of one or more whole revisions, in revision order, none delivered before.
    Events {
        /// The revision in the response header (at least the last event's revision).
        revision: i64,
        /// The events (never empty).
        events: Vec<Event>,
    },
    /// A progress notification: every matching event up to `revision` has been delivered.
    /// (Conclave and etcd ≥ 3.4.25 / 3.5.8 guarantee this; older etcd answered a progress
    /// *request* even while the watch was behind, so against those servers only the periodic
    /// `progress_notify` kind is a bookmark. The stream's own resume point relies on that kind
    /// only.)
    Progress {
        /// The revision in the response header.
        revision: i64,
    },
}

/// Watch operations of a [`Client`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Watch {
    client: Client,
}

/// A running watch: read it with [`WatchStream::next`]. Dropping it cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    messages: mpsc::Receiver<Result<WatchMessage, Error>>,
    progress: mpsc::Sender<()>,
}

impl WatchStream {
    /// The next message; `None` once the watch has ended. An `Err` is always the last item:
    /// [`Error::WatchCompacted`], [`Error::WatchCanceled`], or a definite error status from the
    /// server. Cancel-safe (may be used in `tokio::select!`).
    pub async fn next(&mut self) -> Option<Result<WatchMessage, Error>> {
        self.messages.recv().await
    }

    /// Asks the server for a progress notification ([`WatchMessage::Progress`]) as soon as
    /// possible. Returns false when the watch has ended. Requests made while one is still pending,
    /// or while the stream is reconnecting, are merged into one.
    pub fn request_progress(&self) -> bool {
        !matches!(
            self.progress.try_send(()),
            Err(mpsc::error::TrySendError::Closed(()))
        )
    }
}

fn watch_client(channel: Channel) -> WatchClient<Channel> {
    WatchClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

impl Watch {
    pub(crate) fn new(client: Client) -> Self {
        Watch { client }
    }

    /// Starts watching `key` (or the range the options select) and returns once the server has
    /// confirmed the watch, so every change committed after this returns is delivered.
    ///
    /// Establishing the watch fails over between endpoints like a read, within the client's
    /// request timeout: [`Error::Unavailable`] or [`Error::Timeout`] when no member accepted it.
    /// A start revision that is already compacted gives [`Error::WatchCompacted`] here or as the
    /// stream's first item (depending on when the server reports it).
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
    /// use conclave_client::{WatchMessage, WatchOptions};
    ///
    /// let options = WatchOptions::new().with_prefix().with_prev_kv();
    /// let mut stream = client.watch().watch("config/", options).await?;
    /// while let Some(message) = stream.next().await {
    ///     match message? {
    ///         WatchMessage::Events { events, .. } => {
    ///             for event in events {
    ///                 println!("{event:?}");
    ///             }
    ///         }
    ///         WatchMessage::Progress { revision } => println!("complete through {revision}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: WatchOptions,
    ) -> Result<WatchStream, Error> {
        let mut tracker = Tracker::new(options.into_request(key));
        let (stream, early) = self.establish(&mut tracker).await?;
        let (outbox, messages) = mpsc::channel(MESSAGE_QUEUE);
        let (progress, progress_requests) = mpsc::channel(1);
        tokio::spawn(run(
            self.client.clone(),
            tracker,
            stream,
            early,
            outbox,
            progress_requests,
        ));
        Ok(WatchStream { messages, progress })
    }

    /// Opens the first stream, failing over like a read within one request timeout.
    async fn establish(
        &self,
        tracker: &mut Tracker,
    ) -> Result<(Box<WatchBidi>, Vec<WatchResponse>), Error> {
        let options = self.client.options();
        let timeout = options.request_timeout();
        let deadline = Instant::now() + timeout;
        let mut attempt: u32 = 0;
        loop {
            let connection = self.client.current_connection();
            let index = connection.index;
            let broken = match tokio::time::timeout_at(deadline, open(connection, tracker)).await {
                Err(_elapsed) => {
                    // A member that accepts connections but never answers: move on.
                    self.client.rotate_from(index);
                    return Err(Error::Timeout(timeout));
                }
                Ok(Opened::Ready(stream, early)) => return Ok((stream, early)),
                Ok(Opened::Ended(err)) => return Err(err),
                Ok(Opened::Broken(broken)) => broken,
            };
            let status = match classify_stream(broken.status, &broken.url) {
                Disposition::Fail(err) => return Err(err),
                Disposition::Retry(status) => status,
            };
            tracing::debug!(endpoint = %broken.url, attempt, %status, "watch not established; trying the next endpoint");
            self.client.rotate_from(broken.index);
            attempt += 1;
            let pause = options.backoff(attempt - 1);
            if attempt as usize >= options.max_attempts() || Instant::now() + pause >= deadline {
                return Err(Error::Unavailable {
                    endpoint: broken.url,
                    source: status,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// The outcome of opening a watch stream.
enum Opened {
    /// The watch exists; responses that arrived before the creation was confirmed (none from
    /// etcd) are handed over unprocessed.
    Ready(Box<WatchBidi>, Vec<WatchResponse>),
    /// The server refused the watch (compacted start, cancellation): the watch is over.
    Ended(Error),
    /// The stream failed before the watch was confirmed.
    Broken(Broken),
}

/// Opens a stream on `connection` and creates the watch at the tracker's resume revision. Waits
/// for the `created` answer; no timeout is applied here.
async fn open(connection: Connection, tracker: &mut Tracker) -> Opened {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(tracker.create_request())),
    };
    let mut stream = match BidiStream::open(connection, create, |channel, outbound| async move {
        watch_client(channel).watch(outbound).await
    })
    .await
    {
        Ok(stream) => stream,
        Err(broken) => return Opened::Broken(broken),
    };
    let mut early = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(response))
                if response.created || response.canceled || response.compact_revision != 0 =>
            {
                let created = response.created;
                match tracker.on_response(response) {
                    Step::Fail(err) => return Opened::Ended(err),
                    _ if created => return Opened::Ready(Box::new(stream), early),
                    _ => {}
                }
            }
            // Not expected before `created`; kept unprocessed so that, if this stream breaks
            // before the confirmation, the tracker has not moved past anything undelivered.
            Ok(Some(response)) => early.push(response),
            Ok(None) => {
                return Opened::Broken(stream.broken(Status::unavailable(
                    "watch stream ended by the server before the watch was created",
                )));
            }
            Err(status) => return Opened::Broken(stream.broken(status)),
        }
    }
}

/// Whether the watch task goes on.
enum Flow {
    Continue,
    Stop,
}

/// Runs `response` through the tracker and hands the result to the consumer.
async fn forward(tracker: &mut Tracker, response: WatchResponse, outbox: &Outbox) -> Flow {
    match tracker.on_response(response) {
        Step::Skip => Flow::Continue,
        Step::Deliver(message) => match outbox.send(Ok(message)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        },
        Step::Fail(err) => {
            // The consumer may be gone already; the watch ends either way.
            let _ = outbox.send(Err(err)).await;
            Flow::Stop
        }
    }
}

/// Asks the server to drop the watcher (best effort: the stream is closed right after anyway).
fn cancel(stream: &WatchBidi, tracker: &Tracker) {
    let request = WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: tracker.watch_id,
        })),
    };
    let _ = stream.send(request);
}

/// The watch task: forwards responses, sends progress requests, reconnects when the stream
/// breaks, and stops when the consumer is gone or the watch has ended.
async fn run(
    client: Client,
    mut tracker: Tracker,
    mut stream: Box<WatchBidi>,
    mut early: Vec<WatchResponse>,
    outbox: Outbox,
    mut progress: mpsc::Receiver<()>,
) {
    loop {
        for response in mem::take(&mut early) {
            if let Flow::Stop = forward(&mut tracker, response, &outbox).await {
                cancel(&stream, &tracker);
                return;
            }
        }
        let status = tokio::select! {
            biased;
            () = outbox.closed() => {
                cancel(&stream, &tracker);
                return;
            }
            Some(()) = progress.recv() => {
                let request = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                };
                if stream.send(request).is_ok() {
                    continue;
                }
                Status::unavailable("watch request queue full or closed")
            }
            received = stream.message() => match received {
                Ok(Some(response)) => {
                    if let Flow::Stop = forward(&mut tracker, response, &outbox).await {
                        cancel(&stream, &tracker);
                        return;
                    }
                    continue;
                }
                Ok(None) => Status::unavailable("watch stream ended by the server"),
                Err(status) => status,
            },
        };
        let broken = stream.broken(status);
        match classify_stream(broken.status, &broken.url) {
            Disposition::Fail(err) => {
                let _ = outbox.send(Err(err)).await;
                return;
            }
            Disposition::Retry(status) => {
                tracing::debug!(endpoint = %broken.url, %status, resume = tracker.resume_revision(), "watch stream broken; reconnecting");
            }
        }
        client.rotate_from(broken.index);
        tracker.on_disconnect();
        match reconnect(&client, &mut tracker, &outbox).await {
            Some((new_stream, new_early)) => {
                stream = new_stream;
                early = new_early;
            }
            None => return,
        }
    }
}

/// Re-creates the watch, endpoint after endpoint, until it succeeds, the watch ends (the error is
/// sent to the consumer), or the consumer is gone. `None` means stop.
async fn reconnect(
    client: &Client,
    tracker: &mut Tracker,
    outbox: &Outbox,
) -> Option<(Box<WatchBidi>, Vec<WatchResponse>)> {
    let options = client.options();
    let timeout = options.request_timeout();
    let mut attempt: u32 = 0;
    loop {
        tokio::select! {
            () = outbox.closed() => return None,
            () = tokio::time::sleep(options.backoff(attempt)) => {}
        }
        let connection = client.current_connection();
        let index = connection.index;
        let url = connection.url.clone();
        let opened = tokio::select! {
            () = outbox.closed() => return None,
            opened = tokio::time::timeout(timeout, open(connection, tracker)) => opened,
        };
        let broken = match opened {
            Ok(Opened::Ready(stream, early)) => {
                tracing::debug!(endpoint = %url, resume = tracker.resume_revision(), "watch re-created");
                return Some((stream, early));
            }
            Ok(Opened::Ended(err)) => {
                let _ = outbox.send(Err(err)).await;
                return None;
            }
            Ok(Opened::Broken(broken)) => broken,
            Err(_elapsed) => Broken {
                index,
                url,
                status: Status::deadline_exceeded(format!("watch not created within {timeout:?}")),
            },
        };
        match classify_stream(broken.status, &broken.url) {
            Disposition::Fail(err) => {
                let _ = outbox.send(Err(err)).await;
                return None;
            }
            Disposition::Retry(status) => {
                tracing::debug!(endpoint = %broken.url, attempt, %status, "watch not re-created; trying the next endpoint");
            }
        }
        client.rotate_from(broken.index);
        attempt = attempt.saturating_add(1);
    }
}

/// What the tracker makes of one response.
#[derive(Debug)]
enum Step {
    /// Nothing for the consumer (a creation, a fragment, or only duplicates).
    Skip,
    /// Hand this to the consumer.
    Deliver(WatchMessage),
    /// The watch is over: hand this error to the consumer and stop.
    Fail(Error),
}

/// The pure state of one watch across reconnects: where to resume, what was delivered, the
/// fragments of a revision being reassembled.
#[derive(Debug)]
struct Tracker {
    /// The create request as asked for; only its start revision changes on resume.
    request: WatchCreateRequest,
    /// Every matching event at or below this revision has been delivered (or never existed).
    /// `None` until known: the watch asked for "from now" and no `created` answer came yet.
    complete_through: Option<i64>,
    /// Events of fragments received so far, waiting for the last fragment.
    fragments: Vec<Event>,
    /// The server's ID of the watcher on the current stream.
    watch_id: i64,
}

/// The revision of an event (its key's mod revision; 0 if malformed).
fn revision_of(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl Tracker {
    fn new(request: WatchCreateRequest) -> Self {
        let complete_through = if request.start_revision > 0 {
            Some(request.start_revision - 1)
        } else {
            None
        };
        Tracker {
            request,
            complete_through,
            fragments: Vec::new(),
            watch_id: 0,
        }
    }

    /// The start revision for (re-)creating the watch: right after what is complete, or 0 ("from
    /// now") when nothing is known yet.
    fn resume_revision(&self) -> i64 {
        self.complete_through.map_or(0, |revision| revision + 1)
    }

    /// The create request for the next stream.
    fn create_request(&self) -> WatchCreateRequest {
        WatchCreateRequest {
            start_revision: self.resume_revision(),
            watch_id: 0,
            ..self.request.clone()
        }
    }

    /// The stream broke: a partly received fragmented revision will be sent again in full.
    fn on_disconnect(&mut self) {
        self.fragments.clear();
    }

    /// Marks everything up to `revision` complete (never moves backwards).
    fn complete(&mut self, revision: i64) {
        if self.complete_through.is_none_or(|done| revision > done) {
            self.complete_through = Some(revision);
        }
    }

    fn on_response(&mut self, response: WatchResponse) -> Step {
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.compact_revision != 0 {
            self.fragments.clear();
            return Step::Fail(Error::WatchCompacted {
                compact_revision: response.compact_revision,
            });
        }
        if response.canceled {
            self.fragments.clear();
            return Step::Fail(Error::WatchCanceled {
                reason: response.cancel_reason,
            });
        }
        if response.created {
            self.watch_id = response.watch_id;
            // "From now": the watcher starts after the revision it was created at.
            if self.complete_through.is_none() && revision > 0 {
                self.complete_through = Some(revision);
            }
            if response.events.is_empty() {
                return Step::Skip;
            }
        }
        if response.fragment {
            self.fragments.extend(response.events);
            return Step::Skip;
        }
        let mut events = mem::take(&mut self.fragments);
        events.extend(response.events);
        if events.is_empty() {
            if revision <= 0 {
                return Step::Skip;
            }
            // Only a progress notification addressed to this watch (`progress_notify`) proves
            // the watch is caught up, in every etcd version. A stream-wide answer to a progress
            // request (watch id -1) does not in etcd before 3.4.25 / 3.5.8, which answered it
            // even while the watch was still sending older events: resuming after it could skip
            // events. It is delivered, but the resume point stays.
            if response.watch_id == self.watch_id {
                self.complete(revision);
            }
            return Step::Deliver(WatchMessage::Progress { revision });
        }
        if let Some(done) = self.complete_through {
            events.retain(|event| revision_of(event) > done);
        }
        let Some(last) = events.iter().map(revision_of).max() else {
            return Step::Skip;
        };
        self.complete(last);
        Step::Deliver(WatchMessage::Events { revision, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::etcdserverpb::ResponseHeader;
    use conclave_proto::mvccpb::KeyValue;

    fn event(key: &str, revision: i64) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn response(revision: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            events,
            ..Default::default()
        }
    }

    fn created(revision: i64, watch_id: i64) -> WatchResponse {
        WatchResponse {
            created: true,
            watch_id,
            ..response(revision, Vec::new())
        }
    }

    fn fragment(revision: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            fragment: true,
            ..response(revision, events)
        }
    }

    fn revisions(step: &Step) -> Vec<i64> {
        match step {
            Step::Deliver(WatchMessage::Events { events, .. }) => {
                events.iter().map(revision_of).collect()
            }
            other => panic!("expected events, got {other:?}"),
        }
    }

    fn tracker(start: i64) -> Tracker {
        Tracker::new(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(start)
                .with_prev_kv()
                .into_request("k"),
        )
    }

    #[test]
    fn options_fill_every_field() {
        let request = WatchOptions::new()
            .with_prefix()
            .with_start_revision(7)
            .with_prev_kv()
            .with_filter_put()
            .with_filter_delete()
            .with_progress_notify()
            .with_fragment()
            .into_request("foo");
        assert_eq!(
            request,
            WatchCreateRequest {
                key: b"foo".to_vec(),
                range_end: b"fop".to_vec(),
                start_revision: 7,
                progress_notify: true,
                filters: vec![FilterType::Noput as i32, FilterType::Nodelete as i32],
                prev_kv: true,
                watch_id: 0,
                fragment: true,
            }
        );
        let request = WatchOptions::new()
            .with_range_end("z")
            .with_from_key()
            .into_request("");
        assert_eq!((request.key, request.range_end), (vec![0], vec![0]));
        assert!(request.filters.is_empty());
    }

    #[test]
    fn resume_from_start_revision_until_something_is_delivered() {
        let mut t = tracker(5);
        assert_eq!(t.resume_revision(), 5);
        // The created answer of a watch with a start revision says nothing about progress.
        assert!(matches!(t.on_response(created(40, 3)), Step::Skip));
        assert_eq!(t.watch_id, 3);
        assert_eq!(t.resume_revision(), 5);
        assert_eq!(
            revisions(&t.on_response(response(40, vec![event("k", 5), event("k", 6)]))),
            [5, 6]
        );
        assert_eq!(t.resume_revision(), 7);
        let request = t.create_request();
        assert_eq!(request.start_revision, 7);
        assert!(request.prev_kv);
        assert_eq!(request.range_end, b"l");
    }

    #[test]
    fn resume_from_now_uses_the_created_revision() {
        let mut t = tracker(0);
        assert_eq!(t.resume_revision(), 0);
        assert_eq!(t.create_request().start_revision, 0);
        assert!(matches!(t.on_response(created(10, 1)), Step::Skip));
        assert_eq!(t.resume_revision(), 11);
        // A later created answer (after a reconnect) does not move it.
        assert!(matches!(t.on_response(created(50, 2)), Step::Skip));
        assert_eq!(t.resume_revision(), 11);
        assert_eq!(
            revisions(&t.on_response(response(12, vec![event("k", 12)]))),
            [12]
        );
        assert_eq!(t.resume_revision(), 13);
    }

    #[test]
    fn stream_wide_progress_does_not_move_the_resume_point() {
        let mut t = tracker(3);
        let mut stream_wide = response(20, Vec::new());
        stream_wide.watch_id = -1;
        assert!(matches!(
            t.on_response(stream_wide),
            Step::Deliver(WatchMessage::Progress { revision: 20 })
        ));
        assert_eq!(
            t.resume_revision(),
            3,
            "old etcd answers before catching up"
        );
    }

    #[test]
    fn progress_moves_the_resume_point_forward_only() {
        let mut t = tracker(3);
        let step = t.on_response(response(20, Vec::new()));
        assert!(matches!(
            step,
            Step::Deliver(WatchMessage::Progress { revision: 20 })
        ));
        assert_eq!(t.resume_revision(), 21);
        let step = t.on_response(response(15, Vec::new()));
        assert!(matches!(
            step,
            Step::Deliver(WatchMessage::Progress { revision: 15 })
        ));
        assert_eq!(t.resume_revision(), 21);
        // A response without a header is not a progress notification.
        let mut bare = response(0, Vec::new());
        bare.header = None;
        assert!(matches!(t.on_response(bare), Step::Skip));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut t = tracker(1);
        assert_eq!(
            revisions(&t.on_response(response(4, vec![event("a", 3), event("b", 4)]))),
            [3, 4]
        );
        // A server replaying from an older revision after a reconnect.
        assert!(matches!(
            t.on_response(response(4, vec![event("a", 3), event("b", 4)])),
            Step::Skip
        ));
        assert_eq!(
            revisions(&t.on_response(response(
                6,
                vec![event("b", 4), event("c", 5), event("d", 6)]
            ))),
            [5, 6]
        );
        assert_eq!(t.resume_revision(), 7);
    }

    #[test]
    fn fragments_are_reassembled() {
        let mut t = tracker(1);
        assert!(matches!(
            t.on_response(fragment(9, vec![event("a", 9), event("b", 9)])),
            Step::Skip
        ));
        assert!(matches!(
            t.on_response(fragment(9, vec![event("c", 9)])),
            Step::Skip
        ));
        assert_eq!(
            t.resume_revision(),
            1,
            "nothing complete before the last fragment"
        );
        let step = t.on_response(response(9, vec![event("d", 9)]));
        match &step {
            Step::Deliver(WatchMessage::Events { revision, events }) => {
                assert_eq!(*revision, 9);
                let keys: Vec<&[u8]> = events
                    .iter()
                    .filter_map(|e| e.kv.as_ref())
                    .map(|kv| kv.key.as_slice())
                    .collect();
                assert_eq!(keys, [b"a", b"b", b"c", b"d"]);
            }
            other => panic!("expected events, got {other:?}"),
        }
        assert_eq!(t.resume_revision(), 10);
    }

    #[test]
    fn a_broken_stream_discards_partial_fragments() {
        let mut t = tracker(1);
        assert!(matches!(
            t.on_response(fragment(9, vec![event("a", 9)])),
            Step::Skip
        ));
        t.on_disconnect();
        assert_eq!(t.resume_revision(), 1);
        // The server sends the whole revision again on the new stream.
        assert!(matches!(
            t.on_response(fragment(9, vec![event("a", 9)])),
            Step::Skip
        ));
        assert_eq!(
            revisions(&t.on_response(response(9, vec![event("b", 9)]))),
            [9, 9]
        );
    }

    #[test]
    fn compaction_and_cancellation_end_the_watch() {
        let mut t = tracker(2);
        let compacted = WatchResponse {
            canceled: true,
            compact_revision: 8,
            ..response(20, Vec::new())
        };
        assert!(matches!(
            t.on_response(compacted),
            Step::Fail(Error::WatchCompacted {
                compact_revision: 8
            })
        ));
        let canceled = WatchResponse {
            canceled: true,
            cancel_reason: "etcdserver: permission denied".into(),
            ..response(20, Vec::new())
        };
        match t.on_response(canceled) {
            Step::Fail(Error::WatchCanceled { reason }) => {
                assert_eq!(reason, "etcdserver: permission denied");
            }
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }
}
