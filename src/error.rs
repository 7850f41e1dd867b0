//! The one JSON error shape, `{"error": code, "message": text}`, and its status.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every error a client can see. Client errors carry their message; server
/// errors are opaque to the client and logged with their cause.
#[derive(Debug)]
pub enum ApiError {
    MissingToken,
    InvalidToken(String),
    TokenExpired,
    /// The token's user, or the token itself, was revoked.
    TokenRevoked,
    Forbidden(String),
    BadRequest(String),
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge(usize),
    UnsupportedMediaType,
    TooManyConnections(String),
    /// A publish's `Idempotency-Key` was used with another body.
    IdempotencyConflict,
    /// The first publish with this `Idempotency-Key` is still in flight.
    Conflict(String),
    Unavailable(String),
    /// A fault of the server's own; the cause goes to the log, not the client.
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken(_) => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::Forbidden(_) => "forbidden",
            Self::BadRequest(_) => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooManyConnections(_) => "too_many_connections",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::MissingToken => "a token is required: send `Authorization: Bearer <token>`, \
                                   the auth cookie, or `?token=`"
                .into(),
            Self::InvalidToken(why) => format!("the token is not valid: {why}"),
            Self::TokenExpired => "the token has expired".into(),
            Self::TokenRevoked => "the token was revoked; sign in again for a new one".into(),
            Self::PayloadTooLarge(limit) => format!("the body is larger than {limit} bytes"),
            Self::UnsupportedMediaType => {
                "the body must be sent as Content-Type: application/json".into()
            }
            Self::NotFound => "no such resource".into(),
            Self::MethodNotAllowed => "this path does not take that method".into(),
            Self::Internal(_) => "the server failed; the cause is in its log".into(),
            Self::IdempotencyConflict => "this Idempotency-Key was used before with another \
                                          body; nothing was published"
                .into(),
            Self::Forbidden(message)
            | Self::Conflict(message)
            | Self::BadRequest(message)
            | Self::TooManyConnections(message)
            | Self::Unavailable(message) => message.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MissingToken
            | Self::InvalidToken(_)
            | Self::TokenExpired
            | Self::TokenRevoked => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            log::error!("internal error: {cause}");
        }
        let message = self.message();
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::UNAUTHORIZED {
            let challenge = match self {
                Self::MissingToken => "Bearer".to_owned(),
                _ => format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    self.code()
                ),
            };
            response.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        response.json(ErrorBody {
            error: self.code(),
            message: &message,
        })
    }
}
