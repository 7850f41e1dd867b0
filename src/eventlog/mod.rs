//! The event log: where events live. One boundary, three implementations
//! ([`EventLog`]):
//!
//! - [`memory`]: a single node's events in memory only (`STORAGE=memory`);
//! - [`sqlite`]: a single node's embedded store under `DATA_DIR` (the default);
//! - [`redis`]: a Redis stream shared by every node (`REDIS_URL`).
//!
//! Each one appends events (giving them their ids, in order, from the
//! [`IdSource`] fixed when the log is built), records revocations, deletes
//! what retention dropped, and *follows*: it hands every event and every
//! revocation, in log order, to one [`Sink`] (the Broadcaster), which fans
//! them out and keeps the recent ones for resume and history. A single node
//! hands on what it appended itself; with Redis, a reader on every node
//! hands on what any node appended. Nothing here knows of actors or HTTP:
//! the sink and the local token refresh are functions the wiring provides.

pub(crate) mod idempotency;
mod ids;
pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) use ids::{new_epoch, IdSource, Sequencer};
pub(crate) use sqlite::{Loaded, Store, StoreError};

use crate::domain::{AudienceKey, EventId, Outgoing, RefreshError, Stamped, TokenRefresh};
use crate::revocations::Revocation;

/// The bounds every audience's retained history keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetentionLimits {
    /// Newest events kept per audience; 0 keeps none.
    pub per_audience: usize,
    /// Oldest event kept, in milliseconds of age.
    pub ttl_ms: u64,
    /// Bytes of frames and index entries kept in all.
    pub max_bytes: usize,
}

/// One entry of the log, as it is handed on.
#[derive(Clone, Debug)]
pub(crate) enum FlowItem {
    Event(Stamped),
    /// End the streams this covers (it is already recorded and in force).
    Revoke(Revocation),
}

/// What the log hands to its [`Sink`].
#[derive(Debug)]
pub(crate) enum Flow {
    /// The next entries, in log order. `position`: in a shared flow, the
    /// newest entry read so far (controls included).
    Items {
        items: Vec<FlowItem>,
        position: Option<EventId>,
    },
    /// A shared flow's retained events from before this node started,
    /// oldest first, to keep without delivering; what each audience had
    /// already lost; the id before which anything may have expired unseen;
    /// and the flow's position when they were read.
    Preload {
        events: Vec<Stamped>,
        lost: Vec<(AudienceKey, EventId)>,
        horizon: EventId,
        position: EventId,
    },
}

/// Whoever the flow is handed to has stopped for good (the server is
/// stopping).
#[derive(Debug)]
pub(crate) struct SinkStopped;

/// Takes the flow, in order. Called from whichever thread appends (or the
/// reader's task); must not block.
pub(crate) type Sink = Arc<dyn Fn(Flow) -> Result<(), SinkStopped> + Send + Sync>;

/// A future the log can hold across threads.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Gives a stream held on this node a fresh token (the Broadcaster's
/// `Refresh`), for requests that arrive from other nodes.
pub(crate) type LocalRefresh = Arc<
    dyn Fn(TokenRefresh) -> BoxFuture<Result<Result<(), RefreshError>, SinkStopped>> + Send + Sync,
>;

/// Why the log could not take something.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogError {
    /// The shared store is unreachable or did not answer in time; retrying
    /// later may work.
    Unreachable(String),
    /// The server is stopping.
    Stopped,
    /// The events could not be written to disk (full, or failing).
    NotWritten(String),
    /// An event could not be written in the log's format (a fault of ours).
    Encoding(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "the event store is unreachable: {why}"),
            Self::Stopped => f.write_str("the server is shutting down"),
            Self::NotWritten(why) => write!(f, "the event store could not write: {why}"),
            Self::Encoding(why) => write!(f, "an event could not be encoded: {why}"),
        }
    }
}

impl From<StoreError> for LogError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Stopped => Self::Stopped,
            other => Self::NotWritten(other.to_string()),
        }
    }
}

impl From<SinkStopped> for LogError {
    fn from(_: SinkStopped) -> Self {
        Self::Stopped
    }
}

/// Where this node's events live.
pub(crate) enum EventLog {
    Memory(memory::MemoryLog),
    Sqlite(sqlite::SqliteLog),
    Redis(Box<redis::RedisLog>),
}

impl EventLog {
    /// Appends events in order and answers their ids once the log keeps
    /// them as it promises (in memory; written to the store; in Redis).
    /// With `remember`, a durable log keeps the idempotency record of the
    /// answer with the events, atomically.
    pub async fn append(
        &self,
        events: Vec<Outgoing>,
        remember: Option<&idempotency::Remember>,
    ) -> Result<idempotency::Appended, LogError> {
        use idempotency::Appended;
        match self {
            // The node's own table is all a memory log keeps.
            Self::Memory(log) => log.append(events).map(Appended::New),
            Self::Sqlite(log) => log.append(events, remember).await.map(Appended::New),
            Self::Redis(log) => log.append(events, remember).await,
        }
    }

    /// Records a revocation made at `at` (Unix seconds) where the log keeps
    /// state, and ends the streams it covers (on every node, with Redis)
    /// through the flow, after every event appended before it.
    pub async fn revoke(&self, revocation: Revocation, at: u64) -> Result<(), LogError> {
        match self {
            Self::Memory(log) => log.revoke(revocation),
            Self::Sqlite(log) => log.revoke(revocation, at).await,
            Self::Redis(log) => log.revoke(&revocation, at).await,
        }
    }

    /// Asks the other nodes to give a stream a fresh token (this node was
    /// asked first and does not hold it). A single node has no others.
    pub async fn refresh_elsewhere(&self, refresh: TokenRefresh) -> Result<(), RefreshFailure> {
        match self {
            Self::Memory(_) | Self::Sqlite(_) => {
                Err(RefreshFailure::Refused(RefreshError::NotFound))
            }
            Self::Redis(log) => log.refresh_elsewhere(refresh).await,
        }
    }

    /// Whether the log can take events now.
    pub async fn healthy(&self) -> Result<(), LogError> {
        match self {
            Self::Memory(log) => log.healthy(),
            Self::Sqlite(log) => log.healthy(),
            Self::Redis(log) => log.healthy().await,
        }
    }

    /// The shared Redis connection, for other cluster-wide state (tickets).
    pub fn redis(&self) -> Option<&redis::RedisLog> {
        match self {
            Self::Redis(log) => Some(log),
            _ => None,
        }
    }
}

/// Why a stream's token could not be refreshed.
#[derive(Debug)]
pub(crate) enum RefreshFailure {
    /// The stream's node refused it (or no node holds the stream).
    Refused(RefreshError),
    /// The log could not carry the request.
    Log(LogError),
}
