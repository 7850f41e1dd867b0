//! `Application`: binds the listener, starts the Broadcaster, serves, stops.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{Condition, Logger};
use actix_web::{http, web, App, HttpServer};

use crate::auth::{Auth, Verifier};
use crate::backend::{self, EventBus};
use crate::broadcaster::{Broadcaster, ConnectionSocket, Drain, Limits, RetentionLimits};
use crate::clock;
use crate::config::{open_file_limit, Config, Storage};
use crate::domain::EventId;
use crate::metrics::Metrics;
use crate::revocations::{Revocation, Revocations};
use crate::routes::{self, AppState};
use crate::store::Store;
use crate::tickets::Tickets;
use crate::tls::Certificates;

/// Extra seconds past the drain window before remaining connections are cut.
const SHUTDOWN_GRACE_SECS: u64 = 3;

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
/// It runs on an HTTP worker's thread: should that thread ever die, every
/// stream and publish would fail from then on, and a process that exits can
/// be restarted by its supervisor, while one that lingers cannot.
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

/// Stops the server: drains the streams, then stops accepting and serving.
#[derive(Clone)]
pub struct Shutdown {
    server: ServerHandle,
    broadcaster: Addr<Broadcaster>,
    drain: Duration,
    /// The shared-flow reader, stopped once the streams are drained.
    reader: Option<tokio::task::AbortHandle>,
    watch: Arc<Watch>,
}

