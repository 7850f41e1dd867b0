//! The reader: follows the shared flow for one node and hands every entry,
//! in order, to the node's sink (its Broadcaster).
//!
//! At start it notes the flow's newest entry, reads every audience stream up
//! to it, and hands the merged events, what each audience lost and a horizon
//! to the sink as [`Flow::Preload`]. Then it follows the flow with
//! `XREAD BLOCK` from that entry. Events and revocations are handed on in
//! the flow's order, in one [`Flow::Items`] per read, so an event published
//! after a revocation never reaches a stream the revocation ends. Redis
//! errors are retried with back-off, continuing after the last entry handed
//! on, so nothing accepted is lost while Redis is away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client};

use super::codec::{decode_all, events_of, Entry};
use super::keys::{glob_escape, parse_audience_key, revoked_key, trimmed_key};
use super::script::{FORGET_EXPIRED_SCRIPT, READ_AUDIENCES_SCRIPT};
use super::{back_off, BLOCK, COMMAND_TIMEOUT, MIN_BACKOFF, RESPONSE_GRACE};
use crate::clock;
use crate::domain::{AudienceKey, EventId, Stamped};
use crate::eventlog::{Flow, Sink, SinkStopped};
use crate::revocations::{Revocation, Revocations};

/// Entries taken per `XREAD`.
const READ_COUNT: usize = 1000;
/// Audience streams read per script call at start.
const READ_CHUNK: usize = 100;
/// Keys `SCAN` looks at per call.
const SCAN_COUNT: usize = 1000;

/// Follows the stream for one node. Owned by the task that runs it.
pub(crate) struct Reader {
    pub(super) client: Client,
    pub(super) key: String,
    /// The id of the last entry handed on.
    pub(super) last_id: String,
    /// Whether history has been loaded; until then resumes find nothing.
    pub(super) preloaded: bool,
    /// `HISTORY_TTL_SECS` in ms: how far back an expired audience key may
    /// have taken events unseen.
    pub(super) ttl_ms: u64,
    /// This node's copy of the revocations in force, kept up to date.
    pub(super) revocations: Arc<Revocations>,
    pub(super) sink: Sink,
}

/// Why the reader stopped reading for now.
#[derive(Debug)]
enum Interruption {
    /// Redis failed; reconnect after a back-off.
    Redis(redis::RedisError),
    /// The sink has stopped; the reader ends.
    Stopped,
}

impl From<redis::RedisError> for Interruption {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(error)
    }
}

impl From<SinkStopped> for Interruption {
    fn from(_: SinkStopped) -> Self {
        Self::Stopped
    }
}

