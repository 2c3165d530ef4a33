//! Key-value commands: put, get, del, txn, compaction — etcdctl's arguments and output.

use std::io::Read as _;
use std::path::PathBuf;

use conclave_client::proto::{
    DeleteRangeResponse, PutResponse, RangeResponse, TxnResponse, response_op,
};
use conclave_client::{DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};
use serde_json::{Value, json};

use crate::output::{self, Obj, emit, kv_lines, text};
use crate::{Ctx, Failure};

/// Which keys a `get` or `del` covers besides KEY itself (etcdctl's arguments).
#[derive(clap::Args)]
pub struct RangeArgs {
    /// End of the range [KEY, END).
    range_end: Option<String>,
    /// Every key with KEY as prefix.
    #[arg(long)]
    prefix: bool,
    /// Every key >= KEY.
    #[arg(long)]
    from_key: bool,
}

#[derive(clap::Args)]
pub struct PutArgs {
    key: String,
    /// The value (omit with --ignore-value).
    value: Option<String>,
    /// Attach the key to this lease (hex id, as `lease grant` prints it).
    #[arg(long)]
    lease: Option<String>,
    /// Print the previous key-value.
    #[arg(long)]
    prev_kv: bool,
    /// Keep the current value (only the lease changes).
    #[arg(long)]
    ignore_value: bool,
    /// Keep the current lease.
    #[arg(long)]
    ignore_lease: bool,
}

#[derive(clap::Args)]
pub struct GetArgs {
    key: String,
    #[command(flatten)]
    range: RangeArgs,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Read at this revision.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// ascend or descend.
    #[arg(long)]
    order: Option<String>,
    /// key, version, create, modify or value.
    #[arg(long)]
    sort_by: Option<String>,
    /// Keys only.
    #[arg(long)]
    keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    count_only: bool,
    /// Print values only.
    #[arg(long)]
    print_value_only: bool,
    /// `l` (linearizable) or `s` (serializable).
    #[arg(long, default_value = "l")]
    consistency: String,
}

#[derive(clap::Args)]
pub struct DelArgs {
    key: String,
    #[command(flatten)]
    range: RangeArgs,
    /// Print the deleted key-values.
    #[arg(long)]
    prev_kv: bool,
}

#[derive(clap::Args)]
pub struct TxnArgs {
    /// Read the transaction from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Prompt for each section (etcdctl's -i).
    #[arg(short, long)]
    interactive: bool,
}

#[derive(clap::Args)]
pub struct CompactionArgs {
    revision: i64,
    /// Wait until the compaction is applied to the backend.
    #[arg(long)]
    physical: bool,
}

/// A hex lease id as etcdctl prints and takes them.
pub fn lease_id(s: &str) -> Result<i64, Failure> {
    i64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| {
        Failure::usage(format!(
            "bad lease ID {s:?}: expected a hex id like 694d7a5e2b3c1f00"
        ))
    })
}

macro_rules! apply_range {
    ($range:expr, $opts:expr) => {{
        let mut o = $opts;
        if let Some(end) = $range.range_end {
            o = o.with_range_end(end);
        }
        if $range.prefix {
            o = o.with_prefix();
        }
        if $range.from_key {
            o = o.with_from_key();
        }
        o
    }};
}

fn put_json(r: &PutResponse) -> Value {
    let mut o = Obj::new().value("header", output::header(&r.header));
    if let Some(p) = &r.prev_kv {
        o = o.value("prev_kv", output::kv(p));
    }
    o.build()
}

fn range_json(r: &RangeResponse) -> Value {
    Obj::new()
        .value("header", output::header(&r.header))
        .value("kvs", output::kvs(&r.kvs))
        .bool("more", r.more)
        .int("count", r.count)
        .build()
}

fn del_json(r: &DeleteRangeResponse) -> Value {
    Obj::new()
        .value("header", output::header(&r.header))
        .int("deleted", r.deleted)
        .value("prev_kvs", output::kvs(&r.prev_kvs))
        .build()
}

