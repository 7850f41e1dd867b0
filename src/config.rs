//! Every setting Herald reads, its environment variable and its default.
//!
//! Read once at start ([`Config::from_env`]) and validated there, so the rest
//! of the server never sees a bad value. Tests build a [`Config`] directly and
//! shorten timings through it.

use std::env;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 3001;
pub const DEFAULT_SSE_RETRY_MS: u64 = 5000;
pub const DEFAULT_HEARTBEAT_SECS: f64 = 15.0;
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 5;
pub const DEFAULT_TOKEN_EXPIRY_WARNING_SECS: u64 = 60;
pub const DEFAULT_TICKET_TTL_SECS: u64 = 30;
pub const DEFAULT_JWKS_REFETCH_SECS: u64 = 10;
pub const DEFAULT_REVOKE_TTL_SECS: u64 = 86_400;
pub const DEFAULT_IDEMPOTENCY_TTL_SECS: u64 = 86_400;
/// How long a demo sign-in lasts by default: the token's `exp` and the
/// cookie's Max-Age.
pub const DEFAULT_DEMO_TOKEN_TTL_SECS: u64 = 8 * 60 * 60;
pub const DEFAULT_AUTH_COOKIE_NAME: &str = "herald_token";
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 16;
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 64;
pub const DEFAULT_CLIENT_BUFFER: usize = 2048;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_BATCH: usize = 1000;
pub const DEFAULT_HISTORY_PER_AUDIENCE: usize = 1000;
pub const DEFAULT_HISTORY_TTL_SECS: u64 = 86_400;
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 256 * 1024 * 1024;
pub const DEFAULT_DATA_DIR: &str = "./herald-data";
/// How often the embedded store syncs to the disk in `DURABILITY=process` mode.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_REDIS_STREAM_KEY: &str = "herald:events";
pub const DEFAULT_SHUTDOWN_DRAIN_SECS: f64 = 2.0;
/// Descriptors kept free below the open-file limit for listeners, logs, Redis
/// and the requests that must still be answered 429.
pub const FILE_DESCRIPTOR_MARGIN: usize = 512;
/// Shortest HS256 secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The signing algorithms Herald accepts; exactly one is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

/// Token settings.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256 secret. `None` only in development mode, where one is generated.
    pub secret: Option<String>,
    /// PEM public key for RS256/ES256.
    pub public_key_file: Option<PathBuf>,
    /// An identity provider's key set (JWKS) for RS256/ES256, keys chosen
    /// by `kid`; instead of `public_key_file`.
    pub jwks_url: Option<String>,
    /// Least time between two fetches of the key set.
    pub jwks_refetch: Duration,
    /// PEM private key, only for `herald token` with RS256/ES256.
    pub private_key_file: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway_secs: u64,
}

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Actix worker threads; defaults to the cores this process may use.
    pub workers: usize,
    pub sse_retry_ms: u64,
    pub heartbeat_interval: Duration,
    pub jwt: JwtConfig,
    pub auth_cookie_name: String,
    /// Seconds before a token's `exp` that its streams get `token-expiring`.
    pub token_expiry_warning_secs: u64,
    /// How long a stream ticket may wait to be spent.
    pub ticket_ttl: Duration,
    /// How long a revocation refuses the tokens it covers.
    pub revoke_ttl_secs: u64,
    /// How long a publisher's `Idempotency-Key` is remembered.
    pub idempotency_ttl_secs: u64,
    /// Lifetime of the tokens the demo sign-in mints.
    pub demo_token_ttl_secs: u64,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_channels_per_connection: usize,
    pub client_buffer: usize,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Events kept per user, per channel and for everyone; 0 keeps none.
    pub history_per_audience: usize,
    /// Oldest event kept.
    pub history_ttl: Duration,
    /// Bytes of retained events in all (memory, and about the store's size).
    pub history_max_bytes: usize,
    /// Where retained events live on a single node.
    pub storage: Storage,
    /// What a `202` from the embedded store promises (`DURABILITY`).
    pub durability: Durability,
    /// How often the embedded store syncs what it wrote (`SYNC_INTERVAL_MS`):
    /// in `process` mode, the most a power loss can take.
    pub sync_interval: Duration,
    pub cors_allowed_origins: Vec<String>,
    pub redis_url: Option<String>,
    /// The Redis stream all nodes of one cluster share.
    pub redis_stream_key: String,
    pub demo_login: bool,
    /// Streams are ended spread over this window at shutdown.
    pub shutdown_drain: Duration,
    /// The certificate and key to serve HTTPS with; plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// How the kernel schedules Herald's threads (`SCHEDULING`).
    pub scheduling: Scheduling,
    /// How log lines are written (`LOG_FORMAT`).
    pub log_format: crate::logging::LogFormat,
}

