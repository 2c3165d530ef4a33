//! Packing events into `WatchResponse`s: events of one revision are never split across responses
//! (atomic), unless the watcher asked for `fragment` and the revision alone exceeds the size limit;
//! then it goes in pieces, every piece but the last marked `fragment`.

use conclave_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use conclave_proto::mvccpb::Event;
use prost::Message as _;

fn revision_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// Splits `events` (in revision order) into responses of at most about `max_bytes` each.
pub fn pack(
    watch_id: i64,
    events: Vec<Event>,
    header: ResponseHeader,
    fragment: bool,
    max_bytes: usize,
) -> Vec<WatchResponse> {
    let make = |events: Vec<Event>, fragment: bool| WatchResponse {
        header: Some(header),
        watch_id,
        events,
        fragment,
        ..Default::default()
    };
    // Group by revision first.
    let mut revisions: Vec<Vec<Event>> = Vec::new();
    for e in events {
        match revisions.last_mut() {
            Some(group) if group.first().map(revision_of) == Some(revision_of(&e)) => group.push(e),
            _ => revisions.push(vec![e]),
        }
    }
    let mut out = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    let mut current_bytes = 0;
    for group in revisions {
        let bytes: usize = group.iter().map(|e| e.encoded_len() + 4).sum();
        if !current.is_empty() && current_bytes + bytes > max_bytes {
            out.push(make(std::mem::take(&mut current), false));
            current_bytes = 0;
        }
        if fragment && bytes > max_bytes {
            // This revision alone is too large: send it in fragments.
            let mut piece: Vec<Event> = Vec::new();
            let mut piece_bytes = 0;
            for e in group {
                let b = e.encoded_len() + 4;
                if !piece.is_empty() && piece_bytes + b > max_bytes {
                    out.push(make(std::mem::take(&mut piece), true));
                    piece_bytes = 0;
                }
                piece_bytes += b;
                piece.push(e);
            }
            out.push(make(piece, false));
            continue;
        }
        current_bytes += bytes;
        current.extend(group);
    }
    if !current.is_empty() {
        out.push(make(current, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::mvccpb::KeyValue;

    fn ev(rev: i64, size: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                mod_revision: rev,
                value: vec![0; size],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn revs(r: &WatchResponse) -> Vec<i64> {
        r.events.iter().map(revision_of).collect()
    }

    #[test]
    fn small_batches_stay_in_one_response() {
        let out = pack(
            7,
            vec![ev(2, 1), ev(2, 1), ev(3, 1)],
            ResponseHeader::default(),
            false,
            1024,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].watch_id, 7);
        assert_eq!(revs(&out[0]), vec![2, 2, 3]);
    }

    #[test]
    fn splits_only_between_revisions() {
        let out = pack(
            1,
            vec![ev(2, 300), ev(2, 300), ev(3, 300)],
            ResponseHeader::default(),
            false,
            500,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(revs(&out[0]), vec![2, 2], "one revision is never split");
        assert_eq!(revs(&out[1]), vec![3]);
        assert!(out.iter().all(|r| !r.fragment));
    }

    #[test]
    fn fragments_a_large_revision_when_asked() {
        let out = pack(
            1,
            vec![ev(2, 300), ev(2, 300), ev(2, 300), ev(3, 10)],
            ResponseHeader::default(),
            true,
            500,
        );
        let flags: Vec<bool> = out.iter().map(|r| r.fragment).collect();
        assert_eq!(flags, vec![true, true, false, false]);
        let all: Vec<i64> = out.iter().flat_map(revs).collect();
        assert_eq!(all, vec![2, 2, 2, 3]);
    }
}
