//! The client's error type and the ONE table from gRPC statuses to it.
//!
//! etcd reports its well-known failures as fixed status messages ("etcdserver: ..."); they are matched
//! here exactly, so callers can match on variants instead of strings. This module also decides which
//! failures are transient (worth another endpoint) and which leave a write's outcome unknown.

use std::error::Error as StdError;
use std::time::Duration;

use tonic::{Code, Status};

/// Everything a client call can fail with.
///
/// The contract that matters most: [`Error::Unknown`] means a write may or may not have taken effect
/// (the request may have been applied before the connection or deadline failed). Every other variant
/// returned for a write means the server definitely did not apply it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `Client::connect` was given no endpoint.
    #[error("no endpoints given")]
    NoEndpoints,

    /// An endpoint string could not be turned into a URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The requested revision has been compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,

    /// The requested revision is newer than the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,

    /// A put with `ignore_value`/`ignore_lease` named a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,

    /// The lease named by the request does not exist (or has expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,

    /// A grant asked for a lease ID that is already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,

    /// A grant asked for a TTL above the server's maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,

    /// A watch's start (or resume) revision has been compacted away, so events between it and
    /// `compact_revision` can no longer be delivered. The watch has ended; start a new one from
    /// `compact_revision` or later (after re-reading the state).
    #[error(
        "etcdserver: mvcc: required revision has been compacted (compact revision {compact_revision})"
    )]
    WatchCompacted {
        /// The server's compaction revision: the oldest revision a new watch may start from.
        compact_revision: i64,
    },

    /// The server cancelled a watch for the given reason. The watch has ended.
    #[error("watch canceled by the server: {reason}")]
    WatchCanceled {
        /// The server's `cancel_reason` (may be empty).
        reason: String,
    },

    /// A transaction has more operations than the server's `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,

    /// A transaction writes the same key twice in one branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,

    /// The request has an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,

    /// The request exceeds the server's `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,

    /// The backend quota is exhausted; only reads and deletes are accepted until space is freed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,

    /// The outcome of a write is unknown: the connection failed or the deadline passed after the
    /// request may have reached the server. The write may take effect (even later); never treat
    /// this as "did not happen".
    #[error("outcome unknown at {endpoint}: {}", describe(source))]
    Unknown {
        /// The endpoint the request was last sent to.
        endpoint: String,
        /// The status that left the outcome unknown.
        source: Status,
    },

    /// No endpoint could serve the request within the allowed attempts. For a write this is a
    /// definite failure: every attempt failed before the request was sent.
    #[error("unavailable (last tried {endpoint}): {}", describe(source))]
    Unavailable {
        /// The endpoint tried last.
        endpoint: String,
        /// The last failure seen.
        source: Status,
    },

    /// The lease behind a lock (or an election) ended while waiting for it: nothing is held
    /// (etcd's `concurrency.ErrSessionExpired`, whose text its lock service returns).
    #[error("session expired")]
    SessionExpired,

    /// A typed configuration value that does not (de)serialize.
    #[error("conclave: the value of {key:?} does not decode: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// What serde said.
        reason: String,
    },

    /// A group name that is empty or contains `/`.
    #[error("conclave: invalid group name {0:?} (not empty, no '/')")]
    InvalidGroup(String),

    /// A proclaim or resign by a candidate that no longer leads (etcd's text).
    #[error("election: not leader")]
    NotLeader,

    /// An election without a candidate (etcd's text).
    #[error("election: no leader")]
    NoLeader,

    /// A request that is safe to retry did not complete within the request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),

    /// Any other status returned by the server.
    #[error("{}", describe(.0))]
    Status(#[source] Status),
}

