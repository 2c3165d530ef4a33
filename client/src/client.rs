//! Connections and the retry loop: one lazily connected tonic `Channel` per endpoint and a shared
//! "current endpoint" index. Safe requests move to the next endpoint on unavailability; writes only
//! when they provably were not sent. This module never interprets request contents.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::Cluster;
use crate::error::{Disposition, Error, classify, deadline_expired_locally};
use crate::kv::Kv;
use crate::lease::Lease;
use crate::maintenance::Maintenance;
use crate::session::{Session, SessionOptions};
use crate::watch::Watch;

/// Largest response accepted, as etcd's client does (`math.MaxInt32`).
pub(crate) const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// How a [`Client`] connects and retries.
///
/// Defaults: dial timeout 2 s, request timeout 5 s (per call, retries included), HTTP/2 keep-alive
/// ping every 10 s with a 5 s ack timeout, at most 8 attempts per call with a backoff that starts at
/// 25 ms and doubles up to 500 ms.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    dial_timeout: Duration,
    request_timeout: Duration,
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Duration,
    max_attempts: usize,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Some(Duration::from_secs(10)),
            keep_alive_timeout: Duration::from_secs(5),
            max_attempts: 8,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(500),
        }
    }
}

impl ConnectOptions {
    /// The defaults (see the type's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Time allowed to establish one TCP + HTTP/2 connection.
    pub fn with_dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// Deadline for one call, all retries included. Also sent to the server as `grpc-timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive: ping every `interval` (also while idle) and drop the connection when a
    /// ping is not acknowledged within `timeout`.
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive_interval = Some(interval);
        self.keep_alive_timeout = timeout;
        self
    }

    /// Turns HTTP/2 keep-alive pings off.
    pub fn without_keep_alive(mut self) -> Self {
        self.keep_alive_interval = None;
        self
    }

    /// Maximum attempts per call (at least 1), across endpoints.
    pub fn with_max_attempts(mut self, attempts: usize) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Backoff between attempts: starts at `base`, doubles per attempt, capped at `max`; each
    /// sleep is jittered to between half and all of that value.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// The deadline for one call.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The time allowed to establish a connection.
    pub fn dial_timeout(&self) -> Duration {
        self.dial_timeout
    }

    /// The maximum number of attempts per call.
    pub(crate) fn max_attempts(&self) -> usize {
        self.max_attempts
    }

    /// The jittered pause before retry number `attempt + 1`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.backoff_max);
        let half = full / 2;
        let jitter_nanos = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::random_range(0..=jitter_nanos))
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, Error> {
        let invalid = |reason: String| Error::InvalidEndpoint {
            endpoint: url.to_owned(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|err| invalid(err.to_string()))?
            .connect_timeout(self.dial_timeout)
            .tcp_nodelay(true);
        if let Some(interval) = self.keep_alive_interval {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(self.keep_alive_timeout)
                .keep_alive_while_idle(true);
        }
        Ok(endpoint)
    }
}

/// Turns "host:port" into "http://host:port"; keeps an explicit `http://` URL as is.
///
/// `https://` is refused: this client has no TLS support.
pub(crate) fn normalize_endpoint(endpoint: &str) -> Result<String, Error> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let authority = match endpoint.trim().split_once("://") {
        None => endpoint.trim(),
        Some(("http", rest)) => rest,
        Some(("https", _)) => return Err(invalid("TLS (https) is not supported")),
        Some(_) => return Err(invalid("scheme must be http")),
    };
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(invalid("expected host:port"));
    }
    Ok(format!("http://{authority}"))
}

/// Whether a request may be sent again after an attempt whose outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads and other requests without side effects: retried on any transient failure.
    Safe,
    /// Writes: retried only when the attempt provably never reached a server.
    OnlyIfNotSent,
}

struct Member {
    url: String,
    channel: Channel,
}

/// One endpoint of a client, as handed to a long-lived stream: its position (for
/// `Client::rotate_from`), its URL (for errors) and its channel.
pub(crate) struct Connection {
    /// The endpoint's index in the client's list.
    pub(crate) index: usize,
    /// The endpoint's normalized URL.
    pub(crate) url: String,
    /// The endpoint's shared, lazily connected channel.
    pub(crate) channel: Channel,
}

struct Inner {
    members: Vec<Member>,
    current: AtomicUsize,
    options: ConnectOptions,
}

/// A connection to a Conclave (or etcd) cluster. Cheap to clone; clones share connections and the
/// current endpoint.
///
/// Every call starts at the current endpoint and has one deadline (the request timeout) covering
/// all its attempts. Failover rules:
/// * reads (Range, read-only Txn, Status, MemberList) move to the next endpoint on `Unavailable`
///   or a broken connection, with a short jittered backoff, up to the attempt limit;
/// * writes move on only when the connection was refused before anything was sent, or when the
///   member answered that it cannot serve the request (a learner); any other transport failure,
///   `Unavailable`, or deadline gives [`Error::Unknown`];
/// * after a timeout or an unknown outcome the current endpoint moves on, so a stalled (e.g.
///   paused) member costs one timeout, not every call.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("current", &self.current_endpoint())
            .finish()
    }
}

