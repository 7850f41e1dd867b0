//! What is retained for resume and for `/api/history`: each event once,
//! indexed under every audience it was published to.
//!
//! Each audience (a user, a channel, or everyone) keeps its newest
//! `HISTORY_PER_AUDIENCE` events, none older than `HISTORY_TTL_SECS`, and
//! `HISTORY_MAX_BYTES` bounds the whole (oldest first). An event leaves memory
//! when no audience holds it any more. A busy channel therefore never evicts a
//! quiet user's own events: they sit in the user's own index.
//!
//! `recovered` is decided per audience: each index remembers the newest id it
//! ever lost ([`AudienceLog::evicted_up_to`]), so a resume after id `X` is
//! recovered exactly when none of the stream's audiences lost anything newer
//! than `X`. When an index empties and is forgotten (to keep memory bounded),
//! what it had lost is folded into one [`Retention::horizon`] that applies to
//! every audience; an index empties only when its events aged out or the byte
//! bound took them, so that case is rare and errs on the side of "not
//! recovered".
//!
//! Frames are the same shared bytes that were sent live, so retention costs
//! one copy of each event whatever the number of its audiences.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::domain::{Audience, AudienceKey, Channel, EventId, EventName, UserId};
use crate::eventlog::RetentionLimits;

/// Bytes charged for one retained event besides its frame: its map entry.
const ENTRY_OVERHEAD: usize = 96;
/// Bytes charged for each audience index an event is listed in.
const INDEX_OVERHEAD: usize = 16;

/// An event as retention keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Retained {
    pub audience: Audience,
    /// The event's name, for `/api/history`.
    pub name: EventName,
    /// The encoded SSE frame, shared with live delivery.
    pub frame: Bytes,
    /// The data, when it spans several lines; otherwise it is the frame's
    /// last `data:` line and is read from there ([`Retained::data`]), so it
    /// is not kept twice.
    multiline_data: Option<Box<str>>,
    /// When it was published, in milliseconds since the Unix epoch.
    pub published_at: u64,
    /// How many audience indexes it was listed in when published.
    indexes: usize,
    /// How many of them still list it; it is dropped at zero.
    listed_in: usize,
}

impl Retained {
    /// The bytes charged for it besides the overheads: its frame, and its
    /// data when kept apart.
    fn charged_len(&self) -> usize {
        self.frame.len() + self.multiline_data.as_ref().map_or(0, |data| data.len())
    }

    /// The event's data as published.
    pub(crate) fn data(&self) -> &str {
        if let Some(data) = &self.multiline_data {
            return data;
        }
        // A one-line data is the frame's last line: `data: <data>\n\n`.
        let body = &self.frame[..self.frame.len().saturating_sub(2)];
        let start = body
            .windows(6)
            .rposition(|window| window == b"data: ")
            .map_or(body.len(), |at| at + 6);
        std::str::from_utf8(&body[start..]).unwrap_or_default()
    }
}

/// One audience's index.
#[derive(Debug, Default)]
struct AudienceLog {
    /// Retained ids, oldest first.
    ids: VecDeque<EventId>,
    /// The newest id this audience lost (to any bound), if any.
    evicted_up_to: Option<EventId>,
}

/// What resuming after an id finds for one stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Replay {
    /// The frames to send, oldest first, each once.
    pub frames: Vec<Bytes>,
    /// True when nothing the stream would have received after the id was evicted.
    pub recovered: bool,
}

/// The retained events of every audience.
pub(crate) struct Retention {
    /// Every retained event, in id order (which is publish order).
    events: BTreeMap<EventId, Retained>,
    /// Each audience's index; removed when it empties.
    audiences: HashMap<AudienceKey, AudienceLog>,
    limits: RetentionLimits,
    /// Bytes charged for what is retained (see `ENTRY_OVERHEAD`).
    bytes: usize,
    /// Ids older than this are unknown: issued before this history began
    /// (an earlier process with in-memory storage).
    floor: EventId,
    /// The newest id lost by an audience index that has since been
    /// forgotten: a resume from an older id counts as not recovered.
    horizon: Option<EventId>,
    /// Ranges of ids (ends excluded) a store does not hold though an earlier
    /// process may have issued them (see [`Retention::lost_between`]).
    gaps: Vec<(EventId, EventId)>,
    /// The newest id ever retained (or offered while nothing is kept).
    newest: Option<EventId>,
    /// Ids dropped since the last [`Retention::take_evicted`] (for a durable
    /// store to delete), when `track_evicted` is set.
    evicted: Vec<EventId>,
    track_evicted: bool,
}

