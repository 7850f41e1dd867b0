//! Herald: a Server-Sent Events notification server.
//!
//! # Map of the crate
//!
//! - [`config`]: every setting, its environment variable and default.
//! - [`domain`]: validated names: users, channels, event names and ids.
//! - [`sse`]: the wire format (encoder, and a parser for clients).
//! - [`auth`]: where tokens are read, how they are validated, the extractors.
//! - [`error`]: the one JSON error shape.
//! - [`broadcaster`]: the actor owning every stream, the maps, history, heartbeat.
//! - [`backend`]: the event flow publishing goes through (in memory, or shared).
//! - [`routes`]: the HTTP endpoints.
//! - [`metrics`]: counters, `/api/stats` and `/metrics`.
//! - [`startup`]: `Application`: bind, start, serve, stop.
//!
//! # The path of an event
//!
//! `POST /api/send` is authenticated by the [`auth::Admin`] extractor; the
//! handler validates the body into [`broadcaster::Outgoing`] events and hands
//! them to the [`backend::EventBus`]. In memory, that is one `Publish` message
//! to the [`broadcaster::Broadcaster`], which gives each event its id, encodes
//! its SSE frame once, and pushes the same shared bytes into the bounded
//! [`broadcaster::Outbox`] of every matching stream (a union, once each),
//! then keeps the frame in history for resume. Each stream's response body
//! ([`broadcaster::ClientStream`]) is woken, takes everything queued in one
//! chunk, and actix writes it to the socket; the browser's `EventSource`
//! fires the named event.

pub mod auth;
pub mod backend;
pub mod broadcaster;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod sse;
pub mod startup;

// What the binary, the tests and the examples use.
pub use auth::{unix_now, TokenSource, Verifier};
pub use config::{raise_open_file_limit, Config};
pub use domain::EventId;
pub use routes::demo::DEMO_TOKEN_TTL_SECS;
pub use startup::{Application, Shutdown};
