//! etcd's KV request semantics over the MVCC store: Range options (limit/more/count, sort, filters,
//! keys_only), Put options (prev_kv, ignore_value, ignore_lease), DeleteRange, Txn (compares, branch
//! choice, nested txns) and Compaction. Reads run on the store or inside a write; writes run inside
//! the apply transaction. Requests arrive already validated by the API layer (see `api::validate`).

use std::cmp::Ordering;

use conclave_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse, compare, range_request, request_op, response_op,
};
use conclave_proto::mvccpb::KeyValue;

use crate::error::ServerError;
use crate::lease::Lessor;
use crate::mvcc::{KeyRange, MvccError, RangeOptions, RangeResult, Store, Writer};
use crate::storage::StorageError;

/// Why a request could not be executed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The request is refused; nothing was changed.
    #[error(transparent)]
    Rejected(#[from] ServerError),
    /// The database failed: the member must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<MvccError> for KvError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => KvError::Rejected(ServerError::Compacted),
            MvccError::FutureRevision => KvError::Rejected(ServerError::FutureRevision),
            MvccError::Storage(s) => KvError::Storage(s),
        }
    }
}

pub type KvResult<T> = Result<T, KvError>;

/// Something that answers MVCC range reads: the store (reads) or a writer (inside a Txn).
pub trait Reader {
    fn read(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult, MvccError>;
}

impl Reader for Store {
    fn read(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range(range, opts)
    }
}

impl Reader for Writer<'_, '_> {
    fn read(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range(range, opts)
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Serves a Range request.
pub fn range(reader: &impl Reader, req: &RangeRequest) -> KvResult<RangeResponse> {
    use range_request::{SortOrder, SortTarget};
    let sort_order =
        SortOrder::try_from(req.sort_order).map_err(|_| ServerError::InvalidSortOption)?;
    let sort_target =
        SortTarget::try_from(req.sort_target).map_err(|_| ServerError::InvalidSortOption)?;
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Sorting and filtering need every key in the range before the limit applies; otherwise fetch
    // one more than the limit to learn whether there are more.
    let limit = if sort_order != SortOrder::None || filtered || req.limit <= 0 {
        0
    } else {
        req.limit as usize + 1
    };
    let res = reader.read(
        KeyRange::new(&req.key, &req.range_end),
        RangeOptions {
            limit,
            revision: req.revision,
            count_only: req.count_only,
        },
    )?;
    let mut kvs = res.kvs;
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    let order = match (sort_order, sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    if order != SortOrder::None && !(order == SortOrder::Ascend && sort_target == SortTarget::Key) {
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(res.revision),
        kvs,
        more,
        count: res.count as i64,
    })
}

/// Applies a Put.
pub fn put(w: &mut Writer<'_, '_>, leases: &Lessor, req: &PutRequest) -> KvResult<PutResponse> {
    // Read only when needed: a read per put was a fifth of apply's time.
    let prev = if req.prev_kv || req.ignore_value || req.ignore_lease {
        w.get(&req.key)?
    } else {
        None
    };
    let mut value = req.value.clone();
    let mut lease = req.lease;
    if req.ignore_value || req.ignore_lease {
        let Some(p) = &prev else {
            return Err(ServerError::KeyNotFound.into());
        };
        if req.ignore_value {
            value = p.value.clone();
        }
        if req.ignore_lease {
            lease = p.lease;
        }
    }
    check_lease(leases, lease)?;
    w.put(&req.key, value, lease)?;
    Ok(PutResponse {
        header: header(w.revision()),
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

/// A key may only be attached to a lease that exists (0 = no lease).
fn check_lease(leases: &Lessor, lease: i64) -> KvResult<()> {
    if lease != 0 && !leases.exists(lease) {
        return Err(ServerError::LeaseNotFound.into());
    }
    Ok(())
}

/// Applies a DeleteRange.
pub fn delete_range(
    w: &mut Writer<'_, '_>,
    req: &DeleteRangeRequest,
) -> KvResult<DeleteRangeResponse> {
    let deleted = w.delete_range(KeyRange::new(&req.key, &req.range_end))?;
    Ok(DeleteRangeResponse {
        header: header(w.revision()),
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
    })
}

/// Applies a Compaction.
pub fn compaction(w: &mut Writer<'_, '_>, req: &CompactionRequest) -> KvResult<CompactionResponse> {
    w.compact(req.revision)?;
    Ok(CompactionResponse {
        header: header(w.revision()),
    })
}

/// Applies a Txn: all compares (nested ones included) are evaluated against the state before the
/// txn writes anything, the chosen ops are checked, and only then executed — a refused txn changes
/// nothing.
pub fn txn(w: &mut Writer<'_, '_>, leases: &Lessor, req: &TxnRequest) -> KvResult<TxnResponse> {
    let mut path = Vec::new();
    choose_branches(w, req, &mut path)?;
    check_path(w, leases, req, &path, &mut 0)?;
    execute(w, leases, req, &path, &mut 0)
}

/// Evaluates a Txn's compares (and, depth first, those of the nested txns on the chosen branch).
fn choose_branches(w: &Writer<'_, '_>, req: &TxnRequest, path: &mut Vec<bool>) -> KvResult<()> {
    let mut succeeded = true;
    for c in &req.compare {
        if !compare_holds(w, c)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    for op in branch(req, succeeded) {
        if let Some(request_op::Request::RequestTxn(t)) = &op.request {
            choose_branches(w, t, path)?;
        }
    }
    Ok(())
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn check_path(
    w: &Writer<'_, '_>,
    leases: &Lessor,
    req: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> KvResult<()> {
    let succeeded = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    for op in branch(req, succeeded) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if p.ignore_value || p.ignore_lease {
                    match w.get(&p.key)? {
                        None => return Err(ServerError::KeyNotFound.into()),
                        Some(prev) if p.ignore_lease => check_lease(leases, prev.lease)?,
                        Some(_) => check_lease(leases, p.lease)?,
                    }
                } else {
                    check_lease(leases, p.lease)?;
                }
            }
            Some(request_op::Request::RequestRange(r)) if r.revision > 0 => {
                if r.revision > w.revision() {
                    return Err(ServerError::FutureRevision.into());
                }
                if r.revision < w.compacted_revision() {
                    return Err(ServerError::Compacted.into());
                }
            }
            Some(request_op::Request::RequestTxn(t)) => check_path(w, leases, t, path, at)?,
            _ => {}
        }
    }
    Ok(())
}

fn execute(
    w: &mut Writer<'_, '_>,
    leases: &Lessor,
    req: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> KvResult<TxnResponse> {
    let succeeded = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    let mut responses = Vec::new();
    for op in branch(req, succeeded) {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range(&*w, r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put(w, leases, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(w, d)?)
            }
            Some(request_op::Request::RequestTxn(t)) => {
                response_op::Response::ResponseTxn(execute(w, leases, t, path, at)?)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: header(w.revision()),
        succeeded,
        responses,
    })
}

fn compare_holds(w: &Writer<'_, '_>, c: &Compare) -> KvResult<bool> {
    let res = w.range(KeyRange::new(&c.key, &c.range_end), RangeOptions::default())?;
    let target =
        compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
    if res.kvs.is_empty() {
        // A missing key has version/revisions/lease 0, but no value to compare against.
        if target == compare::CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(res.kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: compare::CompareTarget, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        CompareTarget::Version => kv.version.cmp(&union_i64(c, |u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Create => kv.create_revision.cmp(&union_i64(c, |u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Mod => kv.mod_revision.cmp(&union_i64(c, |u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Lease => kv.lease.cmp(&union_i64(c, |u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

fn union_i64(c: &Compare, pick: impl Fn(&compare::TargetUnion) -> Option<i64>) -> i64 {
    c.target_union.as_ref().and_then(pick).unwrap_or(0)
}

#[cfg(test)]
mod tests;
