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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Value};

use super::BusError;

use super::RefreshFailure;
use crate::broadcaster::{
    AudienceKey, Broadcaster, ClientId, CountRecipients, Deliver, Preload, Refresh, RefreshError,
    RetentionLimits, Revoke,
};
use crate::clock;
use crate::domain::{
    Audience, Channel, ChannelPattern, EventId, EventName, Outgoing, Published, Stamped, UserId,
};
use crate::revocations::{Revocation, Revocations};

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
    /// Kept per audience stream, as in every node's memory.
    retention: RetentionLimits,
    broadcaster: Addr<Broadcaster>,
    /// For a connection of its own when a command blocks (waiting for
    /// another node's answer).
    client: Client,
}

/// Follows the stream for one node. Owned by the task that runs it.
pub(crate) struct Reader {
    client: Client,
    key: String,
    /// The id of the last entry handed to the Broadcaster.
    last_id: String,
    /// Whether history has been loaded; until then resumes find nothing.
    preloaded: bool,
    /// `HISTORY_TTL_SECS` in ms: how far back an expired audience key may
    /// have taken events unseen.
    ttl_ms: u64,
    /// This node's copy of the revocations in force, kept up to date.
    revocations: Arc<Revocations>,
    broadcaster: Addr<Broadcaster>,
}

fn unreachable(error: redis::RedisError) -> BusError {
    log::warn!("redis: {error}");
    BusError::Unreachable(format!("Redis: {error}"))
}

/// Runs a publishing-side command, failing as unreachable if Redis errs or
/// takes longer than `COMMAND_TIMEOUT`.
async fn in_time<T>(
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(result) => result.map_err(unreachable),
        Err(_) => Err(BusError::Unreachable("Redis did not answer in time".into())),
    }
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
    retention: RetentionLimits,
    revocations: Arc<Revocations>,
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
        ttl_ms: retention.ttl_ms,
        revocations,
        broadcaster: broadcaster.clone(),
    };
    let bus = RedisBus {
        connection,
        key: key.to_owned(),
        retention,
        broadcaster,
        client: reader.client.clone(),
    };
    Ok((bus, reader))
}

/// How long a refresh waits for the node that holds the stream to answer.
const REFRESH_WAIT: Duration = Duration::from_secs(1);
/// How long an unread answer to a refresh stays in Redis.
const REPLY_TTL_SECS: u64 = 10;

/// Reads, for each audience stream in KEYS[2..], the newest id it trimmed
/// (from the hash KEYS[1]; `''` when none) and its entries up to ARGV[1].
const READ_AUDIENCES_SCRIPT: &str = r"
local out = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local trimmed = redis.call('HGET', KEYS[1], key)
  if not trimmed then trimmed = '' end
  out[i - 1] = {trimmed, redis.call('XRANGE', key, '-', ARGV[1])}
end
return out
";

/// Forgets the trimmed ids of audience streams that have expired (all they
/// held was older than the TTL, which a starting node's horizon covers), so
/// the hash stays as small as the set of live audiences.
const FORGET_EXPIRED_SCRIPT: &str = r"
local forgotten = 0
for _, key in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', key) == 0 then
    redis.call('HDEL', KEYS[1], key)
    forgotten = forgotten + 1
  end
end
return forgotten
";

/// The hash of revocations (`Revocation::key` → when) under `flow`.
fn revoked_key(flow: &str) -> String {
    format!("{flow}:revoked")
}

/// The hash of the newest id each audience stream under `flow` trimmed.
fn trimmed_key(flow: &str) -> String {
    format!("{flow}:trimmed")
}
/// Audience streams read per script call at start.
const READ_CHUNK: usize = 100;
/// Keys `SCAN` looks at per call.
const SCAN_COUNT: usize = 1000;

