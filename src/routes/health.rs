//! `GET /api/stats` (admin), `GET /metrics`, `GET /healthz`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::auth::Admin;
use crate::broadcaster::GetSnapshot;
use crate::error::ApiError;
use crate::metrics::Snapshot;

async fn snapshot(state: &AppState) -> Result<Snapshot, ApiError> {
    state
        .broadcaster
        .send(GetSnapshot)
        .await
        .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))
}

pub(super) async fn stats(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = snapshot(&state).await?;
    Ok(HttpResponse::Ok().json(state.metrics.stats_json(&snapshot)))
}

pub(super) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snapshot = snapshot(&state).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.prometheus_text(&snapshot)))
}

pub(super) async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    match state.bus.healthy().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ok" })),
        Err(reason) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "unavailable",
            "error": "unavailable",
            "message": reason.to_string(),
        })),
    }
}
