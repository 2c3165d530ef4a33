//! The HTTP endpoints on the client port (health, readiness, version, metrics) and the gRPC health
//! service, on a real cluster: healthy while a quorum serves, not once it is lost.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use conclave_client::PutOptions;
use conclave_proto::etcdserverpb::PutRequest;
use conclave_proto::etcdserverpb::kv_client::KvClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cluster;

/// GET `path` from `endpoint` (`http://host:port`) over HTTP/1.1: (status code, body).
async fn get(endpoint: &str, path: &str) -> (u16, String) {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

#[tokio::test]
async fn health_readiness_and_metrics_follow_the_quorum() {
    let c = cluster(3).await;
    let ep = c.client_endpoint(0);
    let client = c.client(0).await.unwrap();
    client.kv().put("m", "1", PutOptions::new()).await.unwrap();

    let (code, body) = get(&ep, "/health").await;
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    assert_eq!(get(&ep, "/readyz").await.0, 200);
    assert_eq!(get(&ep, "/livez").await.0, 200);
    let (code, version) = get(&ep, "/version").await;
    assert_eq!(code, 200);
    assert!(version.contains(r#""etcdserver":"3.5.0""#), "{version}");
    let (code, metrics) = get(&ep, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "etcd_server_has_leader 1",
        "etcd_mvcc_current_revision 2",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_bucket{le=\"+Inf\"}",
        "grpc_server_handled_total{grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\",grpc_code=\"OK\"} 1",
        "conclave_cluster_members 3",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }

    // gRPC health, as load balancers and orchestrators ask.
    let channel = tonic::transport::Endpoint::from_shared(ep.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(serving.is_ok(), "gRPC health never reported SERVING");

    // A refused KV call is counted under its code; other services' calls (the client's own status
    // calls) are counted too.
    let channel = tonic::transport::Endpoint::from_shared(ep.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = KvClient::new(channel)
        .put(PutRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let (_, metrics) = get(&ep, "/metrics").await;
    for name in [
        "grpc_server_handled_total{grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\",grpc_code=\"InvalidArgument\"} 1",
        "grpc_server_handled_total{grpc_service=\"etcdserverpb.Maintenance\",grpc_method=\"Status\",grpc_code=\"OK\"}",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }

    // Without a quorum: alive, but neither healthy nor ready.
    c.kill(1).unwrap();
    c.kill(2).unwrap();
    let (code, body) = get(&ep, "/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""health":"false""#), "{body}");
    assert_eq!(get(&ep, "/readyz").await.0, 503);
    assert_eq!(get(&ep, "/livez").await.0, 200);
}
