//! Counters shared by the Broadcaster and the streams, and their two
//! renderings: the `/api/stats` JSON and the `/metrics` Prometheus text.
//!
//! The counts of what is open ([`Snapshot`]) are defined here and filled in
//! by whoever owns the streams (the Broadcaster's `Directory`, read without
//! the actor), so this module depends on nothing above it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

/// Counts of what is open at one moment, for stats and metrics.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Open streams.
    pub connections: usize,
    /// Users with at least one open stream.
    pub users: usize,
    /// Channels with at least one subscriber.
    pub channel_count: usize,
    /// Open streams subscribed to each channel (on `/metrics`, the busiest
    /// only: see `routes::health`).
    pub channels: BTreeMap<String, usize>,
    /// Events retained for resume and `/api/history`.
    pub history_len: usize,
    /// Bytes charged for them (bounded by `HISTORY_MAX_BYTES`).
    pub history_bytes: usize,
}

/// Monotonic counters, updated without locks from any thread.
pub struct Metrics {
    /// When this server started.
    pub started: Instant,
    /// Events that received an id on this node (published here or arriving from the shared flow).
    pub events_published: AtomicU64,
    /// Event frames handed to a stream's connection (replay included).
    pub events_delivered: AtomicU64,
    /// Streams ended by the slow-consumer policy.
    pub slow_client_disconnects: AtomicU64,
    /// Streams opened since start.
    pub connections_opened: AtomicU64,
    /// Stream requests refused with 429.
    pub connections_refused: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            events_published: AtomicU64::new(0),
            events_delivered: AtomicU64::new(0),
            slow_client_disconnects: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The `/api/stats` body.
    pub fn stats_json(&self, snapshot: &Snapshot) -> serde_json::Value {
        json!({
            "connections": snapshot.connections,
            "users": snapshot.users,
            "channels": snapshot.channels,
            "channel_count": snapshot.channel_count,
            "events_published": Self::read(&self.events_published),
            "events_delivered": Self::read(&self.events_delivered),
            "slow_client_disconnects": Self::read(&self.slow_client_disconnects),
            "connections_opened": Self::read(&self.connections_opened),
            "connections_refused": Self::read(&self.connections_refused),
            "history_len": snapshot.history_len,
            "history_bytes": snapshot.history_bytes,
            "uptime_secs": self.started.elapsed().as_secs(),
        })
    }

    /// The `/metrics` body, in the Prometheus text format.
    pub fn prometheus_text(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("herald");
        let gauge = |value: usize| {
            let gauge = Gauge::<i64>::default();
            gauge.set(value as i64);
            gauge
        };
        let counter = |value: u64| {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            counter
        };
        registry.register(
            "connections",
            "Open SSE streams",
            gauge(snapshot.connections),
        );
        registry.register(
            "users",
            "Users with at least one open stream",
            gauge(snapshot.users),
        );
        registry.register(
            "channels",
            "Channels with at least one subscriber",
            gauge(snapshot.channel_count),
        );
        registry.register(
            "history_events",
            "Events retained for resume",
            gauge(snapshot.history_len),
        );
        registry.register(
            "history_bytes",
            "Bytes of retained events (bounded by HISTORY_MAX_BYTES)",
            gauge(snapshot.history_bytes),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since start",
            gauge(self.started.elapsed().as_secs() as usize),
        );
        registry.register(
            "events_published",
            "Events published",
            counter(Self::read(&self.events_published)),
        );
        registry.register(
            "events_delivered",
            "Event frames written to streams",
            counter(Self::read(&self.events_delivered)),
        );
        registry.register(
            "slow_client_disconnects",
            "Streams ended for falling CLIENT_BUFFER events behind",
            counter(Self::read(&self.slow_client_disconnects)),
        );
        registry.register(
            "connections_opened",
            "Streams opened",
            counter(Self::read(&self.connections_opened)),
        );
        registry.register(
            "connections_refused",
            "Stream requests refused (429)",
            counter(Self::read(&self.connections_refused)),
        );
        let subscribers = Family::<Vec<(String, String)>, Gauge<i64>>::default();
        for (channel, count) in &snapshot.channels {
            subscribers
                .get_or_create(&vec![("channel".to_owned(), channel.clone())])
                .set(*count as i64);
        }
        registry.register(
            "channel_subscribers",
            "Open streams subscribed to each channel",
            subscribers,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