impl Shutdown {
    /// Ends every stream spread over the drain window, then stops the server.
    /// Returns once the server has stopped.
    pub async fn run(&self) {
        self.watch.stopping.store(true, Ordering::SeqCst);
        // Stop accepting first, so clients reconnect elsewhere (or later).
        let stopping = self.server.stop(true);
        // If the actor is already gone there is nothing left to drain.
        let _ = self.broadcaster.send(Drain { window: self.drain }).await;
        stopping.await;
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// The socket the slow-consumer policy may shut down for the streams of this
/// connection (see `broadcaster::outbox`), or `None` where it must not.
///
/// A plain connection is HTTP/1.1 (`bind` serves no h2c), and so is a TLS
/// connection that did not negotiate `h2`: one stream at a time, so cutting
/// the socket ends only the stream that fell behind. Over HTTP/2 many streams
/// share the connection, so none gets the socket: a stream that falls behind
/// ends itself alone, by its body ending.
fn connection_socket(connection: &dyn Any) -> Option<ConnectionSocket> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    if let Some(socket) = connection.downcast_ref::<TcpStream>() {
        return Some(ConnectionSocket::of(socket));
    }
    let tls = connection.downcast_ref::<TlsStream<TcpStream>>()?;
    let (socket, session) = tls.get_ref();
    match session.alpn_protocol() {
        Some(b"h2") => None,
        _ => Some(ConnectionSocket::of(socket)),
    }
}

/// Random hex, for a development secret.
fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // Without an OS random source no safe secret can be made; stopping is right.
    getrandom::fill(&mut buffer).expect("the OS random source is available");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rewrites `token=...` in a URI for the access log.
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
        let store = match (&config.redis_url, &config.storage) {
            (None, Storage::Disk(dir)) => {
                let floor = EventId::new(clock::unix_now_ms(), 0);
                let revocations_since = clock::unix_now().saturating_sub(config.revoke_ttl_secs);
                let (store, mut loaded) =
                    Store::open(dir, floor, revocations_since).map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                    })?;
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
                Some((store, loaded))
            }
            _ => None,
        };
        let retention = RetentionLimits {
            per_audience: config.history_per_audience,
            ttl_ms: config.history_ttl.as_millis() as u64,
            max_bytes: config.history_max_bytes,
        };
        let (broadcaster, pending) = Broadcaster::prepare(
            Limits {
                max_connections: config.max_connections,
                max_connections_per_user: config.max_connections_per_user,
                heartbeat_interval: config.heartbeat_interval,
                expiry_warning_secs: config.token_expiry_warning_secs,
                retention,
            },
            metrics.clone(),
            store,
        )?;
        let (bus, reader) = match &config.redis_url {
            None => (EventBus::Memory(broadcaster.clone()), None),
            Some(url) => {
                let (bus, mut reader) = backend::redis::connect(
                    url,
                    &config.redis_stream_key,
                    retention,
                    revocations.clone(),
                    broadcaster.clone(),
                )
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                if let Err(e) = reader.preload().await {
                    log::warn!("redis: unreachable at start ({e}); serving streams and catching up when it returns");
                }
                let task = actix_web::rt::spawn(reader.run());
                (EventBus::Redis(Box::new(bus)), Some(task.abort_handle()))
            }
        };
        let tickets = match &bus {
            EventBus::Memory(_) => Tickets::in_memory(),
            EventBus::Redis(redis) => {
                Tickets::in_redis(redis.connection().clone(), &config.redis_stream_key)
            }
        };
        let config = Arc::new(config);
        let state = web::Data::new(AppState {
            tickets,
            revocations,
            config: config.clone(),
            broadcaster: broadcaster.clone(),
            bus,
            metrics,
        });

        // Connections accepted in all: below the open-file limit, above
        // MAX_CONNECTIONS, so a request past the stream limit still gets its 429.
        let accept_limit = open_file_limit().saturating_sub(128).max(64);
        let per_worker = accept_limit.div_ceil(config.workers);
        let app_auth = auth.clone();
        let origins = config.cors_allowed_origins.clone();
        let access_log =
            log::log_enabled!(target: "actix_web::middleware::logger", log::Level::Info);
        // The Broadcaster runs on the first HTTP worker to start, so that the
        // requests served there reach it without a switch between threads
        // (with one worker, all of them). Until then messages wait, in order,
        // in its mailbox. If the server never starts, it never runs.
        let pending = Arc::new(std::sync::Mutex::new(Some(pending)));
        let server = HttpServer::new(move || {
            if let Some(pending) = pending.lock().ok().and_then(|mut slot| slot.take()) {
                pending.start();
            }
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
                .wrap(Condition::new(
                    access_log,
                    Logger::new("%{r}a \"%{uri}xi\" %s %b %Dms")
                        .custom_request_replace("uri", |req| {
                            format!("{} {}", req.method(), redact_uri(req.uri()))
                        }),
                ))
                .configure(routes::configure)
        })
        .workers(config.workers)
        .max_connections(per_worker)
        .tcp_nodelay(true)
        // An SSE client never half-closes: EOF means it is gone, so forget it now.
        .h1_allow_half_closed(false)
        .on_connect(|connection, data| {
            if let Some(socket) = connection_socket(connection) {
                data.insert(socket);
            }
        })
        .disable_signals()
        .shutdown_timeout(config.shutdown_drain.as_secs() + SHUTDOWN_GRACE_SECS);
        // HTTP/2 runs with actix's defaults, which suit streams: no limit on
        // concurrent streams per connection (none is advertised, so a
        // browser's 100 fit; MAX_CONNECTIONS and MAX_CONNECTIONS_PER_USER
        // count streams either way), a PING every keep-alive interval (5 s)
        // with the connection closed when the answer takes longer than that,
        // and 1 MiB / 2 MiB receive windows for request bodies.
        let server = match tls_config {
            None => server.listen(listener)?,
            // ALPN: actix offers `h2`, then `http/1.1`.
            Some(tls_config) => server.listen_rustls_0_23(listener, tls_config)?,
        };
        let port = server
            .addrs()
            .first()
            .map_or(config.port, |address| address.port());
        let server = server.run();
        let watched = Arc::new(Watch::default());
        watch(broadcaster.clone(), server.handle(), watched.clone());

        let shutdown = Shutdown {
            server: server.handle(),
            broadcaster,
            drain: config.shutdown_drain,
            reader,
            watch: watched.clone(),
        };
        Ok(Self {
            port,
            server,
            shutdown,
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
        self.server.await?;
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
