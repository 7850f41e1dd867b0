//! Where a request's token is read (`Authorization: Bearer`, then the
//! cookie, then `?token=`), the rules for writes (no token in the URL, a
//! cookie only from a trusted `Origin`), and the actix extractors
//! [`Identity`] and [`Admin`].

use futures_util::future::LocalBoxFuture;

use actix_web::http::{header, Method};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use actix_web_httpauth::headers::authorization::{Authorization, Bearer};

use super::{Auth, Identity};
use crate::clock::unix_now;
use crate::error::ApiError;
use crate::revocations::Revocations;

/// Where a request's token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The auth cookie (`AUTH_COOKIE_NAME`).
    Cookie,
    /// `?token=` in the URL (reads only).
    Query,
    /// A stream ticket (`?ticket=`), spent in place of the token that bought it.
    Ticket,
}

/// An [`Identity`] whose token carries the `admin` role. Publishing and
/// stats act for the server, not for a user; its `sub` scopes the
/// publisher's idempotency keys.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The admin token's `sub`: whose `Idempotency-Key`s a publish uses.
    pub user: crate::domain::UserId,
}

/// Finds the token: `Authorization: Bearer`, then the cookie, then `?token=`.
pub fn find_token(req: &HttpRequest, cookie_name: &str) -> Option<(String, TokenSource)> {
    if let Ok(auth) = <Authorization<Bearer> as actix_web::http::header::Header>::parse(req) {
        return Some((auth.as_ref().token().to_string(), TokenSource::Header));
    }
    if let Some(cookie) = req.cookie(cookie_name) {
        if !cookie.value().is_empty() {
            return Some((cookie.value().to_owned(), TokenSource::Cookie));
        }
    }
    let query = req.query_string();
    form_urlencoded_value(query, "token").map(|token| (token, TokenSource::Query))
}

/// The first value of `name` in a query string, percent-decoded.
pub fn form_urlencoded_value(query: &str, name: &str) -> Option<String> {
    web::Query::<Vec<(String, String)>>::from_query(query)
        .ok()?
        .into_inner()
        .into_iter()
        .find(|(key, value)| key == name && !value.is_empty())
        .map(|(_, value)| value)
}

/// Whether the request's `Origin` is the server's own or an allowed one.
pub fn origin_is_trusted(req: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed.iter().any(|allowed| allowed == origin) {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// The token a request carries and where it came from, after the rules for
/// writes: no token in the URL, and a cookie only from a trusted origin.
fn request_token(req: &HttpRequest, auth: &Auth) -> Result<(String, TokenSource), ApiError> {
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let (token, source) = find_token(req, &auth.cookie_name).ok_or(ApiError::MissingToken)?;
    if writes && source == TokenSource::Query {
        // A token in a URL ends up in logs and histories; writes must not need one.
        return Err(ApiError::MissingToken);
    }
    if writes && source == TokenSource::Cookie && !origin_is_trusted(req, &auth.allowed_origins) {
        return Err(ApiError::Forbidden(
            "a request authenticated only by cookie must come from this server's origin \
             or one in CORS_ALLOWED_ORIGINS"
                .into(),
        ));
    }
    Ok((token, source))
}

/// Who the request's token speaks for: checked, and not revoked.
async fn identify(req: HttpRequest) -> Result<Identity, ApiError> {
    let auth = req
        .app_data::<web::Data<Auth>>()
        .expect("Auth is registered as app data by startup")
        .clone();
    let (token, source) = request_token(&req, &auth)?;
    if let Some(jwks) = auth.verifier.stale_keys_for(&token) {
        // Blocking HTTP, off the async workers; at most once per interval.
        let _ = actix_web::rt::task::spawn_blocking(move || jwks.refetch()).await;
    }
    let identity = auth.verifier.verify(&token, source)?;
    not_revoked(&auth.revocations, identity)
}

/// `identity`, unless its user or token has been revoked (401 token_revoked).
pub(crate) fn not_revoked(
    revocations: &Revocations,
    identity: Identity,
) -> Result<Identity, ApiError> {
    let revoked = revocations.refuses(
        &identity.user,
        identity.issued_at,
        identity.token_id.as_deref(),
        unix_now(),
    );
    if revoked {
        Err(ApiError::TokenRevoked)
    } else {
        Ok(identity)
    }
}

impl FromRequest for Identity {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(identify(req.clone()))
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let identified = identify(req.clone());
        Box::pin(async move {
            let identity = identified.await?;
            if identity.admin {
                Ok(Admin {
                    user: identity.user,
                })
            } else {
                Err(ApiError::Forbidden(
                    "this needs a token with the `admin` role".into(),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::cookie::Cookie;
    use actix_web::test::TestRequest;

    #[test]
    fn header_wins_over_cookie_and_cookie_over_query() {
        let all = TestRequest::get()
            .uri("/api/events?token=from-query")
            .insert_header((header::AUTHORIZATION, "Bearer from-header"))
            .cookie(Cookie::new("herald_token", "from-cookie"))
            .to_http_request();
        assert_eq!(
            find_token(&all, "herald_token"),
            Some(("from-header".into(), TokenSource::Header))
        );

        let cookie_and_query = TestRequest::get()
            .uri("/api/events?token=from-query")
            .cookie(Cookie::new("herald_token", "from-cookie"))
            .to_http_request();
        assert_eq!(
            find_token(&cookie_and_query, "herald_token"),
            Some(("from-cookie".into(), TokenSource::Cookie))
        );

        let query = TestRequest::get()
            .uri("/api/events?a=1&token=a%2Bb")
            .to_http_request();
        assert_eq!(
            find_token(&query, "herald_token"),
            Some(("a+b".into(), TokenSource::Query))
        );

        let none = TestRequest::get().uri("/api/events").to_http_request();
        assert_eq!(find_token(&none, "herald_token"), None);
    }

    #[test]
    fn origin_must_match_host_or_the_allowed_list() {
        let same = TestRequest::post()
            .insert_header((header::HOST, "localhost:3001"))
            .insert_header((header::ORIGIN, "http://localhost:3001"))
            .to_http_request();
        assert!(origin_is_trusted(&same, &[]));
        let cross = TestRequest::post()
            .insert_header((header::HOST, "localhost:3001"))
            .insert_header((header::ORIGIN, "https://evil.example"))
            .to_http_request();
        assert!(!origin_is_trusted(&cross, &[]));
        assert!(origin_is_trusted(&cross, &["https://evil.example".into()]));
        let missing = TestRequest::post()
            .insert_header((header::HOST, "localhost:3001"))
            .to_http_request();
        assert!(!origin_is_trusted(&missing, &[]));
    }
}
