//! The `Broadcaster` actor: the one owner of the [`Hub`] (every open stream,
//! the per-user and per-channel maps, the retained history it reads resumes
//! from), and the timers that drive it (heartbeat, token expiry, drain).
//!
//! It knows nothing of HTTP, and nothing of where events are stored: the
//! event log (`crate::eventlog`) gives events their ids, keeps them, and hands
//! them here in order ([`Deliver`]). Handlers speak to it only through the
//! messages below, one per intent, and each message is one call on the Hub:
//! the actor is the glue that serialises access and reads the clock. It runs
//! on an arbiter of its own, which the shutdown owns (`startup::Shutdown`).

mod directory;
mod hub;
mod outbox;
mod retention;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

pub(crate) use directory::Directory;
pub(crate) use hub::{ConnectError, Connected, HistoryEntry, HistoryPage, Hub, Limits, NewStream};
pub(crate) use outbox::{ClientStream, ConnectionSocket, Outbox};

use crate::clock;
use crate::domain::{Channel, ClientId, EventId, RefreshError, TokenRefresh, UserId};
use crate::eventlog::{Flow, IdSource, Loaded};
use crate::metrics::Metrics;
use crate::revocations::Revocations;

/// Registers a stream, queueing `connected` and any replay before live events.
#[derive(Message)]
#[rtype(result = "Result<Connected, ConnectError>")]
pub(crate) struct Connect(pub NewStream);

/// Moves a stream's expiry (and the token it answers to) to a fresh
/// token's, without closing it.
#[derive(Message)]
#[rtype(result = "Result<(), RefreshError>")]
pub(crate) struct Refresh(pub TokenRefresh);

/// A stream is gone. Idempotent.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Disconnect {
    pub id: ClientId,
}

/// What the event log hands on, in its order: events to fan out and keep,
/// revocations to carry out, or (a shared flow, at start) history to keep.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deliver(pub Flow);

/// Reads a page of retained events for one audience.
#[derive(Message)]
#[rtype(result = "HistoryPage")]
pub(crate) struct GetHistory {
    pub user: UserId,
    pub channels: Vec<Channel>,
    pub before: Option<EventId>,
    pub limit: usize,
}

/// Starts ending every stream, spread over `window`; refuses new ones.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub window: Duration,
}

/// How often streams whose token expired are ended, and events older than
/// the TTL dropped (the precision of both).
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Messages that may wait in the Broadcaster's mailbox before `send` waits:
/// a connect burst (thousands of reconnects) queues rather than pushing
/// back on handlers.
const MAILBOX_CAPACITY: usize = 1 << 16;

/// The receiving end of a Broadcaster's mailbox, made (with its address) by
/// [`mailbox`] before the actor exists, so that the event log's sink can
/// point at the address first.
pub(crate) struct Mailbox(actix::dev::channel::AddressReceiver<Broadcaster>);

/// A Broadcaster's address and mailbox; messages sent to the address wait,
/// in order, until [`Broadcaster::run_on`] runs the actor.
pub(crate) fn mailbox() -> (Addr<Broadcaster>, Mailbox) {
    let (sender, receiver) = actix::dev::channel::channel(MAILBOX_CAPACITY);
    (Addr::new(sender), Mailbox(receiver))
}

/// How often a drain closes its next slice of streams.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Hands ids that retention dropped to the durable store to delete.
pub(crate) type Evict = Box<dyn Fn(Vec<EventId>) + Send>;

pub(crate) struct Broadcaster {
    /// Everything the actor serialises access to.
    hub: Hub,
    /// How often every stream gets a heartbeat.
    heartbeat_interval: Duration,
    /// Where what retention drops goes (the embedded store deletes it);
    /// `None` when nothing keeps a copy.
    evict: Option<Evict>,
    /// Checked again when a stream registers: a revocation recorded while
    /// the request was on its way must still refuse it.
    revocations: Arc<Revocations>,
}

