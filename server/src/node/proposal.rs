//! Waiters for proposals, keyed by request id. The API registers a waiter before proposing; the apply
//! task fires it with the result when the entry is applied on this member. A waiter whose request
//! timed out is removed, and a late result for it is dropped.
//!
//! Also [`ProposalBatch`]: the commands the raft task takes in one turn, proposed to raft-rs as one
//! message.

use std::collections::HashMap;
use std::sync::Mutex;

use raft::prelude::{Entry, Message, MessageType};
use tokio::sync::oneshot;

use crate::apply::ApplyOutcome;

/// Pending proposals of this member.
#[derive(Default)]
pub struct Waiters {
    // A std Mutex: it is held only for a map insert or remove, never across an await.
    pending: Mutex<HashMap<u64, oneshot::Sender<ApplyOutcome>>>,
}

impl Waiters {
    /// Registers a waiter for `id`.
    pub fn register(&self, id: u64) -> oneshot::Receiver<ApplyOutcome> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Delivers the result for `id`, if anyone still waits for it.
    pub fn fire(&self, id: u64, outcome: ApplyOutcome) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    /// Forgets the waiter for `id` (its request gave up).
    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<ApplyOutcome>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Commands taken from the queue in one turn of the raft task, proposed as one `MsgPropose` with
/// one entry each, in order.
///
/// Why: `RawNode::propose` takes one entry, and a leader answers each proposal with an append to
/// every follower as long as their in-flight window has room (256 messages); a follower forwards
/// each proposal to the leader as a message of its own. So under load every write travelled as
/// several raft messages, each encoded, sent, decoded and stepped on its own, and each append was
/// acknowledged on its own. One message per batch carries the same entries (raft-rs appends all
/// entries of a proposal, or drops them all).
#[derive(Default)]
pub struct ProposalBatch {
    entries: Vec<Entry>,
    request_ids: Vec<u64>,
    bytes: usize,
}

/// A batch is proposed once its commands reach this size (raft's own message size limit), so that
/// a follower never forwards one huge message.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

impl ProposalBatch {
    /// Adds a command; returns true when the batch is full and should be proposed now.
    pub fn push(&mut self, data: Vec<u8>, request_id: u64) -> bool {
        self.bytes += data.len();
        self.entries.push(Entry {
            data: data.into(),
            ..Default::default()
        });
        self.request_ids.push(request_id);
        self.bytes >= MAX_BATCH_BYTES
    }

    /// The proposal message for everything added since the last call (`from`: this member), and the
    /// request ids of its entries in order; None when nothing was added.
    pub fn take(&mut self, from: u64) -> Option<(Message, Vec<u64>)> {
        if self.entries.is_empty() {
            return None;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = from;
        m.set_entries(std::mem::take(&mut self.entries).into());
        self.bytes = 0;
        Some((m, std::mem::take(&mut self.request_ids)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_proposal_of_every_command_in_order() {
        let mut b = ProposalBatch::default();
        assert!(b.take(1).is_none());
        assert!(!b.push(b"one".to_vec(), 10));
        assert!(!b.push(b"two".to_vec(), 11));
        let (m, ids) = b.take(7).expect("a proposal");
        assert_eq!(m.get_msg_type(), MessageType::MsgPropose);
        assert_eq!(m.from, 7);
        let data: Vec<&[u8]> = m.entries.iter().map(|e| e.data.as_ref()).collect();
        assert_eq!(data, vec![b"one".as_slice(), b"two".as_slice()]);
        assert_eq!(ids, vec![10, 11]);
        // Taken: the next batch starts empty.
        assert!(b.take(7).is_none());
    }

    #[test]
    fn a_batch_is_full_at_the_size_limit() {
        let mut b = ProposalBatch::default();
        assert!(!b.push(vec![0; MAX_BATCH_BYTES - 1], 1));
        assert!(b.push(vec![0; 1], 2));
        b.take(1);
        assert!(!b.push(vec![0; 1], 3));
    }
}
