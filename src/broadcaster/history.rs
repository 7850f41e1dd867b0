//! The retained recent events, for `Last-Event-ID` resume.
//!
//! Bounded twice: by count (`HISTORY_SIZE`) and by bytes (`HISTORY_MAX_BYTES`),
//! whichever is reached first evicts the oldest events. Frames are the same
//! shared bytes that were sent live, so history costs one copy of each event.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::domain::{Audience, EventId};

/// An event as history keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Retained {
    pub id: EventId,
    pub audience: Audience,
    /// The encoded SSE frame, shared with live delivery.
    pub frame: Bytes,
}

/// What resuming after an id finds.
pub(crate) struct Resume<'a> {
    /// Retained events after the id, oldest first (not yet filtered by audience).
    pub events: std::collections::vec_deque::Iter<'a, Retained>,
    /// True when the id itself is still retained, so nothing after it was evicted.
    pub recovered: bool,
}

/// A ring of the most recent events, in id order.
pub(crate) struct History {
    /// Oldest first; ids strictly increasing.
    events: VecDeque<Retained>,
    /// Most events kept; 0 keeps none.
    capacity: usize,
    /// Most frame bytes kept.
    max_bytes: usize,
    /// Frame bytes currently kept.
    bytes: usize,
}

impl History {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            max_bytes,
            bytes: 0,
        }
    }

    pub(crate) fn push(&mut self, event: Retained) {
        if self.capacity == 0 {
            return;
        }
        self.bytes += event.frame.len();
        self.events.push_back(event);
        while self.events.len() > self.capacity
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            if let Some(evicted) = self.events.pop_front() {
                self.bytes -= evicted.frame.len();
            }
        }
    }

    /// Everything retained after `last`, and whether `last` itself is retained.
    ///
    /// An id older than history (or from an earlier process, whose epoch is
    /// smaller) yields every retained event with `recovered: false`; an id
    /// newer than anything retained, or never issued, yields nothing.
    pub(crate) fn after(&self, last: EventId) -> Resume<'_> {
        let (start, recovered) = match self.events.binary_search_by_key(&last, |event| event.id) {
            Ok(index) => (index + 1, true),
            Err(index) => (index, false),
        };
        Resume {
            events: self.events.range(start..),
            recovered,
        }
    }

    /// Nothing retained after this position: used when the id cannot be parsed.
    pub(crate) fn nothing(&self) -> Resume<'_> {
        Resume {
            events: self.events.range(self.events.len()..),
            recovered: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retained(seq: u64, size: usize) -> Retained {
        Retained {
            id: EventId::new(7, seq),
            audience: Audience::Everyone,
            frame: Bytes::from(vec![b'x'; size]),
        }
    }

    fn ids(resume: Resume<'_>) -> (Vec<u64>, bool) {
        (resume.events.map(|e| e.id.seq).collect(), resume.recovered)
    }

    #[test]
    fn resume_finds_what_came_after_a_retained_id() {
        let mut history = History::new(3, usize::MAX);
        for seq in 1..=5 {
            history.push(retained(seq, 1));
        }
        assert_eq!(ids(history.after(EventId::new(7, 3))), (vec![4, 5], true));
        assert_eq!(ids(history.after(EventId::new(7, 5))), (vec![], true));
        assert_eq!(
            ids(history.after(EventId::new(7, 1))),
            (vec![3, 4, 5], false),
            "evicted id"
        );
        assert_eq!(
            ids(history.after(EventId::new(6, 99))),
            (vec![3, 4, 5], false),
            "earlier epoch"
        );
        assert_eq!(
            ids(history.after(EventId::new(8, 1))),
            (vec![], false),
            "never issued"
        );
    }

    #[test]
    fn bytes_bound_evicts_oldest_first() {
        let mut history = History::new(100, 250);
        for seq in 1..=5 {
            history.push(retained(seq, 100));
        }
        assert_eq!(history.len(), 2);
        assert_eq!(ids(history.after(EventId::new(7, 4))), (vec![5], true));
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut history = History::new(0, usize::MAX);
        history.push(retained(1, 1));
        assert_eq!(history.len(), 0);
        assert!(!history.after(EventId::new(7, 1)).recovered);
    }
}
