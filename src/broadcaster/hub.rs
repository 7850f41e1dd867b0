//! The `Hub`: every open stream, the per-user and per-channel maps, token
//! expiries, history and the fan-out, as plain data with plain methods.
//!
//! The [`Broadcaster`](super::Broadcaster) actor owns one Hub and only turns
//! messages and timers into calls on it, so everything here is tested
//! directly, with the current time passed in.
//!
//! Delivery never blocks: it pushes shared bytes into each stream's bounded
//! [`Outbox`], whose slow-consumer policy ends a stream that fell too far
//! behind; the Hub then forgets that stream.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::directory::Directory;
use super::outbox::{Outbox, Push};
use super::retention::{Retained, Retention};
use crate::domain::{
    Audience, AudienceKey, Channel, ClientId, EventId, RefreshError, Stamped, TokenRefresh, UserId,
};
use crate::eventlog::{FlowItem, IdSource, Loaded, RetentionLimits};
use crate::metrics::Metrics;
use crate::revocations::Revocation;
use crate::sse;

/// The limits the Hub enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub heartbeat_interval: Duration,
    /// Seconds before a token's `exp` that its streams get `token-expiring`.
    pub expiry_warning_secs: u64,
    pub retention: RetentionLimits,
}

/// A stream asking to be registered.
pub struct NewStream {
    pub id: ClientId,
    pub user: UserId,
    pub channels: Vec<Channel>,
    /// The raw `Last-Event-ID`, if the client sent one.
    pub last_event_id: Option<String>,
    /// When the stream's token stops being valid (seconds since the Unix
    /// epoch, the clock leeway included): the stream gets `token-expired`
    /// and ends then.
    pub valid_until: u64,
    /// The token's `exp`: `token-expiring` names it, `TOKEN_EXPIRY_WARNING_SECS`
    /// before it.
    pub expires_at: u64,
    /// The token's `jti`, if any, so revoking that token ends the stream.
    pub token_id: Option<String>,
    /// The token's `iat`, if any (a user's revocation covers tokens issued
    /// before it).
    pub issued_at: Option<u64>,
    pub outbox: Arc<Outbox>,
}

/// Why a stream could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectError {
    TooManyConnections(String),
    /// Its token was revoked while the request was on its way.
    Revoked,
    ShuttingDown,
    /// A fault of the server's own, with its cause.
    Internal(String),
}

/// What the stream starts with.
#[derive(Debug, PartialEq, Eq)]
pub struct Connected {
    pub replayed: usize,
    pub recovered: bool,
}

/// The data of the `connected` event that opens every stream.
#[derive(Serialize)]
struct ConnectedEvent<'a> {
    client_id: uuid::Uuid,
    user: &'a str,
    channels: Vec<&'a str>,
    replayed: usize,
    recovered: bool,
}

/// One open stream as the Hub sees it.
struct Client {
    user: UserId,
    /// When the token stops being valid (see [`NewStream::valid_until`]).
    valid_until: u64,
    /// The token's `exp`, which the `token-expiring` warning names.
    expires_at: u64,
    /// When the `token-expiring` warning is due, until it has been sent.
    warn_at: Option<u64>,
    /// The `jti` of the token it holds now (the last refresh's), if any.
    token_id: Option<Box<str>>,
    channels: Box<[Channel]>,
    outbox: Arc<Outbox>,
    /// The fan-out pass that last delivered to this client, so a client that
    /// matches an event several ways receives it once.
    last_pass: u64,
    /// Registration order, so a drain ends the oldest streams first.
    opened: u64,
    /// A resume from an id this node had not delivered yet: live events up
    /// to it are not sent again (see [`Hub::not_yet_delivered`]).
    skip_through: Option<EventId>,
}

/// One retained event as `/api/history` lists it.
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub id: EventId,
    pub name: String,
    /// The event's data, as published (JSON text).
    pub data: String,
    /// Milliseconds since the Unix epoch.
    pub published_at: u64,
}

/// A page of `/api/history`, newest first.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    pub events: Vec<HistoryEntry>,
    /// Whether older events remain.
    pub more: bool,
}

/// Frames every stream may be sent, encoded once.
struct Frames {
    heartbeat: Bytes,
    token_expired: Bytes,
    revoked: Bytes,
}

pub struct Hub {
    /// Every registered stream; removed on disconnect, on a failed push, by
    /// expiry, or by the drain.
    clients: HashMap<ClientId, Client>,
    /// The streams of each user and of each channel, shared read-only with
    /// publishers and metrics; kept in step with `clients`.
    directory: Arc<Directory>,
    /// Every stream by when its token stops being valid, soonest first.
    expiries: BTreeSet<(u64, ClientId)>,
    /// Streams by when their `token-expiring` warning is due, soonest first;
    /// removed once sent.
    warnings: BTreeSet<(u64, ClientId)>,
    /// The retained events of every audience, for resume and `/api/history`.
    retention: Retention,
    /// Where ids come from: this node's own sequence, or a shared flow.
    ids: IdSource,
    /// In a shared flow, the newest entry this node has read (events and
    /// controls alike): ids past it may have been delivered elsewhere.
    position: Option<EventId>,
    /// Counter of fan-out passes, for once-only delivery of unions.
    pass: u64,
    /// Counter of registrations, for [`Client::opened`].
    opened: u64,
    limits: Limits,
    frames: Frames,
    metrics: Arc<Metrics>,
    /// Set by [`Hub::start_drain`]: no new streams; the remaining ones are being ended.
    draining: bool,
    /// Streams still to end, the next one last.
    drain_queue: Vec<ClientId>,
}

/// How far ahead of this node's clock a shared flow's id (its server's
/// clock in milliseconds) may be and still count as issued.
const SHARED_FLOW_CLOCK_SKEW_MS: u64 = 60_000;

