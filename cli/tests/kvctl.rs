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
    // etcdctl's line: endpoint, id, version, db size, is leader, is learner, term, index, applied
    assert!(status.contains(", true, false, "), "{status}");
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(o)
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(ok(o).trim()).expect("one JSON document")
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_lease_watch_endpoint_and_output_formats() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();

    // json mirrors the protobuf message: snake_case, base64 bytes, zero fields omitted.
    let put = json(&kvctl(ep, &["put", "k", "v1", "-w", "json"]));
    assert!(put["header"]["revision"].as_i64().unwrap() > 1);
    let get = json(&kvctl(ep, &["get", "k", "-w", "json"]));
    assert_eq!(get["kvs"][0]["key"], "aw==");
    assert_eq!(get["kvs"][0]["value"], "djE=");
    assert_eq!(get["count"], 1);
    assert!(get["kvs"][0].get("lease").is_none(), "{get}");
    let table = ok(&kvctl(ep, &["get", "k", "-w", "table"]));
    assert!(
        table.contains("| KEY |") && table.contains("|   k |"),
        "{table}"
    );
    assert_eq!(ok(&kvctl(ep, &["get", "k", "--count-only"])), "1\n");

    // txn in etcdctl's format, from a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txn.txt");
    std::fs::write(
        &file,
        "value(\"k\") = \"v1\"\n\nput k \"v 2\"\nget k\n\nput k never\n",
    )
    .unwrap();
    let out = ok(&kvctl(ep, &["txn", "--file", file.to_str().unwrap()]));
    assert_eq!(out, "SUCCESS\n\nOK\n\nk\nv 2\n");
    let again = ok(&kvctl(ep, &["txn", "--file", file.to_str().unwrap()]));
    assert_eq!(again, "FAILURE\n\nOK\n");
    std::fs::write(&file, "bogus(\"k\") = 1\n\n").unwrap();
    let bad = kvctl(ep, &["txn", "--file", file.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));

    // leases
    let granted = ok(&kvctl(ep, &["lease", "grant", "60"]));
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_string();
    assert!(granted.ends_with("granted with TTL(60s)\n"), "{granted}");
    ok(&kvctl(ep, &["put", "leased", "x", "--lease", &id]));
    let ttl = ok(&kvctl(ep, &["lease", "timetolive", &id, "--keys"]));
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    let listed = ok(&kvctl(ep, &["lease", "list"]));
    assert!(
        listed.starts_with("found 1 leases\n") && listed.contains(&id),
        "{listed}"
    );
    let kept = ok(&kvctl(ep, &["lease", "keep-alive", "--once", &id]));
    assert_eq!(kept, format!("lease {id} keepalived with TTL(60)\n"));
    let ttl_table = ok(&kvctl(ep, &["lease", "timetolive", &id, "-w", "table"]));
    assert!(
        ttl_table.contains(" 1m0s |"),
        "human durations: {ttl_table}"
    );
    assert_eq!(
        ok(&kvctl(ep, &["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&kvctl(ep, &["get", "leased", "--count-only"])), "0\n");
    let gone = kvctl(ep, &["lease", "revoke", &id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("requested lease not found"));
    let lost = kvctl(ep, &["lease", "keep-alive", &id]);
    assert_eq!(lost.status.code(), Some(4));
    let bad_id = kvctl(ep, &["lease", "revoke", "not-hex"]);
    assert_eq!(bad_id.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&bad_id.stderr).lines().count(), 1);

    // watch runs until interrupted; events in etcdctl's lines.
    // Write first, then watch from the first write's revision: no race with the watch's start,
    // so no sleep is needed.
    let first = json(&kvctl(ep, &["put", "w/a", "1", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .unwrap();
    ok(&kvctl(ep, &["del", "w/a"]));
    let rev = first.to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args([
            "--endpoints",
            ep,
            "watch",
            "w/",
            "--prefix",
            "--prev-kv",
            "--rev",
            &rev,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(out)
            .lines()
            .take(6)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let lines = reader.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // DELETE prints the previous key-value (--prev-kv), then the tombstone's key and empty value.
    assert_eq!(lines, ["PUT", "w/a", "1", "DELETE", "w/a", "1"]);

    // endpoints, members, completion
    let health = ok(&kvctl(ep, &["endpoint", "health"]));
    assert!(
        health.contains("is healthy: successfully committed proposal"),
        "{health}"
    );
    let status = json(&kvctl(ep, &["endpoint", "status", "-w", "json"]));
    assert_eq!(status[0]["Endpoint"].as_str().unwrap(), ep);
    let members = ok(&kvctl(ep, &["member", "list", "-w", "table"]));
    assert!(members.contains("| IS LEARNER |"), "{members}");
    let completion = ok(&kvctl(ep, &["completion", "bash"]));
    assert!(completion.contains("kvctl"), "completion script");
    let down = kvctl(
        "127.0.0.1:1",
        &["--dial-timeout", "0.5", "endpoint", "health"],
    );
    assert_eq!(down.status.code(), Some(1));
}

/// Every command in every output format: exit 0, json parses, table is a table (or the command's
/// simple lines where it has no table, as etcdctl).
#[tokio::test(flavor = "multi_thread")]
async fn every_command_in_every_format() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    let granted = ok(&kvctl(ep, &["lease", "grant", "100"]));
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    let tables = [
        vec!["get", "f/", "--prefix"],
        vec!["lease", "timetolive", id.as_str()],
        vec!["lease", "list"],
        vec!["member", "list"],
        vec!["endpoint", "status"],
        vec!["endpoint", "health"],
    ];
    let simple_only = [
        vec!["put", "f/a", "1"],
        vec!["put", "f/b", "2", "--prev-kv"],
        vec!["del", "f/b", "--prev-kv"],
        vec!["lease", "keep-alive", "--once", id.as_str()],
    ];
    for (args, has_table) in simple_only
        .iter()
        .map(|a| (a, false))
        .chain(tables.iter().map(|a| (a, true)))
    {
        for format in ["simple", "json", "table"] {
            let mut full = args.clone();
            full.extend(["-w", format]);
            let out = ok(&kvctl(ep, &full));
            match format {
                "json" => {
                    let v: Result<serde_json::Value, _> = serde_json::from_str(out.trim());
                    assert!(v.is_ok(), "{full:?}: not JSON: {out}");
                }
                "table" if has_table => {
                    assert!(
                        out.starts_with("+-") && out.contains("\n|"),
                        "{full:?}: {out}"
                    );
                }
                _ => assert!(!out.is_empty() || args[0] == "get", "{full:?}: empty"),
            }
        }
    }
    // Compaction can only move forward: one revision per format.
    for (rev, format) in ["2", "3", "4"].into_iter().zip(["simple", "json", "table"]) {
        let out = ok(&kvctl(ep, &["compaction", rev, "-w", format]));
        assert!(!out.is_empty(), "compaction -w {format}");
    }
}

/// `member add` (learner), `list`, `promote` refused, `remove`, in etcdctl's formats.
#[tokio::test(flavor = "multi_thread")]
async fn member_add_promote_and_remove() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    let peer = format!(
        "http://127.0.0.1:{}",
        conclave_testkit::free_port().unwrap()
    );

    let added = ok(&kvctl(
        ep,
        &["member", "add", "m2", "--peer-urls", &peer, "--learner"],
    ));
    let first = added.lines().next().unwrap();
    assert!(
        first.starts_with("Member ") && first.contains(" added to cluster "),
        "{added}"
    );
    let id = first.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        added.contains("ETCD_INITIAL_CLUSTER=\"")
            && added.contains(&format!("n1={}", c.peer_url(0).unwrap()))
            && added.contains(&format!("m2={peer}"))
            && added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    let list = ok(&kvctl(ep, &["member", "list"]));
    assert!(
        list.contains(&format!("{id}, unstarted, , {peer}, , true")),
        "{list}"
    );

    let refused = kvctl(ep, &["member", "promote", &id]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("can only promote a learner member which is in sync with leader"),
        "{refused:?}"
    );
    let bad = kvctl(ep, &["member", "remove", "not-hex"]);
    assert_eq!(bad.status.code(), Some(1));

    let removed = json(&kvctl(ep, &["member", "remove", &id, "-w", "json"]));
    assert_eq!(removed["members"].as_array().map(Vec::len), Some(1));
    let list = ok(&kvctl(ep, &["member", "list"]));
    assert!(!list.contains(&id), "{list}");
}

/// `snapshot save`, `status` and `restore`, and what they refuse.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_save_status_and_restore() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    ok(&kvctl(ep, &["put", "s/a", "1"]));
    ok(&kvctl(ep, &["put", "s/b", "2"]));
    ok(&kvctl(ep, &["put", "s/a", "3"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.db");
    let file = file.to_str().unwrap();

    let saved = ok(&kvctl(ep, &["snapshot", "save", file]));
    assert!(
        saved.starts_with(&format!("Snapshot saved at {file}")),
        "{saved}"
    );
    if saved.contains("an etcd snapshot") {
        // Against etcd (CI runs these tests on it too): saved by shape; its format is bbolt, which
        // status and restore (Conclave's format) do not read.
        return;
    }
    let status = json(&kvctl(ep, &["snapshot", "status", file, "-w", "json"]));
    assert_eq!(status["revision"], 4, "{status}");
    assert_eq!(status["totalKey"], 2, "{status}");
    let line = ok(&kvctl(ep, &["snapshot", "status", file]));
    assert!(line.contains(", 4, 2, "), "{line}");

    let target = dir.path().join("restored");
    let target = target.to_str().unwrap();
    let restore = [
        "snapshot",
        "restore",
        file,
        "--data-dir",
        target,
        "--name",
        "r1",
        "--initial-cluster",
        "r1=http://127.0.0.1:2380",
    ];
    let out = ok(&kvctl(ep, &restore));
    assert!(out.contains("revision 4, 2 keys"), "{out}");
    let again = kvctl(ep, &restore);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // A damaged file is refused by status and restore alike.
    let mut bytes = std::fs::read(file).unwrap();
    bytes[10] ^= 0x55;
    std::fs::write(file, &bytes).unwrap();
    let bad = kvctl(ep, &["snapshot", "status", file]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("damaged"));
}

/// `alarm list` and `alarm disarm` with NOSPACE raised by a tiny quota.
#[tokio::test(flavor = "multi_thread")]
async fn alarm_list_and_disarm() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = conclave_testkit::ClusterBuilder::new(&bin, 1)
        .args(["--quota-backend-bytes", "4096"])
        .start()
        .await
        .unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    assert_eq!(ok(&kvctl(ep, &["alarm", "list"])), "");
    let big = "x".repeat(1000);
    let mut refused = None;
    for i in 0..10 {
        let out = kvctl(ep, &["put", &format!("k{i}"), &big]);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refused = refused.expect("the quota refused a put");
    assert!(refused.contains("database space exceeded"), "{refused}");
    let list = ok(&kvctl(ep, &["alarm", "list"]));
    assert!(
        list.starts_with("memberID:") && list.trim_end().ends_with(" alarm:NOSPACE"),
        "{list}"
    );
    assert_eq!(ok(&kvctl(ep, &["alarm", "disarm"])), list);
    assert_eq!(ok(&kvctl(ep, &["alarm", "list"])), "");
}

/// `defrag` of the endpoints and of every member (`--cluster`), and a member that is down.
#[tokio::test(flavor = "multi_thread")]
async fn defrag_endpoints_and_cluster() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    ok(&kvctl(ep, &["put", "a", "1"]));
    let done = ok(&kvctl(ep, &["defrag"]));
    assert!(
        done.starts_with(&format!("Finished defragmenting etcd member[{ep}]. took ")),
        "{done}"
    );
    let all = json(&kvctl(ep, &["defrag", "--cluster", "-w", "json"]));
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(ok(&kvctl(ep, &["get", "a", "--print-value-only"])), "1\n");

    let down = format!(
        "{ep},http://127.0.0.1:{}",
        conclave_testkit::free_port().unwrap()
    );
    let out = kvctl(
        &down,
        &["defrag", "--dial-timeout", "1", "--command-timeout", "1"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Failed to defragment etcd member[")
            && stdout(&out).starts_with("Finished defragmenting etcd member["),
        "{out:?}"
    );
}

/// `lock NAME -- COMMAND` runs the command under the lock; `lock NAME` holds it until interrupted,
/// and a second locker waits for that.
#[tokio::test(flavor = "multi_thread")]
async fn lock_runs_a_command_or_holds_until_interrupted() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    let out = ok(&kvctl(
        ep,
        &[
            "lock",
            "t/l",
            "--",
            "sh",
            "-c",
            "echo $ETCD_LOCK_KEY $ETCD_LOCK_REV",
        ],
    ));
    let (key, rev) = out.trim().split_once(' ').unwrap();
    assert!(key.starts_with("t/l/"), "{out}");
    assert!(rev.parse::<i64>().unwrap() > 0, "{out}");
    let failed = kvctl(ep, &["lock", "t/l", "false"]);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    // The lock was released each time: nothing is left under t/l/.
    let left = json(&kvctl(ep, &["get", "t/l/", "--prefix", "-w", "json"]));
    assert!(left["kvs"].as_array().is_none_or(Vec::is_empty), "{left}");

    let mut holder = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoints", ep, "lock", "t/h"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("t/h/"), "{first}");
    let mut waiter = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoints", ep, "lock", "t/h", "echo", "second"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the waiter is queued (a second key under t/h/), it must keep waiting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let queued = json(&kvctl(
            ep,
            &["get", "t/h/", "--prefix", "--count-only", "-w", "json"],
        ));
        if queued["count"] == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never queued: {queued}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the second locker ran while the lock was held"
    );
    let signal = std::process::Command::new("kill")
        .args(["-INT", &holder.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    assert!(
        holder.wait().unwrap().success(),
        "the holder exits cleanly on Ctrl-C"
    );
    let waited = waiter.wait_with_output().unwrap();
    assert!(waited.status.success(), "{waited:?}");
    assert_eq!(stdout(&waited), "second\n");
}

/// Lines a child prints, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn kvctl_child(ep: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--endpoints")
        .arg(ep)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kvctl starts")
}

/// `elect NAME PROPOSAL` leads until interrupted, the next candidate takes over, and `elect
/// --listen` prints every leader.
#[tokio::test(flavor = "multi_thread")]
async fn elect_leads_hands_over_and_listens() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    let wait = std::time::Duration::from_secs(10);
    assert_eq!(kvctl(ep, &["elect", "e1"]).status.code(), Some(2));

    let mut first = kvctl_child(ep, &["elect", "e1", "p1"]);
    let first_out = lines_of(&mut first);
    let key1 = first_out.recv_timeout(wait).unwrap();
    assert!(key1.starts_with("e1/"), "{key1}");
    assert_eq!(first_out.recv_timeout(wait).unwrap(), "p1");

    let mut listener = kvctl_child(ep, &["elect", "e1", "--listen"]);
    let heard = lines_of(&mut listener);
    assert_eq!(heard.recv_timeout(wait).unwrap(), key1);
    assert_eq!(heard.recv_timeout(wait).unwrap(), "p1");

    let mut second = kvctl_child(ep, &["elect", "e1", "p2"]);
    let second_out = lines_of(&mut second);
    assert!(
        second_out
            .recv_timeout(std::time::Duration::from_secs(1))
            .is_err(),
        "the second candidate leads while the first does"
    );
    let signal = std::process::Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    assert!(
        first.wait().unwrap().success(),
        "the first resigns and exits cleanly"
    );
    let key2 = second_out.recv_timeout(wait).unwrap();
    assert!(key2.starts_with("e1/") && key2 != key1, "{key2}");
    assert_eq!(second_out.recv_timeout(wait).unwrap(), "p2");
    assert_eq!(heard.recv_timeout(wait).unwrap(), key2);
    assert_eq!(heard.recv_timeout(wait).unwrap(), "p2");
    let _ = second.kill();
    let _ = listener.kill();
    let _ = second.wait();
    let _ = listener.wait();
}

/// `group join` keeps a member until Ctrl-C, `group list` shows it, `group watch` sees it join and
/// leave.
#[tokio::test(flavor = "multi_thread")]
async fn group_join_list_and_watch() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    let wait = std::time::Duration::from_secs(10);
    assert_eq!(kvctl(ep, &["group", "list", "a/b"]).status.code(), Some(2));

    // Watch from the revision after now, so the join below is seen however late the watch starts.
    let now = json(&kvctl(ep, &["get", "g1", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .unwrap();
    let from = (now + 1).to_string();
    let mut watcher = kvctl_child(ep, &["group", "watch", "g1", "--rev", &from]);
    let seen = lines_of(&mut watcher);
    let mut member = kvctl_child(ep, &["group", "join", "g1", "w1", "--metadata", "10.0.0.1"]);
    let joined = lines_of(&mut member);
    assert!(
        joined
            .recv_timeout(wait)
            .unwrap()
            .starts_with("joined g1 as w1 (lease "),
        "join output"
    );
    let listed = ok(&kvctl(ep, &["group", "list", "g1"]));
    let fields: Vec<&str> = listed.split_whitespace().collect();
    assert_eq!(fields[..2], ["w1", "10.0.0.1"], "{listed}");
    let listed = json(&kvctl(ep, &["group", "list", "g1", "-w", "json"]));
    assert_eq!(listed["members"][0]["id"], "w1", "{listed}");

    // SIGTERM, as a service manager stops it (the lock test uses SIGINT, as Ctrl-C does).
    let signal = std::process::Command::new("kill")
        .args(["-TERM", &member.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    assert!(
        member.wait().unwrap().success(),
        "the member leaves cleanly on SIGTERM"
    );
    assert!(
        seen.recv_timeout(wait)
            .unwrap()
            .starts_with("JOIN w1 10.0.0.1 ")
    );
    assert!(
        seen.recv_timeout(wait)
            .unwrap()
            .starts_with("LEAVE w1 10.0.0.1 ")
    );
    assert_eq!(ok(&kvctl(ep, &["group", "list", "g1"])), "");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

/// `config set` (JSON only, `--if-revision` compare-and-swap), `config get`, `config watch`.
#[tokio::test(flavor = "multi_thread")]
async fn config_get_set_with_revision_and_watch() {
    let bin = locate_binary().expect("the conclave binary is built (cargo test --workspace)");
    let c = Cluster::start(&bin, 1).await.unwrap();
    let ep = c.client_endpoint(0);
    let ep = ep.as_str();
    let wait = std::time::Duration::from_secs(10);
    assert_eq!(
        kvctl(ep, &["config", "get", "cfg/a"]).status.code(),
        Some(1)
    );
    assert_eq!(
        kvctl(ep, &["config", "set", "cfg/a", "not json"])
            .status
            .code(),
        Some(2)
    );
    let set = ok(&kvctl(
        ep,
        &["config", "set", "cfg/a", r#"{"n":1}"#, "--if-revision", "0"],
    ));
    let rev: i64 = set.trim().strip_prefix("OK ").unwrap().parse().unwrap();
    let stale = kvctl(
        ep,
        &["config", "set", "cfg/a", r#"{"n":9}"#, "--if-revision", "0"],
    );
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains(&format!("is at revision {rev}, not 0")),
        "{stale:?}"
    );
    assert_eq!(
        ok(&kvctl(ep, &["config", "get", "cfg/a"])),
        format!("{rev} {{\"n\":1}}\n")
    );

    let mut watcher = kvctl_child(ep, &["config", "watch", "cfg/a"]);
    let seen = lines_of(&mut watcher);
    assert_eq!(
        seen.recv_timeout(wait).unwrap(),
        format!("{rev} {{\"n\":1}}")
    );
    let next = ok(&kvctl(
        ep,
        &[
            "config",
            "set",
            "cfg/a",
            r#"{"n":2}"#,
            "--if-revision",
            &rev.to_string(),
        ],
    ));
    let rev2: i64 = next.trim().strip_prefix("OK ").unwrap().parse().unwrap();
    assert_eq!(
        seen.recv_timeout(wait).unwrap(),
        format!("{rev2} {{\"n\":2}}")
    );
    ok(&kvctl(ep, &["del", "cfg/a"]));
    assert_eq!(seen.recv_timeout(wait).unwrap(), "cfg/a is not set");
    let _ = watcher.kill();
    let _ = watcher.wait();
}