impl Error {
    /// Maps a status returned by a server to the typed error it stands for. Well-known etcd messages
    /// become their own variants; everything else is kept as [`Error::Status`].
    pub fn from_status(status: Status) -> Error {
        match status.message() {
            "etcdserver: mvcc: required revision has been compacted" => Error::Compacted,
            "etcdserver: mvcc: required revision is a future revision" => Error::FutureRevision,
            "etcdserver: key not found" => Error::KeyNotFound,
            "etcdserver: requested lease not found" => Error::LeaseNotFound,
            "etcdserver: lease already exists" => Error::LeaseExists,
            "etcdserver: too large lease TTL" => Error::LeaseTtlTooLarge,
            "etcdserver: too many operations in txn request" => Error::TooManyOps,
            "etcdserver: duplicate key given in txn request" => Error::DuplicateKey,
            "etcdserver: key is not provided" => Error::EmptyKey,
            "etcdserver: request is too large" => Error::RequestTooLarge,
            "etcdserver: mvcc: database space exceeded" => Error::NoSpace,
            "session expired" => Error::SessionExpired,
            "election: not leader" => Error::NotLeader,
            "election: no leader" => Error::NoLeader,
            _ => Error::Status(status),
        }
    }

    /// True when this error leaves the outcome of a write unknown.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, Error::Unknown { .. })
    }

    /// The gRPC code behind this error, when it came from a status.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Unknown { source, .. } | Error::Unavailable { source, .. } => {
                Some(source.code())
            }
            Error::Status(status) => Some(status.code()),
            Error::Timeout(_) => Some(Code::DeadlineExceeded),
            Error::Compacted
            | Error::FutureRevision
            | Error::LeaseTtlTooLarge
            | Error::WatchCompacted { .. } => Some(Code::OutOfRange),
            Error::LeaseNotFound => Some(Code::NotFound),
            Error::LeaseExists => Some(Code::FailedPrecondition),
            Error::NoSpace => Some(Code::ResourceExhausted),
            Error::KeyNotFound
            | Error::InvalidGroup(_)
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::EmptyKey
            | Error::RequestTooLarge => Some(Code::InvalidArgument),
            Error::SessionExpired | Error::NotLeader | Error::NoLeader => Some(Code::Unknown),
            Error::NoEndpoints
            | Error::InvalidEndpoint { .. }
            | Error::WatchCanceled { .. }
            | Error::Decode { .. } => None,
        }
    }
}

/// A short human form of a status: code, message and the innermost transport cause.
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut cause: Option<&(dyn StdError + 'static)> = status.source();
    let mut innermost = None;
    while let Some(err) = cause {
        innermost = Some(err);
        cause = err.source();
    }
    if let Some(err) = innermost {
        let err = err.to_string();
        if !status.message().contains(&err) {
            text.push_str(" (");
            text.push_str(&err);
            text.push(')');
        }
    }
    text
}

/// Server messages that are returned before a request enters raft: the request was not applied,
/// and another member may serve it.
const NOT_SERVED_HERE: &[&str] = &[
    "etcdserver: rpc not supported for learner",
    "etcdserver: not capable",
    "etcdserver: not leader",
];

/// What the retry loop should do with a failed attempt.
#[derive(Debug)]
pub(crate) enum Disposition {
    /// Move to the next endpoint and try again (the request was not applied, or is safe to repeat).
    Retry(Status),
    /// Stop and report this error.
    Fail(Error),
}

/// Decides what a failed attempt means.
///
/// * Not sent at all (connection refused, connect timeout) or refused by a member that cannot serve
///   it: retry elsewhere, reads and writes alike.
/// * `idempotent` (reads): retry on `Unavailable` and on local transport failures.
/// * Writes: `Unavailable`, `DeadlineExceeded`, `Cancelled` and local transport failures leave the
///   outcome unknown: [`Error::Unknown`].
/// * Anything else is a definite answer from the server: [`Error::from_status`].
pub(crate) fn classify(status: Status, idempotent: bool, endpoint: &str) -> Disposition {
    if was_not_sent(&status) || NOT_SERVED_HERE.contains(&status.message()) {
        return Disposition::Retry(status);
    }
    let transport = is_local_transport_failure(&status);
    if idempotent {
        if status.code() == Code::Unavailable || transport {
            return Disposition::Retry(status);
        }
        return Disposition::Fail(Error::from_status(status));
    }
    if transport
        || matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        )
    {
        return Disposition::Fail(Error::Unknown {
            endpoint: endpoint.to_owned(),
            source: status,
        });
    }
    Disposition::Fail(Error::from_status(status))
}