impl Hub {
    /// An empty Hub. Its history begins at `ids`' floor: with its own
    /// sequence, the first id of this process; in a shared flow, nothing is
    /// from before it (ids are cluster-wide).
    pub fn new(
        limits: Limits,
        metrics: Arc<Metrics>,
        directory: Arc<Directory>,
        ids: IdSource,
    ) -> Self {
        let floor = match &ids {
            IdSource::Own(sequencer) => sequencer.floor(),
            IdSource::Shared => EventId::new(0, 0),
        };
        Self {
            clients: HashMap::new(),
            directory,
            expiries: BTreeSet::new(),
            warnings: BTreeSet::new(),
            retention: Retention::new(limits.retention, floor, false),
            ids,
            position: None,
            pass: 0,
            opened: 0,
            limits,
            frames: Frames {
                heartbeat: Bytes::from_static(sse::HEARTBEAT),
                token_expired: sse::event(
                    None,
                    "token-expired",
                    r#"{"reason":"the token has expired; reconnect with a new one"}"#,
                ),
                revoked: sse::event(
                    None,
                    "revoked",
                    r#"{"reason":"access was revoked; sign in again"}"#,
                ),
            },
            metrics,
            draining: false,
            drain_queue: Vec::new(),
        }
    }

    /// The index this Hub keeps, for readers on other threads.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Registers a stream, queueing `connected` and any replay before live
    /// events. Replay and registration happen in this one call, so no live
    /// event can fall between them or be sent twice.
    pub fn connect(&mut self, stream: NewStream, now: u64) -> Result<Connected, ConnectError> {
        if self.draining {
            return Err(ConnectError::ShuttingDown);
        }
        if self.clients.len() >= self.limits.max_connections {
            return Err(ConnectError::TooManyConnections(format!(
                "the server holds its maximum of {} streams",
                self.limits.max_connections
            )));
        }
        let user_streams = self
            .directory
            .read()
            .users
            .get(&stream.user)
            .map_or(0, Vec::len);
        if user_streams >= self.limits.max_connections_per_user {
            return Err(ConnectError::TooManyConnections(format!(
                "user already has {user_streams} streams open (MAX_CONNECTIONS_PER_USER)"
            )));
        }

        let (replay, recovered, skip_through) = match &stream.last_event_id {
            Some(last) => match self.not_yet_delivered(last, now.saturating_mul(1000)) {
                // Nothing after it is in history yet: it all arrives live.
                Some(id) => (Vec::new(), true, Some(id)),
                None => {
                    let replay = self.retention.replay(last, &stream.user, &stream.channels);
                    (replay.frames, replay.recovered, None)
                }
            },
            None => (Vec::new(), true, None),
        };
        let connected = ConnectedEvent {
            client_id: stream.id.0,
            user: stream.user.as_str(),
            channels: stream.channels.iter().map(Channel::as_str).collect(),
            replayed: replay.len(),
            recovered,
        };
        let connected = serde_json::to_string(&connected)
            .map_err(|e| ConnectError::Internal(format!("the connected event: {e}")))?;
        stream
            .outbox
            .push_unbounded(sse::event(None, "connected", &connected), false);
        let replayed = replay.len();
        for frame in replay {
            stream.outbox.push_unbounded(frame, true);
        }

        {
            let mut index = self.directory.write();
            index
                .users
                .entry(stream.user.clone())
                .or_default()
                .push(stream.id);
            for channel in &stream.channels {
                index
                    .channels
                    .entry(channel.clone())
                    .or_default()
                    .insert(stream.id);
            }
        }
        self.expiries.insert((stream.valid_until, stream.id));
        let warn_at = stream
            .expires_at
            .saturating_sub(self.limits.expiry_warning_secs);
        self.warnings.insert((warn_at, stream.id));
        self.opened += 1;
        self.clients.insert(
            stream.id,
            Client {
                user: stream.user,
                valid_until: stream.valid_until,
                expires_at: stream.expires_at,
                warn_at: Some(warn_at),
                token_id: stream.token_id.map(String::into_boxed_str),
                channels: stream.channels.into(),
                outbox: stream.outbox,
                last_pass: 0,
                opened: self.opened,
                skip_through,
            },
        );
        self.directory.set_connections(self.clients.len());
        self.metrics
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        // Opened inside the warning window: warned at once, after the replay.
        self.warn(now);
        Ok(Connected {
            replayed,
            recovered,
        })
    }

