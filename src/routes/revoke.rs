//! `POST /api/revoke` (admin): cut a user, or one token, off everywhere.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{read_json_body, AppState};
use crate::auth::Admin;
use crate::clock;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::revocations::Revocation;

/// Longest `jti` accepted.
const MAX_TOKEN_ID_LEN: usize = 256;

/// The body: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    user: Option<String>,
    jti: Option<String>,
}

fn parse(body: &[u8]) -> Result<Revocation, ApiError> {
    let request: RevokeRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a revocation: {e}")))?;
    match (request.user, request.jti) {
        (Some(user), None) => UserId::parse(&user)
            .map(Revocation::User)
            .map_err(ApiError::BadRequest),
        (None, Some(jti))
            if !jti.is_empty()
                && jti.len() <= MAX_TOKEN_ID_LEN
                && !jti.chars().any(char::is_control) =>
        {
            Ok(Revocation::Token(jti))
        }
        (None, Some(_)) => Err(ApiError::BadRequest(format!(
            "a jti is 1 to {MAX_TOKEN_ID_LEN} bytes without control characters"
        ))),
        _ => Err(ApiError::BadRequest(
            "name exactly one of `user` and `jti`".into(),
        )),
    }
}

pub(super) async fn revoke(
    req: HttpRequest,
    _admin: Admin,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(&req, payload, state.config.max_body_bytes).await?;
    let revocation = parse(&body)?;
    let at = clock::unix_now();
    // In force here before anything else happens; other nodes learn it
    // through the shared flow.
    state.notifier.revoke(revocation.clone(), at).await?;
    let until = at + state.revocations.ttl_secs();
    let answer = match revocation {
        Revocation::User(user) => json!({"user": user.as_str(), "at": at, "until": until}),
        Revocation::Token(jti) => json!({"jti": jti, "at": at, "until": until}),
    };
    Ok(HttpResponse::Accepted().json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_names_exactly_one_user_or_token() {
        assert!(matches!(
            parse(br#"{"user":"alice"}"#),
            Ok(Revocation::User(_))
        ));
        assert!(matches!(
            parse(br#"{"jti":"t-1"}"#),
            Ok(Revocation::Token(_))
        ));
        for bad in [
            "{}",
            r#"{"user":"alice","jti":"t"}"#,
            r#"{"user":""}"#,
            r#"{"jti":""}"#,
            r#"{"users":["alice"]}"#,
            "[]",
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}
