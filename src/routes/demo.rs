//! `GET /` (the demo page), `POST /demo/login` and `POST /demo/logout`.
//!
//! The page is rendered on the server from `templates/demo.html`; everything
//! live happens in the browser, in the module `templates/demo.js` (served at
//! `/demo/demo.js`, no build step) built on Herald's own client, `/herald.js`.
//!
//! Sign-in mints a token with the server's own key and stores it in an
//! HttpOnly cookie, the way a real back end hands Herald tokens to a browser:
//! the page's script never sees the token, and the client's `fetch` carries
//! it because the cookie is same-site.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::{content_type_is, read_body, AppState};
use crate::auth::{origin_is_trusted, Auth, Identity, TokenSource};
use crate::domain::UserId;
use crate::error::ApiError;

/// Largest sign-in form accepted; a user id is at most 256 characters.
const MAX_FORM_BYTES: usize = 4 * 1024;

/// The page's script and style, compiled into the binary so the server needs
/// no files at run time.
const SCRIPT: &str = include_str!("../../templates/demo.js");
const STYLESHEET: &str = include_str!("../../templates/demo.css");

/// The page may load its own script and style and talk to its own origin,
/// nothing else: even a rendering bug could not run injected script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The demo page. Askama escapes every value written into it.
#[derive(Template)]
#[template(path = "demo.html")]
struct DemoPage<'a> {
    /// Who the cookie speaks for, if anyone.
    visitor: Option<Visitor>,
    /// Whether the sign-in form (and sign-out) is offered.
    demo_login: bool,
    /// A cookie was sent but its token is not valid (expired, most likely).
    stale_cookie: bool,
    cookie_name: &'a str,
}

struct Visitor {
    user: String,
    admin: bool,
    /// The token's `exp`, in seconds since the Unix epoch.
    expires_at: u64,
}

/// `GET /`: the page, for a signed-in visitor or not.
pub(super) async fn page(
    req: HttpRequest,
    identity: Option<Identity>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let cookie_name = state.config.auth_cookie_name.as_str();
    // The page's stream carries only the cookie, so a token that came
    // in a header or the URL does not sign this page in.
    let visitor = identity
        .filter(|identity| identity.source == TokenSource::Cookie)
        .map(|identity| Visitor {
            user: identity.user.as_str().to_owned(),
            admin: identity.admin,
            expires_at: identity.expires_at,
        });
    let stale_cookie = visitor.is_none()
        && req
            .cookie(cookie_name)
            .is_some_and(|cookie| !cookie.value().is_empty());
    let html = DemoPage {
        visitor,
        demo_login: state.config.demo_login,
        stale_cookie,
        cookie_name,
    }
    .render()
    .map_err(|e| ApiError::Internal(format!("the demo page could not be rendered: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page shows who is signed in: never let a cache keep it.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        // Not `no-referrer`: with it, browsers send `Origin: null` on form
        // posts, and the sign-in's origin check would refuse the page's own form.
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .body(html))
}

pub(super) async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn stylesheet() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLESHEET)
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // Revalidated each time: a new binary must not be paired with an old script.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// The sign-in form: `user=alice&admin=on`.
#[derive(Deserialize)]
struct LoginForm {
    user: String,
    /// A checkbox: present (`on`, `true`, …) when ticked, absent otherwise.
    admin: Option<String>,
}

/// `POST /demo/login`: mints a token for the named user and stores it in the
/// auth cookie, then sends the browser back to the page.
pub(super) async fn login(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    auth: web::Data<Auth>,
) -> Result<HttpResponse, ApiError> {
    refuse_unless_enabled(&req, &state, &auth)?;
    if !content_type_is(&req, "application/x-www-form-urlencoded") {
        return Err(ApiError::BadRequest(
            "the sign-in form must be sent as application/x-www-form-urlencoded".into(),
        ));
    }
    let body = read_body(payload, MAX_FORM_BYTES).await?;
    let form = parse_form(&body)?;
    let user = UserId::parse(form.user.trim())
        .map_err(|e| ApiError::BadRequest(format!("user name: {e}")))?;
    let admin = form
        .admin
        .as_deref()
        .is_some_and(|value| matches!(value, "on" | "true" | "1" | "yes"));

    // The demo user may join any channel: the page is for trying things out.
    let token = auth
        .verifier
        .mint(
            user.as_str(),
            admin,
            &["*".into()],
            state.config.demo_token_ttl_secs,
        )
        .map_err(|e| ApiError::Internal(format!("demo login cannot mint a token: {e}")))?;
    log::info!(
        "demo login for {:?}{}",
        user.as_str(),
        if admin { " (admin)" } else { "" }
    );
    let cookie = auth_cookie(&req, &state, token)
        .max_age(time::Duration::seconds(
            i64::try_from(state.config.demo_token_ttl_secs).unwrap_or(i64::MAX),
        ))
        .finish();
    Ok(back_to_page().cookie(cookie).finish())
}

/// `POST /demo/logout`: clears the auth cookie.
pub(super) async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<Auth>,
) -> Result<HttpResponse, ApiError> {
    refuse_unless_enabled(&req, &state, &auth)?;
    let mut cookie = auth_cookie(&req, &state, String::new()).finish();
    cookie.make_removal();
    Ok(back_to_page().cookie(cookie).finish())
}