fn put_lines(r: &PutResponse) -> Vec<String> {
    let mut lines = vec!["OK".to_string()];
    if let Some(p) = &r.prev_kv {
        kv_lines(&mut lines, p, false, false);
    }
    lines
}

fn del_lines(r: &DeleteRangeResponse) -> Vec<String> {
    let mut lines = vec![r.deleted.to_string()];
    for kv in &r.prev_kvs {
        kv_lines(&mut lines, kv, false, false);
    }
    lines
}

fn range_table(r: &RangeResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .kvs
        .iter()
        .map(|kv| {
            vec![
                text(&kv.key),
                text(&kv.value),
                kv.create_revision.to_string(),
                kv.mod_revision.to_string(),
                kv.version.to_string(),
                if kv.lease == 0 {
                    String::new()
                } else {
                    format!("{:x}", kv.lease)
                },
            ]
        })
        .collect();
    output::table(
        &[
            "KEY",
            "VALUE",
            "CREATE REVISION",
            "MOD REVISION",
            "VERSION",
            "LEASE",
        ],
        &rows,
    )
}

pub async fn put(ctx: &Ctx, a: PutArgs) -> Result<(), Failure> {
    let mut o = PutOptions::new();
    if let Some(l) = &a.lease {
        o = o.with_lease(lease_id(l)?);
    }
    if a.prev_kv {
        o = o.with_prev_kv();
    }
    if a.ignore_value {
        o = o.with_ignore_value();
    }
    if a.ignore_lease {
        o = o.with_ignore_lease();
    }
    let value = match (a.value, a.ignore_value) {
        (Some(v), false) => v,
        (None, true) => String::new(),
        (Some(_), true) => {
            return Err(Failure::usage(
                "put: a value cannot be given with --ignore-value",
            ));
        }
        (None, false) => return Err(Failure::usage("put: needs KEY and VALUE")),
    };
    let r = ctx.client.kv().put(a.key, value, o).await?;
    emit(ctx.format, put_lines(&r), put_json(&r), None);
    Ok(())
}

pub async fn get(ctx: &Ctx, a: GetArgs) -> Result<(), Failure> {
    let mut o = apply_range!(
        a.range,
        GetOptions::new().with_limit(a.limit).with_revision(a.rev)
    );
    if a.keys_only {
        o = o.with_keys_only();
    }
    if a.count_only {
        o = o.with_count_only();
    }
    match a.consistency.as_str() {
        "l" => {}
        "s" => o = o.with_serializable(),
        other => {
            return Err(Failure::usage(format!(
                "unknown --consistency {other:?} (use l or s)"
            )));
        }
    }
    if a.order.is_some() || a.sort_by.is_some() {
        let order = match a.order.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("ascend") => SortOrder::Ascend,
            Some("descend") => SortOrder::Descend,
            Some(other) => {
                return Err(Failure::usage(format!(
                    "bad --order {other:?} (ascend or descend)"
                )));
            }
        };
        let target = match a.sort_by.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("key") => SortTarget::Key,
            Some("version") => SortTarget::Version,
            Some("create") => SortTarget::Create,
            Some("modify") => SortTarget::Mod,
            Some("value") => SortTarget::Value,
            Some(other) => {
                return Err(Failure::usage(format!(
                    "bad --sort-by {other:?} (key, version, create, modify, value)"
                )));
            }
        };
        o = o.with_sort(order, target);
    }
    let r = ctx.client.kv().get(a.key, o).await?;
    let mut lines = Vec::new();
    if a.count_only {
        lines.push(r.count.to_string());
    }
    for kv in &r.kvs {
        kv_lines(&mut lines, kv, a.keys_only, a.print_value_only);
    }
    emit(ctx.format, lines, range_json(&r), Some(range_table(&r)));
    Ok(())
}

