//! Txn, compare and range-option semantics, through real redb transactions.

use conclave_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};

use super::*;

/// The MVCC test store, with etcd-request helpers.
struct Fixture(crate::mvcc::tests::Fixture, Lessor);

impl std::ops::Deref for Fixture {
    type Target = crate::mvcc::tests::Fixture;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture(crate::mvcc::tests::Fixture::new(), Lessor::new(1))
    }

    fn put(&self, k: &str, v: &str) -> PutResponse {
        self.apply(|w| put(w, &self.1, &put_req(k, v))).unwrap()
    }

    fn range(&self, req: RangeRequest) -> RangeResponse {
        range(&self.store, &req).unwrap()
    }

    fn txn(&self, req: TxnRequest) -> KvResult<TxnResponse> {
        self.apply(|w| txn(w, &self.1, &req))
    }
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(k, v))),
    }
}

fn get_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        })),
    }
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: k.into(),
        range_end: vec![],
        target_union: Some(u),
    }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

#[test]
fn every_compare_target_and_result() {
    let f = Fixture::new();
    f.put("k", "b"); // rev 2: create 2, mod 2, version 1
    f.put("k", "b"); // rev 3: mod 3, version 2
    use CompareResult::*;
    use CompareTarget as T;
    let cases: Vec<(Compare, bool)> = vec![
        (
            cmp("k", T::Value, Equal, TargetUnion::Value(b"b".to_vec())),
            true,
        ),
        (
            cmp("k", T::Value, Greater, TargetUnion::Value(b"a".to_vec())),
            true,
        ),
        (
            cmp("k", T::Value, Less, TargetUnion::Value(b"a".to_vec())),
            false,
        ),
        (
            cmp("k", T::Value, NotEqual, TargetUnion::Value(b"b".to_vec())),
            false,
        ),
        (cmp("k", T::Version, Equal, TargetUnion::Version(2)), true),
        (cmp("k", T::Version, Greater, TargetUnion::Version(1)), true),
        (
            cmp("k", T::Create, Equal, TargetUnion::CreateRevision(2)),
            true,
        ),
        (
            cmp("k", T::Create, Less, TargetUnion::CreateRevision(3)),
            true,
        ),
        (cmp("k", T::Mod, Equal, TargetUnion::ModRevision(3)), true),
        (
            cmp("k", T::Mod, NotEqual, TargetUnion::ModRevision(3)),
            false,
        ),
        (cmp("k", T::Lease, Equal, TargetUnion::Lease(0)), true),
        // A missing key: version and revisions are 0, but a value compare always fails.
        (
            cmp("nope", T::Version, Equal, TargetUnion::Version(0)),
            true,
        ),
        (
            cmp("nope", T::Create, Equal, TargetUnion::CreateRevision(0)),
            true,
        ),
        (
            cmp("nope", T::Value, Equal, TargetUnion::Value(vec![])),
            false,
        ),
        (
            cmp(
                "nope",
                T::Value,
                NotEqual,
                TargetUnion::Value(b"x".to_vec()),
            ),
            false,
        ),
    ];
    for (c, want) in cases {
        let resp = f
            .txn(TxnRequest {
                compare: vec![c.clone()],
                success: vec![],
                failure: vec![],
            })
            .unwrap();
        assert_eq!(resp.succeeded, want, "{c:?}");
    }
}

#[test]
fn compare_over_a_range_needs_every_key() {
    let f = Fixture::new();
    f.put("a1", "x");
    f.put("a2", "x");
    f.put("a3", "y");
    let mut c = cmp(
        "a",
        CompareTarget::Value,
        CompareResult::Equal,
        TargetUnion::Value(b"x".to_vec()),
    );
    c.range_end = b"a3".to_vec();
    let ok = f
        .txn(TxnRequest {
            compare: vec![c.clone()],
            ..Default::default()
        })
        .unwrap();
    assert!(ok.succeeded);
    c.range_end = b"b".to_vec();
    let not = f
        .txn(TxnRequest {
            compare: vec![c],
            ..Default::default()
        })
        .unwrap();
    assert!(!not.succeeded);
}

#[test]
fn txn_is_one_revision_and_reads_its_own_writes() {
    let f = Fixture::new();
    f.put("k", "0");
    let resp = f
        .txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("a", "1"), put_op("b", "2"), get_op("a")],
            failure: vec![],
        })
        .unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    let Some(Response::ResponseRange(r)) = &resp.responses[2].response else {
        panic!("expected a range response");
    };
    assert_eq!(r.kvs[0].value, b"1");
    let all = f.range(RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    });
    assert_eq!(keys(&all), ["a", "b", "k"]);
    assert!(
        all.kvs
            .iter()
            .filter(|kv| kv.key != b"k")
            .all(|kv| kv.mod_revision == 3)
    );
}