impl Retention {
    /// Empty retention whose history begins at `floor`.
    pub(crate) fn new(limits: RetentionLimits, floor: EventId, track_evicted: bool) -> Self {
        Self {
            events: BTreeMap::new(),
            audiences: HashMap::new(),
            limits,
            bytes: 0,
            floor,
            horizon: None,
            gaps: Vec::new(),
            newest: None,
            evicted: Vec::new(),
            track_evicted,
        }
    }

    /// Keeps an event. Ids must arrive in increasing order; an id not newer
    /// than the newest already offered is ignored (returns false).
    pub(crate) fn insert(
        &mut self,
        id: EventId,
        audience: Audience,
        name: EventName,
        data: &str,
        frame: Bytes,
        published_at: u64,
    ) -> bool {
        if self.newest.is_some_and(|newest| id <= newest) {
            return false;
        }
        self.newest = Some(id);
        if self.limits.per_audience == 0 {
            // Nothing is kept: every event is lost to a resume from before it.
            self.horizon = Some(id);
            if self.track_evicted {
                self.evicted.push(id);
            }
            return true;
        }
        let keys = AudienceKey::of(&audience);
        let own_data = if data.contains(['\r', '\n']) {
            data.len()
        } else {
            0
        };
        self.bytes += Self::cost(frame.len() + own_data, keys.len());
        self.events.insert(
            id,
            Retained {
                audience,
                name,
                multiline_data: data.contains(['\r', '\n']).then(|| data.into()),
                frame,
                published_at,
                indexes: keys.len(),
                listed_in: keys.len(),
            },
        );
        for key in keys {
            let log = self.audiences.entry(key).or_default();
            log.ids.push_back(id);
            if log.ids.len() > self.limits.per_audience {
                if let Some(oldest) = log.ids.pop_front() {
                    log.evicted_up_to = log.evicted_up_to.max(Some(oldest));
                    Self::unlist(
                        &mut self.events,
                        &mut self.bytes,
                        &mut self.evicted,
                        self.track_evicted,
                        oldest,
                    );
                }
            }
        }
        while self.bytes > self.limits.max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
        true
    }

    /// Drops every event older than the TTL at `now_ms`.
    pub(crate) fn purge(&mut self, now_ms: u64) {
        let oldest_kept = now_ms.saturating_sub(self.limits.ttl_ms);
        while self
            .events
            .first_key_value()
            .is_some_and(|(_, event)| event.published_at < oldest_kept)
        {
            self.evict_oldest();
        }
    }

    /// What a stream of `user` on `channels` resuming after `last` (the raw
    /// `Last-Event-ID`) is sent, and whether that is everything it missed.
    pub(crate) fn replay(&self, last: &str, user: &UserId, channels: &[Channel]) -> Replay {
        let Ok(last) = last.parse::<EventId>() else {
            return Replay {
                frames: Vec::new(),
                recovered: false,
            };
        };
        if self.newest.is_none_or(|newest| last > newest) {
            // Never issued here: nothing is newer, and the client is told so.
            return Replay {
                frames: Vec::new(),
                recovered: false,
            };
        }
        let keys = AudienceKey::of_stream(user, channels);
        let known = last >= self.floor
            && !self
                .gaps
                .iter()
                .any(|&(after, before)| after < last && last < before);
        let lost_nothing = known
            && self.horizon.is_none_or(|horizon| horizon <= last)
            && keys.iter().all(|key| {
                self.audiences
                    .get(key)
                    .and_then(|log| log.evicted_up_to)
                    .is_none_or(|evicted| evicted <= last)
            });
        let mut ids: Vec<EventId> = Vec::new();
        for log in keys.iter().filter_map(|key| self.audiences.get(key)) {
            let from = log.ids.partition_point(|id| *id <= last);
            ids.extend(log.ids.range(from..));
        }
        ids.sort_unstable();
        ids.dedup();
        Replay {
            frames: ids
                .iter()
                .filter_map(|id| self.events.get(id))
                .map(|event| event.frame.clone())
                .collect(),
            recovered: lost_nothing,
        }
    }