pub async fn del(ctx: &Ctx, a: DelArgs) -> Result<(), Failure> {
    let mut o = apply_range!(a.range, DeleteOptions::new());
    if a.prev_kv {
        o = o.with_prev_kv();
    }
    let r = ctx.client.kv().delete(a.key, o).await?;
    emit(ctx.format, del_lines(&r), del_json(&r), None);
    Ok(())
}

pub async fn txn(ctx: &Ctx, a: TxnArgs) -> Result<(), Failure> {
    let input = match &a.file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?,
        None => {
            if a.interactive {
                eprintln!(
                    "compares:\n(end each section with an empty line: compares, success requests, failure requests)"
                );
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
            s
        }
    };
    let t = crate::txn::parse(&input).map_err(Failure::usage)?;
    let r = ctx.client.kv().txn(t).await?;
    emit(ctx.format, txn_lines(&r), txn_json(&r), None);
    Ok(())
}

fn txn_lines(r: &TxnResponse) -> Vec<String> {
    let mut lines = vec![if r.succeeded { "SUCCESS" } else { "FAILURE" }.to_string()];
    for op in &r.responses {
        lines.push(String::new());
        match &op.response {
            Some(response_op::Response::ResponsePut(p)) => lines.extend(put_lines(p)),
            Some(response_op::Response::ResponseRange(g)) => {
                for kv in &g.kvs {
                    kv_lines(&mut lines, kv, false, false);
                }
            }
            Some(response_op::Response::ResponseDeleteRange(d)) => lines.extend(del_lines(d)),
            Some(response_op::Response::ResponseTxn(t)) => lines.extend(txn_lines(t)),
            None => {}
        }
    }
    lines
}

fn txn_json(r: &TxnResponse) -> Value {
    let responses: Vec<Value> = r
        .responses
        .iter()
        .map(|op| {
            let inner = match &op.response {
                Some(response_op::Response::ResponsePut(p)) => {
                    json!({ "response_put": put_json(p) })
                }
                Some(response_op::Response::ResponseRange(g)) => {
                    json!({ "response_range": range_json(g) })
                }
                Some(response_op::Response::ResponseDeleteRange(d)) => {
                    json!({ "response_delete_range": del_json(d) })
                }
                Some(response_op::Response::ResponseTxn(t)) => {
                    json!({ "response_txn": txn_json(t) })
                }
                None => json!({}),
            };
            json!({ "Response": inner })
        })
        .collect();
    Obj::new()
        .value("header", output::header(&r.header))
        .bool("succeeded", r.succeeded)
        .value("responses", Value::Array(responses))
        .build()
}

pub async fn compaction(ctx: &Ctx, a: CompactionArgs) -> Result<(), Failure> {
    let r = ctx.client.kv().compact(a.revision, a.physical).await?;
    let json = Obj::new()
        .value("header", output::header(&r.header))
        .build();
    emit(
        ctx.format,
        vec![format!("compacted revision {}", a.revision)],
        json,
        None,
    );
    Ok(())
}

/// For tests of the output format helpers.
#[cfg(test)]
mod tests {
    use super::*;
    use conclave_client::mvccpb::KeyValue;

    #[test]
    fn txn_output_lists_each_response() {
        let r = TxnResponse {
            succeeded: true,
            responses: vec![
                conclave_client::proto::ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse::default())),
                },
                conclave_client::proto::ResponseOp {
                    response: Some(response_op::Response::ResponseRange(RangeResponse {
                        kvs: vec![KeyValue {
                            key: b"k".to_vec(),
                            value: b"v".to_vec(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        assert_eq!(txn_lines(&r), vec!["SUCCESS", "", "OK", "", "k", "v"]);
        let j = txn_json(&r).to_string();
        assert!(j.contains(r#""succeeded":true"#), "{j}");
        assert!(j.contains(r#"{"Response":{"response_put":{}}}"#), "{j}");
    }

    #[test]
    fn lease_ids_are_hex() {
        assert_eq!(lease_id("694d").ok(), Some(0x694d));
        assert!(lease_id("xyz").is_err());
    }
}
