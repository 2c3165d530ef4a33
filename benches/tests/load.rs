//! conclave-bench end to end against a real 3-member cluster: every request it reports as done was
//! done, and server errors come back with their gRPC code. Needs the `conclave` binary (built by
//! `cargo test --workspace`; or set CONCLAVE_BIN).

use std::process::Command;

use conclave_client::GetOptions;
use conclave_testkit::{Cluster, locate_binary};
use serde_json::Value;

/// Runs the tool with `--json` and `args` (split at spaces); returns its exit code and the JSON
/// summary.
fn bench(endpoints: &str, args: &str) -> (Option<i32>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_conclave-bench"))
        .args(["--json", "--endpoints", endpoints])
        .args(args.split_whitespace())
        .output()
        .expect("conclave-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), summary)
}

async fn revision(c: &Cluster) -> i64 {
    let client = c.client(0).await.expect("client");
    let resp = client
        .kv()
        .get("probe", GetOptions::new())
        .await
        .expect("get");
    resp.header.expect("header").revision
}

#[tokio::test(flavor = "multi_thread")]
async fn puts_reads_and_errors_over_every_member() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 3).await.expect("cluster");
    let endpoints = c.endpoints().join(",");

    // 400 puts from 8 clients over 3 connections (one per member): each one a new revision.
    let before = revision(&c).await;
    let (code, s) = bench(
        &endpoints,
        "--conns 3 --clients 8 --total 400 --key-space-size 50 put",
    );
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["ok"], 400, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(revision(&c).await - before, 400);

    // Linearizable and serializable reads of a key the tool writes itself.
    let (code, _) = bench(&endpoints, "--total 1 put --key bench-key");
    assert_eq!(code, Some(0));
    for consistency in ["l", "s"] {
        let (code, s) = bench(
            &endpoints,
            &format!(
                "--consistency {consistency} --conns 3 --clients 4 --total 200 range bench-key"
            ),
        );
        assert_eq!(code, Some(0), "{s}");
        assert_eq!(s["ok"], 200, "{s}");
    }

    // A request the server refuses: the code and count are reported, the exit status is 1, and
    // nothing was written.
    let before = revision(&c).await;
    let (code, s) = bench(
        &endpoints,
        "--total 5 --key-space-size 1000 txn-put --txn-ops 200",
    );
    assert_eq!(code, Some(1), "{s}");
    assert_eq!(s["error_codes"]["InvalidArgument"], 5, "{s}");
    assert_eq!(revision(&c).await, before);
}
