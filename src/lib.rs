//! Herald: a Server-Sent Events notification server.
//!
//! # Map of the crate
//!
//! - [`config`]: every setting, its environment variable and default.
//! - [`clock`]: the wall clock, read in one place.
//! - [`domain`]: validated names (users, channels, event names, ids), the
//!   events built from them (`Outgoing`, `Stamped`, `Audience`,
//!   `AudienceKey`, `Published`) and what identifies a stream and its token
//!   (`ClientId`, `TokenRefresh`).
//! - [`sse`]: the wire format (encoder, and a parser for clients).
//! - [`auth`]: tokens. `auth/keys.rs`: the keys that check and sign them
//!   (a secret, a PEM public key, an identity provider's key set) and their
//!   algorithm; `auth/verify.rs`: the `Verifier` (claims, the `Identity` a
//!   token gives, minting); `auth/extract.rs`: where a request's token is
//!   read, the `Origin` rule for writes, and the extractors.
//! - [`jwks`]: an identity provider's keys, fetched and cached by `kid`.
//! - [`error`]: the one JSON error shape.
//! - [`eventlog`]: where events live, behind one boundary (`EventLog`: in
//!   memory, the embedded SQLite store, or Redis): ids, appends, revocation
//!   records, evictions, and the flow each one hands on in order.
//! - [`broadcaster`]: the actor and its plain `Hub`, which owns every stream,
//!   the `Directory` of users and channels, the retained history and the
//!   expiries; the actor adds messages and timers, on a thread of its own.
//! - [`notifier`]: the one facade routes talk to, joining the log and the
//!   Broadcaster.
//! - [`routes`]: the HTTP endpoints.
//! - [`metrics`]: counters, `/api/stats` and `/metrics`.
//! - [`logging`]: the log's format (`LOG_FORMAT`: plain text or JSON lines).
//! - [`revocations`]: revoked users and tokens, checked on every request.
//! - [`tickets`]: single-use stream tickets, so no token need be in a URL.
//! - [`tls`]: the HTTPS certificate and key, and their reload on `SIGHUP`.
//! - [`startup`]: `Application`: bind (HTTP, or HTTPS with HTTP/2), build
//!   the log, start the Broadcaster, serve, stop.
//!
//! # The path of an event
//!
//! `POST /api/send` is authenticated by the `auth::Admin` extractor
//! (`auth/extract.rs`, checking the token with `auth/verify.rs`); the
//! handler validates the body into `domain::Outgoing` events and hands them
//! to `notifier::Notifier::publish`, which counts their recipients from the
//! Broadcaster's `Directory` and appends them to the `eventlog::EventLog`.
//! The log gives them their ids (this node's sequence, or Redis's) and
//! hands them, in order, to the `broadcaster::Broadcaster` as `Deliver`: at
//! once in memory, after the commit with the embedded store, and through
//! every node's reader with Redis. The Hub encodes each event's SSE frame
//! once and pushes the same shared bytes into the bounded `Outbox` of every
//! matching stream (a union, once each), then keeps it in history for
//! resume. Each stream's response body (`ClientStream`) is woken, takes
//! everything queued in one chunk, and actix writes it to the socket; the
//! browser's `EventSource` fires the named event. `docs/architecture.md`
//! tells the same path at length.

mod auth;
mod broadcaster;
pub mod cli;
mod clock;
mod config;
mod domain;
mod error;
mod eventlog;
mod jwks;
pub mod logging;
mod metrics;
mod notifier;
mod revocations;
mod routes;
pub mod sse;
mod startup;
mod tickets;
mod tls;

// What the binary, the tests and the examples use; everything else is private.
pub use auth::{TokenSource, Verifier};
pub use clock::unix_now;
pub use config::DEFAULT_DEMO_TOKEN_TTL_SECS as DEMO_TOKEN_TTL_SECS;
pub use config::{raise_open_file_limit, Config, Scheduling};
pub use domain::EventId;
pub use startup::{Application, Shutdown};
pub use tls::Certificates;
