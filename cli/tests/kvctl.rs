//! kvctl end to end against a real single-member cluster: output shapes and exit codes. Needs the
//! `conclave` binary (built by `cargo test --workspace`; or set CONCLAVE_BIN).

use std::process::{Command, Output};

use conclave_testkit::{Cluster, locate_binary};

fn kvctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("kvctl runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_del_compaction_and_errors() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();

    assert_eq!(stdout(&kvctl(ep, &["put", "a", "1"])), "OK\n");
    assert_eq!(
        stdout(&kvctl(ep, &["put", "a", "2", "--prev-kv"])),
        "OK\na\n1\n"
    );
    assert_eq!(stdout(&kvctl(ep, &["put", "b", "3"])), "OK\n");
    assert_eq!(stdout(&kvctl(ep, &["get", "a"])), "a\n2\n");
    assert_eq!(
        stdout(&kvctl(ep, &["get", "", "--from-key", "--keys-only"])),
        "a\nb\n"
    );
    assert_eq!(
        stdout(&kvctl(
            ep,
            &["get", "a", "--rev", "2", "--print-value-only"]
        )),
        "1\n"
    );
    assert_eq!(stdout(&kvctl(ep, &["del", "b", "--prev-kv"])), "1\nb\n3\n");
    assert_eq!(
        stdout(&kvctl(ep, &["compaction", "3"])),
        "compacted revision 3\n"
    );

    let refused = kvctl(ep, &["get", "a", "--rev", "2"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );

    let unreachable = kvctl("127.0.0.1:1", &["--dial-timeout", "0.5", "get", "a"]);
    assert_eq!(unreachable.status.code(), Some(1));
    let usage = kvctl(ep, &["get"]);
    assert_eq!(usage.status.code(), Some(2));

    let members = stdout(&kvctl(ep, &["member", "list"]));
    assert!(members.contains(", started, n1, "), "{members}");
    let status = stdout(&kvctl(ep, &["endpoint", "status"]));
    assert!(status.contains("leader=true"), "{status}");
}
