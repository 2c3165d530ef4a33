//! Hub behaviour against a real store: synced delivery, filters and prev_kv, falling behind and
//! catching up from history without gap or duplicate, compaction, progress, slow consumers.

use std::time::Duration;

use conclave_proto::etcdserverpb::WatchResponse;
use tokio::sync::mpsc;
use tonic::Status;

use super::catch_up::catch_up_once;
use super::*;
use crate::mvcc::tests::Fixture;

struct Hub {
    f: Fixture,
    hub: WatchHub,
}

type Rx = mpsc::Receiver<Result<WatchResponse, Status>>;

impl Hub {
    fn new() -> Hub {
        let f = Fixture::new();
        let hub = WatchHub::new(
            f.store.revision(),
            Box::new(|revision| ResponseHeader {
                revision,
                ..Default::default()
            }),
            HubSettings {
                max_response_bytes: 1024 * 1024,
                progress_interval: Duration::from_secs(600),
                slow_stream_timeout: Duration::from_secs(30),
            },
        );
        Hub { f, hub }
    }

    /// One request: puts `k=v` for each pair (v None = delete), published through the hub.
    fn write(&self, ops: &[(&str, Option<&str>)]) -> i64 {
        let txn = self.f.db.begin_write().unwrap();
        let changes = {
            let mut w = self.f.store.writer(&txn).unwrap();
            for (k, v) in ops {
                match v {
                    Some(v) => {
                        w.put(k.as_bytes(), v.as_bytes().to_vec(), 0).unwrap();
                    }
                    None => {
                        w.delete_range(KeyRange::new(k.as_bytes(), b"")).unwrap();
                    }
                }
            }
            w.finish()
        };
        txn.commit().unwrap();
        self.hub.publish(
            &self.f.store,
            changes.revision,
            &[(changes.revision, changes.events)],
        );
        changes.revision
    }

    fn stream(&self, capacity: usize) -> (StreamId, Outbox, Rx) {
        let (tx, rx) = mpsc::channel(capacity);
        let (id, _abort) = self.hub.open_stream(tx.clone());
        (id, tx, rx)
    }

    fn watch(&self, stream: StreamId, outbox: &Outbox, id: i64, spec: WatchSpec, start: i64) {
        let permit = outbox.try_reserve().unwrap();
        self.hub.create(stream, id, spec, start, permit);
    }
}

fn prefix(p: &str) -> WatchSpec {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchSpec {
        key: p.into(),
        range_end: end,
        ..Default::default()
    }
}

fn drain(rx: &mut Rx) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r.unwrap());
    }
    out
}

/// (revision, key, is_delete) of every event in `responses`.
fn events(responses: &[WatchResponse]) -> Vec<(i64, String, bool)> {
    responses
        .iter()
        .flat_map(|r| r.events.iter())
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                kv.mod_revision,
                String::from_utf8(kv.key.clone()).unwrap(),
                e.r#type == EventType::Delete as i32,
            )
        })
        .collect()
}

#[test]
fn synced_watch_gets_matching_events_shaped_by_its_options() {
    let h = Hub::new();
    let (s, tx, mut rx) = h.stream(16);
    h.watch(s, &tx, 0, prefix("a/"), 0);
    let created = drain(&mut rx);
    assert!(created[0].created && created[0].watch_id == 0);
    let mut with_prev = prefix("a/");
    with_prev.prev_kv = true;
    with_prev.no_put = true;
    h.watch(s, &tx, 9, with_prev, 0);
    assert_eq!(drain(&mut rx)[0].watch_id, 9);

    let r1 = h.write(&[("a/1", Some("x")), ("b/1", Some("y"))]);
    let r2 = h.write(&[("a/1", None)]);
    let got = drain(&mut rx);
    let for0: Vec<_> = got.iter().filter(|r| r.watch_id == 0).cloned().collect();
    let for9: Vec<_> = got.iter().filter(|r| r.watch_id == 9).cloned().collect();
    assert_eq!(
        events(&for0),
        vec![(r1, "a/1".into(), false), (r2, "a/1".into(), true)]
    );
    assert!(
        for0.iter()
            .flat_map(|r| &r.events)
            .all(|e| e.prev_kv.is_none())
    );
    assert_eq!(events(&for9), vec![(r2, "a/1".into(), true)], "NOPUT");
    assert_eq!(
        for9[0].events[0].prev_kv.as_ref().unwrap().value,
        b"x".to_vec()
    );
}