/// The kernel scheduling policy of Herald's threads (`SCHEDULING`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// `SCHED_BATCH` (the default): a Herald thread that wakes another does
    /// not hand it the core at once, so a worker finishes the requests it
    /// has before the Broadcaster runs, and the Broadcaster handles every
    /// message waiting for it in one go. Fewer context switches per request;
    /// see docs/performance.md for the measurement.
    Batch,
    /// The kernel's default policy (`SCHED_OTHER`).
    Normal,
}

/// Where the TLS certificate and its key are (`TLS_CERT_FILE`,
/// `TLS_KEY_FILE`): both PEM, read at start and again on `SIGHUP`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, then any intermediates it needs.
    pub cert_file: PathBuf,
    /// The private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Where a single node keeps its retained events (`STORAGE`). With
/// `REDIS_URL`, Redis holds them instead and this is not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// An embedded store in this directory (`DATA_DIR`): survives restarts.
    Disk(PathBuf),
    /// Memory only: a restart forgets everything.
    Memory,
}

/// What a `202` from the embedded store promises (`DURABILITY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The event is written through to the operating system before the
    /// `202` and before any stream gets it; a background sync every
    /// `SYNC_INTERVAL_MS` puts it on the disk. A crash of Herald loses
    /// nothing; a power loss at most that interval.
    Process,
    /// The event is synced to the disk before the `202` (one sync shared
    /// by the publishes that arrive together).
    Disk,
}

