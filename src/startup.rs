//! `Application`: binds the listener, builds the event log, starts the
//! Broadcaster on an arbiter of its own, serves, stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Arbiter};
use actix_cors::Cors;
use actix_http::Extensions;
use actix_service::{map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::AppConfig;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{Condition, Logger};
use actix_web::rt::net::TcpStream;
use actix_web::{http, web, App};

use crate::auth::{Auth, Verifier};
use crate::broadcaster::{
    self, Broadcaster, ConnectionSocket, Deliver, Drain, Evict, Limits, Refresh,
};
use crate::clock;
use crate::config::{open_file_limit, Config, Storage};
use crate::domain::EventId;
use crate::eventlog::{
    self, new_epoch, EventLog, IdSource, LocalRefresh, RetentionLimits, Sequencer, SinkStopped,
    Store,
};
use crate::logging::{self, LogFormat};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::revocations::{Revocation, Revocations};
use crate::routes::{self, AppState};
use crate::tickets::Tickets;
use crate::tls::Certificates;

/// Extra seconds past the drain window before remaining connections are cut.
const SHUTDOWN_GRACE_SECS: u64 = 3;

/// The HTTP settings of both listeners, as actix-web's `HttpServer` would
/// make them (a macro: the two builders differ in their connection type).
/// `$stopping` is the server's graceful-shutdown signal: idle keep-alive
/// connections close when it fires.
macro_rules! http_settings {
    ($stopping:expr) => {{
        let stopping = $stopping.clone();
        actix_http::HttpService::build()
            .graceful_shutdown_signal(move || {
                let stopping = stopping.clone();
                async move { stopping.notified().await }
            })
            .client_disconnect_timeout(Duration::from_secs(1))
            // An SSE client never half-closes: EOF means it is gone, so forget it now.
            .h1_allow_half_closed(false)
    }};
}

/// A running (not yet awaited) Herald server.
pub struct Application {
    port: u16,
    server: Server,
    shutdown: Shutdown,
    auth: web::Data<Auth>,
    /// The served certificate, when Herald speaks HTTPS.
    certificates: Option<Certificates>,
    /// Whether the server is stopping, and whether the Broadcaster was lost.
    watch: Arc<Watch>,
    /// The Broadcaster's thread, stopped once the server has stopped.
    thread: Arc<BroadcasterThread>,
}

/// What [`watch`] and [`Shutdown`] share.
#[derive(Default)]
struct Watch {
    /// A shutdown has begun: the Broadcaster stopping is then expected.
    stopping: AtomicBool,
    /// The Broadcaster stopped while the server was serving.
    lost: AtomicBool,
}

/// How often the Broadcaster is checked for being alive.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Stops the server, as a failure, if the Broadcaster stops while it serves.
/// Nothing but the shutdown stops it; should its thread ever die (a panic),
/// every stream and publish would fail from then on, and a process that
/// exits can be restarted by its supervisor, while one that lingers cannot.
fn watch(broadcaster: Addr<Broadcaster>, server: ServerHandle, watch: Arc<Watch>) {
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(WATCH_INTERVAL);
        while broadcaster.connected() {
            tick.tick().await;
        }
        if watch.stopping.load(Ordering::SeqCst) {
            return; // It stopped with its worker, as it should.
        }
        watch.lost.store(true, Ordering::SeqCst);
        log::error!("the Broadcaster stopped; stopping the server");
        server.stop(false).await;
    });
}

/// The Broadcaster's own thread (an actix arbiter), stopped and joined
/// when the last holder lets go: after the server has stopped, so that no
/// worker can outlive it, and nothing a worker does can end it early.
struct BroadcasterThread {
    arbiter: std::sync::Mutex<Option<Arbiter>>,
}

impl BroadcasterThread {
    /// Stops the arbiter and waits for its thread; idempotent.
    fn stop(&self) {
        let arbiter = self.arbiter.lock().ok().and_then(|mut slot| slot.take());
        if let Some(arbiter) = arbiter {
            arbiter.stop();
            // A thread that panicked has stopped all the same.
            let _ = arbiter.join();
        }
    }
}

