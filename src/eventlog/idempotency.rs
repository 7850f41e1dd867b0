//! Idempotent publishing: what a publisher's `Idempotency-Key` was first
//! answered, so that a repeat publishes nothing and gets the same answer.
//!
//! The table lives in the node's memory. With the embedded store every
//! record is also committed in the same transaction as its events (and
//! loaded again at start), so a retry after a crash finds it; with Redis the
//! append script checks and records it atomically with the events, so a
//! retry on any node finds it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

use crate::domain::{EventId, Published};

/// A publisher's key and what it was sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdempotencyKey {
    /// The publisher's `sub`: keys of different publishers never meet.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the request's body, as JSON with its keys sorted, in hex.
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// The record's name in a store: scope and key, which neither holds a
    /// line break (a key is visible ASCII, a `sub` is checked at login).
    pub(crate) fn name(&self) -> String {
        format!("{}\n{}", self.scope, self.key)
    }
}

/// A first answer, kept for repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub fingerprint: String,
    /// The `202`'s JSON body.
    pub answer: String,
    /// When it was answered, in Unix milliseconds.
    pub at_ms: u64,
}

/// What a log records with an append made under a key: enough to answer
/// the same way again.
#[derive(Clone, Debug)]
pub(crate) struct Remember {
    /// [`IdempotencyKey::name`].
    pub name: String,
    pub fingerprint: String,
    /// Each event's recipients on the publishing node.
    pub recipients: Vec<usize>,
    /// Whether the body was an array (answered `{"events": [...]}`).
    pub batch: bool,
    pub at_ms: u64,
}

impl Remember {
    /// The record, once the events have their ids.
    pub(crate) fn record(&self, ids: &[EventId]) -> (String, Remembered) {
        (
            self.name.clone(),
            Remembered {
                fingerprint: self.fingerprint.clone(),
                answer: answer(ids, &self.recipients, self.batch),
                at_ms: self.at_ms,
            },
        )
    }
}

/// The `202`'s JSON body for events with these ids and recipients: one
/// object, or `{"events": [...]}` for a batch. The one place it is written,
/// so a replay is the first answer to the byte.
pub(crate) fn answer(ids: &[EventId], recipients: &[usize], batch: bool) -> String {
    #[derive(Serialize)]
    struct Batch {
        events: Vec<Published>,
    }
    let mut published: Vec<Published> = ids
        .iter()
        .zip(recipients)
        .map(|(id, recipients)| Published {
            id: id.to_string(),
            recipients: *recipients,
        })
        .collect();
    // Serializing these plain values cannot fail.
    if batch {
        serde_json::to_string(&Batch { events: published }).unwrap_or_default()
    } else {
        match published.pop() {
            Some(one) => serde_json::to_string(&one).unwrap_or_default(),
            None => "null".into(),
        }
    }
}

/// What an append did.
#[derive(Debug)]
pub(crate) enum Appended {
    /// The events were appended with these ids.
    New(Vec<EventId>),
    /// Nothing was appended: a publish on another node used the key first
    /// (with Redis), and this is what it recorded.
    Remembered(Remembered),
}

/// What a publish with a key should do.
pub(crate) enum Begin<'a> {
    /// Nobody used the key yet (or its record expired): publish, then
    /// [`Claim::finish`] with the answer.
    Fresh(Claim<'a>),
    /// The key was answered already, for the same body.
    Replay(String),
    /// The key was answered already, for another body.
    Conflict,
    /// The first publish with this key is still in flight: wait for it.
    Wait(watch::Receiver<Option<String>>),
}

enum Entry {
    Pending {
        fingerprint: String,
        done: watch::Sender<Option<String>>,
    },
    Done(Remembered),
}

/// The node's records, by [`IdempotencyKey::name`].
pub(crate) struct Idempotency {
    entries: Mutex<HashMap<String, Entry>>,
    ttl_ms: u64,
}

impl Idempotency {
    pub(crate) fn new(ttl_ms: u64) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Nothing panics while it is held; a poisoned table is still whole.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records loaded from a store at start (those still within the TTL).
    pub(crate) fn restore(&self, records: Vec<(String, Remembered)>, now_ms: u64) {
        let mut entries = self.lock();
        for (name, remembered) in records {
            if remembered.at_ms.saturating_add(self.ttl_ms) > now_ms {
                entries.insert(name, Entry::Done(remembered));
            }
        }
    }