/// A setting that could not be used, with the variable it came from.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the environment (and `.env`, when the binary loaded it).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads settings through `lookup`, so tests can pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name);
        let parsed = |name: &str| -> Result<Option<u64>, ConfigError> {
            get(name)
                .map(|raw| {
                    raw.trim().parse::<u64>().map_err(|_| {
                        ConfigError(format!("{name} must be a whole number, got {raw:?}"))
                    })
                })
                .transpose()
        };
        let seconds = |name: &str, default: f64| -> Result<Duration, ConfigError> {
            let value = match get(name) {
                Some(raw) => raw.trim().parse::<f64>().map_err(|_| {
                    ConfigError(format!("{name} must be a number of seconds, got {raw:?}"))
                })?,
                None => default,
            };
            if !(value > 0.0 && value < 86_400.0) {
                return Err(ConfigError(format!(
                    "{name} must be between 0 and 86400 seconds"
                )));
            }
            Ok(Duration::from_secs_f64(value))
        };
        let positive = |name: &str, default: usize| -> Result<usize, ConfigError> {
            let value = parsed(name)?.map_or(default, |v| v as usize);
            if value == 0 {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
            Ok(value)
        };

        let algorithm = match get("JWT_ALGORITHM").as_deref().map(str::trim) {
            None | Some("HS256") => JwtAlgorithm::Hs256,
            Some("RS256") => JwtAlgorithm::Rs256,
            Some("ES256") => JwtAlgorithm::Es256,
            Some(other) => {
                return Err(ConfigError(format!(
                    "JWT_ALGORITHM must be HS256, RS256 or ES256, got {other:?}"
                )))
            }
        };
        let secret = get("JWT_SECRET");
        if let Some(secret) = &secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(ConfigError(format!(
                    "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long (it is {}); \
                     generate one with `openssl rand -hex 32`",
                    secret.len()
                )));
            }
        }
        if get("HISTORY_SIZE").is_some() {
            return Err(ConfigError(
                "HISTORY_SIZE is no longer read: history is kept per audience. Use \
                 HISTORY_PER_AUDIENCE (events per user, per channel and for everyone), \
                 HISTORY_TTL_SECS and HISTORY_MAX_BYTES"
                    .into(),
            ));
        }
        let scheduling = match get("SCHEDULING").as_deref().map(str::trim) {
            None | Some("batch") => Scheduling::Batch,
            Some("normal") => Scheduling::Normal,
            Some(other) => {
                return Err(ConfigError(format!(
                    "SCHEDULING must be batch or normal, got {other:?}"
                )))
            }
        };
        let storage = match get("STORAGE").as_deref().map(str::trim) {
            None | Some("disk") => Storage::Disk(PathBuf::from(
                get("DATA_DIR").unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            )),
            Some("memory") => Storage::Memory,
            Some(other) => {
                return Err(ConfigError(format!(
                    "STORAGE must be disk or memory, got {other:?}"
                )))
            }
        };
        let durability = match get("DURABILITY").as_deref().map(str::trim) {
            None | Some("process") => Durability::Process,
            Some("disk") => Durability::Disk,
            Some(other) => {
                return Err(ConfigError(format!(
                    "DURABILITY must be process or disk, got {other:?}"
                )))
            }
        };
        let public_key_file = get("JWT_PUBLIC_KEY_FILE").map(PathBuf::from);
        let jwks_url = get("JWT_JWKS_URL");
        if jwks_url.is_some() && algorithm == JwtAlgorithm::Hs256 {
            return Err(ConfigError(
                "JWT_JWKS_URL needs JWT_ALGORITHM=RS256 or ES256 (the algorithm is pinned)".into(),
            ));
        }
        if algorithm != JwtAlgorithm::Hs256 && public_key_file.is_none() && jwks_url.is_none() {
            return Err(ConfigError(
                "JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL is required when JWT_ALGORITHM is RS256 \
                 or ES256"
                    .into(),
            ));
        }
        let jwt = JwtConfig {
            algorithm,
            secret,
            public_key_file,
            jwks_url,
            jwks_refetch: Duration::from_secs(positive(
                "JWT_JWKS_REFETCH_SECS",
                DEFAULT_JWKS_REFETCH_SECS as usize,
            )? as u64),
            private_key_file: get("JWT_PRIVATE_KEY_FILE").map(PathBuf::from),
            audience: get("JWT_AUDIENCE"),
            issuer: get("JWT_ISSUER"),
            leeway_secs: parsed("JWT_LEEWAY_SECS")?.unwrap_or(DEFAULT_JWT_LEEWAY_SECS),
        };
        let development = jwt.algorithm == JwtAlgorithm::Hs256 && jwt.secret.is_none();

        let demo_login = match get("DEMO_LOGIN").as_deref().map(str::trim) {
            None => development,
            Some("1" | "true" | "on" | "yes") => true,
            Some("0" | "false" | "off" | "no") => false,
            Some(other) => {
                return Err(ConfigError(format!(
                    "DEMO_LOGIN must be true or false, got {other:?}"
                )))
            }
        };

        let tls = match (get("TLS_CERT_FILE"), get("TLS_KEY_FILE")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert_file: PathBuf::from(cert),
                key_file: PathBuf::from(key),
            }),
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError(
                    "TLS_CERT_FILE and TLS_KEY_FILE go together: set both to serve HTTPS, \
                     or neither for plain HTTP"
                        .into(),
                ))
            }
        };

        let port = match get("PORT") {
            Some(raw) => raw
                .trim()
                .parse::<u16>()
                .map_err(|_| ConfigError(format!("PORT must be a port number, got {raw:?}")))?,
            None => DEFAULT_PORT,
        };
        let workers = parsed("WORKERS")?
            .map(|w| w as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);

        Ok(Self {
            host: get("HOST").unwrap_or_else(|| DEFAULT_HOST.into()),
            port,
            workers,
            sse_retry_ms: parsed("SSE_RETRY_TIMEOUT")?.unwrap_or(DEFAULT_SSE_RETRY_MS),
            heartbeat_interval: seconds("HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_SECS)?,
            jwt,
            demo_token_ttl_secs: positive(
                "DEMO_TOKEN_TTL_SECS",
                DEFAULT_DEMO_TOKEN_TTL_SECS as usize,
            )? as u64,
            revoke_ttl_secs: positive("REVOKE_TTL_SECS", DEFAULT_REVOKE_TTL_SECS as usize)? as u64,
            idempotency_ttl_secs: positive(
                "IDEMPOTENCY_TTL_SECS",
                DEFAULT_IDEMPOTENCY_TTL_SECS as usize,
            )? as u64,
            ticket_ttl: Duration::from_secs(positive(
                "TICKET_TTL_SECS",
                DEFAULT_TICKET_TTL_SECS as usize,
            )? as u64),
            token_expiry_warning_secs: parsed("TOKEN_EXPIRY_WARNING_SECS")?
                .unwrap_or(DEFAULT_TOKEN_EXPIRY_WARNING_SECS),
            auth_cookie_name: get("AUTH_COOKIE_NAME")
                .unwrap_or_else(|| DEFAULT_AUTH_COOKIE_NAME.into()),
            max_connections: match parsed("MAX_CONNECTIONS")? {
                Some(0) => return Err(ConfigError("MAX_CONNECTIONS must be at least 1".into())),
                Some(n) => n as usize,
                None => default_max_connections(open_file_limit()),
            },
            max_connections_per_user: positive(
                "MAX_CONNECTIONS_PER_USER",
                DEFAULT_MAX_CONNECTIONS_PER_USER,
            )?,
            max_channels_per_connection: positive(
                "MAX_CHANNELS_PER_CONNECTION",
                DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            )?,
            client_buffer: positive("CLIENT_BUFFER", DEFAULT_CLIENT_BUFFER)?,
            max_body_bytes: positive("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?,
            max_batch: positive("MAX_BATCH", DEFAULT_MAX_BATCH)?,
            history_per_audience: parsed("HISTORY_PER_AUDIENCE")?
                .map_or(DEFAULT_HISTORY_PER_AUDIENCE, |v| v as usize),
            history_ttl: Duration::from_secs(positive(
                "HISTORY_TTL_SECS",
                DEFAULT_HISTORY_TTL_SECS as usize,
            )? as u64),
            history_max_bytes: positive("HISTORY_MAX_BYTES", DEFAULT_HISTORY_MAX_BYTES)?,
            storage,
            durability,
            sync_interval: Duration::from_millis(positive(
                "SYNC_INTERVAL_MS",
                DEFAULT_SYNC_INTERVAL_MS as usize,
            )? as u64),
            scheduling,
            log_format: crate::logging::LogFormat::parse(get("LOG_FORMAT").as_deref())
                .map_err(ConfigError)?,
            cors_allowed_origins: get("CORS_ALLOWED_ORIGINS")
                .map(|raw| {
                    raw.split(',')
                        .map(|origin| origin.trim().trim_end_matches('/').to_owned())
                        .filter(|origin| !origin.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            redis_url: match get("REDIS_URL") {
                // Checked here, before anything starts; no connection is made.
                Some(url) => match redis::Client::open(url.as_str()) {
                    Ok(_) => Some(url),
                    Err(e) => return Err(ConfigError(format!("REDIS_URL {url:?}: {e}"))),
                },
                None => None,
            },
            redis_stream_key: get("REDIS_STREAM_KEY")
                .unwrap_or_else(|| DEFAULT_REDIS_STREAM_KEY.into()),
            demo_login,
            shutdown_drain: seconds("SHUTDOWN_DRAIN_SECS", DEFAULT_SHUTDOWN_DRAIN_SECS)?,
            tls,
        })
    }

    /// The directory of the embedded store, when this node keeps one.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match (&self.redis_url, &self.storage) {
            (None, Storage::Disk(dir)) => Some(dir),
            _ => None,
        }
    }

    /// True when no key was configured: a random secret is generated at start.
    pub fn is_development(&self) -> bool {
        self.jwt.algorithm == JwtAlgorithm::Hs256 && self.jwt.secret.is_none()
    }
}

/// The soft open-file limit in force (after [`raise_open_file_limit`]).
pub fn open_file_limit() -> usize {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft.min(usize::MAX as u64) as usize)
        .unwrap_or(1024)
}

