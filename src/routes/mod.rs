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
            // The store logged it (at most once per 10 s): a full disk
            // must not flood the log with a line per refused publish.
            LogError::NotWritten(_) => Self::Unavailable(
                "the event store could not write the event (is its disk full?); \
                     it was not accepted"
                    .into(),
            ),
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
    /// naming its method and path, as in ``## `GET /api/events` ``, and an
    /// entry in the Contents list whose link leads to that heading; the
    /// Contents list names no route that is not served.
    #[test]
    fn every_route_is_documented_in_the_api_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
        let reference = std::fs::read_to_string(path).expect("docs/api.md exists");
        let headings = headings(&reference);
        let routes: Vec<String> = endpoints()
            .iter()
            .map(|endpoint| format!("`{} {}`", endpoint.method, endpoint.path))
            .collect();
        let heading_of = |route: &String| {
            headings
                .iter()
                .find(|(text, _)| text.starts_with(route.as_str()))
        };

        let undocumented: Vec<&String> = routes
            .iter()
            .filter(|route| heading_of(route).is_none())
            .collect();
        assert!(
            undocumented.is_empty(),
            "docs/api.md has no heading for {undocumented:?}"
        );

        let contents = contents_endpoints(&reference);
        assert!(
            !contents.is_empty(),
            "docs/api.md has a Contents list with an `- Endpoints:` entry"
        );
        let broken: Vec<&(String, String)> = contents
            .iter()
            .filter(|(_, anchor)| !headings.iter().any(|(_, id)| id == anchor))
            .collect();
        assert!(
            broken.is_empty(),
            "Contents links that lead to no heading in docs/api.md: {broken:?}"
        );
        let missing: Vec<&String> = routes
            .iter()
            .filter(|route| {
                let anchor = heading_of(route).map(|(_, id)| id);
                !contents
                    .iter()
                    .any(|(label, link)| label == *route && Some(link) == anchor)
            })
            .collect();
        assert!(
            missing.is_empty(),
            "routes the Contents list of docs/api.md lacks, or links to another \
             heading than the route's own: {missing:?}"
        );
        let stale: Vec<&String> = contents
            .iter()
            .map(|(label, _)| label)
            .filter(|label| !routes.contains(label))
            .collect();
        assert!(
            stale.is_empty(),
            "the Contents list of docs/api.md names routes Herald does not serve: {stale:?}"
        );
    }

    /// Every heading outside code blocks, its text (after the `#`s) and the
    /// anchor GitHub gives it.
    fn headings(markdown: &str) -> Vec<(String, String)> {
        let mut in_code = false;
        let mut seen: Vec<String> = Vec::new();
        let mut headings = Vec::new();
        for line in markdown.lines() {
            in_code ^= line.starts_with("```");
            if in_code || !line.starts_with('#') {
                continue;
            }
            let text = line.trim_start_matches('#').trim().to_owned();
            let base = anchor(&text);
            // GitHub numbers repeated headings: `x`, `x-1`, `x-2`…
            let repeats = seen.iter().filter(|earlier| **earlier == base).count();
            seen.push(base.clone());
            let id = match repeats {
                0 => base,
                n => format!("{base}-{n}"),
            };
            headings.push((text, id));
        }
        headings
    }

    /// The anchor GitHub makes of a heading: lower case, every character but
    /// letters, digits, spaces, `-` and `_` dropped, spaces made `-`.
    fn anchor(heading: &str) -> String {
        heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }

    /// The `[label](#anchor)` links of the `- Endpoints:` entry of the
    /// Contents list (the entry runs on over its indented lines).
    fn contents_endpoints(markdown: &str) -> Vec<(String, String)> {
        let mut lines = markdown
            .lines()
            .skip_while(|line| line.trim() != "**Contents**")
            .skip_while(|line| !line.starts_with("- Endpoints:"));
        let Some(first) = lines.next() else {
            return Vec::new();
        };
        let mut entry = first.to_owned();
        for line in lines.take_while(|line| line.starts_with(' ')) {
            entry.push_str(line);
        }
        let mut links = Vec::new();
        let mut rest = entry.as_str();
        while let Some(open) = rest.find('[') {
            let Some((label, after)) = rest[open + 1..].split_once("](#") else {
                break;
            };
            let Some((target, after)) = after.split_once(')') else {
                break;
            };
            links.push((label.to_owned(), target.to_owned()));
            rest = after;
        }
        links
    }

    #[test]
    fn anchors_are_made_as_github_makes_them() {
        assert_eq!(
            anchor("`POST /api/streams/{client_id}/token` — give a stream a fresh token"),
            "post-apistreamsclient_idtoken--give-a-stream-a-fresh-token"
        );
        assert_eq!(anchor("`GET /` — the demo page"), "get---the-demo-page");
        assert_eq!(anchor("HTTPS and HTTP/2"), "https-and-http2");
        let repeated = headings("# A\n## A\n```\n# not a heading\n```\n## A");
        let ids: Vec<&str> = repeated.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["a", "a-1", "a-2"]);
    }
}
