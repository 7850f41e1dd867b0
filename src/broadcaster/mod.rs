//! The `Broadcaster` actor: owner of every open stream, the per-user and
//! per-channel maps, the history, and the heartbeat.
//!
//! It knows nothing of HTTP. Handlers speak to it only through the messages
//! below, one per intent. It never blocks on a client: delivering is pushing
//! shared bytes into a bounded [`Outbox`], and a client that is too far behind
//! is ended by the outbox's policy rather than waited for.

mod history;
mod outbox;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;

pub use history::{Audience, Retained};
pub use outbox::{ClientStream, Outbox, Push};

use crate::domain::{Channel, EventId, EventName, UserId};
use crate::metrics::Metrics;
use crate::sse;

/// A stream's identity, reported to the client as `client_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub uuid::Uuid);

impl ClientId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

/// The limits the Broadcaster enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub heartbeat_interval: Duration,
    pub history_size: usize,
    pub history_max_bytes: usize,
}

/// One open stream as the Broadcaster sees it.
struct Client {
    user: UserId,
    /// The token's `exp` (seconds since the Unix epoch).
    expires_at: u64,
    channels: Box<[Channel]>,
    outbox: Arc<Outbox>,
    /// The fan-out pass that last delivered to this client, so a client that
    /// matches an event several ways receives it once.
    last_pass: u64,
}

/// An event to publish, before it has an id.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub name: EventName,
    /// Compact JSON text.
    pub data: String,
    pub audience: Audience,
}

/// An event with its id, as it is delivered.
#[derive(Clone, Debug)]
pub struct Stamped {
    pub id: EventId,
    pub event: Outgoing,
}

/// What publishing one event did on this node.
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    pub id: String,
    pub recipients: usize,
}

/// Counts of what is open, for stats and metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub connections: usize,
    pub users: usize,
    pub channels: BTreeMap<String, usize>,
    pub history_len: usize,
}

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    TooManyConnections(String),
    ShuttingDown,
}

/// What the stream starts with.
#[derive(Debug)]
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

/// Registers a stream, queueing `connected` and any replay before live events.
#[derive(Message)]
#[rtype(result = "Result<Connected, ConnectError>")]
pub struct Connect {
    pub id: ClientId,
    pub user: UserId,
    pub channels: Vec<Channel>,
    /// The raw `Last-Event-ID`, if the client sent one.
    pub last_event_id: Option<String>,
    /// The token's `exp`: the stream gets `token-expired` and ends then.
    pub expires_at: u64,
    pub outbox: Arc<Outbox>,
}

/// A stream is gone. Idempotent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub id: ClientId,
}

/// Assigns ids to events and delivers them (the in-memory event flow).
#[derive(Message)]
#[rtype(result = "Vec<Published>")]
pub struct Publish {
    pub events: Vec<Outgoing>,
}

/// Delivers events whose ids were assigned elsewhere (by a shared event flow).
#[derive(Message)]
#[rtype(result = "Vec<Published>")]
pub struct Deliver {
    pub events: Vec<Stamped>,
}

/// Fills history with events that came before this node started, without
/// delivering them (a shared flow's retained events).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Preload {
    pub events: Vec<Stamped>,
}

/// How many streams each audience would reach on this node now.
#[derive(Message)]
#[rtype(result = "Vec<usize>")]
pub struct CountRecipients {
    pub audiences: Vec<Audience>,
}

/// Asks for the current counts.
#[derive(Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

/// Starts ending every stream, spread over `window`; refuses new ones.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub window: Duration,
}

/// Sends `Disconnect` when a stream's body is dropped, whatever the reason.
pub struct Registration {
    id: ClientId,
    broadcaster: Addr<Broadcaster>,
}

impl Registration {
    pub fn new(id: ClientId, broadcaster: Addr<Broadcaster>) -> Self {
        Self { id, broadcaster }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // do_send only fails when the actor has stopped, and then the maps are gone too.
        self.broadcaster.do_send(Disconnect { id: self.id });
    }
}