    /// The newest `limit` events listed under `keys` that are older than
    /// `before` (or the newest of all), newest first, each once; and whether
    /// older ones remain.
    pub(crate) fn page(
        &self,
        keys: &[AudienceKey],
        before: Option<EventId>,
        limit: usize,
    ) -> (Vec<(EventId, &Retained)>, bool) {
        let mut ids: Vec<EventId> = Vec::new();
        for log in keys.iter().filter_map(|key| self.audiences.get(key)) {
            let to = before.map_or(log.ids.len(), |before| {
                log.ids.partition_point(|id| *id < before)
            });
            ids.extend(log.ids.range(to.saturating_sub(limit + 1)..to));
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let events = ids
            .into_iter()
            .filter_map(|id| self.events.get(&id).map(|event| (id, event)))
            .collect();
        (events, more)
    }

    /// Moves where history begins (a store's recorded floor, or the first
    /// event a shared flow still had) and whether drops are tracked.
    pub(crate) fn rebase(&mut self, floor: EventId, track_evicted: bool) {
        self.floor = floor;
        self.track_evicted = track_evicted;
    }

    /// Records that `audience` lost every event up to `lost` (what a shared
    /// store says it trimmed before this node started).
    pub(crate) fn lost_by(&mut self, audience: AudienceKey, lost: EventId) {
        let log = self.audiences.entry(audience).or_default();
        log.evicted_up_to = log.evicted_up_to.max(Some(lost));
    }

    /// Counts everything up to `lost` as lost by every audience (what a
    /// store deleted before a restart: it does not record who lost what).
    pub(crate) fn lost_up_to(&mut self, lost: EventId) {
        self.horizon = self.horizon.max(Some(lost));
    }

    /// Counts the ids after `after` and before `before` as lost by every
    /// audience: a store's gap, ids a process may have issued that a power
    /// loss took.
    pub(crate) fn lost_between(&mut self, after: EventId, before: EventId) {
        self.gaps.push((after, before));
    }

    /// The ids dropped since the last call (empty unless tracking).
    pub(crate) fn take_evicted(&mut self) -> Vec<EventId> {
        std::mem::take(&mut self.evicted)
    }

    /// The newest id ever offered.
    pub(crate) fn newest(&self) -> Option<EventId> {
        self.newest
    }

    /// Events retained.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Bytes charged for what is retained.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn cost(frame_len: usize, indexes: usize) -> usize {
        frame_len + ENTRY_OVERHEAD + indexes * INDEX_OVERHEAD
    }

    /// Drops the oldest retained event from every index that lists it.
    fn evict_oldest(&mut self) -> bool {
        let Some((id, event)) = self.events.pop_first() else {
            return false;
        };
        self.bytes -= Self::cost(event.charged_len(), event.indexes);
        if self.track_evicted {
            self.evicted.push(id);
        }
        for key in AudienceKey::of(&event.audience) {
            let Some(log) = self.audiences.get_mut(&key) else {
                continue;
            };
            // The oldest retained event is the oldest in each index that lists it.
            if log.ids.front() == Some(&id) {
                log.ids.pop_front();
                log.evicted_up_to = Some(id);
            }
            if log.ids.is_empty() {
                if let Some(lost) = log.evicted_up_to {
                    self.horizon = self.horizon.max(Some(lost));
                }
                self.audiences.remove(&key);
            }
        }
        true
    }