    /// Forgets a stream and ends its body after what is queued. Idempotent.
    pub fn disconnect(&mut self, id: ClientId) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        client.outbox.finish();
        self.expiries.remove(&(client.valid_until, id));
        if let Some(warn_at) = client.warn_at {
            self.warnings.remove(&(warn_at, id));
        }
        self.directory.set_connections(self.clients.len());
        let mut index = self.directory.write();
        if let Some(streams) = index.users.get_mut(&client.user) {
            streams.retain(|other| *other != id);
            if streams.is_empty() {
                index.users.remove(&client.user);
            }
        }
        for channel in client.channels.iter() {
            if let Some(subscribers) = index.channels.get_mut(channel) {
                subscribers.remove(&id);
                if subscribers.is_empty() {
                    index.channels.remove(channel);
                }
            }
        }
    }

    /// Carries out what the event log hands on, in its order: each event is
    /// fanned out and kept (skipping any not newer than the newest already
    /// seen: a shared flow repeating itself after a reconnect), each
    /// revocation ends the streams it covers. `position`: in a shared flow,
    /// the newest entry read. Answers each delivered event's id and how many
    /// streams it reached.
    pub fn deliver(
        &mut self,
        items: Vec<FlowItem>,
        position: Option<EventId>,
    ) -> Vec<(EventId, usize)> {
        let mut delivered = Vec::with_capacity(items.len());
        for item in items {
            match item {
                FlowItem::Event(stamped) => {
                    if self.retention.newest() >= Some(stamped.id) {
                        continue;
                    }
                    let id = stamped.id;
                    delivered.push((id, self.fan_out(stamped)));
                }
                FlowItem::Revoke(revocation) => {
                    self.revoke(&revocation);
                }
            }
        }
        self.position = self.position.max(position);
        self.history_changed();
        delivered
    }

    /// Copies retention's size into the directory's gauges, after anything
    /// that may have changed it.
    fn history_changed(&self) {
        self.directory
            .set_history(self.retention.len(), self.retention.bytes());
    }

    /// Fills history with events that came before this node started, without
    /// delivering them (a shared flow's retained events).
    pub fn preload(
        &mut self,
        events: Vec<Stamped>,
        lost: Vec<(AudienceKey, EventId)>,
        horizon: EventId,
        position: EventId,
    ) {
        self.retain_all(events);
        self.preload_losses(lost, horizon);
        self.position = self.position.max(Some(position));
        self.history_changed();
    }

    /// Keeps events that came before this node started, without delivering them.
    fn retain_all(&mut self, events: Vec<Stamped>) {
        for stamped in events {
            let frame = sse::event(
                Some(&stamped.id.to_string()),
                stamped.event.name.as_str(),
                &stamped.event.data,
            );
            self.retention.insert(
                stamped.id,
                stamped.event.audience,
                stamped.event.name,
                &stamped.event.data,
                frame,
                stamped.published_at,
            );
        }
    }

    /// What a shared flow says its audiences lost before this node started.
    fn preload_losses(&mut self, lost: Vec<(AudienceKey, EventId)>, horizon: EventId) {
        for (audience, id) in lost {
            self.retention.lost_by(audience, id);
        }
        self.retention.lost_up_to(horizon);
    }

    /// Loads what a durable store held at start: history begins at its
    /// `floor`, the retention rules apply again at `now_ms`, and from now on
    /// every dropped event is reported for the store to delete.
    pub fn restore(&mut self, loaded: Loaded, now_ms: u64) {
        let Loaded {
            events,
            floor,
            horizon,
            // Not the Hub's: they are checked where tokens are.
            revocations: _,
            // Not the Hub's either: the Notifier keeps them.
            idempotency: _,
            gaps,
        } = loaded;
        self.retention.rebase(floor, true);
        if let Some(horizon) = horizon {
            self.retention.lost_up_to(horizon);
        }
        for (after, before) in gaps {
            self.retention.lost_between(after, before);
        }
        self.retain_all(events);
        self.retention.purge(now_ms);
        self.history_changed();
    }

    /// Events dropped from retention since the last call, for a durable
    /// store to delete (empty without one).
    pub fn take_evicted(&mut self) -> Vec<EventId> {
        self.retention.take_evicted()
    }

    /// Drops retained events older than the TTL at `now_ms`.
    pub fn purge(&mut self, now_ms: u64) {
        self.retention.purge(now_ms);
        self.history_changed();
    }

    /// The newest `limit` retained events for `user` on `channels` (and
    /// everyone) older than `before`, newest first; and whether older remain.
    pub fn history(
        &self,
        user: &UserId,
        channels: &[Channel],
        before: Option<EventId>,
        limit: usize,
    ) -> HistoryPage {
        let keys = AudienceKey::of_stream(user, channels);
        let (events, more) = self.retention.page(&keys, before, limit);
        HistoryPage {
            events: events
                .into_iter()
                .map(|(id, event): (EventId, &Retained)| HistoryEntry {
                    id,
                    name: event.name.as_str().to_owned(),
                    data: event.data().to_owned(),
                    published_at: event.published_at,
                })
                .collect(),
            more,
        }
    }

    /// A resume id that is newer than anything delivered here but was
    /// issued: by this Hub, to an event still on its way to the streams; or,
    /// in a shared flow, by another node whose streams already had it while
    /// this node's reader had not read it yet (any id not ahead of the clock
    /// counts). A stream resuming from it gets those events live, and must
    /// not get the ones up to it twice. `None` for anything else, which the
    /// history answers (an id never issued is `recovered: false` there).
    ///
    /// In a shared flow only an id past what this node has read counts:
    /// one at or before it that history does not hold was lost (expired,
    /// trimmed, or from before the flow's history), and the history says so.
    fn not_yet_delivered(&self, last: &str, now_ms: u64) -> Option<EventId> {
        let last: EventId = last.parse().ok()?;
        if self.retention.newest().is_some_and(|newest| last <= newest) {
            return None;
        }
        let issued = match &self.ids {
            IdSource::Shared => {
                self.position.is_some_and(|position| last > position)
                    && last.epoch <= now_ms.saturating_add(SHARED_FLOW_CLOCK_SKEW_MS)
            }
            IdSource::Own(sequencer) => sequencer.issued(last),
        };
        issued.then_some(last)
    }

    /// Ends every stream whose token is no longer valid at `now`, after a
    /// `token-expired` event. Returns how many were ended.
    pub fn expire(&mut self, now: u64) -> usize {
        self.warn(now);
        let mut ended = 0;
        while let Some(&(valid_until, id)) = self.expiries.first() {
            if valid_until > now {
                break;
            }
            if let Some(client) = self.clients.get(&id) {
                client
                    .outbox
                    .push_unbounded(self.frames.token_expired.clone(), false);
                ended += 1;
            }
            // Removes the expiry too; a stale entry (stream already gone) is dropped here.
            self.disconnect(id);
            self.expiries.remove(&(valid_until, id));
        }
        ended
    }

    /// Sends `token-expiring` to every stream whose warning is due at `now`.
    fn warn(&mut self, now: u64) {
        while let Some(&(warn_at, id)) = self.warnings.first() {
            if warn_at > now {
                break;
            }
            self.warnings.remove(&(warn_at, id));
            if let Some(client) = self.clients.get_mut(&id) {
                client.warn_at = None;
                let data = format!(r#"{{"expires_at":{}}}"#, client.expires_at);
                client
                    .outbox
                    .push_unbounded(sse::event(None, "token-expiring", &data), false);
            }
        }
    }

    /// Moves a stream's expiry to a fresh token's (`expires_at` its `exp`,
    /// `valid_until` with the leeway), and the token it answers to (its
    /// `jti`), without closing it. The token must be the stream user's and
    /// allow every channel of the stream.
    pub fn refresh(&mut self, refresh: TokenRefresh, now: u64) -> Result<(), RefreshError> {
        let TokenRefresh {
            id,
            user,
            patterns,
            expires_at,
            valid_until,
            token_id,
        } = refresh;
        let allows = |channel: &Channel| patterns.iter().any(|pattern| pattern.allows(channel));
        let client = match self.clients.get_mut(&id) {
            // Another user's stream is reported as unknown: no probing.
            Some(client) if client.user == user => client,
            _ => return Err(RefreshError::NotFound),
        };
        if let Some(denied) = client.channels.iter().find(|channel| !allows(channel)) {
            return Err(RefreshError::ChannelNotAllowed(denied.clone()));
        }
        self.expiries.remove(&(client.valid_until, id));
        let pending = client.warn_at.take();
        if let Some(warn_at) = pending {
            self.warnings.remove(&(warn_at, id));
        }
        // A token that expires no later than the one already warned about
        // is not warned about again: a client handed the same token (or one
        // as short) would otherwise refresh in a loop.
        let warn = pending.is_some() || expires_at > client.expires_at;
        client.valid_until = valid_until;
        client.expires_at = expires_at;
        client.token_id = token_id.map(String::into_boxed_str);
        self.expiries.insert((valid_until, id));
        if warn {
            let warn_at = expires_at.saturating_sub(self.limits.expiry_warning_secs);
            client.warn_at = Some(warn_at);
            self.warnings.insert((warn_at, id));
            self.warn(now);
        }
        Ok(())
    }

    /// Ends every stream `revocation` covers, after a `revoked` event.
    /// Returns how many were ended.
    pub fn revoke(&mut self, revocation: &Revocation) -> usize {
        let covered: Vec<ClientId> = match revocation {
            Revocation::User(user) => self
                .directory
                .read()
                .users
                .get(user)
                .cloned()
                .unwrap_or_default(),
            Revocation::Token(_) => self
                .clients
                .iter()
                .filter(|(_, client)| revocation.covers(&client.user, client.token_id.as_deref()))
                .map(|(id, _)| *id)
                .collect(),
        };
        for id in &covered {
            if let Some(client) = self.clients.get(id) {
                client
                    .outbox
                    .push_unbounded(self.frames.revoked.clone(), false);
            }
            self.disconnect(*id);
        }
        covered.len()
    }

    /// Queues a heartbeat on every stream and forgets those that are gone.
    /// Returns how many were forgotten.
    pub fn heartbeat(&mut self) -> usize {
        let heartbeat = &self.frames.heartbeat;
        let gone: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, client)| client.outbox.push_heartbeat(heartbeat) != Push::Queued)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.disconnect(*id);
        }
        gone.len()
    }

    /// Refuses new streams from now on and lines up every open one to be
    /// ended, oldest first. Returns how many are lined up (0 if a drain had
    /// already started).
    pub fn start_drain(&mut self) -> usize {
        if self.draining {
            return 0;
        }
        self.draining = true;
        let mut queue: Vec<(u64, ClientId)> = self
            .clients
            .iter()
            .map(|(id, client)| (client.opened, *id))
            .collect();
        // Newest first in the vector, so `pop` yields the oldest.
        queue.sort_unstable_by(|a, b| b.cmp(a));
        self.drain_queue = queue.into_iter().map(|(_, id)| id).collect();
        self.drain_queue.len()
    }

    /// Ends up to `count` lined-up streams; true while some remain.
    pub fn drain(&mut self, count: usize) -> bool {
        for _ in 0..count {
            match self.drain_queue.pop() {
                Some(id) => self.disconnect(id),
                None => break,
            }
        }
        !self.drain_queue.is_empty()
    }

    /// The counts of what is open now.
    #[cfg(test)]
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        self.directory.snapshot(None)
    }

    /// Calls `visit` once for every stream `audience` reaches, even when a
    /// stream matches it several ways.
    fn each_recipient(&mut self, audience: &Audience, mut visit: impl FnMut(ClientId, &Client)) {
        self.pass += 1;
        let pass = self.pass;
        let Self {
            clients, directory, ..
        } = self;
        let index = directory.read();
        let mut once = |id: ClientId, client: &mut Client| {
            if client.last_pass != pass {
                client.last_pass = pass;
                visit(id, client);
            }
        };
        match audience {
            Audience::Everyone => {
                for (id, client) in clients.iter_mut() {
                    once(*id, client);
                }
            }
            Audience::Targets {
                users: target_users,
                channels: target_channels,
            } => {
                let targeted = target_users
                    .iter()
                    .filter_map(|user| index.users.get(user))
                    .flat_map(|streams| streams.iter())
                    .chain(
                        target_channels
                            .iter()
                            .filter_map(|channel| index.channels.get(channel))
                            .flat_map(|subscribers| subscribers.iter()),
                    );
                for id in targeted {
                    if let Some(client) = clients.get_mut(id) {
                        once(*id, client);
                    }
                }
            }
        }
    }

    /// Encodes one event once, queues it on every matching stream and keeps
    /// it in retention; returns how many streams took it.
    fn fan_out(&mut self, stamped: Stamped) -> usize {
        let Stamped {
            id,
            event,
            published_at,
        } = stamped;
        let frame = sse::event(Some(&id.to_string()), event.name.as_str(), &event.data);
        self.metrics
            .events_published
            .fetch_add(1, Ordering::Relaxed);
        let metrics = self.metrics.clone();
        let mut recipients = 0;
        let mut gone = Vec::new();
        self.each_recipient(&event.audience, |client_id, client| {
            if client.skip_through.is_some_and(|through| id <= through) {
                return; // it resumed from this event or a later one
            }
            match client.outbox.push_event(&frame) {
                Push::Queued => recipients += 1,
                Push::Closed => gone.push(client_id),
                Push::Overflowed => {
                    metrics
                        .slow_client_disconnects
                        .fetch_add(1, Ordering::Relaxed);
                    gone.push(client_id);
                }
            }
        });
        for client_id in gone {
            self.disconnect(client_id);
        }
        self.retention.insert(
            id,
            event.audience,
            event.name,
            &event.data,
            frame,
            published_at,
        );
        recipients
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventName, Outgoing, Published};
    use crate::eventlog::Sequencer;
    use crate::sse::{Frame, Parser};

    const EPOCH: u64 = 1_000;
    /// The wall clock the tests pretend it is, in milliseconds.
    const NOW: u64 = 1_700_000_000_000;

    fn limits() -> Limits {
        Limits {
            max_connections: 100,
            max_connections_per_user: 3,
            heartbeat_interval: Duration::from_secs(15),
            expiry_warning_secs: 60,
            retention: RetentionLimits {
                per_audience: 100,
                ttl_ms: 3_600_000,
                max_bytes: usize::MAX,
            },
        }
    }

    fn hub() -> Hub {
        hub_with(limits())
    }

    fn hub_with(limits: Limits) -> Hub {
        Hub::new(
            limits,
            Arc::new(Metrics::default()),
            Arc::new(Directory::default()),
            IdSource::Own(Arc::new(Sequencer::new(EPOCH))),
        )
    }

    /// A Hub fed by a shared flow.
    fn shared_hub() -> Hub {
        Hub::new(
            limits(),
            Arc::new(Metrics::default()),
            Arc::new(Directory::default()),
            IdSource::Shared,
        )
    }

    /// Gives events ids from the Hub's own sequence without delivering
    /// them: published and answered, not yet fanned out.
    fn stamp(hub: &Hub, events: Vec<Outgoing>) -> Vec<Stamped> {
        let IdSource::Own(sequencer) = &hub.ids else {
            panic!("a Hub with its own ids")
        };
        sequencer.stamp(events, |stamped| stamped)
    }

    fn deliver(hub: &mut Hub, stamped: Vec<Stamped>) -> Vec<Published> {
        hub.deliver(stamped.into_iter().map(FlowItem::Event).collect(), None)
            .into_iter()
            .map(|(id, recipients)| Published {
                id: id.to_string(),
                recipients,
            })
            .collect()
    }

    /// Stamps and delivers events; answers what each reached.
    fn publish(hub: &mut Hub, events: Vec<Outgoing>) -> Vec<Published> {
        let stamped = stamp(hub, events);
        deliver(hub, stamped)
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn channel(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    /// Opens a stream for `name` on `channels`; returns its id and queue.
    fn open(
        hub: &mut Hub,
        name: &str,
        channels: &[&str],
        last_event_id: Option<&str>,
    ) -> Result<(ClientId, Arc<Outbox>, Connected), ConnectError> {
        open_at(hub, name, channels, last_event_id, 0)
    }

    /// [`open`], at `now` (seconds).
    fn open_at(
        hub: &mut Hub,
        name: &str,
        channels: &[&str],
        last_event_id: Option<&str>,
        now: u64,
    ) -> Result<(ClientId, Arc<Outbox>, Connected), ConnectError> {
        let id = ClientId::random();
        let outbox = Outbox::new(10);
        let connected = hub.connect(
            NewStream {
                id,
                user: user(name),
                channels: channels.iter().map(|c| channel(c)).collect(),
                last_event_id: last_event_id.map(str::to_owned),
                valid_until: u64::MAX,
                expires_at: u64::MAX,
                token_id: None,
                issued_at: None,
                outbox: outbox.clone(),
            },
            now,
        )?;
        Ok((id, outbox, connected))
    }

    /// A fresh token for stream `id` of `name`, allowing `patterns`.
    fn fresh(
        id: ClientId,
        name: &str,
        patterns: &[&str],
        exp: u64,
        token_id: Option<&str>,
    ) -> TokenRefresh {
        TokenRefresh {
            id,
            user: user(name),
            patterns: patterns
                .iter()
                .map(|raw| crate::domain::ChannelPattern::parse(raw).unwrap())
                .collect(),
            expires_at: exp,
            valid_until: exp,
            token_id: token_id.map(str::to_owned),
        }
    }

    fn event(name: &str, audience: Audience) -> Outgoing {
        Outgoing {
            name: EventName::parse(name).unwrap(),
            data: format!(r#"{{"n":"{name}"}}"#),
            audience,
        }
    }

    fn to(users: &[&str], channels: &[&str]) -> Audience {
        Audience::Targets {
            users: users.iter().map(|u| user(u)).collect(),
            channels: channels.iter().map(|c| channel(c)).collect(),
        }
    }

    /// Everything queued on a stream so far, parsed as a client would.
    fn received(outbox: &Outbox) -> Vec<Frame> {
        let mut parser = Parser::new();
        outbox
            .take_queued()
            .iter()
            .flat_map(|chunk| parser.feed(chunk))
            .collect()
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|frame| frame.event.as_str()).collect()
    }

    #[test]
    fn an_event_reaching_a_stream_several_ways_is_queued_once() {
        let mut hub = hub();
        let (_, alice, _) = open(&mut hub, "alice", &["news", "sport"], None).unwrap();
        let (_, bob, _) = open(&mut hub, "bob", &["news"], None).unwrap();
        let (_, carol, _) = open(&mut hub, "carol", &["weather"], None).unwrap();
        for outbox in [&alice, &bob, &carol] {
            received(outbox); // the `connected` event
        }

        let published = publish(
            &mut hub,
            vec![event("update", to(&["alice", "alice"], &["news", "sport"]))],
        );
        assert_eq!(published[0].recipients, 2, "alice and bob, once each");

        assert_eq!(names(&received(&alice)), ["update"]);
        assert_eq!(names(&received(&bob)), ["update"]);
        assert!(received(&carol).is_empty());
    }

    #[test]
    fn streams_beyond_the_per_user_and_total_limits_are_refused() {
        let mut hub = hub_with(Limits {
            max_connections: 4,
            ..limits()
        });
        let first = open(&mut hub, "alice", &[], None).unwrap().0;
        open(&mut hub, "alice", &[], None).unwrap();
        open(&mut hub, "alice", &[], None).unwrap();
        assert!(matches!(
            open(&mut hub, "alice", &[], None),
            Err(ConnectError::TooManyConnections(_))
        ));
        hub.disconnect(first);
        open(&mut hub, "alice", &[], None).expect("a closed stream frees its place");

        open(&mut hub, "bob", &[], None).unwrap();
        assert!(matches!(
            open(&mut hub, "carol", &[], None),
            Err(ConnectError::TooManyConnections(_))
        ));
        assert_eq!(hub.snapshot().connections, 4);
    }

    #[test]
    fn a_stream_ends_when_its_token_stops_being_valid_and_not_before() {
        let mut hub = hub();
        let outbox = Outbox::new(10);
        // A token with exp = 100 admitted under a 5-second leeway is valid until 105.
        hub.connect(
            NewStream {
                id: ClientId::random(),
                user: user("alice"),
                channels: Vec::new(),
                last_event_id: None,
                valid_until: 105,
                expires_at: 100,
                token_id: None,
                issued_at: None,
                outbox: outbox.clone(),
            },
            0,
        )
        .unwrap();
        received(&outbox);

        assert_eq!(hub.expire(100), 0, "exp itself is inside the leeway");
        assert_eq!(hub.expire(104), 0);
        assert!(outbox.is_open());
        assert_eq!(hub.expire(105), 1);
        assert_eq!(
            names(&received(&outbox)),
            ["token-expiring", "token-expired"],
            "warned once, at exp minus the warning, then ended"
        );
        assert!(!outbox.is_open());
        assert_eq!(hub.snapshot().connections, 0);
        assert_eq!(hub.expire(200), 0, "an ended stream is not ended twice");
    }

    #[test]
    fn heartbeats_reach_open_streams_and_forget_closed_ones() {
        let mut hub = hub();
        let (_, open_one, _) = open(&mut hub, "alice", &["news"], None).unwrap();
        let (_, gone, _) = open(&mut hub, "bob", &["news"], None).unwrap();
        received(&open_one);
        gone.finish(); // as when the response body is dropped

        assert_eq!(hub.heartbeat(), 1);
        let snapshot = hub.snapshot();
        assert_eq!(snapshot.connections, 1);
        assert_eq!(snapshot.users, 1);
        assert_eq!(snapshot.channels.get("news"), Some(&1));
        assert_eq!(open_one.take_queued(), [Bytes::from_static(sse::HEARTBEAT)]);
    }

    #[test]
    fn a_drain_refuses_new_streams_and_ends_the_oldest_first() {
        let mut hub = hub();
        let streams: Vec<Arc<Outbox>> = ["a", "b", "c"]
            .iter()
            .map(|name| open(&mut hub, name, &[], None).unwrap().1)
            .collect();

        assert_eq!(hub.start_drain(), 3);
        assert_eq!(hub.start_drain(), 0, "a second drain does nothing");
        assert!(matches!(
            open(&mut hub, "d", &[], None),
            Err(ConnectError::ShuttingDown)
        ));
        assert!(hub.drain(1));
        let open_now: Vec<bool> = streams.iter().map(|o| o.is_open()).collect();
        assert_eq!(open_now, [false, true, true]);
        assert!(hub.drain(1));
        assert!(!hub.drain(5), "nothing remains");
        assert!(streams.iter().all(|o| !o.is_open()));
        assert_eq!(hub.snapshot().connections, 0);
    }

    #[test]
    fn a_resume_replays_what_was_missed_then_goes_live_without_gap_or_repeat() {
        let mut hub = hub();
        let first = publish(
            &mut hub,
            vec![
                event("one", Audience::Everyone),
                event("two", to(&["alice"], &[])),
                event("other", to(&["bob"], &[])),
                event("three", to(&[], &["news"])),
            ],
        );
        // Published and answered, not yet fanned out when the stream registers.
        let pending = stamp(&hub, vec![event("four", Audience::Everyone)]);

        let (_, outbox, connected) =
            open(&mut hub, "alice", &["news"], Some(&first[0].id)).unwrap();
        assert_eq!(
            connected,
            Connected {
                replayed: 2,
                recovered: true
            }
        );
        let pending_id = pending[0].id.to_string();
        deliver(&mut hub, pending);
        publish(&mut hub, vec![event("five", to(&["alice"], &[]))]);

        let frames = received(&outbox);
        assert_eq!(
            names(&frames),
            ["connected", "two", "three", "four", "five"]
        );
        let ids: Vec<EventId> = frames[1..]
            .iter()
            .map(|frame| frame.id.as_deref().unwrap().parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(frames[3].id.as_deref(), Some(pending_id.as_str()));
    }

    #[test]
    fn a_resume_from_an_answered_event_not_yet_fanned_out_gets_only_what_follows() {
        let mut hub = hub();
        publish(&mut hub, vec![event("zero", Audience::Everyone)]);
        let pending = stamp(
            &hub,
            vec![
                event("one", Audience::Everyone),
                event("two", Audience::Everyone),
                event("three", Audience::Everyone),
            ],
        );
        // The publisher's answer named "two" before anything was fanned out.
        let (_, outbox, connected) =
            open(&mut hub, "alice", &[], Some(&pending[1].id.to_string())).unwrap();
        assert_eq!(
            connected,
            Connected {
                replayed: 0,
                recovered: true
            }
        );
        deliver(&mut hub, pending);
        assert_eq!(names(&received(&outbox)), ["connected", "three"]);

        let next_id = EventId::new(EPOCH, 99).to_string();
        let (_, never, connected) = open(&mut hub, "bob", &[], Some(&next_id)).unwrap();
        assert!(!connected.recovered, "an id this Hub never gave out");
        publish(&mut hub, vec![event("four", Audience::Everyone)]);
        assert_eq!(names(&received(&never)), ["connected", "four"]);
    }

    #[test]
    fn a_resume_ahead_of_a_lagging_shared_flow_skips_what_the_client_already_has() {
        let mut hub = shared_hub();
        let ms = NOW;
        let at = |seq| Stamped {
            id: EventId::new(ms, seq),
            event: event("e", Audience::Everyone),
            published_at: ms,
        };
        hub.preload(vec![at(1)], Vec::new(), EventId::new(0, 0), at(1).id);
        // Another node already delivered 2 and 3; this one has not read them.
        let last = EventId::new(ms, 3).to_string();
        let (_, outbox, connected) =
            open_at(&mut hub, "alice", &[], Some(&last), ms / 1000).unwrap();
        assert_eq!(
            connected,
            Connected {
                replayed: 0,
                recovered: true
            }
        );
        deliver(&mut hub, vec![at(2), at(3), at(4)]);
        let ids: Vec<Option<String>> = received(&outbox).into_iter().map(|f| f.id).collect();
        assert_eq!(ids, [None, Some(EventId::new(ms, 4).to_string())]);

        // An id far ahead of the clock was never issued: history says so.
        let ahead = EventId::new(ms + 3_600_000, 0).to_string();
        let (_, outbox, connected) =
            open_at(&mut hub, "bob", &[], Some(&ahead), ms / 1000).unwrap();
        assert!(!connected.recovered);
        deliver(&mut hub, vec![at(5)]);
        assert_eq!(received(&outbox).len(), 2, "connected, then 5");
    }

    #[test]
    fn an_unknown_or_evicted_id_is_reported_as_not_recovered() {
        let mut hub = hub_with(Limits {
            retention: RetentionLimits {
                per_audience: 2,
                ..limits().retention
            },
            ..limits()
        });
        let published = publish(
            &mut hub,
            (0..4).map(|_| event("e", Audience::Everyone)).collect(),
        );

        let (_, _, evicted) = open(&mut hub, "a", &[], Some(&published[0].id)).unwrap();
        assert_eq!(
            evicted,
            Connected {
                replayed: 2,
                recovered: false
            }
        );
        let (_, _, garbage) = open(&mut hub, "b", &[], Some("not-an-id")).unwrap();
        assert_eq!(
            garbage,
            Connected {
                replayed: 0,
                recovered: false
            }
        );
        let earlier_process = EventId::new(EPOCH - 1, 99).to_string();
        let (_, _, earlier) = open(&mut hub, "c", &[], Some(&earlier_process)).unwrap();
        assert!(!earlier.recovered);
    }

    #[test]
    fn events_from_a_shared_flow_are_delivered_once_even_when_repeated() {
        let mut hub = hub();
        let (_, outbox, _) = open(&mut hub, "alice", &[], None).unwrap();
        received(&outbox);
        let stamped: Vec<Stamped> = (1..=3)
            .map(|seq| Stamped {
                id: EventId::new(7, seq),
                event: event("e", Audience::Everyone),
                published_at: NOW,
            })
            .collect();

        assert_eq!(deliver(&mut hub, stamped[..2].to_vec()).len(), 2);
        let again = deliver(&mut hub, stamped);
        assert_eq!(again.len(), 1, "only the new one");
        assert_eq!(again[0].id, "7-3");
        let ids: Vec<Option<String>> = received(&outbox).into_iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [Some("7-1".into()), Some("7-2".into()), Some("7-3".into())]
        );
    }

    /// Opens a stream for `alice` on `news` whose token expires at `exp`
    /// (with no leeway), at `now`.
    fn open_expiring(hub: &mut Hub, exp: u64, now: u64) -> (ClientId, Arc<Outbox>) {
        let id = ClientId::random();
        let outbox = Outbox::new(10);
        hub.connect(
            NewStream {
                id,
                user: user("alice"),
                channels: vec![channel("news")],
                last_event_id: None,
                valid_until: exp,
                expires_at: exp,
                token_id: Some(format!("jti-{exp}")),
                issued_at: None,
                outbox: outbox.clone(),
            },
            now,
        )
        .unwrap();
        (id, outbox)
    }

    #[test]
    fn a_stream_opened_inside_the_warning_window_is_warned_at_once_and_once() {
        let mut hub = hub();
        let (_, outbox) = open_expiring(&mut hub, 1_030, 1_000);
        let frames = received(&outbox);
        assert_eq!(names(&frames), ["connected", "token-expiring"]);
        assert_eq!(frames[1].data, r#"{"expires_at":1030}"#);
        hub.expire(1_010);
        assert!(received(&outbox).is_empty(), "one warning per token");
    }

    #[test]
    fn a_refresh_that_does_not_extend_the_token_is_not_warned_again() {
        let mut hub = hub();
        let (id, outbox) = open_expiring(&mut hub, 1_030, 1_000);
        assert_eq!(names(&received(&outbox)), ["connected", "token-expiring"]);
        hub.refresh(fresh(id, "alice", &["*"], 1_030, None), 1_001)
            .unwrap();
        assert!(received(&outbox).is_empty(), "the same expiry: no warning");
        hub.refresh(fresh(id, "alice", &["*"], 1_050, None), 1_002)
            .unwrap();
        assert_eq!(
            names(&received(&outbox)),
            ["token-expiring"],
            "a later expiry, inside the window: warned again"
        );
    }

    #[test]
    fn a_refreshed_stream_outlives_its_first_token_and_is_warned_again() {
        let mut hub = hub();
        let (id, outbox) = open_expiring(&mut hub, 1_100, 1_000);
        assert_eq!(names(&received(&outbox)), ["connected"]);
        hub.expire(1_050);
        assert_eq!(names(&received(&outbox)), ["token-expiring"]);

        assert_eq!(
            hub.refresh(fresh(id, "bob", &["news"], 2_000, None), 1_060),
            Err(RefreshError::NotFound),
            "another user's stream is unknown"
        );
        assert_eq!(
            hub.refresh(fresh(id, "alice", &[], 2_000, None), 1_060),
            Err(RefreshError::ChannelNotAllowed(channel("news")))
        );
        assert_eq!(
            hub.refresh(
                fresh(ClientId::random(), "alice", &["news"], 2_000, None),
                1_060
            ),
            Err(RefreshError::NotFound)
        );
        hub.refresh(fresh(id, "alice", &["news"], 2_000, None), 1_060)
            .unwrap();

        assert_eq!(hub.expire(1_500), 0, "the first token's exp has passed");
        assert!(outbox.is_open());
        assert!(received(&outbox).is_empty());
        hub.expire(1_940);
        assert_eq!(names(&received(&outbox)), ["token-expiring"]);
        assert_eq!(hub.expire(2_000), 1);
        assert_eq!(names(&received(&outbox)), ["token-expired"]);
    }

    #[test]
    fn revoking_a_user_or_a_token_ends_exactly_the_streams_it_covers() {
        let mut hub = hub();
        let (_, first) = open_expiring(&mut hub, 5_000, 0);
        let (_, second) = open_expiring(&mut hub, 6_000, 0);
        let (_, bob, _) = open(&mut hub, "bob", &[], None).unwrap();
        for outbox in [&first, &second, &bob] {
            received(outbox);
        }
        assert_eq!(hub.revoke(&Revocation::Token("jti-6000".into())), 1);
        assert_eq!(names(&received(&second)), ["revoked"]);
        assert!(!second.is_open() && first.is_open());
        assert_eq!(hub.revoke(&Revocation::User(user("alice"))), 1);
        assert_eq!(names(&received(&first)), ["revoked"]);
        assert!(bob.is_open());
        assert_eq!(hub.snapshot().connections, 1);
    }

    #[test]
    fn a_refreshed_stream_answers_to_the_token_it_holds_now() {
        let mut hub = hub();
        let (id, outbox) = open_expiring(&mut hub, 5_000, 0);
        received(&outbox);
        hub.refresh(fresh(id, "alice", &["*"], 6_000, Some("jti-b")), 10)
            .unwrap();
        assert_eq!(
            hub.revoke(&Revocation::Token("jti-5000".into())),
            0,
            "the token it was opened with is no longer the one it holds"
        );
        assert!(outbox.is_open());
        assert_eq!(hub.revoke(&Revocation::Token("jti-b".into())), 1);
        assert_eq!(names(&received(&outbox)), ["revoked"]);
        assert!(!outbox.is_open());
    }

    #[test]
    fn a_revocation_takes_effect_before_the_events_that_follow_it_in_the_flow() {
        let mut hub = shared_hub();
        let (_, alice, _) = open(&mut hub, "alice", &[], None).unwrap();
        let (_, bob, _) = open(&mut hub, "bob", &[], None).unwrap();
        received(&alice);
        received(&bob);
        let at = |seq| Stamped {
            id: EventId::new(NOW, seq),
            event: event("after", Audience::Everyone),
            published_at: NOW,
        };
        hub.deliver(
            vec![
                FlowItem::Revoke(Revocation::User(user("alice"))),
                FlowItem::Event(at(1)),
            ],
            Some(EventId::new(NOW, 1)),
        );
        assert_eq!(names(&received(&alice)), ["revoked"]);
        assert_eq!(names(&received(&bob)), ["after"]);
    }

    #[test]
    fn a_shared_flow_with_no_history_does_not_take_an_old_id_for_one_not_yet_read() {
        let mut hub = shared_hub();
        let now_s = NOW / 1000;
        // The flow held nothing this node could load: everything before the
        // moment it looked (its position) is unknown.
        let position = EventId::new(NOW, 0);
        hub.preload(Vec::new(), Vec::new(), position, position);
        let old = EventId::new(NOW - 30_000, 0).to_string();
        let (_, _, connected) = open_at(&mut hub, "alice", &[], Some(&old), now_s).unwrap();
        assert_eq!(
            connected,
            Connected {
                replayed: 0,
                recovered: false
            },
            "events after it may have been lost"
        );
        // Past the position: another node may have delivered it already.
        let ahead = EventId::new(NOW + 10, 0).to_string();
        let (_, outbox, connected) = open_at(&mut hub, "bob", &[], Some(&ahead), now_s).unwrap();
        assert!(connected.recovered);
        deliver(
            &mut hub,
            vec![Stamped {
                id: EventId::new(NOW + 10, 0),
                event: event("seen", Audience::Everyone),
                published_at: NOW,
            }],
        );
        assert_eq!(names(&received(&outbox)), ["connected"], "not sent twice");
    }
}
