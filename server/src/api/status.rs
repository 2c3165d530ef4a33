//! The ONE table from server errors to gRPC statuses. Codes and messages are etcd's, because
//! clients (etcdctl, clientv3, and everything built on them) match on them.

use tonic::{Code, Status};

use crate::error::ServerError;
use crate::kv_ops::KvError;

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        let code = match e {
            ServerError::EmptyKey
            | ServerError::KeyNotFound
            | ServerError::ValueProvided
            | ServerError::LeaseProvided
            | ServerError::TooManyOps
            | ServerError::DuplicateKey
            | ServerError::InvalidSortOption
            | ServerError::RequestTooLarge
            | ServerError::MemberBadUrls => Code::InvalidArgument,
            ServerError::Compacted
            | ServerError::FutureRevision
            | ServerError::LeaseTtlTooLarge => Code::OutOfRange,
            ServerError::NotLeader
            | ServerError::BadLeaderTransferee
            | ServerError::LeaseExist
            | ServerError::MemberExist
            | ServerError::PeerUrlExist
            | ServerError::MemberNotEnoughStarted
            | ServerError::MemberNotLearner
            | ServerError::LearnerNotReady
            | ServerError::TooManyLearners
            | ServerError::NotSupportedForLearner => Code::FailedPrecondition,
            ServerError::LeaseNotFound | ServerError::MemberNotFound => Code::NotFound,
            ServerError::NoSpace => Code::ResourceExhausted,
            ServerError::Corrupt => Code::DataLoss,
            ServerError::NoLeader
            | ServerError::Timeout
            | ServerError::Stopped
            | ServerError::NotCapable
            | ServerError::DefragRetry
            | ServerError::LeaderTransferTimeout
            | ServerError::Unhealthy
            | ServerError::Storage(_) => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

/// Errors of the requests this server makes to itself (the lock service runs the client recipe),
/// back as the status the inner request got, so callers see etcd's codes and messages.
pub fn from_client(e: conclave_client::Error) -> Status {
    use conclave_client::Error as E;
    match e {
        E::Status(s) | E::Unknown { source: s, .. } | E::Unavailable { source: s, .. } => s,
        E::Timeout(_) => ServerError::Timeout.into(),
        other => match other.code() {
            Some(code) => Status::new(code, other.to_string()),
            None => Status::unavailable(other.to_string()),
        },
    }
}

impl From<KvError> for Status {
    fn from(e: KvError) -> Status {
        match e {
            KvError::Rejected(e) => e.into(),
            KvError::Storage(e) => ServerError::from(e).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_codes_and_messages() {
        let cases = [
            (
                ServerError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ServerError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ServerError::FutureRevision,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ServerError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                ServerError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                ServerError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                ServerError::LeaseExist,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                ServerError::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                ServerError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                ServerError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ServerError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ServerError::PeerUrlExist,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                ServerError::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                ServerError::LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                ServerError::MemberNotEnoughStarted,
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                ServerError::NotSupportedForLearner,
                Code::FailedPrecondition,
                "etcdserver: rpc not supported for learner",
            ),
            (
                ServerError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                ServerError::MemberBadUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
        ];
        for (err, code, msg) in cases {
            let s = Status::from(err);
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }
}
