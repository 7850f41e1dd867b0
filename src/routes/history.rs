//! `GET /api/history`: the caller's retained events, newest first, for
//! rendering a notification list when a page loads.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::value::RawValue;

use super::events::{allowed_channels, query_pairs};
use super::AppState;
use crate::auth::Identity;
use crate::broadcaster::HistoryEntry;
use crate::clock;
use crate::domain::EventId;
use crate::error::ApiError;

/// Events per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 50;
/// Most events one page may ask for.
const MAX_LIMIT: usize = 500;

/// One event as the list shows it.
#[derive(Serialize)]
struct Listed {
    id: String,
    event: String,
    /// The event's JSON data, as published.
    data: Box<RawValue>,
    published_at: String,
}

#[derive(Serialize)]
struct Page {
    events: Vec<Listed>,
    more: bool,
}

/// The last value of `name` in the query, if any.
fn last_value<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// `limit` (1–500, default 50) and `before` (an event id), or a 400.
fn paging(query: &[(String, String)]) -> Result<(usize, Option<EventId>), ApiError> {
    let limit = match last_value(query, "limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    let before = match last_value(query, "before") {
        None => None,
        Some(raw) => Some(raw.parse::<EventId>().map_err(|()| {
            ApiError::BadRequest("before must be an event id, as sent in `id:`".into())
        })?),
    };
    Ok((limit, before))
}

/// A retained event as the list shows it: its stored name and data.
fn listed(entry: HistoryEntry) -> Result<Listed, ApiError> {
    let data = RawValue::from_string(entry.data)
        .map_err(|e| ApiError::Internal(format!("retained event {}: {e}", entry.id)))?;
    Ok(Listed {
        id: entry.id.to_string(),
        event: entry.name,
        data,
        published_at: clock::rfc3339(entry.published_at),
    })
}

pub(super) async fn list(
    req: HttpRequest,
    identity: Identity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query_pairs(&req)?;
    let channels = allowed_channels(&query, &identity, state.config.max_channels_per_connection)?;
    let (limit, before) = paging(&query)?;
    let page = state
        .notifier
        .history(identity.user, channels, before, limit)
        .await?;
    let events = page
        .events
        .into_iter()
        .map(listed)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(Page {
            events,
            more: page.more,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(raw: &[(&str, &str)]) -> Vec<(String, String)> {
        raw.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paging_defaults_and_bounds() {
        assert_eq!(paging(&[]).unwrap(), (50, None));
        assert_eq!(
            paging(&pairs(&[("limit", "500"), ("before", "12-3")])).unwrap(),
            (500, Some(EventId::new(12, 3)))
        );
        for bad in [
            ("limit", "0"),
            ("limit", "501"),
            ("limit", "-1"),
            ("limit", "ten"),
            ("before", "yesterday"),
            ("before", ""),
        ] {
            assert!(
                matches!(paging(&pairs(&[bad])), Err(ApiError::BadRequest(_))),
                "{bad:?} is out of range"
            );
        }
    }
}
