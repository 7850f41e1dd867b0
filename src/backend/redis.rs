//! The shared event flow for many nodes: one Redis stream.
//!
//! Publishing is `XADD` (Redis assigns the id, so ids are ordered
//! cluster-wide), capped near `HISTORY_SIZE` with `MAXLEN ~`. Every node runs
//! one [`Reader`] that follows the stream with `XREAD BLOCK` from the last id
//! it delivered and hands each entry to its local Broadcaster, which encodes,
//! fans out and keeps it in history. Before a node accepts streams it preloads
//! its history from the stream, so `Last-Event-ID` resume works on any node,
//! whichever node issued the id.
//!
//! Redis going away: publishing answers 503; the reader retries with back-off
//! and continues from its last id, so every accepted event is delivered once
//! Redis is back (provided Redis kept it: run it with persistence).

use std::time::Duration;

use actix::Addr;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Value};

use crate::broadcaster::{
    Audience, Broadcaster, CountRecipients, Deliver, Outgoing, Preload, Published, Stamped,
};
use crate::domain::{Channel, EventId, EventName, UserId};
use crate::error::ApiError;

/// How long one `XREAD` waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(5);
/// A reply later than `BLOCK` plus this means the connection is dead, even if
/// the socket never said so.
const RESPONSE_GRACE: Duration = Duration::from_secs(3);
/// Entries taken per `XREAD`.
const READ_COUNT: usize = 1000;
/// Reconnect back-off bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long publishing and health checks wait for Redis.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The publishing side, shared by every handler.
#[derive(Clone)]
pub struct RedisBus {
    /// Reconnects by itself; a command while Redis is away fails fast.
    connection: ConnectionManager,
    /// The stream's key.
    key: String,
    /// `MAXLEN ~` for `XADD`.
    max_len: usize,
    broadcaster: Addr<Broadcaster>,
}

/// Follows the stream for one node. Owned by the task that runs it.
pub struct Reader {
    client: Client,
    key: String,
    /// The id of the last entry handed to the Broadcaster.
    last_id: String,
    /// Entries of history to load at start.
    history_size: usize,
    /// Whether history has been loaded; until then resumes find nothing.
    preloaded: bool,
    broadcaster: Addr<Broadcaster>,
}

fn unavailable(error: redis::RedisError) -> ApiError {
    log::warn!("redis: {error}");
    ApiError::Unavailable("the event store (Redis) is unreachable; try again".into())
}

/// Prepares the publishing side and the reader. Nothing is sent yet: a node
/// may start while Redis is away, serve streams, and catch up when it returns.
pub fn connect(
    url: &str,
    key: &str,
    history_size: usize,
    broadcaster: Addr<Broadcaster>,
) -> Result<(RedisBus, Reader), String> {
    let client = Client::open(url).map_err(|e| format!("REDIS_URL {url:?}: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(MAX_BACKOFF);
    let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| format!("REDIS_URL {url:?}: {e}"))?;
    let reader = Reader {
        client,
        key: key.to_owned(),
        last_id: "0-0".into(),
        history_size: history_size.max(1),
        preloaded: false,
        broadcaster: broadcaster.clone(),
    };
    let bus = RedisBus {
        connection,
        key: key.to_owned(),
        max_len: history_size.max(1),
        broadcaster,
    };
    Ok((bus, reader))
}

impl RedisBus {
    pub async fn publish(&self, events: Vec<Outgoing>) -> Result<Vec<Published>, ApiError> {
        let mut pipe = redis::pipe();
        for event in &events {
            let command = pipe
                .cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("event")
                .arg(event.name.as_str())
                .arg("data")
                .arg(&event.data);
            if let Audience::Targets { users, channels } = &event.audience {
                let users: Vec<&str> = users.iter().map(UserId::as_str).collect();
                let channels: Vec<&str> = channels.iter().map(Channel::as_str).collect();
                command
                    .arg("users")
                    .arg(serde_json::to_string(&users).unwrap_or_default())
                    .arg("channels")
                    .arg(serde_json::to_string(&channels).unwrap_or_default());
            }
        }
        let mut connection = self.connection.clone();
        let ids: Vec<String> =
            match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(&mut connection)).await {
                Ok(result) => result.map_err(unavailable)?,
                Err(_) => {
                    return Err(ApiError::Unavailable(
                        "the event store (Redis) did not answer in time".into(),
                    ))
                }
            };
        let audiences = events.into_iter().map(|event| event.audience).collect();
        // What this node would reach now; the events themselves arrive through the reader.
        let counts = self
            .broadcaster
            .send(CountRecipients { audiences })
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
        Ok(ids
            .into_iter()
            .zip(counts)
            .map(|(id, recipients)| Published { id, recipients })
            .collect())
    }

    pub async fn healthy(&self) -> Result<(), String> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("Redis is unreachable: {e}")),
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }
}

