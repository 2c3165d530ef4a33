//! The transaction builder: guards ([`Compare`]) and branch operations ([`TxnOp`]) that translate
//! one-to-one into etcd's `TxnRequest`. Pure data: nothing here talks to a server.

use conclave_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use conclave_proto::etcdserverpb::request_op::Request;
use conclave_proto::etcdserverpb::{self as pb, RequestOp, TxnRequest};

use crate::kv::{DeleteOptions, GetOptions, PutOptions, prefix_range_end};

/// The relation a [`Compare`] tests: `actual OP operand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `actual == operand`
    Equal,
    /// `actual != operand`
    NotEqual,
    /// `actual > operand`
    Greater,
    /// `actual < operand`
    Less,
}

impl From<CompareOp> for CompareResult {
    fn from(op: CompareOp) -> Self {
        match op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        }
    }
}

/// A transaction guard on one key (or, with a range end, on every key of a range).
///
/// An absent key has version, create revision, mod revision and lease 0 and compares as such; a
/// value comparison against an absent key is false.
#[derive(Clone, Debug, PartialEq)]
pub struct Compare(pb::Compare);

impl Compare {
    fn new(
        key: impl Into<Vec<u8>>,
        op: CompareOp,
        target: CompareTarget,
        operand: TargetUnion,
    ) -> Self {
        Compare(pb::Compare {
            result: CompareResult::from(op) as i32,
            target: target as i32,
            key: key.into(),
            range_end: Vec::new(),
            target_union: Some(operand),
        })
    }

    /// Compares the key's value with `value`.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Value,
            TargetUnion::Value(value.into()),
        )
    }

    /// Compares the key's version (number of puts since creation; 0 if absent).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Version,
            TargetUnion::Version(version),
        )
    }

    /// Compares the revision at which the key was created (0 if absent).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Create,
            TargetUnion::CreateRevision(revision),
        )
    }

    /// Compares the revision of the key's last modification (0 if absent).
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Mod,
            TargetUnion::ModRevision(revision),
        )
    }

    /// Compares the lease the key is attached to (0 for none).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(key, op, CompareTarget::Lease, TargetUnion::Lease(lease))
    }

    /// Applies the comparison to every key in `[key, end)` (all must satisfy it).
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.0.range_end = end.into();
        self
    }

    /// Applies the comparison to every key with this key as prefix.
    pub fn with_prefix(mut self) -> Self {
        if self.0.key.is_empty() {
            self.0.key = vec![0];
            self.0.range_end = vec![0];
        } else {
            self.0.range_end = prefix_range_end(&self.0.key);
        }
        self
    }

    /// The wire form.
    pub fn into_proto(self) -> pb::Compare {
        self.0
    }
}

impl From<Compare> for pb::Compare {
    fn from(compare: Compare) -> Self {
        compare.0
    }
}

/// One operation in a transaction branch.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnOp(Request);

impl TxnOp {
    /// A put of `key` = `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, options: PutOptions) -> Self {
        TxnOp(Request::RequestPut(options.into_request(key, value)))
    }

    /// A range read of `key` (or the range the options select).
    pub fn get(key: impl Into<Vec<u8>>, options: GetOptions) -> Self {
        TxnOp(Request::RequestRange(options.into_request(key)))
    }

    /// A delete of `key` (or the range the options select).
    pub fn delete(key: impl Into<Vec<u8>>, options: DeleteOptions) -> Self {
        TxnOp(Request::RequestDeleteRange(options.into_request(key)))
    }

    /// A nested transaction.
    pub fn txn(txn: Txn) -> Self {
        TxnOp(Request::RequestTxn(txn.into_request()))
    }

    /// True when the operation cannot write (a range, or a nested transaction of ranges only).
    pub fn is_read_only(&self) -> bool {
        request_is_read_only(&self.0)
    }

    /// The wire form.
    pub fn into_proto(self) -> RequestOp {
        RequestOp {
            request: Some(self.0),
        }
    }
}

fn request_is_read_only(request: &Request) -> bool {
    match request {
        Request::RequestRange(_) => true,
        Request::RequestPut(_) | Request::RequestDeleteRange(_) => false,
        Request::RequestTxn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .all(|op| op.request.as_ref().is_none_or(request_is_read_only)),
    }
}

/// A transaction: if every guard holds, the `and_then` operations run, otherwise the `or_else`
/// ones; atomically, at one revision.
///
/// ```
/// use conclave_client::{Compare, CompareOp, PutOptions, GetOptions, Txn, TxnOp};
/// let txn = Txn::new()
///     .when([Compare::version("lock", CompareOp::Equal, 0)])
///     .and_then([TxnOp::put("lock", "me", PutOptions::new())])
///     .or_else([TxnOp::get("lock", GetOptions::new())]);
/// assert!(!txn.is_read_only());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no guards: the `and_then` branch runs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds guards; all must hold for the `and_then` branch to run. Calls accumulate.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares);
        self
    }

    /// Adds operations to run when every guard holds. Calls accumulate.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to run when some guard fails. Calls accumulate.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// True when neither branch can write, so the transaction is safe to retry.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(TxnOp::is_read_only)
    }

    /// The wire form.
    pub fn into_request(self) -> TxnRequest {
        TxnRequest {
            compare: self.compare.into_iter().map(Compare::into_proto).collect(),
            success: self.success.into_iter().map(TxnOp::into_proto).collect(),
            failure: self.failure.into_iter().map(TxnOp::into_proto).collect(),
        }
    }
}

