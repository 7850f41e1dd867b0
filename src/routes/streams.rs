//! `POST /api/streams/{client_id}/token`: give an open stream a fresh token,
//! so it outlives the one it was opened with. Works on any node: with Redis,
//! the node holding the stream is reached through the shared flow.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::auth::Identity;
use crate::domain::{truncate_for_message, ClientId, RefreshError, TokenRefresh};
use crate::error::ApiError;
use crate::eventlog::RefreshFailure;

pub(super) async fn refresh_token(
    path: web::Path<String>,
    identity: Identity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Not a stream id at all: as unknown as one that never existed.
    let id = uuid::Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let refresh = TokenRefresh {
        id: ClientId(id),
        user: identity.user,
        patterns: identity.channel_patterns,
        expires_at: identity.expires_at,
        valid_until: identity.valid_until,
        token_id: identity.token_id,
    };
    match state.notifier.refresh(refresh).await {
        Ok(()) => Ok(HttpResponse::NoContent().finish()),
        Err(RefreshFailure::Refused(RefreshError::NotFound)) => Err(ApiError::NotFound),
        Err(RefreshFailure::Refused(RefreshError::ChannelNotAllowed(channel))) => {
            Err(ApiError::Forbidden(format!(
                "the new token does not allow channel {:?} of this stream",
                truncate_for_message(channel.as_str())
            )))
        }
        Err(RefreshFailure::Log(error)) => Err(error.into()),
    }
}
