//! `GET /api/events`: open an SSE stream.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::auth::{not_revoked, Identity};
use crate::broadcaster::{ClientStream, ConnectError, ConnectionSocket, NewStream, Outbox};
use crate::domain::{truncate_for_message, Channel, ClientId};
use crate::error::ApiError;
use crate::sse;

/// Longest `Last-Event-ID` looked at; anything longer is unknown.
const MAX_LAST_EVENT_ID_LEN: usize = 64;

/// The channels a request asks for: every `channel`, then every `channels`
/// list, in order, without repeats.
fn requested_channels(query: &[(String, String)], limit: usize) -> Result<Vec<Channel>, ApiError> {
    let mut channels: Vec<Channel> = Vec::new();
    let raw = query.iter().flat_map(|(key, value)| match key.as_str() {
        "channel" => vec![value.as_str()],
        "channels" => value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect(),
        _ => Vec::new(),
    });
    for name in raw {
        let channel = Channel::parse(name).map_err(ApiError::BadRequest)?;
        if !channels.contains(&channel) {
            if channels.len() == limit {
                return Err(ApiError::BadRequest(format!(
                    "at most {limit} channels per stream (MAX_CHANNELS_PER_CONNECTION)"
                )));
            }
            channels.push(channel);
        }
    }
    Ok(channels)
}

/// The query string as name/value pairs, in order.
pub(super) fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest(format!("the query string is malformed: {e}")))
}

/// The requested channels, each of which the token's `channels` claim must
/// allow (else 403).
pub(super) fn allowed_channels(
    query: &[(String, String)],
    identity: &Identity,
    limit: usize,
) -> Result<Vec<Channel>, ApiError> {
    let channels = requested_channels(query, limit)?;
    if let Some(denied) = channels.iter().find(|channel| {
        !identity
            .channel_patterns
            .iter()
            .any(|pattern| pattern.allows(channel))
    }) {
        return Err(ApiError::Forbidden(format!(
            "the token does not allow channel {:?}",
            truncate_for_message(denied.as_str())
        )));
    }
    Ok(channels)
}

pub(super) async fn subscribe(
    req: HttpRequest,
    token: Result<Identity, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query_pairs(&req)?;
    // A ticket, when given, is what the stream is opened with. It is
    // looked at, not spent, until the request has passed every check.
    let ticket = query
        .iter()
        .find(|(key, _)| key == "ticket")
        .map(|(_, ticket)| ticket.as_str());
    let identity = match ticket {
        Some(ticket) => not_revoked(&state.revocations, state.tickets.peek(ticket).await?)?,
        None => token?,
    };
    let channels = allowed_channels(&query, &identity, state.config.max_channels_per_connection)?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .or_else(|| {
            query
                .iter()
                .find(|(key, _)| key == "last_event_id")
                .map(|(_, value)| value.clone())
        })
        .filter(|id| !id.is_empty())
        .map(|id| {
            if id.len() > MAX_LAST_EVENT_ID_LEN {
                String::new()
            } else {
                id
            }
        });

    // Spent now, once: a second request racing with the same ticket fails here.
    let spent = match ticket {
        Some(ticket) => Some(state.tickets.redeem(ticket).await?),
        None => None,
    };
    let outbox = Outbox::new(state.config.client_buffer);
    let id = ClientId::random();
    // Created before the actor hears of the stream: if this request is
    // abandoned while waiting, dropping it unregisters the stream.
    let registration = state.notifier.registration(id);
    let connect = NewStream {
        id,
        user: identity.user.clone(),
        channels,
        last_event_id,
        valid_until: identity.valid_until,
        expires_at: identity.expires_at,
        token_id: identity.token_id.clone(),
        issued_at: identity.issued_at,
        outbox: outbox.clone(),
    };
    let preamble = sse::retry(state.config.sse_retry_ms);
    match state.notifier.subscribe(connect).await {
        Ok(connected) => {
            log::debug!(
                "stream {} opened for {:?} (replayed {}, recovered {})",
                id.0,
                identity.user.as_str(),
                connected.replayed,
                connected.recovered
            );
            let body = ClientStream::new(
                outbox,
                req.conn_data::<ConnectionSocket>().copied(),
                preamble,
                state.metrics.clone(),
                Box::new(registration),
            );
            let mut response = sse_response().streaming(body);
            if req.version() == actix_web::http::Version::HTTP_10 {
                // HTTP/1.0 has no chunked encoding: the body runs until the
                // connection closes, as a 1.0 client reads it.
                let head = response.head_mut();
                head.no_chunking(true);
                head.set_connection_type(actix_web::http::ConnectionType::Close);
            }
            Ok(response)
        }
        Err(ConnectError::TooManyConnections(message)) => {
            if let Some(spent) = spent {
                // Refused for the server's limits, not the ticket's fault.
                state.tickets.give_back(spent).await;
            }
            state
                .metrics
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ApiError::TooManyConnections(message))
        }
        Err(ConnectError::Revoked) => Err(ApiError::TokenRevoked),
        Err(ConnectError::Internal(cause)) => Err(ApiError::Internal(cause)),
        // Shutting down: an error status would make a browser's EventSource
        // give up for good; an empty stream makes it retry, on a new connection.
        Err(ConnectError::ShuttingDown) => Ok(sse_response()
            .insert_header((header::CONNECTION, "close"))
            .body(preamble)),
    }
}

fn sse_response() -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    response
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
    fn channels_merge_both_parameters_in_order_without_repeats() {
        let got = requested_channels(
            &pairs(&[("channel", "a"), ("channels", "b, c,,a"), ("channel", "d")]),
            64,
        )
        .unwrap();
        let names: Vec<&str> = got.iter().map(Channel::as_str).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn too_many_or_invalid_channels_are_bad_requests() {
        assert!(matches!(
            requested_channels(&pairs(&[("channels", "a,b,c")]), 2),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            requested_channels(&pairs(&[("channel", "no spaces")]), 2),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            requested_channels(&pairs(&[("channel", "")]), 2),
            Err(ApiError::BadRequest(_))
        ));
    }
}