/// Makes each in-memory process's epoch unique and increasing, even when two
/// start within the same millisecond (tests start several in one process).
static LAST_EPOCH: AtomicU64 = AtomicU64::new(0);

fn new_epoch() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut last = LAST_EPOCH.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_EPOCH.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

/// How often streams whose token expired are ended (the precision of expiry).
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Messages that may wait in the Broadcaster's mailbox before `send` waits.
const MAILBOX_CAPACITY: usize = 1 << 16;

/// How often a drain closes its next slice of streams.
const DRAIN_TICK: Duration = Duration::from_millis(50);

pub struct Broadcaster {
    /// Every registered stream; removed on `Disconnect`, on a failed push, or by drain.
    clients: HashMap<ClientId, Client>,
    /// The streams of each user; a user is removed with its last stream.
    users: HashMap<UserId, Vec<ClientId>>,
    /// The subscribers of each channel; a channel is removed with its last subscriber.
    channels: HashMap<Channel, HashSet<ClientId>>,
    /// Recent events for resume, bounded by `HISTORY_SIZE` and `HISTORY_MAX_BYTES`.
    history: history::History,
    /// This process's id epoch (in-memory event flow).
    epoch: u64,
    /// The next sequence number to assign (in-memory event flow).
    next_seq: u64,
    /// The newest id delivered or preloaded; a shared flow may repeat an
    /// event after a reconnect, and anything not newer is ignored.
    newest: Option<EventId>,
    /// Events published and answered but not yet fanned out, in id order.
    pending_fan_out: VecDeque<Stamped>,
    /// Every stream by its token's expiry, soonest first; one timer for all.
    expiries: BTreeSet<(u64, ClientId)>,
    /// The `token-expired` frame, encoded once.
    token_expired: Bytes,
    /// Counter of fan-out passes, for once-only delivery of unions.
    pass: u64,
    limits: Limits,
    /// The heartbeat frame, encoded once.
    heartbeat: Bytes,
    metrics: Arc<Metrics>,
    /// Set by `Drain`: no new streams; the remaining ones are being ended.
    draining: bool,
    /// Streams still to end, in the order the drain ends them.
    drain_queue: Vec<ClientId>,
}