    /// One index no longer lists `id`; the event goes with its last listing.
    fn unlist(
        events: &mut BTreeMap<EventId, Retained>,
        bytes: &mut usize,
        evicted: &mut Vec<EventId>,
        track_evicted: bool,
        id: EventId,
    ) {
        let Some(event) = events.get_mut(&id) else {
            return;
        };
        event.listed_in -= 1;
        if event.listed_in == 0 {
            *bytes -= Self::cost(event.charged_len(), event.indexes);
            events.remove(&id);
            if track_evicted {
                evicted.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 5;

    fn limits(per_audience: usize) -> RetentionLimits {
        RetentionLimits {
            per_audience,
            ttl_ms: 60_000,
            max_bytes: usize::MAX,
        }
    }

    fn retention(limits: RetentionLimits) -> Retention {
        Retention::new(limits, EventId::new(EPOCH, 0), true)
    }

    fn id(seq: u64) -> String {
        EventId::new(EPOCH, seq).to_string()
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn to_user(name: &str) -> Audience {
        Audience::Targets {
            users: vec![user(name)].into(),
            channels: Vec::new().into(),
        }
    }

    fn to_channel(name: &str) -> Audience {
        Audience::Targets {
            users: Vec::new().into(),
            channels: vec![Channel::parse(name).unwrap()].into(),
        }
    }

    /// Inserts event `seq` (its frame is its sequence number) at `at` ms.
    fn put(retention: &mut Retention, seq: u64, audience: Audience, at: u64) {
        assert!(retention.insert(
            EventId::new(EPOCH, seq),
            audience,
            EventName::default(),
            "null",
            Bytes::from(seq.to_string()),
            at
        ));
    }

    fn seqs(replay: &Replay) -> Vec<u64> {
        replay
            .frames
            .iter()
            .map(|frame| std::str::from_utf8(frame).unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_busy_broadcast_flow_never_evicts_a_quiet_users_own_events() {
        let mut retention = retention(limits(3));
        put(&mut retention, 1, to_user("alice"), 0);
        for seq in 2..=20 {
            put(&mut retention, seq, Audience::Everyone, 0);
        }
        put(&mut retention, 21, to_user("alice"), 0);

        let alice = retention.replay(&id(0), &user("alice"), &[]);
        assert_eq!(seqs(&alice), [1, 18, 19, 20, 21]);
        assert!(!alice.recovered, "broadcasts 2 to 17 were evicted");

        let recent = retention.replay(&id(17), &user("alice"), &[]);
        assert_eq!(seqs(&recent), [18, 19, 20, 21]);
        assert!(recent.recovered, "nothing after 17 was evicted");
        assert_eq!(retention.len(), 5);
    }

    #[test]
    fn a_resume_from_inside_a_gap_a_power_loss_left_is_not_recovered() {
        let mut retention = retention(limits(100));
        for seq in 1..=3 {
            put(&mut retention, seq, Audience::Everyone, 0);
        }
        // The store held up to 3; the next process began at epoch EPOCH + 1.
        retention.lost_between(EventId::new(EPOCH, 3), EventId::new(EPOCH + 1, 0));
        assert!(retention.insert(
            EventId::new(EPOCH + 1, 1),
            Audience::Everyone,
            EventName::default(),
            "null",
            Bytes::from_static(b"101"),
            0
        ));
        let held = retention.replay(&id(3), &user("alice"), &[]);
        assert!(held.recovered, "3 was held, and nothing after it was lost");
        assert_eq!(seqs(&held), [101]);
        let lost = retention.replay(&id(5), &user("alice"), &[]);
        assert!(!lost.recovered, "4 and 5 may have been issued and lost");
        assert_eq!(seqs(&lost), [101], "what is held is still replayed");
    }

    #[test]
    fn an_event_for_several_audiences_is_kept_and_replayed_once() {
        let mut retention = retention(limits(10));
        let both = Audience::Targets {
            users: vec![user("alice")].into(),
            channels: vec![Channel::parse("news").unwrap()].into(),
        };
        put(&mut retention, 1, both, 0);
        put(&mut retention, 2, to_channel("news"), 0);
        put(&mut retention, 3, to_channel("sport"), 0);
        assert_eq!(retention.len(), 3);

        let news = [Channel::parse("news").unwrap()];
        let replay = retention.replay(&id(0), &user("alice"), &news);
        assert_eq!(seqs(&replay), [1, 2]);
        assert!(replay.recovered);
        let bob = retention.replay(&id(0), &user("bob"), &[]);
        assert!(bob.frames.is_empty() && bob.recovered);
    }

    #[test]
    fn a_multi_audience_event_leaves_memory_only_when_its_last_index_drops_it() {
        let mut retention = retention(limits(1));
        let both = Audience::Targets {
            users: vec![user("alice"), user("bob")].into(),
            channels: Vec::new().into(),
        };
        put(&mut retention, 1, both, 0);
        put(&mut retention, 2, to_user("alice"), 0);
        assert_eq!(retention.len(), 2, "bob's index still lists 1");
        assert!(retention.take_evicted().is_empty());
        put(&mut retention, 3, to_user("bob"), 0);
        assert_eq!(retention.len(), 2);
        assert_eq!(retention.take_evicted(), [EventId::new(EPOCH, 1)]);
        assert_eq!(
            retention.bytes(),
            2 * Retention::cost(1, 1),
            "the bytes of an evicted multi-audience event are all returned"
        );
    }

    #[test]
    fn events_older_than_the_ttl_are_dropped_and_resume_says_so() {
        let mut retention = retention(limits(10));
        put(&mut retention, 1, to_user("alice"), 1_000);
        put(&mut retention, 2, to_user("alice"), 50_000);
        retention.purge(70_000);

        let replay = retention.replay(&id(0), &user("alice"), &[]);
        assert_eq!(seqs(&replay), [2]);
        assert!(!replay.recovered);
        assert!(retention.replay(&id(1), &user("alice"), &[]).recovered);
        retention.purge(200_000);
        assert_eq!(retention.len(), 0);
        let replay = retention.replay(&id(1), &user("alice"), &[]);
        assert!(
            !replay.recovered,
            "a forgotten index still counts its losses"
        );
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_events_first() {
        let mut retention = retention(RetentionLimits {
            max_bytes: 3 * Retention::cost(1, 1),
            ..limits(10)
        });
        for seq in 1..=5 {
            put(&mut retention, seq, to_user("alice"), 0);
        }
        assert_eq!(retention.len(), 3);
        assert!(retention.bytes() <= 3 * Retention::cost(1, 1));
        let replay = retention.replay(&id(0), &user("alice"), &[]);
        assert_eq!(seqs(&replay), [3, 4, 5]);
        assert!(!replay.recovered);
        assert!(retention.replay(&id(2), &user("alice"), &[]).recovered);
    }

    #[test]
    fn unknown_earlier_and_future_ids_are_not_recovered() {
        let mut retention = retention(limits(10));
        put(&mut retention, 1, Audience::Everyone, 0);
        let earlier = EventId::new(EPOCH - 1, 9).to_string();
        let replay = retention.replay(&earlier, &user("a"), &[]);
        assert_eq!(seqs(&replay), [1], "everything retained is replayed");
        assert!(!replay.recovered);
        let future = retention.replay(&id(2), &user("a"), &[]);
        assert!(future.frames.is_empty() && !future.recovered);
        assert!(!retention.replay("nonsense", &user("a"), &[]).recovered);
        assert!(retention.replay(&id(1), &user("a"), &[]).recovered);
    }

    #[test]
    fn with_nothing_retained_only_a_resume_from_the_newest_id_is_recovered() {
        let mut retention = retention(limits(0));
        put(&mut retention, 1, Audience::Everyone, 0);
        put(&mut retention, 2, Audience::Everyone, 0);
        assert_eq!(retention.len(), 0);
        assert!(!retention.replay(&id(1), &user("a"), &[]).recovered);
        assert!(retention.replay(&id(2), &user("a"), &[]).recovered);
    }

    #[test]
    fn pages_run_newest_first_and_say_when_older_events_remain() {
        let mut retention = retention(limits(100));
        for seq in 1..=7 {
            let audience = if seq % 2 == 0 {
                Audience::Everyone
            } else {
                to_user("alice")
            };
            put(&mut retention, seq, audience, 0);
        }
        put(&mut retention, 8, to_user("bob"), 0);
        let keys = AudienceKey::of_stream(&user("alice"), &[]);
        let page_seqs = |events: &[(EventId, &Retained)]| -> Vec<u64> {
            events.iter().map(|(id, _)| id.seq).collect()
        };

        let (first, more) = retention.page(&keys, None, 3);
        assert_eq!(page_seqs(&first), [7, 6, 5]);
        assert!(more);
        let (second, more) = retention.page(&keys, Some(first[2].0), 3);
        assert_eq!(page_seqs(&second), [4, 3, 2]);
        assert!(more);
        let (last, more) = retention.page(&keys, Some(second[2].0), 3);
        assert_eq!(page_seqs(&last), [1]);
        assert!(!more);
    }

    #[test]
    fn ids_that_are_not_newer_are_ignored() {
        let mut retention = retention(limits(10));
        put(&mut retention, 2, Audience::Everyone, 0);
        assert!(!retention.insert(
            EventId::new(EPOCH, 1),
            Audience::Everyone,
            EventName::default(),
            "null",
            Bytes::new(),
            0
        ));
        assert_eq!(retention.len(), 1);
        assert_eq!(retention.newest(), Some(EventId::new(EPOCH, 2)));
    }
}