impl From<Txn> for TxnRequest {
    fn from(txn: Txn) -> Self {
        txn.into_request()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    #[test]
    fn compares_translate_to_wire_form() {
        let table = [
            (
                Compare::value("k", CompareOp::Equal, "v"),
                CompareResult::Equal,
                CompareTarget::Value,
                TargetUnion::Value(b"v".to_vec()),
            ),
            (
                Compare::version("k", CompareOp::NotEqual, 2),
                CompareResult::NotEqual,
                CompareTarget::Version,
                TargetUnion::Version(2),
            ),
            (
                Compare::create_revision("k", CompareOp::Greater, 3),
                CompareResult::Greater,
                CompareTarget::Create,
                TargetUnion::CreateRevision(3),
            ),
            (
                Compare::mod_revision("k", CompareOp::Less, 4),
                CompareResult::Less,
                CompareTarget::Mod,
                TargetUnion::ModRevision(4),
            ),
            (
                Compare::lease("k", CompareOp::Equal, 5),
                CompareResult::Equal,
                CompareTarget::Lease,
                TargetUnion::Lease(5),
            ),
        ];
        for (compare, result, target, operand) in table {
            let wire = compare.into_proto();
            assert_eq!(wire.key, b"k");
            assert_eq!(wire.result, result as i32);
            assert_eq!(wire.target, target as i32);
            assert_eq!(wire.target_union, Some(operand));
            assert!(wire.range_end.is_empty());
        }
    }

    #[test]
    fn compare_ranges() {
        let wire = Compare::version("a/", CompareOp::Equal, 0)
            .with_prefix()
            .into_proto();
        assert_eq!(
            (wire.key.as_slice(), wire.range_end.as_slice()),
            (&b"a/"[..], &b"a0"[..])
        );
        let wire = Compare::version("", CompareOp::Equal, 0)
            .with_prefix()
            .into_proto();
        assert_eq!(
            (wire.key.as_slice(), wire.range_end.as_slice()),
            (&b"\0"[..], &b"\0"[..])
        );
        let wire = Compare::mod_revision("a", CompareOp::Less, 9)
            .with_range_end("c")
            .into_proto();
        assert_eq!(wire.range_end, b"c");
    }

    #[test]
    fn txn_builds_request_in_order() {
        let nested = Txn::new().and_then([TxnOp::get("n", GetOptions::new())]);
        let request = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "v")])
            .when([Compare::version("j", CompareOp::Greater, 1)])
            .and_then([
                TxnOp::put("k", "w", PutOptions::new().with_prev_kv()),
                TxnOp::delete("d", DeleteOptions::new().with_prefix()),
            ])
            .or_else([
                TxnOp::get("k", GetOptions::new().with_keys_only()),
                TxnOp::txn(nested),
            ])
            .into_request();

        assert_eq!(request.compare.len(), 2);
        assert_eq!(request.compare[1].key, b"j");
        let ops: Vec<_> = request
            .success
            .iter()
            .map(|op| op.request.clone())
            .collect();
        assert_eq!(
            ops,
            vec![
                Some(Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"w".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                })),
                Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"d".to_vec(),
                    range_end: b"e".to_vec(),
                    prev_kv: false,
                })),
            ]
        );
        assert_eq!(
            request.failure[0].request,
            Some(Request::RequestRange(RangeRequest {
                key: b"k".to_vec(),
                keys_only: true,
                ..Default::default()
            }))
        );
        match &request.failure[1].request {
            Some(Request::RequestTxn(inner)) => {
                assert!(inner.compare.is_empty());
                assert_eq!(inner.success.len(), 1);
                assert!(inner.failure.is_empty());
            }
            other => panic!("expected nested txn, got {other:?}"),
        }
    }

    #[test]
    fn read_only_detection_looks_into_nested_txns() {
        assert!(Txn::new().is_read_only());
        let reads = Txn::new()
            .when([Compare::version("k", CompareOp::Equal, 0)])
            .and_then([TxnOp::get("a", GetOptions::new())])
            .or_else([TxnOp::txn(
                Txn::new().and_then([TxnOp::get("b", GetOptions::new())]),
            )]);
        assert!(reads.is_read_only());
        let nested_write = Txn::new().or_else([TxnOp::txn(
            Txn::new().or_else([TxnOp::delete("b", DeleteOptions::new())]),
        )]);
        assert!(!nested_write.is_read_only());
        assert!(
            !Txn::new()
                .and_then([TxnOp::put("a", "b", PutOptions::new())])
                .is_read_only()
        );
    }
}
