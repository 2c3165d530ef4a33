//! The KV API through gRPC on one member: options, errors with etcd's codes and messages, limits.

use conclave_client::{
    Compare, CompareOp, DeleteOptions, Error, GetOptions, PutOptions, Txn, TxnOp,
};
use conclave_proto::etcdserverpb::kv_client::KvClient;
use conclave_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::Code;

use super::{binary, cluster};

#[tokio::test]
async fn put_get_delete_and_revisions() {
    let c = cluster(1).await;
    let kv = c.client(0).await.unwrap().kv();
    let r1 = kv.put("a", "1", PutOptions::new()).await.unwrap();
    let r2 = kv
        .put("a", "2", PutOptions::new().with_prev_kv())
        .await
        .unwrap();
    assert_eq!(r1.header.unwrap().revision, 2);
    assert_eq!(r2.header.as_ref().unwrap().revision, 3);
    assert_eq!(r2.prev_kv.unwrap().value, b"1");
    let got = kv.get("a", GetOptions::new()).await.unwrap();
    let kv0 = &got.kvs[0];
    assert_eq!(
        (kv0.create_revision, kv0.mod_revision, kv0.version),
        (2, 3, 2)
    );
    let header = got.header.unwrap();
    assert_ne!(header.cluster_id, 0);
    assert_ne!(header.member_id, 0);
    assert!(header.raft_term >= 1);
    let old = kv
        .get("a", GetOptions::new().with_revision(2))
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"1");
    let del = kv
        .delete("a", DeleteOptions::new().with_prev_kv())
        .await
        .unwrap();
    assert_eq!((del.deleted, del.prev_kvs.len()), (1, 1));
    assert!(kv.get("a", GetOptions::new()).await.unwrap().kvs.is_empty());
}

#[tokio::test]
async fn prefix_limit_sort_and_serializable() {
    let c = cluster(1).await;
    let kv = c.client(0).await.unwrap().kv();
    for i in 0..5 {
        kv.put(format!("p/{i}"), format!("{}", 9 - i), PutOptions::new())
            .await
            .unwrap();
    }
    kv.put("q", "x", PutOptions::new()).await.unwrap();
    let page = kv
        .get("p/", GetOptions::new().with_prefix().with_limit(2))
        .await
        .unwrap();
    assert_eq!((page.kvs.len(), page.more, page.count), (2, true, 5));
    let sorted = kv
        .get(
            "p/",
            GetOptions::new().with_prefix().with_sort(
                conclave_client::SortOrder::Ascend,
                conclave_client::SortTarget::Value,
            ),
        )
        .await
        .unwrap();
    assert_eq!(sorted.kvs[0].key, b"p/4");
    let ser = kv
        .get(
            "p/",
            GetOptions::new()
                .with_prefix()
                .with_serializable()
                .with_count_only(),
        )
        .await
        .unwrap();
    assert_eq!((ser.kvs.len(), ser.count), (0, 5));
}

#[tokio::test]
async fn txn_and_compaction_errors() {
    let c = cluster(1).await;
    let kv = c.client(0).await.unwrap().kv();
    kv.put("k", "v", PutOptions::new()).await.unwrap();
    let t = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "v")])
        .and_then([TxnOp::put("k", "w", PutOptions::new())])
        .or_else([TxnOp::get("k", GetOptions::new())]);
    let resp = kv.txn(t).await.unwrap();
    assert!(resp.succeeded);
    kv.put("k", "x", PutOptions::new()).await.unwrap(); // revision 4
    kv.compact(3, true).await.unwrap();
    let err = kv
        .get("k", GetOptions::new().with_revision(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compacted), "{err:?}");
    let err = kv
        .get("k", GetOptions::new().with_revision(99))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FutureRevision), "{err:?}");
    let err = kv.compact(3, false).await.unwrap_err();
    assert!(matches!(err, Error::Compacted), "{err:?}");

    let dup = Txn::new().and_then([
        TxnOp::put("d", "1", PutOptions::new()),
        TxnOp::put("d", "2", PutOptions::new()),
    ]);
    assert!(matches!(
        kv.txn(dup).await.unwrap_err(),
        Error::DuplicateKey
    ));
    let many =
        Txn::new().and_then((0..129).map(|i| TxnOp::put(format!("m{i}"), "v", PutOptions::new())));
    assert!(matches!(kv.txn(many).await.unwrap_err(), Error::TooManyOps));
    let ok =
        Txn::new().and_then((0..128).map(|i| TxnOp::put(format!("m{i}"), "v", PutOptions::new())));
    let resp = kv.txn(ok).await.unwrap();
    // 128 puts, one revision.
    let all = kv.get("m", GetOptions::new().with_prefix()).await.unwrap();
    assert_eq!(all.count, 128);
    assert!(
        all.kvs
            .iter()
            .all(|x| x.mod_revision == resp.header.as_ref().unwrap().revision)
    );
}

/// Raw gRPC, to see exact codes and messages as any client would.
#[tokio::test]
async fn bad_input_gets_etcds_code_and_message_and_changes_nothing() {
    let c = cluster(1).await;
    let mut raw = KvClient::connect(c.client_endpoint(0)).await.unwrap();
    let before = raw
        .range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let cases: Vec<(PutRequest, Code, &str)> = vec![
        (
            PutRequest::default(),
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        ),
        (
            PutRequest {
                key: b"x".to_vec(),
                value: b"v".to_vec(),
                ignore_value: true,
                ..Default::default()
            },
            Code::InvalidArgument,
            "etcdserver: value is provided",
        ),
        (
            PutRequest {
                key: b"x".to_vec(),
                ignore_value: true,
                ..Default::default()
            },
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            PutRequest {
                key: b"x".to_vec(),
                lease: 7,
                ..Default::default()
            },
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            PutRequest {
                key: b"x".to_vec(),
                value: vec![7; 1536 * 1024],
                ..Default::default()
            },
            Code::InvalidArgument,
            "etcdserver: request is too large",
        ),
    ];
    for (req, code, msg) in cases {
        let status = raw.put(req).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (code, msg));
    }
    let after = raw
        .range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after.kvs.is_empty());
    assert_eq!(
        after.header.unwrap().revision,
        before,
        "nothing was applied"
    );
}

#[tokio::test]
async fn limits_are_flags() {
    let c = conclave_testkit::Cluster::builder(binary(), 1)
        .args(["--max-txn-ops", "2", "--max-request-bytes", "1024"])
        .start()
        .await
        .unwrap();
    let kv = c.client(0).await.unwrap().kv();
    let three =
        Txn::new().and_then((0..3).map(|i| TxnOp::put(format!("k{i}"), "v", PutOptions::new())));
    assert!(matches!(
        kv.txn(three).await.unwrap_err(),
        Error::TooManyOps
    ));
    let err = kv
        .put("big", vec![0u8; 2000], PutOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RequestTooLarge), "{err:?}");
}
