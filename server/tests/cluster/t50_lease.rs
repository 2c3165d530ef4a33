//! Leases against real clusters, in raw etcd protocol: keep-alive through a follower survives a
//! leader kill while an abandoned lease expires; a revoke deletes all keys in one revision; lease
//! state survives a full restart; etcd's errors.

// Helpers outside #[test] functions: a failed unwrap there is a test failure too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use conclave_proto::etcdserverpb::lease_client::LeaseClient;
use conclave_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, kv_client::KvClient,
};
use conclave_testkit::Cluster;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::binary;
use super::t40_watch::{RawWatch, channel, prefix_watch};

async fn grant(lease: &mut LeaseClient<Channel>, ttl: i64) -> i64 {
    lease
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn put_leased(kv: &mut KvClient<Channel>, key: &str, lease: i64) -> i64 {
    kv.put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn exists(kv: &mut KvClient<Channel>, key: &str) -> bool {
    let r = kv
        .range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.count == 1
}

async fn ttl(lease: &mut LeaseClient<Channel>, id: i64) -> i64 {
    lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner()
        .ttl
}

fn three_members() -> conclave_testkit::ClusterBuilder {
    Cluster::builder(binary(), 3)
        .heartbeat_interval(50)
        .election_timeout(500)
}

/// A lease kept alive through a follower outlives a leader kill (no kept-alive lease expires);
/// an abandoned lease granted at the same time does expire, and its key goes with it.
#[tokio::test]
async fn keep_alive_survives_a_leader_kill_and_abandoned_leases_expire() {
    let c = three_members().start().await.unwrap();
    let leader = c.leader_index().await.unwrap();
    let follower = (leader + 1) % 3;
    let ch = channel(&c, follower).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let kept = grant(&mut lease, 3).await;
    let abandoned = grant(&mut lease, 3).await;
    put_leased(&mut kv, "kept", kept).await;
    put_leased(&mut kv, "abandoned", abandoned).await;

    let (tx, rx) = mpsc::channel(4);
    let mut answers = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let keeper = tokio::spawn(async move {
        let mut acks = 0;
        let mut last_sent = std::time::Instant::now();
        for _ in 0..12 {
            last_sent = std::time::Instant::now();
            tx.send(LeaseKeepAliveRequest { id: kept }).await.unwrap();
            let resp = answers.message().await.unwrap().unwrap();
            assert_eq!((resp.id, resp.ttl), (kept, 3), "renewed for the full TTL");
            acks += 1;
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        (acks, last_sent)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill(leader).unwrap();
    let (acks, last_sent) = keeper.await.unwrap();
    assert_eq!(acks, 12, "every keep-alive answered");
    assert!(
        exists(&mut kv, "kept").await,
        "a kept-alive lease never expires"
    );
    assert!(
        !exists(&mut kv, "abandoned").await,
        "the abandoned lease expired"
    );
    assert_eq!(ttl(&mut lease, abandoned).await, -1);

    // Once abandoned too, the kept lease expires: not before its TTL has passed since the last
    // renewal was sent, and soon after (the leader did not change since).
    while exists(&mut kv, "kept").await {
        assert!(
            last_sent.elapsed() < Duration::from_secs(10),
            "the abandoned lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last_sent.elapsed() >= Duration::from_secs(3),
        "expired {:?} after the last renewal was sent, before its 3 s TTL",
        last_sent.elapsed()
    );
    assert_eq!(ttl(&mut lease, kept).await, -1);
}

/// Revoking a lease deletes all of its keys in ONE revision; keys of other leases stay.
#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let c = three_members().start().await.unwrap();
    let ch = channel(&c, 0).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let id = grant(&mut lease, 60).await;
    let other = grant(&mut lease, 60).await;
    for n in 0..5 {
        put_leased(&mut kv, &format!("r/{n}"), id).await;
    }
    let last_put = put_leased(&mut kv, "r/other", other).await;
    // Start right after the puts: a watch "from now" on a member that has not applied them yet
    // would see them first.
    let mut w = RawWatch::open(channel(&c, 2).await).await;
    w.create(prefix_watch("r/", last_put + 1)).await;
    let rev = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let resp = w.next().await.unwrap();
    assert_eq!(resp.events.len(), 5, "one response: one revision");
    assert!(
        resp.events
            .iter()
            .all(|e| e.r#type == 1 && e.kv.as_ref().unwrap().mod_revision == rev)
    );
    assert!(exists(&mut kv, "r/other").await);
    let again = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound);
    assert_eq!(again.message(), "etcdserver: requested lease not found");
}

/// etcd's answers: unknown lease on put, duplicate id, too large a TTL, TTL raised to the
/// minimum, keep-alive of an unknown lease answers TTL 0.
#[tokio::test]
async fn lease_errors_match_etcd() {
    let c = three_members().start().await.unwrap();
    let ch = channel(&c, 1).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let err = kv
        .put(PutRequest {
            key: b"k".to_vec(),
            lease: 12345,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 77 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (granted.id, granted.ttl),
        (77, 1),
        "minimum TTL with a 500 ms election timeout is 1 s"
    );
    let dup = lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 77 })
        .await
        .unwrap_err();
    assert_eq!(
        (dup.code(), dup.message()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists"
        )
    );
    let big = lease
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (big.code(), big.message()),
        (tonic::Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    let (tx, rx) = mpsc::channel(1);
    let mut answers = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(LeaseKeepAliveRequest { id: 4242 }).await.unwrap();
    assert_eq!(answers.message().await.unwrap().unwrap().ttl, 0);
    assert_eq!(ttl(&mut lease, 4242).await, -1);
}

/// Leases, their TTLs and their keys survive a restart of every member.
#[tokio::test]
async fn leases_survive_a_full_restart() {
    let c = three_members().start().await.unwrap();
    let ch = channel(&c, 0).await;
    let id = grant(&mut LeaseClient::new(ch.clone()), 600).await;
    put_leased(&mut KvClient::new(ch), "durable", id).await;
    for i in 0..3 {
        c.kill(i).unwrap();
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    c.wait_ready(Duration::from_secs(20)).await.unwrap();
    let ch = channel(&c, 2).await;
    let mut lease = LeaseClient::new(ch.clone());
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.granted_ttl, 600);
    assert!(t.ttl > 500, "remaining {}", t.ttl);
    assert_eq!(t.keys, vec![b"durable".to_vec()]);
    assert!(exists(&mut KvClient::new(ch), "durable").await);
}

/// Many leases expiring at once are revoked in batches while writes keep flowing: every lease and
/// its key goes, and no write fails meanwhile.
#[tokio::test]
async fn mass_expiry_proceeds_in_batches_while_writes_continue() {
    let c = three_members().start().await.unwrap();
    let ch = channel(&c, 0).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    const LEASES: usize = 600;
    for n in 0..LEASES {
        let id = grant(&mut lease, 1).await;
        put_leased(&mut kv, &format!("mass/{n:05}"), id).await;
    }
    let writer = tokio::spawn(async move {
        let mut kv = KvClient::new(ch);
        let mut slowest = Duration::ZERO;
        for n in 0..200 {
            let started = std::time::Instant::now();
            kv.put(PutRequest {
                key: format!("steady/{n}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .expect("writes succeed during mass expiry");
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = kv
            .range(RangeRequest {
                key: b"mass/".to_vec(),
                range_end: b"mass0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count;
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} leased keys still there after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let slowest = writer.await.unwrap();
    println!("{LEASES} leases expired; slowest concurrent put took {slowest:?}");
    let listed = lease
        .lease_leases(conclave_proto::etcdserverpb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .len();
    assert_eq!(listed, 0);
}

/// Renews every lease in `ids` through one keep-alive stream on `ch`, one round every 800 ms,
/// until `until`; returns the answers that were not a renewal for the full `ttl`.
async fn keep_renewing(
    ch: Channel,
    ids: Vec<i64>,
    ttl: i64,
    until: std::time::Instant,
) -> Vec<(i64, i64)> {
    let (tx, rx) = mpsc::channel(ids.len());
    let mut answers = LeaseClient::new(ch)
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut wrong = Vec::new();
    while std::time::Instant::now() < until {
        for &id in &ids {
            tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
            let resp = answers.message().await.unwrap().unwrap();
            if resp.ttl != ttl {
                wrong.push((resp.id, resp.ttl));
            }
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    wrong
}

/// Bug found by the harness (lease workload, 5 s pauses): a leader paused for longer than the
/// TTL woke up still believing it led, found every lease "expired" by its stale clock and
/// proposed their revokes; raft had meanwhile stepped down and forwarded the proposals to the new
/// leader, which committed them — revoking leases it had just renewed. Fixed by fencing the
/// leader's own commands with the term it leads in: apply ignores them in any other term.
#[tokio::test]
async fn a_deposed_leader_waking_from_a_pause_revokes_nothing() {
    const TTL: i64 = 3;
    let c = three_members().start().await.unwrap();
    let ch = channel(&c, 0).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let mut ids = Vec::new();
    for n in 0..10 {
        let id = grant(&mut lease, TTL).await;
        put_leased(&mut kv, &format!("kept/{n}"), id).await;
        ids.push(id);
    }
    for round in 0..2 {
        let leader = c.leader_index().await.unwrap();
        let renewer = (leader + 1) % 3;
        let until = std::time::Instant::now() + Duration::from_secs(9);
        let keeper = tokio::spawn(keep_renewing(
            channel(&c, renewer).await,
            ids.clone(),
            TTL,
            until,
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Longer than the TTL plus the new leader's grace: every expiry the paused leader knew
        // is in the past when it wakes.
        c.pause(leader).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        c.resume(leader).unwrap();
        let wrong = keeper.await.unwrap();
        assert!(
            wrong.is_empty(),
            "round {round}: renewals refused: {wrong:?}"
        );
        let mut kv = KvClient::new(channel(&c, renewer).await);
        for n in 0..10 {
            assert!(
                exists(&mut kv, &format!("kept/{n}")).await,
                "round {round}: kept/{n} lost"
            );
        }
    }
}