impl Broadcaster {
    /// A Broadcaster with an empty history (or, with `restored`, what the
    /// embedded store held at start), whose ids come from `ids`.
    pub fn new(
        limits: Limits,
        metrics: Arc<Metrics>,
        ids: IdSource,
        revocations: Arc<Revocations>,
        restored: Option<(Loaded, Evict)>,
    ) -> Self {
        let heartbeat_interval = limits.heartbeat_interval;
        let mut hub = Hub::new(limits, metrics, Arc::new(Directory::default()), ids);
        let evict = restored.map(|(loaded, evict)| {
            hub.restore(loaded, clock::unix_now_ms());
            evict(hub.take_evicted());
            evict
        });
        Self {
            hub,
            heartbeat_interval,
            evict,
            revocations,
        }
    }

    /// Runs the actor on `arbiter`'s thread, reading `mailbox`.
    pub fn run_on(self, arbiter: &ArbiterHandle, mailbox: Mailbox) {
        arbiter.spawn_fn(move || {
            Context::with_receiver(mailbox.0).run(self);
        });
    }

    /// The index of open streams, for readers on other threads.
    pub fn directory(&self) -> Arc<Directory> {
        self.hub.directory().clone()
    }

    /// Hands what retention dropped to the store to delete.
    fn forget_evicted(&mut self) {
        if let Some(evict) = &self.evict {
            let evicted = self.hub.take_evicted();
            if !evicted.is_empty() {
                evict(evicted);
            }
        }
    }

    fn drain_step(&mut self, ctx: &mut Context<Self>, per_tick: usize) {
        if self.hub.drain(per_tick) {
            ctx.run_later(DRAIN_TICK, move |actor, ctx| {
                actor.drain_step(ctx, per_tick)
            });
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.heartbeat_interval, |actor, _| {
            actor.hub.heartbeat();
        });
        ctx.run_interval(EXPIRY_TICK, |actor, _| {
            actor.hub.expire(clock::unix_now());
            actor.hub.purge(clock::unix_now_ms());
            actor.forget_evicted();
        });
    }
}

impl Handler<Connect> for Broadcaster {
    type Result = Result<Connected, ConnectError>;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        let now = clock::unix_now();
        let stream = &msg.0;
        // The request's token was checked before this message was sent; a
        // revocation recorded since then (it is recorded before its streams
        // are ended) must not let the stream in.
        if self.revocations.refuses(
            &stream.user,
            stream.issued_at,
            stream.token_id.as_deref(),
            now,
        ) {
            return Err(ConnectError::Revoked);
        }
        self.hub.connect(msg.0, now)
    }
}

impl Handler<Refresh> for Broadcaster {
    type Result = Result<(), RefreshError>;

    fn handle(&mut self, Refresh(refresh): Refresh, _: &mut Context<Self>) -> Self::Result {
        self.hub.refresh(refresh, clock::unix_now())
    }
}

impl Handler<Disconnect> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.hub.disconnect(msg.id);
    }
}

impl Handler<Deliver> for Broadcaster {
    type Result = ();

    fn handle(&mut self, Deliver(flow): Deliver, _: &mut Context<Self>) {
        match flow {
            Flow::Items { items, position } => {
                self.hub.deliver(items, position);
            }
            Flow::Preload {
                events,
                lost,
                horizon,
                position,
            } => self.hub.preload(events, lost, horizon, position),
        }
        self.forget_evicted();
    }
}

impl Handler<GetHistory> for Broadcaster {
    type Result = MessageResult<GetHistory>;

    fn handle(&mut self, msg: GetHistory, _: &mut Context<Self>) -> Self::Result {
        self.hub.purge(clock::unix_now_ms());
        self.forget_evicted();
        MessageResult(
            self.hub
                .history(&msg.user, &msg.channels, msg.before, msg.limit),
        )
    }
}

impl Handler<Drain> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        let streams = self.hub.start_drain();
        if streams == 0 {
            return;
        }
        let ticks = (msg.window.as_millis() / DRAIN_TICK.as_millis()).max(1) as usize;
        let per_tick = streams.div_ceil(ticks).max(1);
        log::info!(
            "draining {streams} streams over {:?} ({per_tick} every {DRAIN_TICK:?})",
            msg.window,
        );
        self.drain_step(ctx, per_tick);
    }
}