/// The demo endpoints exist only with `DEMO_LOGIN`, and only for forms posted
/// from this server's own pages: another site must not be able to sign a
/// visitor in as someone of its choosing (login CSRF).
fn refuse_unless_enabled(req: &HttpRequest, state: &AppState, auth: &Auth) -> Result<(), ApiError> {
    if !state.config.demo_login {
        return Err(ApiError::NotFound);
    }
    // Browsers always send `Origin` on a POST; a request without one comes
    // from a script such as curl, which no other site can drive.
    if req.headers().contains_key(header::ORIGIN) && !origin_is_trusted(req, &auth.allowed_origins)
    {
        return Err(ApiError::Forbidden(
            "the demo sign-in only accepts forms posted from this server's own page".into(),
        ));
    }
    Ok(())
}

/// The auth cookie's attributes, the same for setting and clearing it.
fn auth_cookie<'c>(
    req: &HttpRequest,
    state: &AppState,
    token: String,
) -> actix_web::cookie::CookieBuilder<'c> {
    Cookie::build(state.config.auth_cookie_name.clone(), token)
        // The page's script never needs the token; keeping it out of reach
        // means injected script could not steal it either.
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        // Served over HTTPS by Herald itself, or (as a proxy says) to the browser.
        .secure(state.config.tls.is_some() || req.connection_info().scheme() == "https")
}

fn back_to_page() -> actix_web::HttpResponseBuilder {
    // 303: the browser follows with a GET, so a reload does not re-post the form.
    let mut response = HttpResponse::SeeOther();
    response
        .insert_header((header::LOCATION, "/"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    response
}

/// Parses a urlencoded form body (the same encoding as a query string).
fn parse_form(body: &[u8]) -> Result<LoginForm, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the form is not valid UTF-8".into()))?;
    web::Query::<LoginForm>::from_query(text)
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest(format!("the sign-in form needs a `user` field: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_reads_user_and_admin_checkbox() {
        let form = parse_form(b"user=alice+smith&admin=on").unwrap();
        assert_eq!(form.user, "alice smith");
        assert_eq!(form.admin.as_deref(), Some("on"));
        let form = parse_form(b"user=bob").unwrap();
        assert!(form.admin.is_none());
    }

    #[test]
    fn a_form_without_a_user_is_a_bad_request() {
        for body in [&b""[..], b"admin=on", b"\xff"] {
            assert!(
                matches!(parse_form(body), Err(ApiError::BadRequest(_))),
                "{body:?}"
            );
        }
    }
}