impl Drop for BroadcasterThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops the server: drains the streams, then stops accepting and serving.
#[derive(Clone)]
pub struct Shutdown {
    server: ServerHandle,
    broadcaster: Addr<Broadcaster>,
    drain: Duration,
    /// The shared-flow tasks (reader, refresh listener), stopped once the
    /// streams are drained.
    tasks: Vec<tokio::task::AbortHandle>,
    watch: Arc<Watch>,
    thread: Arc<BroadcasterThread>,
}

impl Shutdown {
    /// Ends every stream spread over the drain window, then stops the
    /// server and the Broadcaster. Returns once both have stopped; what is
    /// still open `SHUTDOWN_DRAIN_SECS` + 3 s after the call is cut.
    pub async fn run(&self) {
        self.watch.stopping.store(true, Ordering::SeqCst);
        // Stop accepting first, so clients reconnect elsewhere (or later).
        let stopping = self.server.stop(true);
        // The Broadcaster lives on its own thread until the server has
        // stopped, whichever worker each stream is on. If it is already
        // gone there is nothing left to drain.
        let _ = self.broadcaster.send(Drain { window: self.drain }).await;
        let cut = self.drain + Duration::from_secs(SHUTDOWN_GRACE_SECS);
        if tokio::time::timeout(cut, stopping).await.is_err() {
            // actix counts its own timeout in whole seconds from when it
            // began; this cuts at the exact moment.
            self.server.stop(false).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        let thread = self.thread.clone();
        // Joining waits for the thread: off the async workers.
        let _ = actix_web::rt::task::spawn_blocking(move || thread.stop()).await;
    }
}

/// The socket the slow-consumer policy may shut down for the streams of a
/// TLS connection (see `broadcaster::outbox`), or `None` where it must not.
///
/// A plain connection is HTTP/1.1 (no h2c is served), and so is a TLS
/// connection that did not negotiate `h2`: one stream at a time, so cutting
/// the socket ends only the stream that fell behind. Over HTTP/2 many streams
/// share the connection, so none gets the socket: a stream that falls behind
/// ends itself alone, by its body ending.
fn tls_connection_socket(tls: &TlsStream<TcpStream>) -> Option<ConnectionSocket> {
    let (socket, session) = tls.get_ref();
    match session.alpn_protocol() {
        Some(b"h2") => None,
        _ => Some(ConnectionSocket::of(socket)),
    }
}

/// Opens the embedded store under `dir`; the revocations it kept are in
/// force again at once.
fn open_store(
    dir: &std::path::Path,
    config: &Config,
    revocations: &Revocations,
) -> std::io::Result<(Store, eventlog::Loaded)> {
    let floor = EventId::new(clock::unix_now_ms(), 0);
    let revocations_since = clock::unix_now().saturating_sub(config.revoke_ttl_secs);
    let idempotency_since_ms =
        clock::unix_now_ms().saturating_sub(config.idempotency_ttl_secs.saturating_mul(1000));
    let (store, mut loaded) = Store::open(
        dir,
        floor,
        revocations_since,
        idempotency_since_ms,
        config.durability,
    )
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    for (key, at) in std::mem::take(&mut loaded.revocations) {
        if let Some(revocation) = Revocation::from_key(&key) {
            revocations.record(revocation, at);
        }
    }
    log::info!(
        "history: {} events loaded from {}",
        loaded.events.len(),
        dir.display()
    );
    Ok((store, loaded))
}

/// Random hex, for a development secret.
fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // Without an OS random source no safe secret can be made; stopping is right.
    getrandom::fill(&mut buffer).expect("the OS random source is available");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rewrites `token=...` in a URI for the access log.
/// The access-log middleware, writing plain lines or the fields the JSON
/// formatter takes apart; the request target redacted either way.
fn access_logger(format: LogFormat) -> Logger {
    match format {
        LogFormat::Plain => Logger::new(logging::ACCESS_FORMAT_PLAIN)
            .custom_request_replace("uri", |req| {
                format!("{} {}", req.method(), redact_uri(req.uri()))
            }),
        LogFormat::Json => Logger::new(logging::ACCESS_FORMAT_JSON)
            .custom_request_replace("method", |req| req.method().to_string())
            .custom_request_replace("path", |req| redact_uri(req.uri())),
    }
}

fn redact_uri(uri: &http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("token") || key.eq_ignore_ascii_case("ticket") =>
            {
                format!("{key}=[redacted]")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
}

/// Connections waiting to be accepted: a burst of reconnects after a restart
/// must not overflow the kernel's default of 128 (the kernel caps this at
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `host:port` (port 0 picks a free one) and listens with
/// [`LISTEN_BACKLOG`]. The first of the host's addresses that binds is used.
fn listen(host: &str, port: u16) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let mut refused = None;
    for address in (host, port).to_socket_addrs()? {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if let Err(e) = socket.bind(address) {
            refused = Some(std::io::Error::new(e.kind(), format!("{address}: {e}")));
            continue;
        }
        return socket.listen(LISTEN_BACKLOG)?.into_std();
    }
    Err(refused.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("HOST {host:?} has no address"),
        )
    }))
}