#[test]
fn read_only_txn_makes_no_revision() {
    let f = Fixture::new();
    f.put("k", "v");
    let resp = f
        .txn(TxnRequest {
            success: vec![get_op("k")],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(resp.header.unwrap().revision, 2);
}

#[test]
fn nested_txn_compares_see_the_state_before_the_txn() {
    let f = Fixture::new();
    // The outer success puts "flag"; the nested compare on "flag" was evaluated before that put,
    // so it sees no "flag" and takes its failure branch (etcd's rule).
    let nested = TxnRequest {
        compare: vec![cmp(
            "flag",
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        )],
        success: vec![put_op("branch", "then")],
        failure: vec![put_op("branch", "else")],
    };
    let resp = f
        .txn(TxnRequest {
            compare: vec![],
            success: vec![
                put_op("flag", "1"),
                RequestOp {
                    request: Some(Request::RequestTxn(nested)),
                },
            ],
            failure: vec![],
        })
        .unwrap();
    let Some(Response::ResponseTxn(inner)) = &resp.responses[1].response else {
        panic!("expected a nested txn response");
    };
    assert!(!inner.succeeded);
    let got = f.range(RangeRequest {
        key: b"branch".to_vec(),
        ..Default::default()
    });
    assert_eq!(got.kvs[0].value, b"else");
}

#[test]
fn refused_txn_changes_nothing() {
    let f = Fixture::new();
    let req = TxnRequest {
        success: vec![
            put_op("a", "1"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"missing".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(
        f.txn(req),
        Err(KvError::Rejected(ServerError::KeyNotFound))
    ));
    assert_eq!(f.store.revision(), 1);
    let lease = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"a".to_vec(),
                lease: 42,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert!(matches!(
        f.txn(lease),
        Err(KvError::Rejected(ServerError::LeaseNotFound))
    ));
    assert_eq!(f.store.revision(), 1);
}

#[test]
fn put_options() {
    let f = Fixture::new();
    f.put("k", "v1");
    let resp = f
        .apply(|w| {
            put(
                w,
                &f.1,
                &PutRequest {
                    key: b"k".to_vec(),
                    value: b"v2".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    assert_eq!(resp.prev_kv.unwrap().value, b"v1");
    // ignore_value keeps the value and bumps the version.
    f.apply(|w| {
        put(
            w,
            &f.1,
            &PutRequest {
                key: b"k".to_vec(),
                ignore_value: true,
                ..Default::default()
            },
        )
    })
    .unwrap();
    let kv = f
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .kvs
        .remove(0);
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v2"[..], 3));
    let missing = f.apply(|w| {
        put(
            w,
            &f.1,
            &PutRequest {
                key: b"nope".to_vec(),
                ignore_lease: true,
                ..Default::default()
            },
        )
    });
    assert!(matches!(
        missing,
        Err(KvError::Rejected(ServerError::KeyNotFound))
    ));
}

#[test]
fn delete_range_reports_deleted_and_prev_kvs() {
    let f = Fixture::new();
    for k in ["p/a", "p/b", "q"] {
        f.put(k, "v");
    }
    let resp = f
        .apply(|w| {
            delete_range(
                w,
                &DeleteRangeRequest {
                    key: b"p/".to_vec(),
                    range_end: b"p0".to_vec(),
                    prev_kv: true,
                },
            )
        })
        .unwrap();
    assert_eq!(resp.deleted, 2);
    assert_eq!(resp.prev_kvs.len(), 2);
    // One revision for the whole delete.
    assert_eq!(resp.header.unwrap().revision, 5);
}

#[test]
fn range_options() {
    let f = Fixture::new();
    // Values chosen so that each sort target gives a different order.
    f.put("a", "3");
    f.put("b", "1");
    f.put("c", "2");
    f.put("a", "4"); // a: version 2, mod 5
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let sorted = |order: SortOrder, target: SortTarget| {
        keys(&f.range(RangeRequest {
            sort_order: order as i32,
            sort_target: target as i32,
            ..all.clone()
        }))
    };
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Value),
        ["b", "c", "a"]
    );
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Mod), ["a", "c", "b"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Create),
        ["a", "b", "c"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version),
        ["a", "b", "c"]
    );
    // NONE with a non-key target sorts ascending.
    assert_eq!(sorted(SortOrder::None, SortTarget::Value), ["b", "c", "a"]);

    let limited = f.range(RangeRequest {
        limit: 2,
        ..all.clone()
    });
    assert_eq!(
        (keys(&limited).len(), limited.more, limited.count),
        (2, true, 3)
    );
    let exact = f.range(RangeRequest {
        limit: 3,
        ..all.clone()
    });
    assert!(!exact.more);
    // Sorting applies before the limit.
    let top = f.range(RangeRequest {
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Value as i32,
        ..all.clone()
    });
    assert_eq!((keys(&top), top.more), (vec!["a".to_string()], true));

    let filtered = f.range(RangeRequest {
        min_mod_revision: 3,
        max_mod_revision: 4,
        ..all.clone()
    });
    assert_eq!(keys(&filtered), ["b", "c"]);
    let created = f.range(RangeRequest {
        min_create_revision: 3,
        ..all.clone()
    });
    assert_eq!(keys(&created), ["b", "c"]);

    let ko = f.range(RangeRequest {
        keys_only: true,
        ..all.clone()
    });
    assert!(ko.kvs.iter().all(|kv| kv.value.is_empty()));
    let co = f.range(RangeRequest {
        count_only: true,
        ..all.clone()
    });
    assert_eq!((co.kvs.len(), co.count), (0, 3));
    let old = f.range(RangeRequest {
        key: b"a".to_vec(),
        revision: 2,
        ..Default::default()
    });
    assert_eq!(old.kvs[0].value, b"3");
    assert_eq!(
        old.header.unwrap().revision,
        5,
        "header carries the newest revision"
    );
}
