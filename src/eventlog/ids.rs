//! Where event ids come from, fixed when the log is built: this node's own
//! sequence (memory and the embedded store), or a shared flow (Redis assigns
//! them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock;
use crate::domain::{EventId, Outgoing, Stamped};

/// Who gives events their ids; the Hub asks it whether a resume id was
/// issued but not yet delivered.
#[derive(Clone)]
pub(crate) enum IdSource {
    /// `<epoch>-<n>` from this process.
    Own(Arc<Sequencer>),
    /// A shared flow's ids (Redis entry ids, `<ms>-<n>`), ordered cluster-wide.
    Shared,
}

/// A single node's ids: `<epoch>-<n>`, `n` counting from 1. The epoch is
/// the millisecond the process started (or one more than the newest stored
/// epoch, if that is later), so ids increase across restarts and an id of
/// an earlier process is never taken for one of this one.
pub(crate) struct Sequencer {
    epoch: u64,
    /// The next `n` to give out. Written only while `order` is held; read
    /// without it (an id below it has been given out).
    next: AtomicU64,
    /// Held while ids are given out and the stamped events handed on, so
    /// they are handed on in id order whichever thread publishes.
    order: Mutex<()>,
}

impl Sequencer {
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next: AtomicU64::new(1),
            order: Mutex::new(()),
        }
    }

    /// Ids older than this were never issued by this sequence.
    pub(crate) fn floor(&self) -> EventId {
        EventId::new(self.epoch, 0)
    }

    /// Whether `id` was given out by this sequence.
    pub(crate) fn issued(&self, id: EventId) -> bool {
        id.epoch == self.epoch && id.seq < self.next.load(Ordering::Acquire)
    }

    /// Gives `events` their ids and calls `then` with them while no other
    /// publish can take ids, so whatever `then` hands them to sees every
    /// publish in id order.
    pub(crate) fn stamp<R>(
        &self,
        events: Vec<Outgoing>,
        then: impl FnOnce(Vec<Stamped>) -> R,
    ) -> R {
        // Nothing panics while this is held; a poisoned lock still orders.
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = clock::unix_now_ms();
        let first = self.next.load(Ordering::Relaxed);
        let stamped: Vec<Stamped> = events
            .into_iter()
            .zip(first..)
            .map(|(event, seq)| Stamped {
                id: EventId::new(self.epoch, seq),
                event,
                published_at: now_ms,
            })
            .collect();
        self.next
            .store(first + stamped.len() as u64, Ordering::Release);
        then(stamped)
    }

    /// Runs `then` in the same order as publishes (a revocation handed on
    /// after the events published before it).
    pub(crate) fn in_order<R>(&self, then: impl FnOnce() -> R) -> R {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        then()
    }
}

/// Makes each process's epoch unique and increasing, even when two start
/// within the same millisecond (tests start several in one process).
static LAST_EPOCH: AtomicU64 = AtomicU64::new(0);

/// A fresh epoch for a sequence, at least `at_least`.
pub(crate) fn new_epoch(at_least: u64) -> u64 {
    let now = clock::unix_now_ms().max(at_least);
    let mut last = LAST_EPOCH.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_EPOCH.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}
