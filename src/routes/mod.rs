//! HTTP endpoints, one file per group. Handlers parse and authorise; they
//! never touch the Broadcaster's maps, only send it messages.

pub mod demo;
pub mod events;
pub mod health;
pub mod publish;

use std::sync::Arc;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::backend::EventBus;
use crate::broadcaster::Broadcaster;
use crate::config::Config;
use crate::metrics::Metrics;

/// What every handler may use, registered once as app data.
pub struct AppState {
    pub config: Arc<Config>,
    pub broadcaster: Addr<Broadcaster>,
    pub bus: EventBus,
    pub metrics: Arc<Metrics>,
}

/// The connection's socket descriptor, recorded when the connection opens.
#[derive(Clone, Copy, Debug)]
pub struct SocketFd(pub std::os::fd::RawFd);

/// A path served by one route, answering the JSON 405 for other methods.
pub fn endpoint(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(crate::error::ApiError::MethodNotAllowed)
        }))
}

/// Whether the request's `Content-Type` is `essence` (parameters such as
/// `charset` allowed).
pub fn content_type_is(req: &HttpRequest, essence: &str) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| mime.essence_str() == essence)
}

/// Reads a request body of at most `limit` bytes; more is a 413, and is not
/// buffered.
pub async fn read_body(
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
