//! Watches against real clusters, spoken in raw etcd protocol (so the client library's resume
//! logic is not what is tested here): every member serves watches; ordered, unique, reliable,
//! resumable and bookmarkable across a leader kill; compaction; memory per watcher; a client
//! that stops reading never stalls writes and is ended with a reason.

// Helpers outside #[test] functions: a failed unwrap there is a test failure too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use conclave_proto::etcdserverpb::watch_client::WatchClient;
use conclave_proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    kv_client::KvClient, watch_request::RequestUnion,
};
use conclave_testkit::Cluster;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{binary, cluster};

pub(crate) async fn channel(c: &Cluster, i: usize) -> Channel {
    Channel::from_shared(c.client_endpoint(i))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An open watch stream: the request sender and the response stream.
pub(crate) struct RawWatch {
    pub(crate) tx: mpsc::Sender<WatchRequest>,
    pub(crate) rx: Streaming<WatchResponse>,
}

impl RawWatch {
    pub(crate) async fn open(ch: Channel) -> RawWatch {
        let (tx, req_rx) = mpsc::channel(16);
        let rx = WatchClient::new(ch)
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .unwrap()
            .into_inner();
        RawWatch { tx, rx }
    }

    pub(crate) async fn create(&mut self, c: WatchCreateRequest) -> WatchResponse {
        self.tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(c)),
            })
            .await
            .unwrap();
        let created = self.next().await.expect("created response");
        assert!(created.created, "{created:?}");
        created
    }

    pub(crate) async fn next(&mut self) -> Option<WatchResponse> {
        tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("a watch response within 20 s")
            .ok()
            .flatten()
    }
}

pub(crate) fn prefix_watch(prefix: &str, start: i64) -> WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        start_revision: start,
        ..Default::default()
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    kv.put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

/// Collects event revisions from `w` until `last` is seen; asserts order and uniqueness.
async fn revisions_until(w: &mut RawWatch, last: i64) -> Vec<i64> {
    let mut seen: Vec<i64> = Vec::new();
    while seen.last().is_none_or(|r| *r < last) {
        let resp = w.next().await.expect("stream open");
        for e in resp.events {
            let rev = e.kv.unwrap().mod_revision;
            assert!(
                seen.last().is_none_or(|p| *p < rev),
                "ordered and unique: {rev} after {seen:?}"
            );
            seen.push(rev);
        }
    }
    seen
}

