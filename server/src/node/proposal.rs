//! Waiters for proposals, keyed by request id. The API registers a waiter before proposing; the apply
//! task fires it with the result when the entry is applied on this member. A waiter whose request
//! timed out is removed, and a late result for it is dropped.

use std::collections::HashMap;
use std::sync::Mutex;

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
