//! `GET /` (the demo page) and `POST /demo/login`.

use actix_web::web;

/// Registers the demo page's routes.
pub fn configure(_cfg: &mut web::ServiceConfig) {}
