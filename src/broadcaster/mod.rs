//! The `Broadcaster` actor: the one owner of the [`Hub`] (every open stream,
//! the per-user and per-channel maps, history), and the timers that drive it
//! (heartbeat, token expiry, drain).
//!
//! It knows nothing of HTTP. Handlers speak to it only through the messages
//! below, one per intent, and each message is one call on the Hub: the actor
//! is the glue that serialises access and reads the clock.

mod hub;
mod outbox;
mod retention;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

pub(crate) use hub::{
    ClientId, ConnectError, Connected, HistoryEntry, HistoryPage, Hub, Limits, NewStream,
    RefreshError,
};
pub(crate) use outbox::{ClientStream, ConnectionSocket, Outbox};
pub(crate) use retention::{AudienceKey, RetentionLimits};

use crate::clock;
use crate::domain::{
    Audience, Channel, ChannelPattern, EventId, Outgoing, Published, Stamped, UserId,
};
use crate::metrics::{Metrics, Snapshot};
use crate::revocations::Revocation;
use crate::store::{Loaded, Store, StoreError, Writer};

/// Registers a stream, queueing `connected` and any replay before live events.
#[derive(Message)]
#[rtype(result = "Result<Connected, ConnectError>")]
pub(crate) struct Connect(pub NewStream);

/// Moves a stream's expiry to a fresh token's without closing it.
#[derive(Message)]
#[rtype(result = "Result<(), RefreshError>")]
pub(crate) struct Refresh {
    pub id: ClientId,
    pub user: UserId,
    /// The fresh token's `channels` claim.
    pub patterns: Vec<ChannelPattern>,
    pub expires_at: u64,
    pub valid_until: u64,
}

/// Ends every stream a revocation covers; with a durable store, answers once
/// the revocation is on disk. Answers how many streams were ended here.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub(crate) struct Revoke {
    pub revocation: Revocation,
    /// When it was made (Unix seconds).
    pub at: u64,
    /// Whether to record it in the durable store (not when it came from a
    /// shared flow, which keeps it itself).
    pub persist: bool,
}

/// A stream is gone. Idempotent.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Disconnect {
    pub id: ClientId,
}

/// Assigns ids to events and delivers them (this node's own event flow);
/// with a durable store, answers once they are on disk.
#[derive(Message)]
#[rtype(result = "Result<Vec<Published>, StoreError>")]
pub(crate) struct Publish {
    pub events: Vec<Outgoing>,
}

/// Delivers events whose ids were assigned elsewhere (by a shared event flow).
#[derive(Message)]
#[rtype(result = "Vec<Published>")]
pub(crate) struct Deliver {
    pub events: Vec<Stamped>,
}

/// Events the durable store has put on disk, in id order: deliver them.
#[derive(Message)]
#[rtype(result = "()")]
struct Committed {
    events: Vec<Stamped>,
}

/// Fills history with events that came before this node started, without
/// delivering them (a shared flow's retained events, oldest first), with what
/// each audience had already lost, and the id before which anything may have
/// expired unseen.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Preload {
    pub events: Vec<Stamped>,
    pub lost: Vec<(AudienceKey, EventId)>,
    pub horizon: EventId,
}

/// How many streams each audience would reach on this node now.
#[derive(Message)]
#[rtype(result = "Vec<usize>")]
pub(crate) struct CountRecipients {
    pub audiences: Vec<Audience>,
}

/// Reads a page of retained events for one audience.
#[derive(Message)]
#[rtype(result = "HistoryPage")]
pub(crate) struct GetHistory {
    pub user: UserId,
    pub channels: Vec<Channel>,
    pub before: Option<EventId>,
    pub limit: usize,
}

/// Asks for the current counts.
#[derive(Message)]
#[rtype(result = "Snapshot")]
pub(crate) struct GetSnapshot;

/// Starts ending every stream, spread over `window`; refuses new ones.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub window: Duration,
}

