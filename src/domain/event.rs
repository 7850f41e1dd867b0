//! Events as they travel through Herald: before an id ([`Outgoing`]), with
//! one ([`Stamped`]), who they are for ([`Audience`]), and what publishing
//! one did ([`Published`]).
//!
//! These know nothing of HTTP, actors or Redis; the routes build them, the
//! event buses carry them, the Broadcaster delivers them.

use serde::Serialize;

use super::{Channel, EventId, EventName, UserId};

/// Who an event is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    /// A union: a stream matching any user or any channel receives it once.
    Targets {
        users: Box<[UserId]>,
        channels: Box<[Channel]>,
    },
}

/// An event to publish, before it has an id.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub name: EventName,
    /// Compact JSON text (never holds a raw line break).
    pub data: String,
    pub audience: Audience,
}

/// An event with its id, as it is delivered.
#[derive(Clone, Debug)]
pub struct Stamped {
    pub id: EventId,
    pub event: Outgoing,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub published_at: u64,
}

/// What publishing one event did on this node: the publish answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Published {
    pub id: String,
    /// Streams on this node the event was (or will at once be) queued to.
    pub recipients: usize,
}

/// One audience's index key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AudienceKey {
    Everyone,
    User(UserId),
    Channel(Channel),
}

impl AudienceKey {
    /// The indexes an event published to `audience` is listed in.
    pub fn of(audience: &Audience) -> Vec<Self> {
        match audience {
            Audience::Everyone => vec![Self::Everyone],
            Audience::Targets { users, channels } => users
                .iter()
                .cloned()
                .map(Self::User)
                .chain(channels.iter().cloned().map(Self::Channel))
                .collect(),
        }
    }

    /// The indexes a stream of `user` on `channels` reads.
    pub fn of_stream(user: &UserId, channels: &[Channel]) -> Vec<Self> {
        std::iter::once(Self::User(user.clone()))
            .chain(channels.iter().cloned().map(Self::Channel))
            .chain(std::iter::once(Self::Everyone))
            .collect()
    }
}
