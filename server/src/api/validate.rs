//! Request checks done before anything reaches raft, with etcd's errors: empty keys, contradictory
//! options, txn size and duplicate keys. A request refused here changes nothing.

use std::collections::HashSet;

use conclave_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, range_request,
    request_op::Request,
};

use crate::error::ServerError;
use crate::mvcc::KeyRange;

pub fn range(r: &RangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(ServerError::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// Checks a Txn: sizes against `max_ops`, every op, and that no key is written twice on any path.
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
    txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// Bytes of keys and values a Txn may put, on either branch (0: it puts nothing, and is not
/// subject to the space quota).
pub fn put_bytes(r: &TxnRequest) -> usize {
    r.success
        .iter()
        .chain(&r.failure)
        .map(|op| match &op.request {
            Some(Request::RequestPut(p)) => p.key.len() + p.value.len(),
            Some(Request::RequestTxn(t)) => put_bytes(t),
            _ => 0,
        })
        .sum()
}

fn txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(ServerError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ServerError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(x)) => range(x)?,
            Some(Request::RequestPut(x)) => put(x)?,
            Some(Request::RequestDeleteRange(x)) => delete_range(x)?,
            Some(Request::RequestTxn(x)) => txn_ops(x, max_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// Owned key interval of a delete.
struct Interval {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        KeyRange::new(&self.key, &self.end).contains(k)
    }
}

/// etcd's rule: within one branch, a key may be put at most once, and not put if a delete of the
/// same branch (or of a nested txn) covers it. The two branches of a nested txn are exclusive, so
/// the same key may be put in both.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), ServerError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval {
                key: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(ServerError::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(ServerError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(ServerError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn check(success: Vec<RequestOp>) -> Result<(), ServerError> {
        txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            128,
        )
    }

    #[test]
    fn duplicate_key_rules() {
        let dup = Err(ServerError::DuplicateKey);
        assert_eq!(check(vec![put_op("a"), put_op("b")]), Ok(()));
        assert_eq!(check(vec![put_op("a"), put_op("a")]), dup);
        assert_eq!(check(vec![del_op("a", "c"), put_op("b")]), dup);
        assert_eq!(check(vec![del_op("a", ""), put_op("b")]), Ok(()));
        // Overlapping deletes are fine.
        assert_eq!(check(vec![del_op("a", "c"), del_op("b", "d")]), Ok(()));
        // Both branches of a nested txn may put the same key...
        assert_eq!(
            check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]),
            Ok(())
        );
        // ...but not a key the outer level puts too.
        assert_eq!(
            check(vec![txn_op(vec![put_op("a")], vec![]), put_op("a")]),
            dup
        );
        assert_eq!(
            check(vec![txn_op(vec![del_op("a", "b")], vec![]), put_op("a")]),
            dup
        );
    }

    #[test]
    fn sizes_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(check(many), Err(ServerError::TooManyOps));
        assert_eq!(check(vec![put_op("")]), Err(ServerError::EmptyKey));
        assert_eq!(
            put(&PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ignore_value: true,
                ..Default::default()
            }),
            Err(ServerError::ValueProvided)
        );
        assert_eq!(
            put(&PutRequest {
                key: b"k".to_vec(),
                lease: 5,
                ignore_lease: true,
                ..Default::default()
            }),
            Err(ServerError::LeaseProvided)
        );
        assert_eq!(
            range(&RangeRequest {
                key: b"k".to_vec(),
                sort_order: 9,
                ..Default::default()
            }),
            Err(ServerError::InvalidSortOption)
        );
    }
}
