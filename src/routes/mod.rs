//! HTTP endpoints, one file per group. Handlers parse and authorise; they
//! never touch the Broadcaster's maps, only send it messages.

mod client;
pub(crate) mod demo;
mod events;
mod health;
mod history;
mod publish;
mod revoke;
mod streams;
mod tickets;

use std::sync::Arc;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::config::Config;
use crate::error::ApiError;
use crate::eventlog::LogError;
use crate::metrics::Metrics;
use crate::notifier::Notifier;

/// What every handler may use, registered once as app data.
pub(crate) struct AppState {
    pub config: Arc<Config>,
    /// Stream tickets bought and not yet spent.
    pub tickets: crate::tickets::Tickets,
    /// Users and tokens cut off (also read by the token extractors).
    pub revocations: Arc<crate::revocations::Revocations>,
    /// Publishing, streams, history: the event log and the Broadcaster.
    pub notifier: Notifier,
    pub metrics: Arc<Metrics>,
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::Unreachable(why) => {
                log::warn!("event flow: {why}");
                Self::Unavailable("the event store is unreachable; try again".into())
            }
            LogError::Stopped => Self::Unavailable("the server is shutting down".into()),
            LogError::NotWritten(why) => {
                log::error!("event store: {why}");
                Self::Unavailable(
                    "the event store could not write the event (is its disk full?); \
                     it was not accepted"
                        .into(),
                )
            }
            LogError::Encoding(why) => Self::Internal(why),
        }
    }
}

/// One path served with one method; other methods get the JSON 405.
pub(crate) struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    route: actix_web::Route,
}

impl Endpoint {
    fn new<F, Args>(method: Method, path: &'static str, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        Self {
            method,
            path,
            route: web::route().to(handler),
        }
    }
}

/// Every route Herald serves. The one list both registration and the check
/// that `docs/api.md` documents each of them read.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/api/events", events::subscribe),
        Endpoint::new(Method::GET, "/api/history", history::list),
        Endpoint::new(Method::POST, "/api/send", publish::send),
        Endpoint::new(
            Method::POST,
            "/api/streams/{client_id}/token",
            streams::refresh_token,
        ),
        Endpoint::new(Method::POST, "/api/tickets", tickets::buy),
        Endpoint::new(Method::POST, "/api/revoke", revoke::revoke),
        Endpoint::new(Method::GET, "/api/stats", health::stats),
        Endpoint::new(Method::GET, "/metrics", health::metrics),
        Endpoint::new(Method::GET, "/healthz", health::healthz),
        Endpoint::new(Method::GET, "/herald.js", client::script),
        Endpoint::new(Method::GET, "/", demo::page),
        Endpoint::new(Method::POST, "/demo/login", demo::login),
        Endpoint::new(Method::POST, "/demo/logout", demo::logout),
        Endpoint::new(Method::GET, "/demo/demo.js", demo::script),
        Endpoint::new(Method::GET, "/demo/demo.css", demo::stylesheet),
    ]
}

/// Registers every endpoint; anything else is a JSON 404.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    for endpoint in endpoints() {
        cfg.service(
            web::resource(endpoint.path)
                .route(endpoint.route.method(endpoint.method))
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed)
                })),
        );
    }
    cfg.default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::NotFound)
    }));
}

/// Whether the request's `Content-Type` is `essence` (parameters such as
/// `charset` allowed).
pub(crate) fn content_type_is(req: &HttpRequest, essence: &str) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| mime.essence_str() == essence)
}

/// Reads a JSON request body of at most `limit` bytes (415 for another
/// content type, 413 past the limit).
pub(crate) async fn read_json_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    if !content_type_is(req, "application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    read_body(payload, limit).await
}

/// Reads a request body of at most `limit` bytes; more is a 413, and is not
/// buffered.
pub(crate) async fn read_body(
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, crate::error::ApiError> {
    use crate::error::ApiError;
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(ApiError::BadRequest(format!(
            "the body could not be read: {e}"
        ))),
        Err(_) => Err(ApiError::PayloadTooLarge(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference cannot drift: every route has a heading in `docs/api.md`
    /// naming its method and path, as in ``## `GET /api/events` ``.
    #[test]
    fn every_route_is_documented_in_the_api_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
        let reference = std::fs::read_to_string(path).expect("docs/api.md exists");
        let mut in_code = false;
        let headings: Vec<&str> = reference
            .lines()
            .filter(|line| {
                in_code ^= line.starts_with("```");
                !in_code && line.starts_with('#')
            })
            .collect();
        let undocumented: Vec<String> = endpoints()
            .iter()
            .map(|endpoint| format!("`{} {}`", endpoint.method, endpoint.path))
            .filter(|route| !headings.iter().any(|heading| heading.contains(route)))
            .collect();
        assert!(
            undocumented.is_empty(),
            "docs/api.md has no heading for {undocumented:?}"
        );
    }
}
