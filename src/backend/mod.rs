//! Where published events travel before they reach the Broadcaster.
//!
//! In memory (the default) the local Broadcaster assigns ids and delivers.
//! Handlers only see [`EventBus`] and its [`BusError`], so a shared flow for
//! many nodes plugs in here without touching them or the actor.

pub(crate) mod redis;

use std::fmt;

use actix::Addr;

use crate::broadcaster::{Broadcaster, Publish, Refresh, RefreshError, Revoke};
use crate::domain::{Outgoing, Published};
use crate::revocations::Revocation;
use crate::store::StoreError;

/// Why the event flow could not take events.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BusError {
    /// The shared store is unreachable or did not answer in time; retrying
    /// later may work.
    Unreachable(String),
    /// The server is stopping: the Broadcaster no longer takes messages.
    Stopped,
    /// The events could not be written to disk (full, or failing).
    NotWritten(String),
    /// An event could not be written in the flow's format (a fault of ours).
    Encoding(String),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "the event store is unreachable: {why}"),
            Self::Stopped => f.write_str("the server is shutting down"),
            Self::NotWritten(why) => write!(f, "the event store could not write: {why}"),
            Self::Encoding(why) => write!(f, "an event could not be encoded: {why}"),
        }
    }
}

/// Why a stream's token could not be refreshed.
#[derive(Debug)]
pub(crate) enum RefreshFailure {
    /// The stream's node refused it (or no node holds the stream).
    Refused(RefreshError),
    /// The flow could not carry the request.
    Bus(BusError),
}

/// The event flow this node publishes into.
#[derive(Clone)]
pub(crate) enum EventBus {
    /// One process: ids and history live in the Broadcaster.
    Memory(Addr<Broadcaster>),
    /// Many processes: ids and history live in a Redis stream.
    Redis(Box<redis::RedisBus>),
}

impl EventBus {
    /// Publishes events in order; answers once each has an id and is queued locally.
    pub async fn publish(&self, events: Vec<Outgoing>) -> Result<Vec<Published>, BusError> {
        match self {
            Self::Memory(broadcaster) => match broadcaster.send(Publish { events }).await {
                Ok(Ok(published)) => Ok(published),
                Ok(Err(StoreError::Stopped)) | Err(_) => Err(BusError::Stopped),
                Ok(Err(error)) => Err(BusError::NotWritten(error.to_string())),
            },
            Self::Redis(bus) => bus.publish(events).await,
        }
    }

    /// Records a revocation where the flow keeps state (the durable store, or
    /// Redis) and ends the streams it covers (on every node, with Redis).
    pub async fn revoke(&self, revocation: Revocation, at: u64) -> Result<(), BusError> {
        match self {
            Self::Memory(broadcaster) => {
                let revoke = Revoke {
                    revocation,
                    at,
                    persist: true,
                };
                match broadcaster.send(revoke).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(StoreError::Stopped)) | Err(_) => Err(BusError::Stopped),
                    Ok(Err(error)) => Err(BusError::NotWritten(error.to_string())),
                }
            }
            Self::Redis(bus) => bus.revoke(&revocation, at).await,
        }
    }

    /// Gives a stream a fresh token, on whichever node holds it.
    pub async fn refresh(&self, refresh: Refresh) -> Result<(), RefreshFailure> {
        match self {
            Self::Memory(broadcaster) => match broadcaster.send(refresh).await {
                Ok(result) => result.map_err(RefreshFailure::Refused),
                Err(_) => Err(RefreshFailure::Bus(BusError::Stopped)),
            },
            Self::Redis(bus) => bus.refresh(refresh).await,
        }
    }

    /// Whether the flow can accept events now.
    pub async fn healthy(&self) -> Result<(), BusError> {
        match self {
            Self::Memory(broadcaster) if broadcaster.connected() => Ok(()),
            Self::Memory(_) => Err(BusError::Stopped),
            Self::Redis(bus) => bus.healthy().await,
        }
    }
}
