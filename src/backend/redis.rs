//! The shared event flow for many nodes: one Redis stream.
//!
//! Publishing is `XADD` (Redis assigns the id, so ids are ordered
//! cluster-wide), capped near `FLOW_MAX_LEN` with `MAXLEN ~`. Every node runs
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

use super::BusError;
use crate::broadcaster::{Broadcaster, CountRecipients, Deliver, Preload};
use crate::domain::{Audience, Channel, EventId, EventName, Outgoing, Published, Stamped, UserId};

/// Entries the shared flow keeps (`XADD MAXLEN ~`), and the most a node
/// loads into its history at start.
const FLOW_MAX_LEN: usize = 10_000;
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
pub(crate) struct RedisBus {
    /// Reconnects by itself; a command while Redis is away fails fast.
    connection: ConnectionManager,
    /// The stream's key.
    key: String,
    broadcaster: Addr<Broadcaster>,
}

/// Follows the stream for one node. Owned by the task that runs it.
pub(crate) struct Reader {
    client: Client,
    key: String,
    /// The id of the last entry handed to the Broadcaster.
    last_id: String,
    /// Whether history has been loaded; until then resumes find nothing.
    preloaded: bool,
    broadcaster: Addr<Broadcaster>,
}

fn unreachable(error: redis::RedisError) -> BusError {
    log::warn!("redis: {error}");
    BusError::Unreachable(format!("Redis: {error}"))
}

/// The reader's Broadcaster has stopped, and with it the server: the reader
/// has nothing left to deliver to and ends.
#[derive(Debug)]
struct BroadcasterStopped;

/// Writes targets as a JSON array of strings, the form [`decode`] reads.
fn encode_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<String, BusError> {
    serde_json::to_string(&names.collect::<Vec<_>>()).map_err(|e| BusError::Encoding(e.to_string()))
}

/// Prepares the publishing side and the reader. Nothing is sent yet: a node
/// may start while Redis is away, serve streams, and catch up when it returns.
pub(crate) fn connect(
    url: &str,
    key: &str,
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
        preloaded: false,
        broadcaster: broadcaster.clone(),
    };
    let bus = RedisBus {
        connection,
        key: key.to_owned(),
        broadcaster,
    };
    Ok((bus, reader))
}

impl RedisBus {
    pub async fn publish(&self, events: Vec<Outgoing>) -> Result<Vec<Published>, BusError> {
        let mut pipe = redis::pipe();
        for event in &events {
            let command = pipe
                .cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(FLOW_MAX_LEN)
                .arg("*")
                .arg("event")
                .arg(event.name.as_str())
                .arg("data")
                .arg(&event.data);
            if let Audience::Targets { users, channels } = &event.audience {
                command
                    .arg("users")
                    .arg(encode_names(users.iter().map(UserId::as_str))?)
                    .arg("channels")
                    .arg(encode_names(channels.iter().map(Channel::as_str))?);
            }
        }
        let mut connection = self.connection.clone();
        let ids: Vec<String> =
            match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(&mut connection)).await {
                Ok(result) => result.map_err(unreachable)?,
                Err(_) => return Err(BusError::Unreachable("Redis did not answer in time".into())),
            };
        let audiences = events.into_iter().map(|event| event.audience).collect();
        // What this node would reach now; the events themselves arrive through the reader.
        let counts = self
            .broadcaster
            .send(CountRecipients { audiences })
            .await
            .map_err(|_| BusError::Stopped)?;
        Ok(ids
            .into_iter()
            .zip(counts)
            .map(|(id, recipients)| Published { id, recipients })
            .collect())
    }

    pub async fn healthy(&self) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unreachable(format!("Redis: {e}"))),
            Err(_) => Err(BusError::Unreachable("Redis did not answer in time".into())),
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
        // A Redis entry id starts with the millisecond it was added.
        published_at: id.epoch,
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

/// Why the reader stopped reading for now.
#[derive(Debug)]
enum Interruption {
    /// Redis failed; reconnect after a back-off.
    Redis(redis::RedisError),
    /// The Broadcaster has stopped; the reader ends.
    Stopped(BroadcasterStopped),
}

impl From<redis::RedisError> for Interruption {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(error)
    }
}

impl From<BroadcasterStopped> for Interruption {
    fn from(stopped: BroadcasterStopped) -> Self {
        Self::Stopped(stopped)
    }
}

