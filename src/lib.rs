//! Herald: a Server-Sent Events notification server.
//!
//! # Map of the crate
//!
//! - [`config`]: every setting, its environment variable and default.
//! - [`clock`]: the wall clock, read in one place.
//! - [`domain`]: validated names (users, channels, event names, ids) and the
//!   events built from them (`Outgoing`, `Stamped`, `Audience`, `Published`).
//! - [`sse`]: the wire format (encoder, and a parser for clients).
//! - [`auth`]: tokens. `auth/keys.rs`: the keys that check and sign them
//!   (a secret, a PEM public key, an identity provider's key set) and their
//!   algorithm; `auth/verify.rs`: the `Verifier` (claims, the `Identity` a
//!   token gives, minting); `auth/extract.rs`: where a request's token is
//!   read, the `Origin` rule for writes, and the extractors.
//! - [`jwks`]: an identity provider's keys, fetched and cached by `kid`.
//! - [`error`]: the one JSON error shape.
//! - [`broadcaster`]: the actor and its plain `Hub`, which owns every stream,
//!   the maps, history and expiries; the actor adds messages and timers.
//! - [`backend`]: the event flow publishing goes through (in memory, or
//!   Redis), with its own error type.
//! - [`routes`]: the HTTP endpoints.
//! - [`metrics`]: counters, `/api/stats` and `/metrics`.
//! - [`store`]: the durable store of a single node (SQLite under `DATA_DIR`)
//!   and its writer thread, which commits concurrent publishes together.
//! - [`revocations`]: revoked users and tokens, checked on every request.
//! - [`tickets`]: single-use stream tickets, so no token need be in a URL.
//! - [`tls`]: the HTTPS certificate and key, and their reload on `SIGHUP`.
//! - [`startup`]: `Application`: bind (HTTP, or HTTPS with HTTP/2), start,
//!   serve, stop.
//!
//! # The path of an event
//!
//! `POST /api/send` is authenticated by the `auth::Admin` extractor
//! (`auth/extract.rs`, checking the token with `auth/verify.rs`); the
//! handler validates the body into `domain::Outgoing` events and hands them
//! to the `backend::EventBus`. In memory, that is one `Publish` message to the
//! `broadcaster::Broadcaster` actor, whose `Hub` gives each event its id and
//! answers; right after, the Hub encodes the event's SSE frame once and pushes
//! the same shared bytes into the bounded `Outbox` of every matching stream
//! (a union, once each), then keeps the frame in history for resume. With
//! Redis, the bus appends the event to a Redis stream instead, and every
//! node's reader hands it to its own Broadcaster as a `Deliver`. Each
//! stream's response body (`ClientStream`) is woken, takes everything queued
//! in one chunk, and actix writes it to the socket; the browser's
//! `EventSource` fires the named event. `docs/architecture.md` tells the
//! same path at length.

mod auth;
mod backend;
mod broadcaster;
pub mod cli;
mod clock;
mod config;
mod domain;
mod error;
mod jwks;
mod metrics;
mod revocations;
mod routes;
pub mod sse;
mod startup;
mod store;
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
