//! `GET /api/stats` (admin), `GET /metrics`, `GET /healthz`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::auth::Admin;
use crate::error::ApiError;

/// Channels `/metrics` lists a subscriber gauge for: the busiest ones. The
/// endpoint needs no token, so what one scrape costs must not grow with
/// the number of channels without bound; `herald_channels` counts them all,
/// and `/api/stats` (admin) lists every one.
const METRICS_MAX_CHANNELS: usize = 100;

// Both read the Broadcaster's index and the counters directly, without a
// message to the Broadcaster: a scrape never waits behind (or delays) a
// fan-out.

pub(super) async fn stats(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = state.notifier.snapshot(None);
    Ok(HttpResponse::Ok().json(state.metrics.stats_json(&snapshot)))
}

pub(super) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snapshot = state.notifier.snapshot(Some(METRICS_MAX_CHANNELS));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.prometheus_text(&snapshot)))
}

pub(super) async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    match state.notifier.healthy().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ok" })),
        Err(reason) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "unavailable",
            "error": "unavailable",
            "message": reason.to_string(),
        })),
    }
}