#[test]
fn published_puts_carry_the_previous_value_for_watches_that_ask() {
    let h = Hub::new();
    let (s, tx, mut rx) = h.stream(16);
    let mut with_prev = prefix("a/");
    with_prev.prev_kv = true;
    h.watch(s, &tx, 1, with_prev, 0);
    drain(&mut rx);
    h.write(&[("a/1", Some("v1"))]);
    h.write(&[("a/1", Some("v2")), ("a/2", Some("w1"))]);
    h.write(&[("a/1", None)]);
    h.write(&[("a/1", Some("v3"))]);
    let prevs: Vec<Option<Vec<u8>>> = drain(&mut rx)
        .iter()
        .flat_map(|r| &r.events)
        .map(|e| e.prev_kv.as_ref().map(|p| p.value.clone()))
        .collect();
    assert_eq!(
        prevs,
        vec![None, Some(b"v1".to_vec()), None, Some(b"v2".to_vec()), None],
        "first put, overwrite, new key, delete, put after delete"
    );
}

#[test]
fn duplicate_ids_and_empty_ranges_are_refused_like_etcd() {
    let h = Hub::new();
    let (s, tx, mut rx) = h.stream(16);
    h.watch(s, &tx, 5, prefix("a"), 0);
    h.watch(s, &tx, 5, prefix("b"), 0);
    h.watch(
        s,
        &tx,
        0,
        WatchSpec {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        },
        0,
    );
    let got = drain(&mut rx);
    assert!(got[0].created && !got[0].canceled);
    assert_eq!(
        (
            got[1].watch_id,
            got[1].canceled,
            got[1].cancel_reason.as_str()
        ),
        (
            -1,
            true,
            "mvcc: duplicate watch ID provided on the WatchStream"
        )
    );
    assert_eq!(got[2].cancel_reason, "mvcc: watcher range is empty");
    assert_eq!(h.hub.watcher_count(), 1);
}

#[test]
fn historical_watch_catches_up_then_follows_live_writes() {
    let h = Hub::new();
    let first = h.write(&[("k", Some("1"))]);
    h.write(&[("k", Some("2"))]);
    let (s, tx, mut rx) = h.stream(16);
    h.watch(s, &tx, 0, prefix("k"), first);
    assert!(drain(&mut rx)[0].created);
    let live = h.write(&[("k", Some("3"))]);
    assert!(
        drain(&mut rx).is_empty(),
        "a lagging watch gets nothing before its history"
    );
    while catch_up_once(&h.hub, &h.f.store) {}
    let after = h.write(&[("k", Some("4"))]);
    let got = events(&drain(&mut rx));
    let revs: Vec<i64> = got.iter().map(|e| e.0).collect();
    assert_eq!(revs, vec![first, first + 1, live, after]);
}

#[test]
fn a_full_stream_falls_behind_and_catches_up_without_gap_or_duplicate() {
    let h = Hub::new();
    let (s, tx, mut rx) = h.stream(3);
    h.watch(s, &tx, 0, prefix("k"), 0);
    let mut written = Vec::new();
    let mut seen = Vec::new();
    for round in 0..20 {
        for i in 0..7 {
            written.push(h.write(&[(&format!("k{round}-{i}"), Some("v"))]));
        }
        // Read a little, catch up a little: the stream is full most of the time.
        seen.extend(events(&drain(&mut rx)).into_iter().map(|e| e.0));
        catch_up_once(&h.hub, &h.f.store);
    }
    for _ in 0..100 {
        seen.extend(events(&drain(&mut rx)).into_iter().map(|e| e.0));
        if !catch_up_once(&h.hub, &h.f.store) && seen.len() == written.len() {
            break;
        }
    }
    seen.retain(|r| *r > 0);
    assert_eq!(seen, written, "every revision once, in order");
    // Synced again: a new write arrives directly.
    let last = h.write(&[("k-last", Some("v"))]);
    assert_eq!(events(&drain(&mut rx))[0].0, last);
}

#[test]
fn a_compacted_start_revision_cancels_with_compact_revision() {
    let h = Hub::new();
    let r = h.write(&[("k", Some("1"))]);
    h.write(&[("k", Some("2"))]);
    let at = h.write(&[("k", Some("3"))]);
    h.f.apply(|w| w.compact(at).unwrap());
    let (s, tx, mut rx) = h.stream(16);
    h.watch(s, &tx, 0, prefix("k"), r);
    catch_up_once(&h.hub, &h.f.store);
    let got = drain(&mut rx);
    assert!(got[0].created);
    assert!(got[1].canceled);
    assert_eq!(got[1].compact_revision, at + 1);
    assert_eq!(h.hub.watcher_count(), 0);
}

