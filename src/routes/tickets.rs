//! `POST /api/tickets`: buy a single-use ticket that opens one stream.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::tickets::TicketError;

impl From<TicketError> for ApiError {
    fn from(error: TicketError) -> Self {
        match error {
            TicketError::Invalid => Self::InvalidToken(
                "the ticket is unknown, already used, or expired; buy a new one".into(),
            ),
            TicketError::TooMany => Self::TooManyConnections(format!(
                "this user holds {} unused tickets already; open streams with them, \
                 or wait for them to expire",
                crate::tickets::MAX_TICKETS_PER_USER
            )),
            TicketError::Unavailable(why) => {
                log::warn!("tickets: {why}");
                Self::Unavailable("tickets cannot be issued or checked now; try again".into())
            }
        }
    }
}

pub(super) async fn buy(
    identity: Identity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ttl = state.config.ticket_ttl;
    let ticket = state.tickets.issue(&identity, ttl).await?;
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({ "ticket": ticket, "expires_in": ttl.as_secs() })))
}
