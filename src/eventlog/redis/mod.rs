//! The shared event log for many nodes: one Redis stream (the flow), plus a
//! stream per audience that keeps its retained history.
//!
//! Appending is one script ([`script::PUBLISH_SCRIPT`]): `XADD` to the flow
//! (Redis assigns the id, so ids are ordered cluster-wide), capped near
//! `FLOW_MAX_LEN`, and to each audience's stream under the same id. Every
//! node runs one [`Reader`] that preloads history at start and then follows
//! the flow, handing events and revocations to its Broadcaster in order.
//! Token refreshes for streams on other nodes go over pub/sub
//! ([`refresh`]), never through the flow.
//!
//! Redis going away: appending answers 503; the reader retries with back-off
//! and continues from its last id, so every accepted event is delivered once
//! Redis is back (provided Redis kept it: run it with persistence).
//!
//! The files: [`keys`] (key names), [`script`] (the Lua scripts), [`codec`]
//! (entries to events and back), [`reader`], [`refresh`].

mod codec;
mod keys;
mod reader;
mod refresh;
mod script;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::aio::ConnectionManagerConfig;
use redis::Client;

pub(crate) use reader::Reader;
pub(crate) use refresh::RefreshListener;

use self::codec::encode_names;
use self::keys::{audience_key, idempotency_key, revoked_key, trimmed_key};
use self::script::PUBLISH_SCRIPT;
use super::idempotency::{answer, Appended, Remember, Remembered};
use super::{LocalRefresh, LogError, RefreshFailure, RetentionLimits, Sink};
use crate::clock;
use crate::domain::{Audience, AudienceKey, Channel, EventId, Outgoing, TokenRefresh, UserId};
use crate::revocations::{Revocation, Revocations};

/// Entries the shared flow keeps (`XADD MAXLEN ~`).
const FLOW_MAX_LEN: usize = 10_000;
/// How long one `XREAD` waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(5);
/// A reply later than `BLOCK` plus this means the connection is dead, even if
/// the socket never said so.
const RESPONSE_GRACE: Duration = Duration::from_secs(3);
/// Reconnect back-off bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long appending and health checks wait for Redis.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The appending side, shared by every handler.
pub(crate) struct RedisLog {
    /// Reconnects by itself; a command while Redis is away fails fast.
    connection: ConnectionManager,
    /// The flow's key; every other key is under it.
    key: String,
    /// Kept per audience stream, as in every node's memory.
    retention: RetentionLimits,
    /// How long an idempotency record lives (`IDEMPOTENCY_TTL_SECS`).
    idempotency_ttl_ms: u64,
    /// For connections of its own when a command blocks (waiting for
    /// other nodes' answers to a refresh).
    client: Client,
}

/// Reads an idempotency record the publish script kept:
/// `fingerprint \n recipients \n batch \n ids`, the answer rendered as the
/// first node rendered it.
fn decode_record(record: &str, remember: Option<&Remember>) -> Option<Remembered> {
    let mut lines = record.split('\n');
    let fingerprint = lines.next()?.to_owned();
    let numbers = |line: &str| -> Option<Vec<usize>> {
        line.split(',')
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().ok())
            .collect()
    };
    let recipients = numbers(lines.next()?)?;
    let batch = lines.next()? == "1";
    let ids = lines
        .next()?
        .split(',')
        .filter(|id| !id.is_empty())
        .map(|id| id.parse().ok())
        .collect::<Option<Vec<EventId>>>()?;
    Some(Remembered {
        fingerprint,
        answer: answer(&ids, &recipients, batch),
        at_ms: remember.map_or_else(clock::unix_now_ms, |remember| remember.at_ms),
    })
}

fn unreachable(error: redis::RedisError) -> LogError {
    log::warn!("redis: {error}");
    LogError::Unreachable(format!("Redis: {error}"))
}

/// Runs an appending-side command, failing as unreachable if Redis errs or
/// takes longer than `COMMAND_TIMEOUT`.
async fn in_time<T>(
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LogError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(result) => result.map_err(unreachable),
        Err(_) => Err(LogError::Unreachable("Redis did not answer in time".into())),
    }
}