impl Application {
    /// Binds `config.host:config.port` (port 0 picks a free one) and starts
    /// the actors. Must be called inside an actix system.
    pub async fn build(config: Config) -> std::io::Result<Self> {
        // First, so that a bad certificate stops start-up before anything opens.
        let certificates = config
            .tls
            .as_ref()
            .map(Certificates::load)
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // Then the port, before any actor or thread starts: a port in use
        // must stop start-up with its message, with nothing to wind down.
        let listener = listen(&config.host, config.port)?;
        let tls_config = certificates
            .as_ref()
            .map(Certificates::server_config)
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let generated_secret = config.is_development().then(|| random_hex(32));
        let verifier = Verifier::new(&config.jwt, generated_secret.as_deref())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        if let Some(jwks) = verifier.jwks() {
            // The first keys, in the background: until they arrive, tokens
            // that need one answer 503.
            actix_web::rt::task::spawn_blocking(move || jwks.refetch());
        }
        let revocations = Arc::new(Revocations::new(config.revoke_ttl_secs));
        let auth = web::Data::new(Auth {
            verifier,
            cookie_name: config.auth_cookie_name.clone(),
            allowed_origins: config.cors_allowed_origins.clone(),
            revocations: revocations.clone(),
        });
        let metrics = Arc::new(Metrics::default());
        let retention = RetentionLimits {
            per_audience: config.history_per_audience,
            ttl_ms: config.history_ttl.as_millis() as u64,
            max_bytes: config.history_max_bytes,
        };
        let limits = Limits {
            max_connections: config.max_connections,
            max_connections_per_user: config.max_connections_per_user,
            heartbeat_interval: config.heartbeat_interval,
            expiry_warning_secs: config.token_expiry_warning_secs,
            retention,
        };
        // The Broadcaster's address first: the log hands the flow to it.
        let (broadcaster, mailbox) = broadcaster::mailbox();
        let sink: eventlog::Sink = {
            let broadcaster = broadcaster.clone();
            Arc::new(move |flow| {
                if !broadcaster.connected() {
                    return Err(SinkStopped);
                }
                // Not `send`: the order of the flow is the mailbox's order,
                // and appending must not wait for the fan-out.
                broadcaster.do_send(Deliver(flow));
                Ok(())
            })
        };
        // Where events live, and so where ids come from, fixed here: Redis
        // (shared ids), the embedded store, or memory (this process's own).
        let (event_log, ids, restored, tasks) = match (&config.redis_url, &config.storage) {
            (Some(url), _) => {
                let local: LocalRefresh = {
                    let broadcaster = broadcaster.clone();
                    Arc::new(move |refresh| {
                        let asked = broadcaster.send(Refresh(refresh));
                        Box::pin(async move { asked.await.map_err(|_| SinkStopped) })
                    })
                };
                let (redis, mut reader, listener) = eventlog::redis::connect(
                    url,
                    &config.redis_stream_key,
                    retention,
                    revocations.clone(),
                    sink,
                    local,
                    Duration::from_secs(config.idempotency_ttl_secs),
                )
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                if let Err(e) = reader.preload().await {
                    log::warn!("redis: unreachable at start ({e}); serving streams and catching up when it returns");
                }
                let tasks = vec![
                    actix_web::rt::spawn(reader.run()).abort_handle(),
                    actix_web::rt::spawn(listener.run()).abort_handle(),
                ];
                (
                    EventLog::Redis(Box::new(redis)),
                    IdSource::Shared,
                    None,
                    tasks,
                )
            }
            (None, Storage::Disk(dir)) => {
                let (mut store, mut loaded) = open_store(dir, &config, &revocations)?;
                // Ids keep increasing across restarts.
                let epoch = store.begin_epoch(&mut loaded).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                let sequencer = Arc::new(Sequencer::new(epoch));
                let sqlite = eventlog::sqlite::SqliteLog::start(
                    store,
                    sequencer.clone(),
                    sink,
                    config.durability,
                    config.sync_interval,
                )?;
                let evict: Evict = sqlite.evictor();
                let restored = Some((loaded, evict));
                (
                    EventLog::Sqlite(sqlite),
                    IdSource::Own(sequencer),
                    restored,
                    Vec::new(),
                )
            }
            (None, Storage::Memory) => {
                let sequencer = Arc::new(Sequencer::new(new_epoch(0)));
                let memory = eventlog::memory::MemoryLog::new(sequencer.clone(), sink);
                (
                    EventLog::Memory(memory),
                    IdSource::Own(sequencer),
                    None,
                    Vec::new(),
                )
            }
        };
        let mut restored = restored;
        // The idempotency records are the Notifier's, not the Broadcaster's.
        let remembered = restored
            .as_mut()
            .map(|(loaded, _)| std::mem::take(&mut loaded.idempotency))
            .unwrap_or_default();
        let actor = Broadcaster::new(limits, metrics.clone(), ids, revocations.clone(), restored);
        let directory = actor.directory();
        // Its own thread, owned by the shutdown (see `BroadcasterThread`).
        let arbiter = Arbiter::new();
        actor.run_on(&arbiter.handle(), mailbox);
        let thread = Arc::new(BroadcasterThread {
            arbiter: std::sync::Mutex::new(Some(arbiter)),
        });
        let tickets = match event_log.redis() {
            None => Tickets::in_memory(),
            Some(redis) => Tickets::in_redis(redis.connection().clone(), &config.redis_stream_key),
        };
        let config = Arc::new(config);
        let state = web::Data::new(AppState {
            tickets,
            revocations: revocations.clone(),
            config: config.clone(),
            notifier: Notifier::new(
                event_log,
                broadcaster.clone(),
                directory,
                revocations,
                Duration::from_secs(config.idempotency_ttl_secs),
            ),
            metrics,
        });
        state.notifier.restore_idempotency(remembered);

        // Connections accepted in all: below the open-file limit, above
        // MAX_CONNECTIONS, so a request past the stream limit still gets its 429.
        let accept_limit = open_file_limit().saturating_sub(128).max(64);
        let per_worker = accept_limit.div_ceil(config.workers);
        let app_auth = auth.clone();
        let origins = config.cors_allowed_origins.clone();
        let access_log = log::log_enabled!(target: logging::ACCESS_TARGET, log::Level::Info);
        let log_format = config.log_format;
        let app = move || {
            let cors = origins.iter().fold(
                Cors::default()
                    .block_on_origin_mismatch(false)
                    .allowed_methods(["GET", "POST"])
                    .allowed_headers([http::header::AUTHORIZATION, http::header::CONTENT_TYPE])
                    .allowed_header("last-event-id")
                    .supports_credentials()
                    .max_age(3600),
                |cors, origin| cors.allowed_origin(origin),
            );
            App::new()
                .app_data(state.clone())
                .app_data(app_auth.clone())
                .wrap(cors)
                // Mounted only when its lines would be written: it formats every
                // request and wraps every stream's body, which costs CPU and memory.
                .wrap(Condition::new(access_log, access_logger(log_format)))
                .configure(routes::configure)
                .into_factory()
                .map_err(|error: actix_web::Error| error.error_response())
        };
        let port = listener.local_addr()?.port();
        let builder = actix_server::Server::build()
            .workers(config.workers)
            .max_concurrent_connections(per_worker)
            .disable_signals()
            .shutdown_timeout(
                // Whole seconds only: rounded up, so a fractional window is not
                // cut short; `Shutdown::run` cuts at the exact moment.
                (config.shutdown_drain + Duration::from_secs(SHUTDOWN_GRACE_SECS))
                    .as_secs_f64()
                    .ceil() as u64,
            );
        let stopping = builder.graceful_shutdown_signal();
        // What actix-web's HttpServer would build, but with the HTTP/1-only
        // service on plain connections: its per-connection state is the
        // HTTP/1 dispatcher alone, where the HTTP/1-or-2 service's is as large
        // as the HTTP/2 dispatcher (1.5 KiB more per stream; see
        // docs/performance.md). Plain HTTP serves no h2c anyway.
        let server = match tls_config {
            None => builder.listen("herald", listener, move || {
                http_settings!(stopping)
                    .on_connect_ext(|connection: &TcpStream, data: &mut Extensions| {
                        // Nagle off, as HttpServer's tcp_nodelay(true) did.
                        let _ = connection.set_nodelay(true);
                        data.insert(ConnectionSocket::of(connection));
                    })
                    .h1(map_config(app(), |_| AppConfig::default()))
                    .tcp()
            })?,
            // ALPN: actix offers `h2`, then `http/1.1`.
            Some(tls_config) => builder.listen("herald-tls", listener, move || {
                http_settings!(stopping)
                    .tcp_nodelay(true)
                    .on_connect_ext(|connection: &TlsStream<TcpStream>, data: &mut Extensions| {
                        if let Some(socket) = tls_connection_socket(connection) {
                            data.insert(socket);
                        }
                    })
                    .finish(map_config(app(), |_| AppConfig::default()))
                    .rustls_0_23(tls_config.clone())
            })?,
        };
        let server = server.run();
        let watched = Arc::new(Watch::default());
        watch(broadcaster.clone(), server.handle(), watched.clone());

        let shutdown = Shutdown {
            server: server.handle(),
            broadcaster,
            drain: config.shutdown_drain,
            tasks,
            watch: watched.clone(),
            thread: thread.clone(),
        };
        Ok(Self {
            port,
            server,
            shutdown,
            thread,
            auth,
            certificates,
            watch: watched,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https` when a certificate is configured, else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.certificates {
            Some(_) => "https",
            None => "http",
        }
    }

    /// The served certificate, to reload it (`SIGHUP`); `None` without TLS.
    pub fn certificates(&self) -> Option<Certificates> {
        self.certificates.clone()
    }

    /// A handle that stops this server gracefully.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Signs a token with the server's key (the development admin token, tests).
    pub fn mint(
        &self,
        sub: &str,
        admin: bool,
        channels: &[String],
        ttl_secs: u64,
    ) -> Result<String, String> {
        self.auth.verifier.mint(sub, admin, channels, ttl_secs)
    }

    /// Serves until stopped through a [`Shutdown`] handle.
    /// An error if the Broadcaster stopped while serving (see [`watch`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        let thread = self.thread.clone();
        // Joining waits for the thread: off the async workers.
        let _ = actix_web::rt::task::spawn_blocking(move || thread.stop()).await;
        served?;
        if self.watch.lost.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "the Broadcaster stopped while serving",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_uris_never_carry_a_token() {
        let uri: http::Uri = "/api/events?channel=a&token=eyJ.secret.sig&TOKEN=x&ticket=t0"
            .parse()
            .unwrap();
        let logged = redact_uri(&uri);
        assert_eq!(
            logged,
            "/api/events?channel=a&token=[redacted]&TOKEN=[redacted]&ticket=[redacted]"
        );
        assert!(!logged.contains("secret"));
    }
}