#[tokio::test]
async fn every_member_streams_every_revision_once_across_a_leader_kill() {
    let c = cluster(3).await;
    let client = c.client_all().await.unwrap();
    let start = client
        .kv()
        .put("w/start", "0", Default::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut watches = Vec::new();
    for i in 0..3 {
        let mut w = RawWatch::open(channel(&c, i).await).await;
        w.create(prefix_watch("w/", start)).await;
        watches.push(w);
    }
    let leader = c.leader_index().await.unwrap();
    let mut acked: BTreeMap<i64, String> = BTreeMap::new();
    acked.insert(start, "w/start".into());
    for n in 0..300 {
        if n == 100 {
            c.kill(leader).unwrap();
        }
        let key = format!("w/{n:04}");
        match client.kv().put(key.clone(), "v", Default::default()).await {
            Ok(r) => {
                acked.insert(r.header.unwrap().revision, key);
            }
            Err(e) => assert!(e.is_unknown_outcome(), "{e}"),
        }
    }
    let last = *acked.keys().last().unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut reference: Option<Vec<i64>> = None;
    for i in &survivors {
        let seen = revisions_until(&mut watches[*i], last).await;
        // Reliable: consecutive revisions (every write here is under the prefix).
        assert_eq!(
            seen,
            (start..=last).collect::<Vec<_>>(),
            "member {i} has no gap"
        );
        for rev in acked.keys() {
            assert!(seen.contains(rev), "acknowledged revision {rev} delivered");
        }
        reference.get_or_insert(seen);
    }

    // Resumable: the killed member's stream broke; after a restart, re-watching from its last
    // delivered revision + 1 continues exactly.
    let mut broken = watches.swap_remove(leader);
    let mut delivered = Vec::new();
    while let Ok(Some(resp)) = tokio::time::timeout(Duration::from_secs(2), broken.rx.message())
        .await
        .unwrap_or(Ok(None))
    {
        delivered.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    c.restart(leader).unwrap();
    c.wait_ready(Duration::from_secs(20)).await.unwrap();
    let resume_from = delivered.last().map_or(start, |r| r + 1);
    let mut again = RawWatch::open(channel(&c, leader).await).await;
    again.create(prefix_watch("w/", resume_from)).await;
    let rest = revisions_until(&mut again, last).await;
    delivered.extend(rest);
    assert_eq!(
        Some(delivered),
        reference,
        "resumed stream equals the others"
    );
}

#[tokio::test]
async fn a_progress_response_means_every_earlier_event_was_delivered() {
    let c = cluster(3).await;
    let follower = (c.leader_index().await.unwrap() + 1) % 3;
    let mut kv = KvClient::new(channel(&c, 0).await);
    let mut w = RawWatch::open(channel(&c, follower).await).await;
    w.create(prefix_watch("p/", 0)).await;
    let mut written = Vec::new();
    for n in 0..50 {
        written.push(put(&mut kv, &format!("p/{n}"), "v").await);
    }
    w.tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let resp = w.next().await.unwrap();
        if resp.events.is_empty() && resp.watch_id == -1 {
            let r = resp.header.unwrap().revision;
            let due: Vec<i64> = written.iter().copied().filter(|w| *w <= r).collect();
            assert_eq!(seen, due, "bookmark at {r}");
            break;
        }
        seen.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
}

#[tokio::test]
async fn watching_a_compacted_revision_is_canceled_with_the_compact_revision() {
    let c = cluster(1).await;
    let client = c.client(0).await.unwrap();
    let first = client
        .kv()
        .put("c", "1", Default::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let at = client
        .kv()
        .put("c", "2", Default::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    client.kv().compact(at, false).await.unwrap();
    let mut w = RawWatch::open(channel(&c, 0).await).await;
    w.create(prefix_watch("c", first)).await;
    let resp = w.next().await.unwrap();
    assert!(resp.canceled);
    // The answer names the first revision a watch can start from: the compaction point itself is
    // compacted too (a delete at exactly that revision is gone from history, so serving it could
    // skip an event). Watching from the revision answered works.
    assert_eq!(resp.compact_revision, at + 1);
    w.create(prefix_watch("c", at)).await;
    assert_eq!(w.next().await.unwrap().compact_revision, at + 1);
    let next = client
        .kv()
        .put("c", "3", Default::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    w.create(prefix_watch("c", at + 1)).await;
    let resp = w.next().await.unwrap();
    assert_eq!(resp.events[0].kv.as_ref().unwrap().mod_revision, next);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 10,000 watchers (100 streams of 100) on one member: measures the member's resident memory
/// per watcher, and checks one write fans out to all of them.
#[tokio::test]
async fn ten_thousand_watchers_on_one_member_use_bounded_memory() {
    let c = cluster(1).await;
    let pid = c.pid(0).unwrap().unwrap();
    let mut kv = KvClient::new(channel(&c, 0).await);
    put(&mut kv, "warmup", "v").await;
    let mut streams = Vec::new();
    // Warm up the connection machinery, then measure from here.
    let before = rss_kib(pid);
    for s in 0..100 {
        let mut w = RawWatch::open(channel(&c, 0).await).await;
        for i in 0..100 {
            w.create(prefix_watch(&format!("fan/{s}/{i}/"), 0)).await;
        }
        streams.push(w);
    }
    let after = rss_kib(pid);
    let per_watcher = (after.saturating_sub(before) * 1024) / 10_000;
    println!("RSS {before} KiB -> {after} KiB: {per_watcher} bytes per watcher (100 streams)");
    // etcd 3.4 needs several KiB per watcher; the hub's state is a few hundred bytes, the rest is
    // per-stream gRPC buffers. The bound leaves room for allocator noise, not for a leak.
    assert!(
        per_watcher < 8 * 1024,
        "{per_watcher} bytes per watcher is too much"
    );
    // Every watcher of stream 7 gets the event under its prefix; the others nothing.
    let rev = put(&mut kv, "fan/7/42/x", "v").await;
    let resp = streams[7].next().await.unwrap();
    assert_eq!(resp.events[0].kv.as_ref().unwrap().mod_revision, rev);
}

/// A client that never reads: writes keep flowing (apply never waits for a watcher), memory
/// stays bounded, and the stream is ended with a reason naming the slow consumer.
#[tokio::test]
async fn a_client_that_stops_reading_never_stalls_writes_and_is_ended() {
    let c = Cluster::builder(binary(), 1)
        .args(["--watch-slow-consumer-timeout", "3s"])
        .start()
        .await
        .unwrap();
    let pid = c.pid(0).unwrap().unwrap();
    let mut kv = KvClient::new(channel(&c, 0).await);
    let mut w = RawWatch::open(channel(&c, 0).await).await;
    w.create(prefix_watch("slow/", 0)).await;
    let value = "x".repeat(64 * 1024);
    let started = std::time::Instant::now();
    for n in 0..400 {
        put(&mut kv, &format!("slow/{n}"), &value).await;
    }
    println!(
        "400 x 64 KiB writes with a stalled watcher took {:?}; member RSS {} KiB",
        started.elapsed(),
        rss_kib(pid)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Now read: some events, then the stream ends with the slow-consumer error, never silently.
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(20), w.rx.message())
            .await
            .unwrap()
        {
            Ok(Some(resp)) => {
                for e in resp.events {
                    let rev = e.kv.unwrap().mod_revision;
                    assert!(rev > last, "ordered, unique");
                    last = rev;
                }
            }
            Ok(None) => panic!("the stream ended without a reason"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("slow consumer"), "{status:?}");
}
