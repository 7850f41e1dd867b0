//! Where published events travel before they reach the Broadcaster.
//!
//! In memory (the default) the local Broadcaster assigns ids and delivers.
//! Handlers only see [`EventBus`], so a shared flow for many nodes plugs in
//! here without touching them or the actor.

pub mod redis;

use actix::Addr;

use crate::broadcaster::{Broadcaster, Outgoing, Publish, Published};
use crate::error::ApiError;

/// The event flow this node publishes into.
#[derive(Clone)]
pub enum EventBus {
    /// One process: ids and history live in the Broadcaster.
    Memory(Addr<Broadcaster>),
    /// Many processes: ids and history live in a Redis stream.
    Redis(redis::RedisBus),
}

impl EventBus {
    /// Publishes events in order; answers once each has an id and is queued locally.
    pub async fn publish(&self, events: Vec<Outgoing>) -> Result<Vec<Published>, ApiError> {
        match self {
            Self::Memory(broadcaster) => broadcaster
                .send(Publish { events })
                .await
                .map_err(|_| ApiError::Unavailable("the server is shutting down".into())),
            Self::Redis(bus) => bus.publish(events).await,
        }
    }

    /// Whether the flow can accept events now.
    pub async fn healthy(&self) -> Result<(), String> {
        match self {
            Self::Memory(broadcaster) if broadcaster.connected() => Ok(()),
            Self::Memory(_) => Err("the broadcaster has stopped".into()),
            Self::Redis(bus) => bus.healthy().await,
        }
    }
}