/// Appends a batch of events atomically: each to the shared flow (Redis
/// assigns its id there) and, under the same id, to the stream of each of its
/// audiences, which keeps that audience's retention: its newest
/// `per_audience` entries, none older than the TTL, and the key itself
/// expires a TTL after its last event.
///
/// What each audience stream trims is recorded in one hash (audience key →
/// newest id trimmed), since Redis itself keeps no record of trimmed ids;
/// a node that starts reads it to tell `recovered` exactly.
///
/// KEYS: the flow, the trimmed-ids hash, then every audience stream the batch
/// names. ARGV: flow length, per-audience count (0: no audience streams),
/// oldest id kept, TTL in ms, then per event: name, data, users, channels
/// (empty strings for a broadcast), its number of audiences, and their
/// indexes into KEYS.
const PUBLISH_SCRIPT: &str = r"
local flow_len, per_audience, min_id, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local ids = {}
local at = 5
while at <= #ARGV do
  local fields = {'event', ARGV[at], 'data', ARGV[at + 1]}
  if ARGV[at + 2] ~= '' or ARGV[at + 3] ~= '' then
    table.insert(fields, 'users'); table.insert(fields, ARGV[at + 2])
    table.insert(fields, 'channels'); table.insert(fields, ARGV[at + 3])
  end
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', flow_len, '*', unpack(fields))
  local audiences = tonumber(ARGV[at + 4])
  for i = 1, audiences do
    if per_audience > 0 then
      local key = KEYS[tonumber(ARGV[at + 4 + i])]
      local excess = redis.call('XLEN', key) + 1 - per_audience
      if excess > 0 then
        local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
        if #gone > 0 then redis.call('HSET', KEYS[2], key, gone[#gone][1]) end
      end
      redis.call('XADD', key, 'MAXLEN', per_audience, id, unpack(fields))
      local aged = redis.call('XREVRANGE', key, '(' .. min_id, '-', 'COUNT', 1)
      if #aged > 0 then
        redis.call('HSET', KEYS[2], key, aged[1][1])
        redis.call('XTRIM', key, 'MINID', min_id)
      end
      redis.call('PEXPIRE', key, ttl)
    end
  end
  table.insert(ids, id)
  at = at + 5 + audiences
end
if per_audience > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return ids
";

/// The Redis key of one audience's stream, under the flow's key.
fn audience_key(flow: &str, audience: &AudienceKey) -> String {
    match audience {
        AudienceKey::Everyone => format!("{flow}:everyone"),
        AudienceKey::User(user) => format!("{flow}:u:{user}"),
        AudienceKey::Channel(channel) => format!("{flow}:c:{channel}"),
    }
}