impl Reader {
    /// Loads the newest `FLOW_MAX_LEN` entries into the Broadcaster's history
    /// and continues after the newest. Startup awaits this before accepting
    /// streams, so a resume on a fresh node finds what other nodes published.
    /// Failing is not fatal: [`Reader::run`] tries again.
    pub async fn preload(&mut self) -> Result<(), String> {
        let result = match self.open().await {
            Ok(mut connection) => self.preload_on(&mut connection).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Interruption::Redis(e)) => Err(e.to_string()),
            Err(Interruption::Stopped(_)) => Err("the server is stopping".into()),
        }
    }

    async fn preload_on(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), Interruption> {
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(FLOW_MAX_LEN)
            .query_async(connection)
            .await?;
        let events = decode_all(reply.ids.iter().rev());
        let newest = reply.ids.first().map(|entry| entry.id.clone());
        self.broadcaster
            .send(Preload { events })
            .await
            .map_err(|_| BroadcasterStopped)?;
        if let Some(newest) = newest {
            self.last_id = newest;
        }
        self.preloaded = true;
        log::info!(
            "redis: preloaded {} entries of history (continuing after {})",
            reply.ids.len(),
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

    /// Follows the stream until the Broadcaster stops (or the task is
    /// aborted), reconnecting with back-off whenever Redis fails.
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
                Interruption::Stopped(BroadcasterStopped) => {
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

    /// Hands every new entry to the Broadcaster, in order, until interrupted.
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
                let events = decode_all(stream.ids.iter());
                if !events.is_empty() {
                    self.broadcaster
                        .send(Deliver { events })
                        .await
                        .map_err(|_| BroadcasterStopped)?;
                }
                if let Some(last) = stream.ids.last() {
                    self.last_id = last.id.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;

    use actix::{Actor, Arbiter};

    use super::*;
    use crate::broadcaster::{Limits, RetentionLimits};
    use crate::metrics::Metrics;

    /// A bare `redis-server` on a free port, killed on drop (the integration
    /// tests have the full fixture; this one serves the reader's own tests).
    struct Server(Child, u16);

    impl Server {
        fn start() -> Option<Self> {
            if Command::new("redis-server")
                .arg("--version")
                .output()
                .is_err()
            {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "redis-server is not installed, and CI=true requires this test to run"
                );
                // Straight to stderr: the harness swallows a passing test's output.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: redis-server is not installed; the Redis reader test did not run"
                );
                return None;
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "redis-server listens");
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(Self(child, port))
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            // Already gone is fine: this only makes sure it is.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn broadcast(name: &str) -> Outgoing {
        Outgoing {
            name: EventName::parse(name).unwrap(),
            data: "null".into(),
            audience: Audience::Everyone,
        }
    }

    #[actix_web::test]
    async fn the_reader_ends_when_its_broadcaster_has_stopped() {
        let Some(server) = Server::start() else {
            return;
        };
        let arbiter = Arbiter::new();
        let limits = Limits {
            max_connections: 10,
            max_connections_per_user: 10,
            heartbeat_interval: Duration::from_secs(15),
            retention: RetentionLimits {
                per_audience: 10,
                ttl_ms: 60_000,
                max_bytes: 1 << 20,
            },
        };
        let broadcaster = Broadcaster::start_in_arbiter(&arbiter.handle(), |_| {
            Broadcaster::in_memory(limits, Arc::new(Metrics::default()))
        });
        let url = format!("redis://127.0.0.1:{}", server.1);
        let (bus, mut reader) = connect(&url, "herald-test", broadcaster.clone()).unwrap();
        bus.publish(vec![broadcast("before")]).await.unwrap();
        reader.preload().await.unwrap();

        arbiter.stop();
        let stopped = tokio::time::timeout(Duration::from_secs(10), async {
            while broadcaster.connected() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(stopped.is_ok(), "the Broadcaster's arbiter stops");
        // Written to Redis; counting recipients then finds the Broadcaster gone.
        assert_eq!(
            bus.publish(vec![broadcast("after")]).await,
            Err(BusError::Stopped)
        );

        let ended = tokio::time::timeout(Duration::from_secs(10), reader.run()).await;
        assert!(
            ended.is_ok(),
            "with nobody to deliver to, the reader stops instead of reconnecting forever"
        );
    }
}