/// Waits `backoff`, then doubles it up to `MAX_BACKOFF`.
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// Reads a stream entry back into an event; `None` for an entry Herald did not write.
fn decode(entry: &StreamId) -> Option<Stamped> {
    let text = |field: &str| -> Option<String> {
        match entry.map.get(field)? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    };
    let id: EventId = entry.id.parse().ok()?;
    let name = EventName::parse(&text("event")?).ok()?;
    let data = text("data")?;
    serde_json::from_str::<serde::de::IgnoredAny>(&data).ok()?;
    let audience = match (text("users"), text("channels")) {
        (None, None) => Audience::Everyone,
        (users, channels) => {
            let users: Vec<String> =
                serde_json::from_str(&users.unwrap_or_else(|| "[]".into())).ok()?;
            let channels: Vec<String> =
                serde_json::from_str(&channels.unwrap_or_else(|| "[]".into())).ok()?;
            Audience::Targets {
                users: users
                    .iter()
                    .map(|u| UserId::parse(u))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?
                    .into(),
                channels: channels
                    .iter()
                    .map(|c| Channel::parse(c))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?
                    .into(),
            }
        }
    };
    Some(Stamped {
        id,
        event: Outgoing {
            name,
            data,
            audience,
        },
    })
}

fn decode_all<'a>(entries: impl Iterator<Item = &'a StreamId>) -> Vec<Stamped> {
    entries
        .filter_map(|entry| {
            let event = decode(entry);
            if event.is_none() {
                log::warn!(
                    "redis: skipping stream entry {} that Herald did not write",
                    entry.id
                );
            }
            event
        })
        .collect()
}

impl Reader {
    /// Loads the newest `HISTORY_SIZE` entries into the Broadcaster's history
    /// and continues after the newest. Startup awaits this before accepting
    /// streams, so a resume on a fresh node finds what other nodes published.
    pub async fn preload(&mut self) -> redis::RedisResult<()> {
        let mut connection = self.open().await?;
        self.preload_on(&mut connection).await
    }

    async fn preload_on(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(self.history_size)
            .query_async(connection)
            .await?;
        if let Some(newest) = reply.ids.first() {
            self.last_id = newest.id.clone();
        }
        let events = decode_all(reply.ids.iter().rev());
        log::info!(
            "redis: preloaded {} events of history (continuing after {})",
            events.len(),
            self.last_id
        );
        // If the Broadcaster is gone the server is stopping; nothing to load into.
        let _ = self.broadcaster.send(Preload { events }).await;
        self.preloaded = true;
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

    /// Follows the stream until the task is aborted.
    pub async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut connection = match self.open().await {
                Ok(connection) => connection,
                Err(e) => {
                    log::warn!("redis: reader cannot connect ({e}); retrying in {backoff:?}");
                    back_off(&mut backoff).await;
                    continue;
                }
            };
            if backoff > MIN_BACKOFF {
                log::info!(
                    "redis: reader reconnected; continuing after {}",
                    self.last_id
                );
            }
            if !self.preloaded {
                if let Err(e) = self.preload_on(&mut connection).await {
                    log::warn!("redis: cannot read history ({e}); retrying in {backoff:?}");
                    back_off(&mut backoff).await;
                    continue;
                }
            }
            backoff = MIN_BACKOFF;
            if let Err(e) = self.follow(&mut connection).await {
                log::warn!("redis: reader lost its connection ({e}); reconnecting");
                back_off(&mut backoff).await;
            }
        }
    }

    async fn follow(&mut self, connection: &mut MultiplexedConnection) -> redis::RedisResult<()> {
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
                if let Some(last) = stream.ids.last() {
                    self.last_id = last.id.clone();
                }
                let events = decode_all(stream.ids.iter());
                if !events.is_empty() && self.broadcaster.send(Deliver { events }).await.is_err() {
                    return Ok(()); // the Broadcaster has stopped: so has the server
                }
            }
        }
    }
}
