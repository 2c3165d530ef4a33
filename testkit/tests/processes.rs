//! Process control of the test kit, exercised with stand-in "servers" (shell scripts that ignore
//! their flags), so no Conclave binary is needed: start, pause/resume, kill/restart, terminate,
//! readiness timeout, crash detection, and that dropping a cluster leaves no process behind.
//!
//! One test function on purpose: the scripts are written before any process is forked, which
//! avoids "text file busy" when another test thread forks while a script is still open for writing.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use conclave_testkit::{Cluster, Error, Host, NodeState};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The process state letter from /proc (R, S, T, Z, ...), or None if the process is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// Waits up to a second for `pred` on the process state (signals are delivered asynchronously).
async fn eventually(pid: u32, pred: impl Fn(Option<char>) -> bool) -> Option<char> {
    for _ in 0..100 {
        if pred(proc_state(pid)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proc_state(pid)
}

#[tokio::test]
async fn process_control_with_stand_in_nodes() {
    let scripts = tempfile::tempdir().unwrap();
    let sleeper = script(
        scripts.path(),
        "sleeper",
        "echo \"stand-in $*\"\nexec sleep 600",
    );
    let crasher = script(scripts.path(), "crasher", "echo crashing >&2\nexit 3");
    let launcher = script(
        scripts.path(),
        "launcher",
        "echo \"launched $1\"\nexec \"$@\"",
    );

    // --- start three stand-ins and look at what they were given
    let cluster = Cluster::builder(&sleeper, 3)
        .heartbeat_interval(20)
        .election_timeout(200)
        .node_args(1, ["--extra", "x"])
        .spawn()
        .await
        .unwrap();
    assert_eq!(cluster.len(), 3);
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[0], cluster.client_endpoint(0));
    let mut pids = Vec::new();
    for i in 0..3 {
        assert_eq!(cluster.state(i).unwrap(), NodeState::Running);
        pids.push(cluster.pid(i).unwrap().unwrap());
    }
    // Give the scripts a moment to write their first line.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(cluster.log_path(1).unwrap()).unwrap();
    assert!(log.contains("stand-in --name n2 --data-dir"), "{log}");
    assert!(
        log.contains("--heartbeat-interval 20 --election-timeout 200 --extra x"),
        "{log}"
    );
    assert!(
        log.contains(&format!("--listen-client-urls {}", endpoints[1])),
        "{log}"
    );
    assert!(
        log.contains(&format!("--initial-cluster-token {}", cluster.token())),
        "{log}"
    );

    // --- pause and resume
    cluster.pause(1).unwrap();
    assert_eq!(cluster.state(1).unwrap(), NodeState::Paused);
    assert_eq!(eventually(pids[1], |s| s == Some('T')).await, Some('T'));
    cluster.resume(1).unwrap();
    assert_eq!(cluster.state(1).unwrap(), NodeState::Running);
    assert_ne!(eventually(pids[1], |s| s != Some('T')).await, Some('T'));

    // --- kill (also of a paused node) and restart
    cluster.pause(0).unwrap();
    cluster.kill(0).unwrap();
    assert_eq!(cluster.state(0).unwrap(), NodeState::Stopped);
    assert_eq!(cluster.pid(0).unwrap(), None);
    assert_eq!(proc_state(pids[0]), None);
    assert!(matches!(cluster.pause(0), Err(Error::InvalidState { .. })));
    cluster.restart(0).unwrap();
    assert_eq!(cluster.state(0).unwrap(), NodeState::Running);
    pids[0] = cluster.pid(0).unwrap().unwrap();
    let log = std::fs::read_to_string(cluster.log_path(0).unwrap()).unwrap();
    assert!(log.contains("start #2 of n1"), "{log}");

    // --- terminate: sleep dies on SIGTERM well within the grace period
    assert!(cluster.terminate(2, Duration::from_secs(5)).await.unwrap());
    assert_eq!(cluster.state(2).unwrap(), NodeState::Stopped);

    // --- nothing answers Status, so readiness times out with a per-node account
    let err = cluster
        .wait_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    match &err {
        Error::NotReady { detail, .. } => {
            assert!(detail.contains("n1:") && detail.contains("n2:"), "{detail}");
            assert!(
                !detail.contains("n3:"),
                "a stopped node is not probed: {detail}"
            );
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(matches!(
        cluster.leader_index().await,
        Err(Error::NoLeader { .. })
    ));

    // --- dropping the cluster kills and reaps everything, and removes the directory
    let dir = cluster.dir().to_owned();
    assert!(dir.exists());
    drop(cluster);
    for pid in &pids {
        assert_eq!(proc_state(*pid), None, "pid {pid} survived the drop");
    }
    if std::env::var_os(conclave_testkit::KEEP_ENV).is_none() {
        assert!(!dir.exists());
    }

    // --- nodes placed on hosts: their own address, fixed ports, started through a launcher that
    // execs them (so the pid, and every signal, is the node's own)
    let hosts: Vec<Host> = (1..=3)
        .map(|i| Host {
            address: format!("127.77.0.{i}"),
            launcher: vec![launcher.clone().into()],
        })
        .collect();
    let err = Cluster::builder(&sleeper, 2)
        .hosts(hosts.clone())
        .spawn()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::HostCount { hosts: 3, nodes: 2 }),
        "{err:?}"
    );
    let cluster = Cluster::builder(&sleeper, 3)
        .hosts(hosts)
        .spawn()
        .await
        .unwrap();
    assert_eq!(cluster.client_endpoint(1), "http://127.77.0.2:2379");
    assert_eq!(cluster.peer_url(2).unwrap(), "http://127.77.0.3:2380");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(cluster.log_path(1).unwrap()).unwrap();
    assert!(log.contains("launched "), "{log}");
    assert!(
        log.contains("--initial-cluster n1=http://127.77.0.1:2380,n2=http://127.77.0.2:2380"),
        "{log}"
    );
    let pid = cluster.pid(1).unwrap().unwrap();
    cluster.pause(1).unwrap();
    assert_eq!(eventually(pid, |s| s == Some('T')).await, Some('T'));
    cluster.kill(1).unwrap();
    assert_eq!(proc_state(pid), None);
    drop(cluster);

    // --- a node that exits on its own is reported with its exit status and log
    let cluster = Cluster::builder(&crasher, 1).spawn().await.unwrap();
    let err = cluster
        .wait_ready(Duration::from_secs(5))
        .await
        .unwrap_err();
    match &err {
        Error::NodeExited {
            index,
            status,
            log_tail,
            ..
        } => {
            assert_eq!(*index, 0);
            assert!(status.contains('3'), "{status}");
            assert!(log_tail.contains("crashing"), "{log_tail}");
        }
        other => panic!("expected NodeExited, got {other:?}"),
    }
    assert_eq!(cluster.state(0).unwrap(), NodeState::Exited);
}
