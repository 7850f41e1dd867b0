//! The `Directory`: which streams each user and each channel has, readable
//! from any thread.
//!
//! The Hub is its only writer (a stream registers or goes); everything else
//! only reads it: the fan-out, the count of recipients a publish answers
//! with, and `/api/stats` and `/metrics`. So a publish and a scrape never
//! wait for the Broadcaster's mailbox, whatever it is busy with; they take a
//! read lock that only a registration ever holds exclusively, for the time
//! of a few map updates.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::{Audience, Channel, ClientId, UserId};
use crate::metrics::Snapshot;

/// The maps the fan-out walks.
#[derive(Default)]
pub(crate) struct Index {
    /// The streams of each user; a user is removed with its last stream.
    pub users: HashMap<UserId, Vec<ClientId>>,
    /// The subscribers of each channel; a channel is removed with its last subscriber.
    pub channels: HashMap<Channel, HashSet<ClientId>>,
}

/// The index, and gauges that are read without any lock.
#[derive(Default)]
pub(crate) struct Directory {
    index: RwLock<Index>,
    /// Open streams (the Hub's count, copied on every change).
    connections: AtomicUsize,
    /// Events retention keeps, and the bytes charged for them (copied by the
    /// Hub after every change to retention).
    history_len: AtomicUsize,
    history_bytes: AtomicUsize,
}

impl Directory {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Index> {
        // The Hub never panics while holding it; a poisoned lock would still
        // hold consistent maps.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_connections(&self, connections: usize) {
        self.connections.store(connections, Ordering::Relaxed);
    }

    pub(crate) fn set_history(&self, len: usize, bytes: usize) {
        self.history_len.store(len, Ordering::Relaxed);
        self.history_bytes.store(bytes, Ordering::Relaxed);
    }

    /// How many streams `audience` reaches now, each once however many ways
    /// it matches.
    pub(crate) fn count(&self, audience: &Audience) -> usize {
        let Audience::Targets { users, channels } = audience else {
            return self.connections.load(Ordering::Relaxed);
        };
        let index = self.read();
        match (&users[..], &channels[..]) {
            ([user], []) => index.users.get(user).map_or(0, Vec::len),
            ([], [channel]) => index.channels.get(channel).map_or(0, HashSet::len),
            _ => {
                let mut union: HashSet<ClientId> = HashSet::new();
                for user in users.iter() {
                    union.extend(index.users.get(user).into_iter().flatten());
                }
                for channel in channels.iter() {
                    union.extend(index.channels.get(channel).into_iter().flatten());
                }
                union.len()
            }
        }
    }

    /// The counts of what is open now. `channels` lists at most
    /// `max_channels` channels, those with the most subscribers; `None`
    /// lists every one.
    pub(crate) fn snapshot(&self, max_channels: Option<usize>) -> Snapshot {
        let index = self.read();
        let mut busiest: Vec<(&Channel, usize)> = index
            .channels
            .iter()
            .map(|(channel, subscribers)| (channel, subscribers.len()))
            .collect();
        if let Some(max) = max_channels.filter(|max| *max < busiest.len()) {
            busiest.select_nth_unstable_by(max, |a, b| b.1.cmp(&a.1));
            busiest.truncate(max);
        }
        Snapshot {
            connections: self.connections.load(Ordering::Relaxed),
            users: index.users.len(),
            channel_count: index.channels.len(),
            channels: busiest
                .into_iter()
                .map(|(channel, count)| (channel.to_string(), count))
                .collect(),
            history_len: self.history_len.load(Ordering::Relaxed),
            history_bytes: self.history_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_a_union_and_a_snapshot_lists_the_busiest_channels() {
        let directory = Directory::default();
        let (a, b, c) = (ClientId::random(), ClientId::random(), ClientId::random());
        let alice = UserId::parse("alice").unwrap();
        let news = Channel::parse("news").unwrap();
        let quiet = Channel::parse("quiet").unwrap();
        {
            let mut index = directory.write();
            index.users.insert(alice.clone(), vec![a, b]);
            index.channels.insert(news.clone(), [a, c].into());
            index.channels.insert(quiet.clone(), [c].into());
        }
        directory.set_connections(3);
        let to = |users: Vec<UserId>, channels: Vec<Channel>| Audience::Targets {
            users: users.into(),
            channels: channels.into(),
        };
        assert_eq!(directory.count(&Audience::Everyone), 3);
        assert_eq!(directory.count(&to(vec![alice.clone()], vec![])), 2);
        assert_eq!(directory.count(&to(vec![], vec![news.clone()])), 2);
        assert_eq!(
            directory.count(&to(vec![alice], vec![news, quiet])),
            3,
            "a matches twice, counted once"
        );
        let snapshot = directory.snapshot(Some(1));
        assert_eq!(snapshot.channel_count, 2);
        assert_eq!(snapshot.channels.len(), 1);
        assert_eq!(snapshot.channels.get("news"), Some(&2));
        assert_eq!(directory.snapshot(None).channels.len(), 2);
    }
}