impl Client {
    /// Prepares connections to `endpoints` ("127.0.0.1:2379" or "http://127.0.0.1:2379").
    ///
    /// Connections are established lazily, on first use, so this succeeds even if no member is up
    /// yet; it fails only on an empty or malformed endpoint list. Must be called within a tokio
    /// runtime.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), conclave_client::Error> {
    /// use std::time::Duration;
    ///
    /// use conclave_client::{Client, ConnectOptions};
    ///
    /// let options = ConnectOptions::new()
    ///     .with_dial_timeout(Duration::from_secs(1))
    ///     .with_request_timeout(Duration::from_secs(3));
    /// let client = Client::connect(
    ///     ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"],
    ///     options,
    /// )
    /// .await?;
    /// let status = client.maintenance().status().await?;
    /// println!("{} answered: leader {:x}", client.current_endpoint(), status.leader);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        options: ConnectOptions,
    ) -> Result<Client, Error> {
        let mut members = Vec::new();
        for endpoint in endpoints {
            let url = normalize_endpoint(endpoint.as_ref())?;
            if members.iter().any(|m: &Member| m.url == url) {
                continue;
            }
            let channel = options.endpoint(&url)?.connect_lazy();
            members.push(Member { url, channel });
        }
        if members.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Client {
            inner: Arc::new(Inner {
                members,
                current: AtomicUsize::new(0),
                options,
            }),
        })
    }

    /// The normalized endpoint URLs, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.members.iter().map(|m| m.url.clone()).collect()
    }

    /// The endpoint the next request goes to first.
    pub fn current_endpoint(&self) -> String {
        let index = self.current_index();
        self.inner.members[index].url.clone()
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ConnectOptions {
        &self.inner.options
    }

    /// Key-value operations: get, put, delete, txn, compact.
    pub fn kv(&self) -> Kv {
        Kv::new(self.clone())
    }

    /// Maintenance operations: status.
    pub fn maintenance(&self) -> Maintenance {
        Maintenance::new(self.clone())
    }

    /// Cluster membership operations: member list.
    pub fn cluster(&self) -> Cluster {
        Cluster::new(self.clone())
    }

    /// Watches: streams of changes that resume across member failures without gaps or
    /// duplicates.
    pub fn watch(&self) -> Watch {
        Watch::new(self.clone())
    }

    /// Leases: grant, revoke, time-to-live, list, and keep-alive.
    pub fn lease(&self) -> Lease {
        Lease::new(self.clone())
    }

    /// Starts a [`Session`]: a new lease of `ttl_secs` seconds kept alive in the background until
    /// the session is closed or dropped. Shorthand for
    /// `Session::new(self, SessionOptions::new(ttl_secs))`.
    pub async fn session(&self, ttl_secs: i64) -> Result<Session, Error> {
        Session::new(self, SessionOptions::new(ttl_secs)).await
    }

    /// The channel of the current endpoint, for services this crate does not wrap yet.
    pub fn channel(&self) -> Channel {
        let index = self.current_index();
        self.inner.members[index].channel.clone()
    }

    pub(crate) fn current_index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.members.len()
    }

    /// The current endpoint, for a long-lived stream that must remember where it runs.
    pub(crate) fn current_connection(&self) -> Connection {
        let index = self.current_index();
        let member = &self.inner.members[index];
        Connection {
            index,
            url: member.url.clone(),
            channel: member.channel.clone(),
        }
    }

    /// Every endpoint, in the client's order.
    pub(crate) fn connections(&self) -> Vec<Connection> {
        self.inner
            .members
            .iter()
            .enumerate()
            .map(|(index, member)| Connection {
                index,
                url: member.url.clone(),
                channel: member.channel.clone(),
            })
            .collect()
    }

    /// Moves the current endpoint past `failed`, unless another caller already moved it.
    pub(crate) fn rotate_from(&self, failed: usize) {
        let next = (failed + 1) % self.inner.members.len();
        let _ =
            self.inner
                .current
                .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A channel for `endpoint`: the configured one when it is a member of this client, otherwise
    /// a new lazily connected channel with this client's options.
    pub(crate) fn channel_for(&self, endpoint: &str) -> Result<(String, Channel), Error> {
        let url = normalize_endpoint(endpoint)?;
        if let Some(member) = self.inner.members.iter().find(|m| m.url == url) {
            return Ok((url, member.channel.clone()));
        }
        let channel = self.inner.options.endpoint(&url)?.connect_lazy();
        Ok((url, channel))
    }

    /// Runs one unary call with the client's deadline and retry policy, starting at the current
    /// endpoint and moving on as `retry` allows.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        retry: Retry,
        request: Req,
        mut send: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.request_timeout;
        let mut attempt: u32 = 0;
        loop {
            let index = self.current_index();
            let member = &self.inner.members[index];
            let outcome =
                attempt_once(deadline, member.channel.clone(), request.clone(), &mut send).await;
            let status = match outcome {
                Some(Ok(response)) => return Ok(response.into_inner()),
                Some(Err(status)) => status,
                None => {
                    // A member that accepts connections but never answers (paused, overloaded):
                    // send the next call elsewhere.
                    self.rotate_from(index);
                    return Err(timed_out(retry, &member.url, options.request_timeout));
                }
            };
            let status = match classify(status, retry == Retry::Safe, &member.url) {
                Disposition::Fail(err) => {
                    if err.is_unknown_outcome() {
                        // The connection broke or the member stalled: the next call goes to the
                        // next endpoint rather than finding out again.
                        self.rotate_from(index);
                    }
                    return Err(err);
                }
                Disposition::Retry(status) => status,
            };
            tracing::debug!(endpoint = %member.url, attempt, %status, "request failed; trying the next endpoint");
            self.rotate_from(index);
            attempt += 1;
            if attempt as usize >= options.max_attempts {
                return Err(Error::Unavailable {
                    endpoint: member.url.clone(),
                    source: status,
                });
            }
            let pause = options.backoff(attempt - 1);
            if Instant::now() + pause >= deadline {
                return Err(Error::Unavailable {
                    endpoint: member.url.clone(),
                    source: status,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Runs one unary call against exactly `endpoint`, with the client's deadline and no failover.
    pub(crate) async fn call_on<Req, Resp, F, Fut>(
        &self,
        endpoint: &str,
        retry: Retry,
        request: Req,
        mut send: F,
    ) -> Result<Resp, Error>
    where
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let (url, channel) = self.channel_for(endpoint)?;
        let timeout = self.inner.options.request_timeout;
        let deadline = Instant::now() + timeout;
        match attempt_once(deadline, channel, request, &mut send).await {
            Some(Ok(response)) => Ok(response.into_inner()),
            Some(Err(status)) => match classify(status, retry == Retry::Safe, &url) {
                Disposition::Fail(err) => Err(err),
                Disposition::Retry(status) => Err(Error::Unavailable {
                    endpoint: url,
                    source: status,
                }),
            },
            None => Err(timed_out(retry, &url, timeout)),
        }
    }
}

/// Sends one attempt with the time left before `deadline`; `None` when the deadline passed first.
async fn attempt_once<Req, Resp, F, Fut>(
    deadline: Instant,
    channel: Channel,
    request: Req,
    send: &mut F,
) -> Option<Result<tonic::Response<Resp>, Status>>
where
    F: FnMut(Channel, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return None;
    }
    let mut request = tonic::Request::new(request);
    // Sent as `grpc-timeout` so the server can give up too. tonic also enforces it locally and
    // then fails the call with `TimeoutExpired`: that is our deadline as well.
    request.set_timeout(remaining);
    match tokio::time::timeout_at(deadline, send(channel, request)).await {
        Ok(Err(status)) if deadline_expired_locally(&status) => None,
        Ok(outcome) => Some(outcome),
        Err(_elapsed) => None,
    }
}

/// The error for a call whose deadline passed: a plain timeout for safe requests, an unknown
/// outcome for writes (the request may still be applied).
fn timed_out(retry: Retry, endpoint: &str, timeout: Duration) -> Error {
    match retry {
        Retry::Safe => Error::Timeout(timeout),
        Retry::OnlyIfNotSent => Error::Unknown {
            endpoint: endpoint.to_owned(),
            source: Status::deadline_exceeded(format!(
                "client request timeout ({timeout:?}) expired"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        let table = [
            ("127.0.0.1:2379", Some("http://127.0.0.1:2379")),
            ("http://127.0.0.1:2379", Some("http://127.0.0.1:2379")),
            ("http://127.0.0.1:2379/", Some("http://127.0.0.1:2379")),
            (" localhost:1 ", Some("http://localhost:1")),
            ("https://127.0.0.1:2379", None),
            ("unix:///tmp/x", None),
            ("", None),
            ("http://", None),
            ("http://host:1/path", None),
        ];
        for (input, want) in table {
            let got = normalize_endpoint(input).ok();
            assert_eq!(got.as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let options = ConnectOptions::new()
            .with_backoff(Duration::from_millis(10), Duration::from_millis(100));
        for attempt in 0..20 {
            let pause = options.backoff(attempt);
            let full = Duration::from_millis(10 * 2u64.saturating_pow(attempt))
                .min(Duration::from_millis(100));
            assert!(pause >= full / 2 && pause <= full, "{attempt}: {pause:?}");
        }
    }

    #[tokio::test]
    async fn connect_rejects_empty_and_dedups() {
        let none: [&str; 0] = [];
        assert!(matches!(
            Client::connect(none, ConnectOptions::new()).await,
            Err(Error::NoEndpoints)
        ));
        let client = Client::connect(
            ["127.0.0.1:1", "http://127.0.0.1:1", "127.0.0.1:2"],
            ConnectOptions::new(),
        )
        .await
        .expect("valid endpoints");
        assert_eq!(
            client.endpoints(),
            vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert_eq!(client.current_endpoint(), "http://127.0.0.1:1");
        client.rotate_from(0);
        assert_eq!(client.current_endpoint(), "http://127.0.0.1:2");
        // A stale failure report does not move the index again.
        client.rotate_from(0);
        assert_eq!(client.current_endpoint(), "http://127.0.0.1:2");
    }
}