impl Reader {
    /// Loads the audiences' retained events into the sink's history and
    /// continues after the flow's newest entry. Startup awaits this before
    /// accepting streams, so a resume on a fresh node finds what other nodes
    /// published. Failing is not fatal: [`Reader::run`] tries again.
    pub async fn preload(&mut self) -> Result<(), String> {
        let result = match self.open().await {
            Ok(mut connection) => self.preload_on(&mut connection).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Interruption::Redis(e)) => Err(e.to_string()),
            Err(Interruption::Stopped) => Err("the server is stopping".into()),
        }
    }

    async fn preload_on(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), Interruption> {
        self.load_revocations(connection).await?;
        // Every event up to the flow's newest entry is in its audiences'
        // streams (one script wrote both); what comes after arrives by `follow`.
        let top: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(connection)
            .await?;
        let top = top.ids.first().map(|entry| entry.id.clone());
        // Redis's clock now: an entry added from here on has a later id.
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(connection).await?;
        let redis_now = EventId::new(seconds * 1000 + micros / 1000, 0);
        let mut audiences: Vec<(AudienceKey, String)> = Vec::new();
        let pattern = format!("{}:*", glob_escape(&self.key));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(connection)
                .await?;
            audiences.extend(keys.into_iter().filter_map(|key| {
                parse_audience_key(&self.key, &key).map(|audience| (audience, key))
            }));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: u64 = redis::Script::new(FORGET_EXPIRED_SCRIPT)
            .key(trimmed_key(&self.key))
            .invoke_async(connection)
            .await?;
        let mut events: BTreeMap<EventId, Stamped> = BTreeMap::new();
        let mut lost: Vec<(AudienceKey, EventId)> = Vec::new();
        if let Some(top) = &top {
            let script = redis::Script::new(READ_AUDIENCES_SCRIPT);
            for chunk in audiences.chunks(READ_CHUNK) {
                let mut invocation = script.prepare_invoke();
                invocation.arg(top).key(trimmed_key(&self.key));
                for (_, key) in chunk {
                    invocation.key(key);
                }
                let replies: Vec<(String, StreamRangeReply)> =
                    invocation.invoke_async(connection).await?;
                for ((audience, _), (deleted, range)) in chunk.iter().zip(replies) {
                    if let Ok(deleted) = deleted.parse::<EventId>() {
                        lost.push((audience.clone(), deleted));
                    }
                    for event in events_of(decode_all(range.ids.iter())) {
                        events.entry(event.id).or_insert(event);
                    }
                }
            }
        }
        let count = events.len();
        // Anything older than the TTL may have expired with its key unseen.
        let ttl_horizon = EventId::new(clock::unix_now_ms().saturating_sub(self.ttl_ms), 0);
        // The flow's position: its newest entry, or, when it is empty, the
        // moment it was looked at. An id before it that history does not
        // hold is unknown (an empty flow holds nothing from before).
        let (position, horizon) = match &top {
            Some(top) => (top.parse().unwrap_or(redis_now), ttl_horizon),
            None => (redis_now, ttl_horizon.max(redis_now)),
        };
        (self.sink)(Flow::Preload {
            events: events.into_values().collect(),
            lost,
            horizon,
            position,
        })?;
        if let Some(top) = top {
            self.last_id = top;
        }
        self.preloaded = true;
        log::info!(
            "redis: preloaded {count} retained events from {} audiences (continuing after {})",
            audiences.len(),
            self.last_id
        );
        Ok(())
    }

    async fn open(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(BLOCK + RESPONSE_GRACE));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Loads the revocations Redis keeps, forgetting those past their time.
    async fn load_revocations(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), Interruption> {
        let stored: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(revoked_key(&self.key))
            .query_async(connection)
            .await?;
        let oldest_kept = clock::unix_now().saturating_sub(self.revocations.ttl_secs());
        for (key, at) in stored {
            match Revocation::from_key(&key) {
                Some(revocation) if at >= oldest_kept => self.revocations.record(revocation, at),
                _ => {
                    let _: () = redis::cmd("HDEL")
                        .arg(revoked_key(&self.key))
                        .arg(&key)
                        .query_async(connection)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Follows the stream until the sink stops (or the task is aborted),
    /// reconnecting with back-off whenever Redis fails.
    pub async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let interruption = match self.open().await {
                Ok(mut connection) => {
                    if backoff > MIN_BACKOFF {
                        log::info!(
                            "redis: reader reconnected; continuing after {}",
                            self.last_id
                        );
                    }
                    self.catch_up_and_follow(&mut connection, &mut backoff)
                        .await
                }
                Err(e) => Interruption::Redis(e),
            };
            match interruption {
                Interruption::Stopped => {
                    log::info!("redis: the server is stopping; the reader ends");
                    return;
                }
                Interruption::Redis(e) => {
                    log::warn!("redis: reader interrupted ({e}); retrying in {backoff:?}");
                    back_off(&mut backoff).await;
                }
            }
        }
    }

    /// Preloads history if that has not happened yet, then follows the
    /// stream; returns only when interrupted.
    async fn catch_up_and_follow(
        &mut self,
        connection: &mut MultiplexedConnection,
        backoff: &mut Duration,
    ) -> Interruption {
        if !self.preloaded {
            if let Err(interruption) = self.preload_on(connection).await {
                return interruption;
            }
        }
        *backoff = MIN_BACKOFF;
        match self.follow(connection).await {
            Ok(never) => match never {},
            Err(interruption) => interruption,
        }
    }

    /// Hands every new entry on, in order, until interrupted.
    async fn follow(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<std::convert::Infallible, Interruption> {
        loop {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(&self.last_id)
                .query_async(connection)
                .await?;
            let Some(reply) = reply else { continue }; // BLOCK timed out: nothing new
            for stream in reply.keys {
                let Some(last) = stream.ids.last().map(|entry| entry.id.clone()) else {
                    continue;
                };
                let entries = decode_all(stream.ids.iter());
                // In force on this node before any stream it covers is ended,
                // so a stream registering meanwhile is refused too.
                for entry in &entries {
                    if let Entry::Revoke(revocation, at) = entry {
                        self.revocations.record(revocation.clone(), *at);
                    }
                }
                (self.sink)(Flow::Items {
                    items: entries.into_iter().map(Entry::into_item).collect(),
                    position: last.parse().ok(),
                })?;
                self.last_id = last;
            }
        }
    }
}
