//! What identifies an open stream and what may change about it while it
//! stays open: the token it answers to.

use super::{Channel, ChannelPattern, UserId};

/// A stream's identity, reported to the client as `client_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub uuid::Uuid);

impl ClientId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

/// A fresh token for an open stream (`POST /api/streams/{id}/token`).
#[derive(Clone, Debug)]
pub struct TokenRefresh {
    pub id: ClientId,
    pub user: UserId,
    /// The fresh token's `channels` claim.
    pub patterns: Vec<ChannelPattern>,
    /// The fresh token's `exp`.
    pub expires_at: u64,
    /// `exp` plus the leeway that admitted it.
    pub valid_until: u64,
    /// The fresh token's `jti`: from now on, revoking it ends the stream.
    pub token_id: Option<String>,
}

/// Why a stream's token could not be replaced.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    /// No such stream here, or it is another user's.
    NotFound,
    /// The new token does not allow this channel of the stream.
    ChannelNotAllowed(Channel),
}