    /// Looks `key` up at `now_ms`, claiming it when it is free.
    pub(crate) fn begin(&self, key: &IdempotencyKey, now_ms: u64) -> Begin<'_> {
        let name = key.name();
        let mut entries = self.lock();
        match entries.get(&name) {
            Some(Entry::Done(remembered))
                if remembered.at_ms.saturating_add(self.ttl_ms) > now_ms =>
            {
                return if remembered.fingerprint == key.fingerprint {
                    Begin::Replay(remembered.answer.clone())
                } else {
                    Begin::Conflict
                };
            }
            Some(Entry::Pending { fingerprint, .. }) if *fingerprint != key.fingerprint => {
                return Begin::Conflict
            }
            Some(Entry::Pending { done, .. }) => return Begin::Wait(done.subscribe()),
            // Expired, or never used.
            Some(Entry::Done(_)) | None => {}
        }
        if entries.len().is_multiple_of(1024) {
            self.purge(&mut entries, now_ms);
        }
        let (done, _) = watch::channel(None);
        entries.insert(
            name.clone(),
            Entry::Pending {
                fingerprint: key.fingerprint.clone(),
                done,
            },
        );
        Begin::Fresh(Claim {
            table: self,
            name,
            finished: false,
        })
    }

    /// Drops the records older than the TTL.
    fn purge(&self, entries: &mut HashMap<String, Entry>, now_ms: u64) {
        entries.retain(|_, entry| match entry {
            Entry::Done(remembered) => remembered.at_ms.saturating_add(self.ttl_ms) > now_ms,
            Entry::Pending { .. } => true,
        });
    }

    /// How many keys are remembered (for tests and the stats).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A claimed key: [`Claim::finish`] records the answer; dropping it
/// unfinished (the publish failed) frees the key, and whoever waited tries
/// again.
pub(crate) struct Claim<'a> {
    table: &'a Idempotency,
    name: String,
    finished: bool,
}

impl Claim<'_> {
    /// Records `answer` for the key at `at_ms` and hands it to whoever waited.
    pub(crate) fn finish(mut self, fingerprint: String, answer: String, at_ms: u64) {
        self.finished = true;
        let mut entries = self.table.lock();
        if let Some(Entry::Pending { done, .. }) = entries.insert(
            self.name.clone(),
            Entry::Done(Remembered {
                fingerprint,
                answer: answer.clone(),
                at_ms,
            }),
        ) {
            done.send_replace(Some(answer));
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut entries = self.table.lock();
        if matches!(entries.get(&self.name), Some(Entry::Pending { .. })) {
            // Dropping the sender wakes the waiters with no answer.
            entries.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str, body: &str) -> IdempotencyKey {
        IdempotencyKey {
            scope: "backend".into(),
            key: key.into(),
            fingerprint: body.into(),
        }
    }

    #[test]
    fn a_repeat_replays_another_body_conflicts_and_another_scope_is_apart() {
        let table = Idempotency::new(1_000);
        let Begin::Fresh(claim) = table.begin(&key("k", "a"), 0) else {
            panic!("a new key is fresh");
        };
        claim.finish("a".into(), r#"{"id":"1-1"}"#.into(), 0);
        assert!(
            matches!(table.begin(&key("k", "a"), 10), Begin::Replay(answer) if answer == r#"{"id":"1-1"}"#)
        );
        assert!(matches!(table.begin(&key("k", "b"), 10), Begin::Conflict));
        let other = IdempotencyKey {
            scope: "other".into(),
            ..key("k", "a")
        };
        assert!(matches!(table.begin(&other, 10), Begin::Fresh(_)));
        // Past the TTL the key is free again.
        assert!(matches!(
            table.begin(&key("k", "b"), 1_000),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn a_repeat_in_flight_waits_and_a_failed_first_frees_the_key() {
        let table = Idempotency::new(1_000);
        let Begin::Fresh(claim) = table.begin(&key("k", "a"), 0) else {
            panic!("fresh");
        };
        let Begin::Wait(mut waiting) = table.begin(&key("k", "a"), 0) else {
            panic!("a repeat in flight waits");
        };
        claim.finish("a".into(), "answer".into(), 0);
        assert_eq!(waiting.borrow_and_update().as_deref(), Some("answer"));

        let Begin::Fresh(claim) = table.begin(&key("j", "a"), 0) else {
            panic!("fresh");
        };
        let Begin::Wait(waiting) = table.begin(&key("j", "a"), 0) else {
            panic!("waits");
        };
        drop(claim);
        assert!(
            waiting.has_changed().is_err(),
            "the waiter learns the first failed"
        );
        assert!(matches!(table.begin(&key("j", "a"), 0), Begin::Fresh(_)));
        assert_eq!(table.len(), 1, "only the finished key is remembered");
    }
}
