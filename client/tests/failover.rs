//! Failover and outcome classification against fake endpoints on loopback (no real server):
//! a refused port, a TCP peer that never speaks HTTP/2, and an in-process fake KV service that
//! answers, fails with a chosen status, or hangs.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conclave_client::proto::kv_server::{Kv, KvServer};
use conclave_client::proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use conclave_client::{Client, ConnectOptions, Error, GetOptions, PutOptions, Txn, TxnOp};
use tonic::{Code, Request, Response, Status};

#[derive(Clone, Copy)]
enum Behaviour {
    Answer,
    Fail(Code, &'static str),
    Hang,
}

struct FakeKv {
    member_id: u64,
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
}

impl FakeKv {
    async fn act(&self) -> Result<ResponseHeader, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.behaviour {
            Behaviour::Answer => Ok(ResponseHeader {
                member_id: self.member_id,
                ..Default::default()
            }),
            Behaviour::Fail(code, message) => Err(Status::new(code, message)),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::internal("unreachable"))
            }
        }
    }
}

#[tonic::async_trait]
impl Kv for FakeKv {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let header = self.act().await?;
        Ok(Response::new(RangeResponse {
            header: Some(header),
            ..Default::default()
        }))
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let header = self.act().await?;
        Ok(Response::new(PutResponse {
            header: Some(header),
            ..Default::default()
        }))
    }
    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let header = self.act().await?;
        Ok(Response::new(DeleteRangeResponse {
            header: Some(header),
            ..Default::default()
        }))
    }
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let header = self.act().await?;
        Ok(Response::new(TxnResponse {
            header: Some(header),
            ..Default::default()
        }))
    }
    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let header = self.act().await?;
        Ok(Response::new(CompactionResponse {
            header: Some(header),
        }))
    }
}

/// Starts a fake KV server; returns its address and its call counter.
async fn fake(member_id: u64, behaviour: Behaviour) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = FakeKv {
        member_id,
        behaviour,
        calls: calls.clone(),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(KvServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (addr, calls)
}

/// An address on which nothing listens (connection refused).
fn refused() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A TCP peer that accepts connections and then never says anything.
async fn silent() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_dial_timeout(Duration::from_millis(300))
        .with_request_timeout(Duration::from_millis(1500))
        .with_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

async fn client(addrs: &[SocketAddr]) -> Client {
    Client::connect(addrs.iter().map(|a| a.to_string()), options())
        .await
        .unwrap()
}

#[tokio::test]
async fn reads_and_unsent_writes_fail_over_from_a_refused_endpoint() {
    let (good, calls) = fake(7, Behaviour::Answer).await;
    let client = client(&[refused(), good]).await;
    let kv = client.kv();

    let got = kv.get("k", GetOptions::new()).await.unwrap();
    assert_eq!(got.header.unwrap().member_id, 7);
    assert_eq!(client.current_endpoint(), format!("http://{good}"));

    // A fresh client starts at the refused endpoint again; a connection refusal proves the put
    // was never sent, so it may move on.
    let client = self::client(&[refused(), good]).await;
    let put = client.kv().put("k", "v", PutOptions::new()).await.unwrap();
    assert_eq!(put.header.unwrap().member_id, 7);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn write_to_only_refused_endpoints_is_a_definite_failure() {
    let client = client(&[refused(), refused()]).await;
    let err = client
        .kv()
        .put("k", "v", PutOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn unavailable_server_answer_fails_reads_over_but_leaves_writes_unknown() {
    let (sick, sick_calls) = fake(
        1,
        Behaviour::Fail(Code::Unavailable, "etcdserver: no leader"),
    )
    .await;
    let (good, _) = fake(2, Behaviour::Answer).await;

    let client = client(&[sick, good]).await;
    let got = client.kv().get("k", GetOptions::new()).await.unwrap();
    assert_eq!(got.header.unwrap().member_id, 2);

    let client = self::client(&[sick, good]).await;
    let before = sick_calls.load(Ordering::SeqCst);
    let err = client
        .kv()
        .put("k", "v", PutOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
    assert_eq!(
        sick_calls.load(Ordering::SeqCst),
        before + 1,
        "write sent exactly once"
    );

    // A read-only transaction is retried like a read; a writing one is not.
    let client = self::client(&[sick, good]).await;
    let read_txn = Txn::new().and_then([TxnOp::get("k", GetOptions::new())]);
    assert!(client.kv().txn(read_txn).await.is_ok());
    let client = self::client(&[sick, good]).await;
    let write_txn = Txn::new().and_then([TxnOp::put("k", "v", PutOptions::new())]);
    let err = client.kv().txn(write_txn).await.unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
}

#[tokio::test]
async fn definite_server_errors_are_typed_and_not_retried() {
    let (bad, calls) = fake(
        1,
        Behaviour::Fail(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
    )
    .await;
    let (good, _) = fake(2, Behaviour::Answer).await;
    let client = client(&[bad, good]).await;
    let err = client
        .kv()
        .get("k", GetOptions::new().with_revision(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compacted), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hanging_server_times_out_reads_and_leaves_writes_unknown() {
    let (hang, _) = fake(1, Behaviour::Hang).await;
    let (good, _) = fake(2, Behaviour::Answer).await;
    let client = client(&[hang, good]).await;
    let err = client.kv().get("k", GetOptions::new()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    // The stalled member is skipped by the next call.
    assert_eq!(client.current_endpoint(), format!("http://{good}"));
    assert!(client.kv().get("k", GetOptions::new()).await.is_ok());

    let client = self::client(&[hang, good]).await;
    let err = client.kv().compact(5, false).await.unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
    assert_eq!(client.current_endpoint(), format!("http://{good}"));
}

#[tokio::test]
async fn silent_peer_never_counts_as_success() {
    let client = client(&[silent().await]).await;
    let err = client
        .kv()
        .put("k", "v", PutOptions::new())
        .await
        .unwrap_err();
    // The HTTP/2 handshake never completes: either reported as not sent (definite) or, if tonic
    // cannot tell, as unknown; never as a success or a typed server error.
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Unknown { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn status_on_a_refused_endpoint_is_unavailable() {
    let addr = refused();
    let client = client(&[addr]).await;
    let err = client
        .maintenance()
        .status_on(&addr.to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}