/// `MAX_CONNECTIONS` by default: a margin below the open-file limit, so the
/// server always has descriptors left to accept and answer 429.
pub fn default_max_connections(open_files: usize) -> usize {
    open_files.saturating_sub(FILE_DESCRIPTOR_MARGIN).max(16)
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_open_file_limit() -> usize {
    // The error case leaves the limit where it was, which open_file_limit reports.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    open_file_limit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = config(&[]).unwrap();
        assert_eq!(config.port, 3001);
        assert_eq!(config.sse_retry_ms, 5000);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(config.jwt.leeway_secs, 5);
        assert_eq!(config.auth_cookie_name, "herald_token");
        assert_eq!(config.max_connections_per_user, 16);
        assert_eq!(config.max_channels_per_connection, 64);
        assert_eq!(config.max_body_bytes, 65536);
        assert_eq!(config.max_batch, 1000);
        assert_eq!(config.history_per_audience, 1000);
        assert_eq!(config.token_expiry_warning_secs, 60);
        assert_eq!(config.ticket_ttl, Duration::from_secs(30));
        assert_eq!(config.revoke_ttl_secs, 86_400);
        assert_eq!(config.idempotency_ttl_secs, 86_400);
        assert_eq!(config.history_ttl, Duration::from_secs(86_400));
        assert_eq!(config.storage, Storage::Disk("./herald-data".into()));
        assert_eq!(config.scheduling, Scheduling::Batch);
        assert_eq!(config.durability, Durability::Process);
        assert_eq!(config.sync_interval, Duration::from_secs(1));
        assert!(config.is_development() && config.demo_login);
    }

    #[test]
    fn durability_and_its_sync_interval_are_checked() {
        let disk = config(&[("DURABILITY", "disk"), ("SYNC_INTERVAL_MS", "250")]).unwrap();
        assert_eq!(disk.durability, Durability::Disk);
        assert_eq!(disk.sync_interval, Duration::from_millis(250));
        let err = config(&[("DURABILITY", "fsync")]).unwrap_err();
        assert!(
            err.0.contains("DURABILITY must be process or disk"),
            "{err}"
        );
        let err = config(&[("SYNC_INTERVAL_MS", "0")]).unwrap_err();
        assert!(err.0.contains("SYNC_INTERVAL_MS"), "{err}");
    }

    #[test]
    fn a_short_secret_stops_start_up_naming_the_variable() {
        let err = config(&[("JWT_SECRET", "too-short")]).unwrap_err();
        assert!(
            err.0.contains("JWT_SECRET") && err.0.contains("32"),
            "{err}"
        );
    }

    #[test]
    fn a_configured_secret_turns_demo_login_off_unless_asked() {
        let secret = "s".repeat(32);
        assert!(!config(&[("JWT_SECRET", &secret)]).unwrap().demo_login);
        assert!(
            config(&[("JWT_SECRET", &secret), ("DEMO_LOGIN", "true")])
                .unwrap()
                .demo_login
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("PORT", "http"),
            ("HEARTBEAT_INTERVAL", "-1"),
            ("CLIENT_BUFFER", "0"),
            ("JWT_ALGORITHM", "none"),
            ("JWT_ALGORITHM", "RS256"),
            ("DEMO_LOGIN", "maybe"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert!(err.0.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key() {
        assert_eq!(config(&[]).unwrap().tls, None);
        let both = config(&[("TLS_CERT_FILE", "c.pem"), ("TLS_KEY_FILE", "k.pem")]).unwrap();
        assert_eq!(
            both.tls,
            Some(TlsFiles {
                cert_file: "c.pem".into(),
                key_file: "k.pem".into()
            })
        );
        for alone in ["TLS_CERT_FILE", "TLS_KEY_FILE"] {
            let err = config(&[(alone, "x.pem")]).unwrap_err();
            assert!(
                err.0.contains("TLS_CERT_FILE") && err.0.contains("TLS_KEY_FILE"),
                "{alone} alone: {err}"
            );
        }
    }

    #[test]
    fn connection_limit_keeps_a_descriptor_margin() {
        assert_eq!(
            default_max_connections(20_000),
            20_000 - FILE_DESCRIPTOR_MARGIN
        );
        assert!(default_max_connections(100) >= 16);
    }
}
