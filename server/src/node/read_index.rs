//! Batching of linearizable reads. All reads that arrive while a ReadIndex round is in flight share
//! the next round, so a burst of N reads costs two rounds, not N. A round that gets no answer (no
//! leader, lost message) is re-issued after a timeout; its readers keep waiting until their own
//! deadline. Pure state machine: the raft task issues the contexts it returns.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A reader waiting for a read index.
pub type ReadWaiter = oneshot::Sender<u64>;

struct Round {
    ctx: u64,
    readers: Vec<ReadWaiter>,
    started: Instant,
}

/// Read requests waiting for, or riding on, a ReadIndex round.
#[derive(Default)]
pub struct ReadIndexBatch {
    queued: Vec<ReadWaiter>,
    in_flight: Option<Round>,
    next_ctx: u64,
}

impl ReadIndexBatch {
    /// Adds a reader. Returns the context of a round to start, if none is in flight.
    pub fn add(&mut self, reader: ReadWaiter, now: Instant) -> Option<Vec<u8>> {
        self.queued.push(reader);
        if self.in_flight.is_none() {
            return self.start(now);
        }
        None
    }

    fn start(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.queued.retain(|r| !r.is_closed());
        if self.queued.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        self.in_flight = Some(Round {
            ctx,
            readers: std::mem::take(&mut self.queued),
            started: now,
        });
        Some(ctx.to_be_bytes().to_vec())
    }

    /// Raft answered the round `ctx` with read index `index`. Returns the next round to start.
    pub fn on_read_state(&mut self, ctx: &[u8], index: u64, now: Instant) -> Option<Vec<u8>> {
        let ctx = u64::from_be_bytes(ctx.try_into().ok()?);
        match &self.in_flight {
            Some(round) if round.ctx == ctx => {}
            _ => return None,
        }
        if let Some(round) = self.in_flight.take() {
            for reader in round.readers {
                let _ = reader.send(index);
            }
        }
        self.start(now)
    }

    /// Re-issues a round that has waited longer than `timeout`, with its readers and any queued.
    pub fn on_tick(&mut self, now: Instant, timeout: Duration) -> Option<Vec<u8>> {
        let expired = self
            .in_flight
            .as_ref()
            .is_some_and(|r| now.duration_since(r.started) >= timeout);
        if !expired {
            return None;
        }
        if let Some(round) = self.in_flight.take() {
            let mut readers = round.readers;
            readers.append(&mut self.queued);
            self.queued = readers;
        }
        self.start(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_arriving_during_a_round_share_the_next() {
        let now = Instant::now();
        let mut b = ReadIndexBatch::default();
        let (t1, mut r1) = oneshot::channel();
        let (t2, mut r2) = oneshot::channel();
        let (t3, mut r3) = oneshot::channel();
        let c1 = b.add(t1, now).unwrap();
        assert!(b.add(t2, now).is_none());
        assert!(b.add(t3, now).is_none());
        let c2 = b.on_read_state(&c1, 10, now).unwrap();
        assert_eq!(r1.try_recv().unwrap(), 10);
        assert!(
            r2.try_recv().is_err(),
            "r2 must wait for a round started after it arrived"
        );
        assert!(b.on_read_state(&c2, 12, now).is_none());
        assert_eq!(r2.try_recv().unwrap(), 12);
        assert_eq!(r3.try_recv().unwrap(), 12);
    }

    #[test]
    fn stale_answers_are_ignored_and_rounds_retried() {
        let now = Instant::now();
        let mut b = ReadIndexBatch::default();
        let (t1, mut r1) = oneshot::channel();
        let c1 = b.add(t1, now).unwrap();
        assert!(b.on_tick(now, Duration::from_secs(1)).is_none());
        let later = now + Duration::from_secs(2);
        let c2 = b.on_tick(later, Duration::from_secs(1)).unwrap();
        assert_ne!(c1, c2);
        // The answer to the abandoned round does not complete the reader...
        assert!(b.on_read_state(&c1, 5, later).is_none());
        assert!(r1.try_recv().is_err());
        // ...the answer to the retry does.
        b.on_read_state(&c2, 7, later);
        assert_eq!(r1.try_recv().unwrap(), 7);
    }

    #[test]
    fn gone_readers_do_not_start_rounds() {
        let now = Instant::now();
        let mut b = ReadIndexBatch::default();
        let (t1, r1) = oneshot::channel();
        drop(r1);
        assert!(b.add(t1, now).is_none());
    }
}