impl Broadcaster {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            clients: HashMap::new(),
            users: HashMap::new(),
            channels: HashMap::new(),
            history: history::History::new(limits.history_size, limits.history_max_bytes),
            epoch: new_epoch(),
            next_seq: 1,
            newest: None,
            pending_fan_out: VecDeque::new(),
            expiries: BTreeSet::new(),
            token_expired: sse::event(
                None,
                "token-expired",
                r#"{"reason":"the token has expired; reconnect with a new one"}"#,
            ),
            pass: 0,
            limits,
            heartbeat: Bytes::from_static(sse::HEARTBEAT),
            metrics,
            draining: false,
            drain_queue: Vec::new(),
        }
    }

    fn remove(&mut self, id: ClientId) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        client.outbox.finish();
        self.expiries.remove(&(client.expires_at, id));
        if let Some(streams) = self.users.get_mut(&client.user) {
            streams.retain(|other| *other != id);
            if streams.is_empty() {
                self.users.remove(&client.user);
            }
        }
        for channel in client.channels.iter() {
            if let Some(subscribers) = self.channels.get_mut(channel) {
                subscribers.remove(&id);
                if subscribers.is_empty() {
                    self.channels.remove(channel);
                }
            }
        }
    }

    /// Calls `visit` once for every stream `audience` reaches, even when a
    /// stream matches it several ways.
    fn each_recipient(&mut self, audience: &Audience, mut visit: impl FnMut(ClientId, &Client)) {
        self.pass += 1;
        let pass = self.pass;
        let Self {
            clients,
            users,
            channels,
            ..
        } = self;
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
                    .filter_map(|user| users.get(user))
                    .flat_map(|streams| streams.iter())
                    .chain(
                        target_channels
                            .iter()
                            .filter_map(|channel| channels.get(channel))
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

    /// How many registered streams `audience` reaches, without touching their
    /// queues (a stream that has just closed is still counted until it is
    /// forgotten).
    fn count_recipients(&mut self, audience: &Audience) -> usize {
        match audience {
            Audience::Everyone => self.clients.len(),
            Audience::Targets { .. } => {
                let mut count = 0;
                self.each_recipient(audience, |_, _| count += 1);
                count
            }
        }
    }

    /// Queues one event on every matching stream; returns how many took it.
    fn deliver(&mut self, id: EventId, event: &Outgoing) -> usize {
        self.newest = Some(id);
        let frame = sse::event(Some(&id.to_string()), event.name.as_str(), &event.data);
        self.metrics
            .events_published
            .fetch_add(1, Ordering::Relaxed);
        let metrics = self.metrics.clone();
        let mut recipients = 0;
        let mut gone = Vec::new();
        self.each_recipient(&event.audience, |client_id, client| {
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
            self.remove(client_id);
        }
        self.history.push(Retained {
            id,
            audience: event.audience.clone(),
            frame,
        });
        recipients
    }

    /// Ends every stream whose token has expired, after a `token-expired` event.
    fn expire(&mut self) {
        let now = crate::auth::unix_now();
        while let Some(&(expires_at, id)) = self.expiries.first() {
            if expires_at > now {
                break;
            }
            if let Some(client) = self.clients.get(&id) {
                client
                    .outbox
                    .push_unbounded(self.token_expired.clone(), false);
            }
            // Removes the expiry too; a stale entry (already gone) is dropped here.
            self.remove(id);
            self.expiries.remove(&(expires_at, id));
        }
    }

    fn beat(&mut self) {
        let gone: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, client)| client.outbox.push_heartbeat(&self.heartbeat) != Push::Queued)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(id);
        }
    }

    fn drain_step(&mut self, ctx: &mut Context<Self>, per_tick: usize) {
        for _ in 0..per_tick {
            match self.drain_queue.pop() {
                Some(id) => self.remove(id),
                None => break,
            }
        }
        if !self.drain_queue.is_empty() {
            ctx.run_later(DRAIN_TICK, move |actor, ctx| {
                actor.drain_step(ctx, per_tick)
            });
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Connect bursts (thousands of reconnects) must queue rather than push
        // back on handlers; `send` waits once this many are pending.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(self.limits.heartbeat_interval, |actor, _| actor.beat());
        ctx.run_interval(EXPIRY_TICK, |actor, _| actor.expire());
    }
}

impl Handler<Connect> for Broadcaster {
    type Result = Result<Connected, ConnectError>;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Err(ConnectError::ShuttingDown);
        }
        if self.clients.len() >= self.limits.max_connections {
            return Err(ConnectError::TooManyConnections(format!(
                "the server holds its maximum of {} streams",
                self.limits.max_connections
            )));
        }
        let user_streams = self.users.get(&msg.user).map_or(0, Vec::len);
        if user_streams >= self.limits.max_connections_per_user {
            return Err(ConnectError::TooManyConnections(format!(
                "user already has {user_streams} streams open (MAX_CONNECTIONS_PER_USER)"
            )));
        }

        // Replay and registration happen in this one handler, so no live event
        // can fall between them or be sent twice.
        let resume = msg
            .last_event_id
            .as_deref()
            .map(|raw| match raw.parse::<EventId>() {
                Ok(id) => self.history.after(id),
                Err(()) => self.history.nothing(),
            });
        let (replay, recovered): (Vec<Bytes>, bool) = match resume {
            Some(resume) => (
                resume
                    .events
                    .filter(|event| event.audience.includes(&msg.user, &msg.channels))
                    .map(|event| event.frame.clone())
                    .collect(),
                resume.recovered,
            ),
            None => (Vec::new(), true),
        };
        let connected = ConnectedEvent {
            client_id: msg.id.0,
            user: msg.user.as_str(),
            channels: msg.channels.iter().map(Channel::as_str).collect(),
            replayed: replay.len(),
            recovered,
        };
        // Serialising plain fields cannot fail.
        let connected = serde_json::to_string(&connected).unwrap_or_default();
        msg.outbox
            .push_unbounded(sse::event(None, "connected", &connected), false);
        let replayed = replay.len();
        for frame in replay {
            msg.outbox.push_unbounded(frame, true);
        }

        self.users.entry(msg.user.clone()).or_default().push(msg.id);
        for channel in &msg.channels {
            self.channels
                .entry(channel.clone())
                .or_default()
                .insert(msg.id);
        }
        self.expiries.insert((msg.expires_at, msg.id));
        self.clients.insert(
            msg.id,
            Client {
                user: msg.user,
                expires_at: msg.expires_at,
                channels: msg.channels.into(),
                outbox: msg.outbox,
                last_pass: 0,
            },
        );
        self.metrics
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(Connected {
            replayed,
            recovered,
        })
    }
}