/// Waits `backoff`, then doubles it up to `MAX_BACKOFF`.
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// Prepares the appending side, the reader (which hands the flow to `sink`)
/// and the refresh listener (which asks `local`). Nothing is sent yet: a
/// node may start while Redis is away, serve streams, and catch up when it
/// returns.
pub(crate) fn connect(
    url: &str,
    key: &str,
    retention: RetentionLimits,
    revocations: Arc<Revocations>,
    sink: Sink,
    local: LocalRefresh,
    idempotency_ttl: Duration,
) -> Result<(RedisLog, Reader, RefreshListener), String> {
    let client = Client::open(url).map_err(|e| format!("REDIS_URL {url:?}: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(MAX_BACKOFF);
    let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| format!("REDIS_URL {url:?}: {e}"))?;
    let reader = Reader {
        client: client.clone(),
        key: key.to_owned(),
        last_id: "0-0".into(),
        preloaded: false,
        ttl_ms: retention.ttl_ms,
        revocations,
        sink,
    };
    let listener = RefreshListener {
        client: client.clone(),
        connection: connection.clone(),
        flow: key.to_owned(),
        local,
    };
    let log = RedisLog {
        connection,
        key: key.to_owned(),
        retention,
        idempotency_ttl_ms: idempotency_ttl.as_millis() as u64,
        client,
    };
    Ok((log, reader, listener))
}

impl RedisLog {
    /// Appends events to the flow and their audiences' streams in one
    /// script; answers the ids Redis gave them. They reach this node's
    /// streams, like every node's, through its reader.
    /// Appends `events`; with `remember`, unless another publish (on any
    /// node) already used its key, which answers that publish's record.
    pub async fn append(
        &self,
        events: Vec<Outgoing>,
        remember: Option<&Remember>,
    ) -> Result<Appended, LogError> {
        let script = redis::Script::new(PUBLISH_SCRIPT);
        let mut invocation = script.prepare_invoke();
        let now_ms = clock::unix_now_ms();
        let record_head = remember.map_or_else(String::new, |remember| {
            let recipients: Vec<String> =
                remember.recipients.iter().map(usize::to_string).collect();
            format!(
                "{}\n{}\n{}",
                remember.fingerprint,
                recipients.join(","),
                u8::from(remember.batch)
            )
        });
        invocation
            .key(&self.key)
            .arg(FLOW_MAX_LEN)
            .arg(self.retention.per_audience)
            .arg(format!(
                "{}-0",
                now_ms.saturating_sub(self.retention.ttl_ms)
            ))
            .arg(self.retention.ttl_ms.max(1))
            .arg(record_head)
            .arg(self.idempotency_ttl_ms.max(1));
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
                // KEYS[1] is the flow, KEYS[2] the trimmed-ids hash,
                // KEYS[3] the idempotency record.
                invocation.arg(index + 4);
            }
        }
        invocation.key(trimmed_key(&self.key)).key(idempotency_key(
            &self.key,
            remember.map_or("", |remember| remember.name.as_str()),
        ));
        for key in &keys {
            invocation.key(key);
        }
        let mut connection = self.connection.clone();
        let answer: Vec<String> = in_time(invocation.invoke_async(&mut connection)).await?;
        match answer.split_first() {
            Some((tag, record)) if tag == "seen" => {
                let record = record.first().map_or("", String::as_str);
                decode_record(record, remember)
                    .map(Appended::Remembered)
                    .ok_or_else(|| {
                        LogError::Encoding(format!("an idempotency record reads {record:?}"))
                    })
            }
            Some((_, ids)) => ids
                .iter()
                .map(|id| {
                    id.parse().map_err(|()| {
                        LogError::Encoding(format!("Redis answered {id:?} for an event id"))
                    })
                })
                .collect::<Result<Vec<EventId>, LogError>>()
                .map(Appended::New),
            None => Err(LogError::Encoding(
                "Redis answered nothing for a publish".into(),
            )),
        }
    }

    /// Records a revocation in Redis and tells every node (this one
    /// included) through the flow to end the streams it covers.
    pub async fn revoke(&self, revocation: &Revocation, at: u64) -> Result<(), LogError> {
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

    /// Asks the other nodes to give a stream a fresh token.
    pub async fn refresh_elsewhere(&self, refresh: TokenRefresh) -> Result<(), RefreshFailure> {
        refresh::ask(&self.connection, &self.client, &self.key, &refresh).await
    }

    /// The shared connection, for other cluster-wide state (stream tickets).
    pub fn connection(&self) -> &ConnectionManager {
        &self.connection
    }

    pub async fn healthy(&self) -> Result<(), LogError> {
        let mut connection = self.connection.clone();
        in_time(redis::cmd("PING").query_async::<String>(&mut connection))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::domain::{EventName, RefreshError};
    use crate::eventlog::{Flow, FlowItem, SinkStopped};

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

    /// A sink that records what it is handed, and stops when told to.
    #[derive(Clone, Default)]
    struct Recorder {
        flows: Arc<Mutex<Vec<Flow>>>,
        stopped: Arc<AtomicBool>,
    }

    impl Recorder {
        fn sink(&self) -> Sink {
            let recorder = self.clone();
            Arc::new(move |flow| {
                if recorder.stopped.load(Ordering::SeqCst) {
                    return Err(SinkStopped);
                }
                recorder.flows.lock().unwrap().push(flow);
                Ok(())
            })
        }

        /// Every item handed on after the preload, in order.
        fn items(&self) -> Vec<FlowItem> {
            self.flows
                .lock()
                .unwrap()
                .iter()
                .flat_map(|flow| match flow {
                    Flow::Items { items, .. } => items.clone(),
                    Flow::Preload { .. } => Vec::new(),
                })
                .collect()
        }
    }

    /// A local refresh that answers `answer` for every stream.
    fn local(answer: fn() -> Result<(), RefreshError>) -> LocalRefresh {
        Arc::new(move |_| Box::pin(async move { Ok(answer()) }))
    }

    fn connected(
        server: &Server,
        recorder: &Recorder,
        local_refresh: LocalRefresh,
    ) -> (RedisLog, Reader, RefreshListener, Arc<Revocations>) {
        let revocations = Arc::new(Revocations::new(60));
        let (log, reader, listener) = connect(
            &format!("redis://127.0.0.1:{}", server.1),
            "herald-test",
            limits_retention(),
            revocations.clone(),
            recorder.sink(),
            local_refresh,
            Duration::from_secs(60),
        )
        .unwrap();
        (log, reader, listener, revocations)
    }

    #[actix_web::test]
    async fn the_reader_ends_when_its_sink_has_stopped() {
        let Some(server) = Server::start() else {
            return;
        };
        let recorder = Recorder::default();
        let (log, mut reader, _, _) = connected(&server, &recorder, local(|| Ok(())));
        log.append(vec![broadcast("before")], None).await.unwrap();
        reader.preload().await.unwrap();
        recorder.stopped.store(true, Ordering::SeqCst);
        log.append(vec![broadcast("after")], None).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), reader.run()).await;
        assert!(
            ended.is_ok(),
            "with nobody to deliver to, the reader stops instead of reconnecting forever"
        );
    }

    #[actix_web::test]
    async fn revocations_are_handed_on_in_flow_order_with_events_and_in_force_first() {
        let Some(server) = Server::start() else {
            return;
        };
        let recorder = Recorder::default();
        let (log, mut reader, _, revocations) = connected(&server, &recorder, local(|| Ok(())));
        reader.preload().await.unwrap();
        let alice = UserId::parse("alice").unwrap();
        log.append(vec![broadcast("one")], None).await.unwrap();
        log.revoke(&Revocation::User(alice.clone()), 1_000)
            .await
            .unwrap();
        log.append(vec![broadcast("two")], None).await.unwrap();
        let reading = actix_web::rt::spawn(reader.run());
        let handed_on = tokio::time::timeout(Duration::from_secs(10), async {
            while recorder.items().len() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        reading.abort();
        assert!(handed_on.is_ok(), "the reader hands on all three entries");
        let order: Vec<String> = recorder
            .items()
            .iter()
            .map(|item| match item {
                FlowItem::Event(event) => event.event.name.as_str().to_owned(),
                FlowItem::Revoke(revocation) => revocation.key(),
            })
            .collect();
        assert_eq!(order, ["one", "u:alice", "two"]);
        assert!(
            revocations.refuses(&alice, Some(999), None, 1_001),
            "recorded on this node as it is read"
        );
    }

    #[actix_web::test]
    async fn a_refresh_goes_to_the_nodes_over_pubsub_and_never_into_the_flow() {
        let Some(server) = Server::start() else {
            return;
        };
        let recorder = Recorder::default();
        let (log, _, _, _) = connected(&server, &recorder, local(|| Ok(())));
        let refresh = TokenRefresh {
            id: crate::domain::ClientId::random(),
            user: UserId::parse("alice").unwrap(),
            patterns: Vec::new(),
            expires_at: 2_000,
            valid_until: 2_005,
            token_id: None,
        };
        // No node listens: nobody holds it, and nobody is waited for.
        assert!(matches!(
            log.refresh_elsewhere(refresh.clone()).await,
            Err(RefreshFailure::Refused(RefreshError::NotFound))
        ));
        // Two nodes listen: one holds the stream, one does not.
        let (_, _, holder, _) = connected(&server, &Recorder::default(), local(|| Ok(())));
        let (_, _, other, _) = connected(
            &server,
            &Recorder::default(),
            local(|| Err(RefreshError::NotFound)),
        );
        let holder = actix_web::rt::spawn(holder.run());
        let other = actix_web::rt::spawn(other.run());
        let mut answered = Err(RefreshFailure::Refused(RefreshError::NotFound));
        // The listeners subscribe in the background: ask until both hear it.
        for _ in 0..100 {
            answered = log.refresh_elsewhere(refresh.clone()).await;
            if answered.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered.is_ok(), "{answered:?}");
        let mut connection = log.connection().clone();
        let entries: usize = redis::cmd("XLEN")
            .arg("herald-test")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(entries, 0, "the flow carries no refresh");
        holder.abort();
        other.abort();
    }
}