/// Found by the harness (watch workload under a compaction storm): the server refused a watch at
/// the compaction point but named that same point as `compact_revision`, so a client resuming from
/// it was refused again, forever. Resuming from the `compact_revision` answered must work.
#[test]
fn resuming_from_the_answered_compact_revision_is_accepted() {
    let h = Hub::new();
    let r = h.write(&[("k", Some("1"))]);
    let at = h.write(&[("k", None)]);
    let after = h.write(&[("k", Some("2"))]);
    h.f.apply(|w| w.compact(at).unwrap());
    let (s, tx, mut rx) = h.stream(16);
    h.watch(s, &tx, 0, prefix("k"), r);
    catch_up_once(&h.hub, &h.f.store);
    let resume_at = drain(&mut rx)[1].compact_revision;
    h.watch(s, &tx, 1, prefix("k"), resume_at);
    while catch_up_once(&h.hub, &h.f.store) {}
    let got = drain(&mut rx);
    assert!(got.iter().all(|r| !r.canceled), "{got:?}");
    assert_eq!(events(&got), vec![(after, "k".into(), false)]);
}

#[test]
fn progress_is_answered_only_when_every_watch_is_synced() {
    let h = Hub::new();
    let r = h.write(&[("k", Some("1"))]);
    let (s, tx, mut rx) = h.stream(16);
    h.watch(s, &tx, 0, prefix("k"), r);
    drain(&mut rx);
    h.hub.request_progress(s);
    assert!(drain(&mut rx).is_empty(), "deferred while catching up");
    while catch_up_once(&h.hub, &h.f.store) {}
    let got = drain(&mut rx);
    let progress = got.last().unwrap();
    assert_eq!(progress.watch_id, PROGRESS_WATCH_ID);
    assert!(progress.events.is_empty());
    assert_eq!(progress.header.unwrap().revision, r);
    assert_eq!(events(&got[..got.len() - 1]), vec![(r, "k".into(), false)]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_never_reads_is_ended_with_a_reason() {
    let h = Hub::new();
    let (tx, mut rx) = mpsc::channel(2);
    let (s, mut abort) = h.hub.open_stream(tx.clone());
    h.watch(s, &tx, 0, prefix("k"), 0);
    for i in 0..5 {
        h.write(&[(&format!("k{i}"), Some("v"))]);
    }
    h.hub.housekeeping(Instant::now(), false);
    assert!(abort.try_recv().is_err(), "not yet");
    tokio::time::advance(Duration::from_secs(31)).await;
    h.hub.housekeeping(Instant::now(), false);
    let status = abort.try_recv().unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("slow consumer"), "{status:?}");
    assert_eq!(h.hub.watcher_count(), 0);
    drop(rx.try_recv());
}

#[test]
fn progress_notify_reaches_synced_watches_that_asked_for_it() {
    let h = Hub::new();
    let r = h.write(&[("k", Some("1"))]);
    let (s, tx, mut rx) = h.stream(16);
    let mut notified = prefix("k");
    notified.progress_notify = true;
    h.watch(s, &tx, 1, notified.clone(), 0);
    h.watch(s, &tx, 2, prefix("k"), 0);
    h.watch(s, &tx, 3, notified, r);
    drain(&mut rx);
    h.hub.housekeeping(Instant::now(), true);
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1, "only the synced watch that asked: {got:?}");
    assert_eq!(got[0].watch_id, 1);
    assert!(got[0].events.is_empty());
    assert_eq!(got[0].header.unwrap().revision, r);
}

#[test]
fn a_stopping_member_ends_every_stream() {
    let h = Hub::new();
    let (tx1, _rx1) = mpsc::channel(2);
    let (tx2, _rx2) = mpsc::channel(2);
    let (s1, mut abort1) = h.hub.open_stream(tx1.clone());
    let (_s2, mut abort2) = h.hub.open_stream(tx2);
    h.watch(s1, &tx1, 0, prefix("k"), 0);
    h.hub
        .end_all_streams(&Status::unavailable("etcdserver: server stopped"));
    for abort in [&mut abort1, &mut abort2] {
        let status = abort.try_recv().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "etcdserver: server stopped");
    }
}