impl Handler<Disconnect> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.remove(msg.id);
    }
}

impl Handler<Publish> for Broadcaster {
    type Result = MessageResult<Publish>;

    /// Gives the events their ids and answers at once; the fan-out follows
    /// (see [`FlushFanOut`]). Answering first matters: the publisher's reply
    /// would otherwise queue on its worker behind every stream it just woke.
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        let mut published = Vec::with_capacity(msg.events.len());
        for event in msg.events {
            let id = EventId::new(self.epoch, self.next_seq);
            self.next_seq += 1;
            let recipients = self.count_recipients(&event.audience);
            published.push(Published {
                id: id.to_string(),
                recipients,
            });
            self.pending_fan_out.push_back(Stamped { id, event });
        }
        ctx.notify(FlushFanOut);
        MessageResult(published)
    }
}

/// Delivers every published event still waiting, oldest first.
///
/// The queue, not the order in which actix runs notifications (which is not
/// FIFO), decides the order; history is written with the fan-out, so a stream
/// registered in between receives each event once, live.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushFanOut;

impl Handler<FlushFanOut> for Broadcaster {
    type Result = ();

    fn handle(&mut self, _: FlushFanOut, _: &mut Context<Self>) {
        while let Some(stamped) = self.pending_fan_out.pop_front() {
            self.deliver(stamped.id, &stamped.event);
        }
    }
}

impl Handler<Deliver> for Broadcaster {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        let mut published = Vec::with_capacity(msg.events.len());
        for stamped in &msg.events {
            if self.newest.is_some_and(|newest| stamped.id <= newest) {
                continue; // already delivered before a reconnect of the flow
            }
            let recipients = self.deliver(stamped.id, &stamped.event);
            published.push(Published {
                id: stamped.id.to_string(),
                recipients,
            });
        }
        MessageResult(published)
    }
}

impl Handler<Preload> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Preload, _: &mut Context<Self>) {
        for stamped in msg.events {
            if self.newest.is_some_and(|newest| stamped.id <= newest) {
                continue;
            }
            self.newest = Some(stamped.id);
            let frame = sse::event(
                Some(&stamped.id.to_string()),
                stamped.event.name.as_str(),
                &stamped.event.data,
            );
            self.history.push(Retained {
                id: stamped.id,
                audience: stamped.event.audience,
                frame,
            });
        }
    }
}

impl Handler<CountRecipients> for Broadcaster {
    type Result = MessageResult<CountRecipients>;

    fn handle(&mut self, msg: CountRecipients, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            msg.audiences
                .iter()
                .map(|audience| self.count_recipients(audience))
                .collect(),
        )
    }
}

impl Handler<GetSnapshot> for Broadcaster {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Snapshot {
            connections: self.clients.len(),
            users: self.users.len(),
            channels: self
                .channels
                .iter()
                .map(|(name, subs)| (name.to_string(), subs.len()))
                .collect(),
            history_len: self.history.len(),
        })
    }
}

impl Handler<Drain> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.drain_queue = self.clients.keys().copied().collect();
        let ticks = (msg.window.as_millis() / DRAIN_TICK.as_millis()).max(1) as usize;
        let per_tick = self.drain_queue.len().div_ceil(ticks).max(1);
        log::info!(
            "draining {} streams over {:?} ({per_tick} every {:?})",
            self.drain_queue.len(),
            msg.window,
            DRAIN_TICK
        );
        self.drain_step(ctx, per_tick);
    }
}