/// Decides what the failure of a long-lived stream (Watch, LeaseKeepAlive) means. Streams carry
/// no write whose outcome could be lost, so every sign that the member or the connection went away
/// is a reason to re-open the stream on the next endpoint: whatever [`classify`] retries for a
/// read, plus `Cancelled`, `DeadlineExceeded` and `Aborted` (a member shutting down, or a stalled
/// stream given up locally) and a plain `ResourceExhausted` (a server ending the stream of a
/// consumer that stopped reading, asking it to resume). Any other status, including the typed
/// [`Error::NoSpace`], is the server's definite answer: [`Error::from_status`].
pub(crate) fn classify_stream(status: Status, endpoint: &str) -> Disposition {
    match classify(status, true, endpoint) {
        Disposition::Fail(Error::Status(status))
            if matches!(
                status.code(),
                Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted
            ) =>
        {
            Disposition::Retry(status)
        }
        other => other,
    }
}

/// True when the status was produced by tonic because no connection could be established: the
/// request never left this process.
pub(crate) fn was_not_sent(status: &Status) -> bool {
    caused_by::<tonic::ConnectError>(status)
}

/// True when tonic itself failed the call because its `grpc-timeout` expired.
pub(crate) fn deadline_expired_locally(status: &Status) -> bool {
    caused_by::<tonic::TimeoutExpired>(status)
}