/// The audience a stream key under `flow` is for; `None` for other keys.
fn parse_audience_key(flow: &str, key: &str) -> Option<AudienceKey> {
    let rest = key.strip_prefix(flow)?.strip_prefix(':')?;
    if rest == "everyone" {
        return Some(AudienceKey::Everyone);
    }
    if let Some(user) = rest.strip_prefix("u:") {
        return UserId::parse(user).ok().map(AudienceKey::User);
    }
    Channel::parse(rest.strip_prefix("c:")?)
        .ok()
        .map(AudienceKey::Channel)
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl RedisBus {
    pub async fn publish(&self, events: Vec<Outgoing>) -> Result<Vec<Published>, BusError> {
        let script = redis::Script::new(PUBLISH_SCRIPT);
        let mut invocation = script.prepare_invoke();
        let now_ms = clock::unix_now_ms();
        invocation
            .key(&self.key)
            .arg(FLOW_MAX_LEN)
            .arg(self.retention.per_audience)
            .arg(format!(
                "{}-0",
                now_ms.saturating_sub(self.retention.ttl_ms)
            ))
            .arg(self.retention.ttl_ms.max(1));
        let mut keys: Vec<String> = Vec::new();
        for event in &events {
            let (users, channels) = match &event.audience {
                Audience::Everyone => (String::new(), String::new()),
                Audience::Targets { users, channels } => (
                    encode_names(users.iter().map(UserId::as_str))?,
                    encode_names(channels.iter().map(Channel::as_str))?,
                ),
            };
            let audiences = AudienceKey::of(&event.audience);
            invocation
                .arg(event.name.as_str())
                .arg(&event.data)
                .arg(users)
                .arg(channels)
                .arg(audiences.len());
            for audience in &audiences {
                let key = audience_key(&self.key, audience);
                let index = match keys.iter().position(|known| *known == key) {
                    Some(index) => index,
                    None => {
                        keys.push(key);
                        keys.len() - 1
                    }
                };
                // KEYS[1] is the flow, KEYS[2] the trimmed-ids hash.
                invocation.arg(index + 3);
            }
        }
        invocation.key(trimmed_key(&self.key));
        for key in &keys {
            invocation.key(key);
        }
        let mut connection = self.connection.clone();
        let ids: Vec<String> = in_time(invocation.invoke_async(&mut connection)).await?;
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

    /// Records a revocation in Redis and tells every node (this one
    /// included) through the flow to end the streams it covers.
    pub async fn revoke(&self, revocation: &Revocation, at: u64) -> Result<(), BusError> {
        let key = revocation.key();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(revoked_key(&self.key))
            .arg(&key)
            .arg(at)
            .ignore()
            .cmd("XADD")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(FLOW_MAX_LEN)
            .arg("*")
            .arg("control")
            .arg("revoke")
            .arg("key")
            .arg(&key)
            .arg("at")
            .arg(at)
            .ignore();
        let mut connection = self.connection.clone();
        in_time(pipe.query_async::<()>(&mut connection)).await
    }

    /// Gives the stream `refresh.id` a fresh token on whichever node holds
    /// it: this one if it can, else through the flow, waiting briefly for
    /// the holding node's answer (none means no node holds it).
    pub async fn refresh(&self, refresh: Refresh) -> Result<(), RefreshFailure> {
        let broadcaster_gone = |_| RefreshFailure::Bus(BusError::Stopped);
        let remote = Refresh {
            patterns: refresh.patterns.clone(),
            user: refresh.user.clone(),
            ..refresh
        };
        match self
            .broadcaster
            .send(refresh)
            .await
            .map_err(broadcaster_gone)?
        {
            Ok(()) => return Ok(()),
            Err(RefreshError::ChannelNotAllowed(channel)) => {
                return Err(RefreshFailure::Refused(RefreshError::ChannelNotAllowed(
                    channel,
                )))
            }
            Err(RefreshError::NotFound) => {}
        }
        let reply = format!("{}:reply:{}", self.key, uuid::Uuid::new_v4());
        let patterns: Vec<String> = remote.patterns.iter().map(ToString::to_string).collect();
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("XADD");
        command
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(FLOW_MAX_LEN)
            .arg("*")
            .arg("control")
            .arg("refresh")
            .arg("stream")
            .arg(remote.id.0.to_string())
            .arg("user")
            .arg(remote.user.as_str())
            .arg("patterns")
            .arg(patterns.join("\n"))
            .arg("exp")
            .arg(remote.expires_at)
            .arg("valid_until")
            .arg(remote.valid_until)
            .arg("reply")
            .arg(&reply);
        let posted = command.query_async::<String>(&mut connection);
        in_time(posted).await.map_err(RefreshFailure::Bus)?;
        // BLPOP blocks its connection: a short-lived one of its own.
        let waited = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(REFRESH_WAIT + COMMAND_TIMEOUT));
            let mut own = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("BLPOP")
                .arg(&reply)
                .arg(REFRESH_WAIT.as_secs_f64())
                .query_async::<Option<(String, String)>>(&mut own)
                .await
        };
        let answer = match tokio::time::timeout(REFRESH_WAIT + COMMAND_TIMEOUT, waited).await {
            Ok(Ok(answer)) => answer.map(|(_, answer)| answer),
            Ok(Err(e)) => return Err(RefreshFailure::Bus(unreachable(e))),
            Err(_) => None,
        };
        match answer.as_deref() {
            Some("ok") => Ok(()),
            Some(other) => match other
                .strip_prefix("forbidden:")
                .and_then(|channel| Channel::parse(channel).ok())
            {
                Some(channel) => Err(RefreshFailure::Refused(RefreshError::ChannelNotAllowed(
                    channel,
                ))),
                None => Err(RefreshFailure::Refused(RefreshError::NotFound)),
            },
            None => Err(RefreshFailure::Refused(RefreshError::NotFound)),
        }
    }

    /// The shared connection, for other cluster-wide state (stream tickets).
    pub fn connection(&self) -> &ConnectionManager {
        &self.connection
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

/// A flow entry that tells every node to do something rather than deliver.
#[derive(Debug, PartialEq, Eq)]
enum Control {
    /// End the streams a revocation covers and refuse its tokens.
    Revoke(Revocation, u64),
    /// Give a stream a fresh token; the node holding it answers on `reply`.
    Refresh {
        stream: ClientId,
        user: UserId,
        patterns: Vec<ChannelPattern>,
        expires_at: u64,
        valid_until: u64,
        reply: String,
    },
}

/// Reads a control entry; `None` for anything else.
fn decode_control(entry: &StreamId) -> Option<Control> {
    let text = |field: &str| -> Option<String> {
        match entry.map.get(field)? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    };
    match text("control")?.as_str() {
        "revoke" => Some(Control::Revoke(
            Revocation::from_key(&text("key")?)?,
            text("at")?.parse().ok()?,
        )),
        "refresh" => Some(Control::Refresh {
            stream: ClientId(uuid::Uuid::parse_str(&text("stream")?).ok()?),
            user: UserId::parse(&text("user")?).ok()?,
            patterns: text("patterns")?
                .split('\n')
                .filter(|raw| !raw.is_empty())
                .map(ChannelPattern::parse)
                .collect::<Result<_, _>>()
                .ok()?,
            expires_at: text("exp")?.parse().ok()?,
            valid_until: text("valid_until")?.parse().ok()?,
            reply: text("reply")?,
        }),
        _ => None,
    }
}

fn decode_all<'a>(entries: impl Iterator<Item = &'a StreamId>) -> Vec<Stamped> {
    entries
        .filter(|entry| !entry.map.contains_key("control"))
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
                    for event in decode_all(range.ids.iter()) {
                        events.entry(event.id).or_insert(event);
                    }
                }
            }
        }
        let count = events.len();
        // Anything older than the TTL may have expired with its key unseen.
        let horizon = EventId::new(clock::unix_now_ms().saturating_sub(self.ttl_ms), 0);
        // Not awaited: at start the Broadcaster may not run yet (it starts
        // with the first HTTP worker); its mailbox keeps this ahead of
        // anything sent later.
        if !self.broadcaster.connected() {
            return Err(BroadcasterStopped.into());
        }
        self.broadcaster.do_send(Preload {
            events: events.into_values().collect(),
            lost,
            horizon,
        });
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

    /// Carries out a control entry on this node.
    async fn apply(
        &self,
        control: Control,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), Interruption> {
        match control {
            Control::Refresh {
                stream,
                user,
                patterns,
                expires_at,
                valid_until,
                reply,
            } => {
                let refresh = Refresh {
                    id: stream,
                    user,
                    patterns,
                    expires_at,
                    valid_until,
                };
                let answer = match self.broadcaster.send(refresh).await {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(RefreshError::ChannelNotAllowed(channel))) => {
                        format!("forbidden:{channel}")
                    }
                    // Not here: another node answers, or nobody does (404).
                    Ok(Err(RefreshError::NotFound)) => return Ok(()),
                    Err(_) => return Err(BroadcasterStopped.into()),
                };
                let mut pipe = redis::pipe();
                pipe.cmd("LPUSH")
                    .arg(&reply)
                    .arg(answer)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&reply)
                    .arg(REPLY_TTL_SECS)
                    .ignore();
                let _: () = pipe.query_async(connection).await?;
            }
            Control::Revoke(revocation, at) => {
                self.revocations.record(revocation.clone(), at);
                let revoke = Revoke {
                    revocation,
                    at,
                    persist: false,
                };
                // Nothing to persist here: Redis keeps the revocation.
                let _ = self
                    .broadcaster
                    .send(revoke)
                    .await
                    .map_err(|_| BroadcasterStopped)?;
            }
        }
        Ok(())
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
                for control in stream.ids.iter().filter_map(decode_control) {
                    self.apply(control, connection).await?;
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
    use crate::broadcaster::Limits;
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

    fn limits_retention() -> RetentionLimits {
        RetentionLimits {
            per_audience: 10,
            ttl_ms: 60_000,
            max_bytes: 1 << 20,
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
            expiry_warning_secs: 60,
            retention: limits_retention(),
        };
        let broadcaster = Broadcaster::start_in_arbiter(&arbiter.handle(), |_| {
            Broadcaster::in_memory(limits, Arc::new(Metrics::default()))
        });
        let url = format!("redis://127.0.0.1:{}", server.1);
        let retention = limits_retention();
        let (bus, mut reader) = connect(
            &url,
            "herald-test",
            retention,
            Arc::new(Revocations::new(60)),
            broadcaster.clone(),
        )
        .unwrap();
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