/// Sends `Disconnect` when a stream's body is dropped, whatever the reason.
pub(crate) struct Registration {
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
    let now = clock::unix_now_ms();
    let mut last = LAST_EPOCH.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_EPOCH.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

/// Answers `value` once the store has said (through `answer`) that what
/// was `queued` is on disk, or the store's error.
fn when_stored<T: 'static>(
    queued: Result<(), StoreError>,
    answer: tokio::sync::oneshot::Receiver<Result<(), StoreError>>,
    value: T,
) -> ResponseFuture<Result<T, StoreError>> {
    if let Err(error) = queued {
        return Box::pin(std::future::ready(Err(error)));
    }
    Box::pin(async move {
        match answer.await {
            Ok(Ok(())) => Ok(value),
            Ok(Err(error)) => Err(error),
            // The writer dropped the question: the server is stopping.
            Err(_) => Err(StoreError::Stopped),
        }
    })
}

/// How often streams whose token expired are ended, and events older than
/// the TTL dropped (the precision of both).
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Messages that may wait in the Broadcaster's mailbox before `send` waits.
const MAILBOX_CAPACITY: usize = 1 << 16;

/// How often a drain closes its next slice of streams.
const DRAIN_TICK: Duration = Duration::from_millis(50);

pub(crate) struct Broadcaster {
    /// Everything the actor serialises access to.
    hub: Hub,
    /// How often every stream gets a heartbeat.
    heartbeat_interval: Duration,
    /// The durable store's writer thread, when events are kept on disk.
    store: Option<Writer>,
}

impl Broadcaster {
    /// An actor keeping its history in memory only.
    pub fn in_memory(limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            heartbeat_interval: limits.heartbeat_interval,
            hub: Hub::new(limits, metrics, new_epoch()),
            store: None,
        }
    }

    /// Makes the actor and its address without starting it. With `store`,
    /// what it holds becomes the history and every publish is on disk before
    /// it is answered and delivered. Messages sent
    /// meanwhile wait in its mailbox, in order, until [`Pending::start`]
    /// runs it on the thread that calls that. Start-up uses this to run the
    /// Broadcaster on an HTTP worker's thread, so that a request served
    /// there reaches it without a switch between threads.
    pub fn prepare(
        limits: Limits,
        metrics: Arc<Metrics>,
        store: Option<(Store, Loaded)>,
    ) -> std::io::Result<(Addr<Self>, Pending)> {
        let (sender, mailbox) = actix::dev::channel::channel(MAILBOX_CAPACITY);
        let address = Addr::new(sender);
        let Some((store, loaded)) = store else {
            let actor = Self::in_memory(limits, metrics);
            return Ok((address, Pending { actor, mailbox }));
        };
        // Ids keep increasing across restarts.
        let epoch = loaded
            .events
            .last()
            .map_or(0, |newest| newest.id.epoch + 1)
            .max(new_epoch());
        let mut hub = Hub::new(limits.clone(), metrics, epoch);
        hub.restore(loaded, clock::unix_now_ms());
        let committed = address.clone();
        let writer = Writer::spawn(
            store,
            Box::new(move |events| committed.do_send(Committed { events })),
        )?;
        writer.delete(hub.take_evicted());
        let actor = Self {
            heartbeat_interval: limits.heartbeat_interval,
            hub,
            store: Some(writer),
        };
        Ok((address, Pending { actor, mailbox }))
    }

    /// Hands what retention dropped to the store to delete.
    fn forget_evicted(&mut self) {
        if let Some(store) = &self.store {
            store.delete(self.hub.take_evicted());
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

/// A Broadcaster made by [`Broadcaster::prepare`], not yet running.
pub struct Pending {
    actor: Broadcaster,
    mailbox: actix::dev::channel::AddressReceiver<Broadcaster>,
}

impl Pending {
    /// Runs the actor on the current thread's arbiter.
    pub fn start(self) {
        Context::with_receiver(self.mailbox).run(self.actor);
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Connect bursts (thousands of reconnects) must queue rather than push
        // back on handlers; `send` waits once this many are pending. (The
        // mailbox was made with this capacity; this keeps it if it was not.)
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
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
        self.hub.connect(msg.0, clock::unix_now())
    }
}

impl Handler<Refresh> for Broadcaster {
    type Result = Result<(), RefreshError>;

    fn handle(&mut self, msg: Refresh, _: &mut Context<Self>) -> Self::Result {
        self.hub.refresh(
            msg.id,
            &msg.user,
            |channel| msg.patterns.iter().any(|pattern| pattern.allows(channel)),
            msg.expires_at,
            msg.valid_until,
            clock::unix_now(),
        )
    }
}

impl Handler<Revoke> for Broadcaster {
    type Result = ResponseFuture<Result<usize, StoreError>>;

    fn handle(&mut self, msg: Revoke, _: &mut Context<Self>) -> Self::Result {
        let ended = self.hub.revoke(&msg.revocation);
        let Some(store) = self.store.as_ref().filter(|_| msg.persist) else {
            return Box::pin(std::future::ready(Ok(ended)));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        when_stored(
            store.revoke((msg.revocation.key(), msg.at), reply),
            answer,
            ended,
        )
    }
}

impl Handler<Disconnect> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.hub.disconnect(msg.id);
    }
}

impl Handler<Publish> for Broadcaster {
    type Result = ResponseFuture<Result<Vec<Published>, StoreError>>;

    /// Gives the events their ids. In memory, answers at once and the
    /// fan-out follows (see [`FlushFanOut`]): the publisher's reply would
    /// otherwise queue on its worker behind every stream it just woke. With a
    /// store, the events go to its writer, and they are answered and
    /// delivered (see [`Committed`]) once they are on disk.
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        let now = clock::unix_now_ms();
        let Some(store) = &self.store else {
            let published = self.hub.publish(msg.events, now);
            ctx.notify(FlushFanOut);
            return Box::pin(std::future::ready(Ok(published)));
        };
        let (stamped, published) = self.hub.stamp(msg.events, now);
        let (reply, answer) = tokio::sync::oneshot::channel();
        when_stored(store.append(stamped, reply), answer, published)
    }
}