/// True when an error of type `E` is somewhere in the status's source chain.
fn caused_by<E: StdError + 'static>(status: &Status) -> bool {
    let mut cause: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(err) = cause {
        if err.is::<E>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// True when the status was made locally from a transport error (a server-sent status has no
/// source): the connection broke, so the server may or may not have seen the request.
fn is_local_transport_failure(status: &Status) -> bool {
    status.source().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_refused() -> Status {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        Status::from_error(Box::new(tonic::ConnectError(Box::new(io))))
    }

    /// What tonic makes of an unrecognised transport failure: `Unknown` with the error as source.
    fn broken_connection() -> Status {
        let mut status = Status::unknown("transport error");
        status.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        )));
        status
    }

    #[test]
    fn well_known_messages_map_to_variants() {
        type Case = (Code, &'static str, fn(&Error) -> bool);
        let table: &[Case] = &[
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
                |e| matches!(e, Error::Compacted),
            ),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
                |e| matches!(e, Error::FutureRevision),
            ),
            (Code::InvalidArgument, "etcdserver: key not found", |e| {
                matches!(e, Error::KeyNotFound)
            }),
            (
                Code::NotFound,
                "etcdserver: requested lease not found",
                |e| matches!(e, Error::LeaseNotFound),
            ),
            (
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
                |e| matches!(e, Error::LeaseExists),
            ),
            (Code::OutOfRange, "etcdserver: too large lease TTL", |e| {
                matches!(e, Error::LeaseTtlTooLarge)
            }),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
                |e| matches!(e, Error::TooManyOps),
            ),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
                |e| matches!(e, Error::DuplicateKey),
            ),
            (
                Code::InvalidArgument,
                "etcdserver: key is not provided",
                |e| matches!(e, Error::EmptyKey),
            ),
            (
                Code::InvalidArgument,
                "etcdserver: request is too large",
                |e| matches!(e, Error::RequestTooLarge),
            ),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
                |e| matches!(e, Error::NoSpace),
            ),
            (
                Code::InvalidArgument,
                "something else",
                |e| matches!(e, Error::Status(s) if s.message() == "something else"),
            ),
        ];
        for (code, message, check) in table {
            let err = Error::from_status(Status::new(*code, *message));
            assert!(check(&err), "{message} mapped to {err:?}");
        }
    }

    #[test]
    fn typed_errors_display_etcd_messages() {
        assert_eq!(
            Error::Compacted.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(
            Error::EmptyKey.to_string(),
            "etcdserver: key is not provided"
        );
    }

    #[test]
    fn connect_error_is_not_sent() {
        let status = connect_refused();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(was_not_sent(&status));
        assert!(!was_not_sent(&Status::unavailable("etcdserver: no leader")));
    }

    #[test]
    fn writes_fail_over_only_when_not_sent() {
        assert!(matches!(
            classify(connect_refused(), false, "e"),
            Disposition::Retry(_)
        ));
        assert!(matches!(
            classify(
                Status::unavailable("etcdserver: rpc not supported for learner"),
                false,
                "e"
            ),
            Disposition::Retry(_)
        ));
        for status in [
            Status::unavailable("etcdserver: no leader"),
            Status::unavailable("etcdserver: request timed out"),
            Status::deadline_exceeded("deadline"),
            Status::cancelled("cancelled"),
            broken_connection(),
        ] {
            match classify(status, false, "http://e") {
                Disposition::Fail(Error::Unknown { endpoint, .. }) => {
                    assert_eq!(endpoint, "http://e");
                }
                other => panic!("expected unknown outcome, got {other:?}"),
            }
        }
        assert!(matches!(
            classify(
                Status::invalid_argument("etcdserver: key is not provided"),
                false,
                "e"
            ),
            Disposition::Fail(Error::EmptyKey)
        ));
    }

    #[test]
    fn reads_retry_on_unavailable_and_transport_failures() {
        for status in [
            connect_refused(),
            Status::unavailable("etcdserver: no leader"),
            Status::unavailable("etcdserver: leader changed"),
            broken_connection(),
        ] {
            assert!(matches!(classify(status, true, "e"), Disposition::Retry(_)));
        }
        assert!(matches!(
            classify(
                Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
                true,
                "e"
            ),
            Disposition::Fail(Error::Compacted)
        ));
    }

    #[test]
    fn broken_streams_are_reopened_and_definite_answers_end_them() {
        for status in [
            connect_refused(),
            Status::unavailable("etcdserver: no leader"),
            Status::cancelled("server shutting down"),
            Status::deadline_exceeded("stalled"),
            Status::aborted("aborted"),
            Status::resource_exhausted("watch stream ended: slow consumer"),
            broken_connection(),
        ] {
            assert!(matches!(
                classify_stream(status, "e"),
                Disposition::Retry(_)
            ));
        }
        assert!(matches!(
            classify_stream(
                Status::not_found("etcdserver: requested lease not found"),
                "e"
            ),
            Disposition::Fail(Error::LeaseNotFound)
        ));
        assert!(matches!(
            classify_stream(
                Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
                "e"
            ),
            Disposition::Fail(Error::NoSpace)
        ));
        assert!(matches!(
            classify_stream(Status::unimplemented("no watch here"), "e"),
            Disposition::Fail(Error::Status(_))
        ));
    }

    #[test]
    fn watch_errors_have_codes() {
        assert_eq!(
            Error::WatchCompacted {
                compact_revision: 7
            }
            .code(),
            Some(Code::OutOfRange)
        );
        assert!(
            Error::WatchCompacted {
                compact_revision: 7
            }
            .to_string()
            .contains("compacted")
        );
        assert_eq!(Error::WatchCanceled { reason: "r".into() }.code(), None);
    }

    #[test]
    fn only_unknown_is_unknown_outcome() {
        let unknown = Error::Unknown {
            endpoint: "e".into(),
            source: Status::unavailable("x"),
        };
        assert!(unknown.is_unknown_outcome());
        assert!(!Error::Compacted.is_unknown_outcome());
        assert_eq!(unknown.code(), Some(Code::Unavailable));
    }
}