impl Handler<Committed> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Committed, _: &mut Context<Self>) {
        self.hub.deliver(msg.events);
        self.forget_evicted();
    }
}

/// Delivers every published event still waiting, oldest first.
///
/// The Hub's queue, not the order in which actix runs notifications (which
/// is not FIFO), decides the order.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushFanOut;

impl Handler<FlushFanOut> for Broadcaster {
    type Result = ();

    fn handle(&mut self, _: FlushFanOut, _: &mut Context<Self>) {
        self.hub.flush();
    }
}

impl Handler<Deliver> for Broadcaster {
    type Result = MessageResult<Deliver>;

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.hub.deliver(msg.events))
    }
}

impl Handler<Preload> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Preload, _: &mut Context<Self>) {
        self.hub.preload(msg.events, msg.lost, msg.horizon);
    }
}

impl Handler<CountRecipients> for Broadcaster {
    type Result = MessageResult<CountRecipients>;

    fn handle(&mut self, msg: CountRecipients, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            msg.audiences
                .iter()
                .map(|audience| self.hub.count_recipients(audience))
                .collect(),
        )
    }
}

impl Handler<GetHistory> for Broadcaster {
    type Result = MessageResult<GetHistory>;

    fn handle(&mut self, msg: GetHistory, _: &mut Context<Self>) -> Self::Result {
        self.hub.purge(clock::unix_now_ms());
        MessageResult(
            self.hub
                .history(&msg.user, &msg.channels, msg.before, msg.limit),
        )
    }
}

impl Handler<GetSnapshot> for Broadcaster {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.hub.snapshot())
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
