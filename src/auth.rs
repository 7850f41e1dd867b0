//! Tokens: where they are read from, how they are validated, and the
//! extractors that protect a handler by its signature.
//!
//! A handler that takes [`Identity`] only runs for a valid token; one that
//! takes [`Admin`] only for a token with the `admin` role.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::LocalBoxFuture;

use actix_web::http::{header, Method};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use actix_web_httpauth::headers::authorization::{Authorization, Bearer};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::unix_now;
use crate::config::{JwtAlgorithm, JwtConfig};
use crate::domain::{ChannelPattern, UserId};
use crate::error::ApiError;
use crate::jwks::{Jwks, Lookup};
use crate::revocations::Revocations;

/// The role that may publish and read stats.
pub const ADMIN_ROLE: &str = "admin";

/// Most admin tokens whose verification is remembered at once.
const ADMIN_CACHE_SIZE: usize = 1024;

/// Where a request's token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
    Query,
    /// A stream ticket (`?ticket=`), spent in place of the token that bought it.
    Ticket,
}

/// The claims Herald reads. Unknown claims are ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

/// Who a valid token speaks for.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: UserId,
    pub admin: bool,
    /// From the `channels` claim; empty means no named channels.
    pub channel_patterns: Vec<ChannelPattern>,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// Until when the token counts as valid: `exp` plus the clock leeway
    /// that admitted it. A stream opened with it lasts until then; one rule
    /// for accepting a token and for ending its stream.
    pub valid_until: u64,
    /// The token's `iat`, when it has one (revoking a user refuses tokens
    /// issued before the revocation).
    pub issued_at: Option<u64>,
    /// The token's `jti`, when it has one (a single token can be revoked).
    pub token_id: Option<String>,
    pub source: TokenSource,
}

/// An [`Identity`] whose token carries the `admin` role.
#[derive(Clone, Debug)]
/// (Only its presence matters today: publishing and stats act for the
/// server, not for a user.)
pub struct Admin;

/// Where the key that checks a token comes from.
enum Keys {
    /// One key, configured (a secret or a PEM file).
    Static(DecodingKey),
    /// An identity provider's key set, chosen by the token's `kid`.
    Jwks(Arc<Jwks>),
}

/// Validates tokens with the one configured algorithm and key.
pub struct Verifier {
    keys: Keys,
    validation: Validation,
    /// Key and header used by `herald token` and the demo login.
    signer: Option<(EncodingKey, Header)>,
    /// `aud` and `iss` written into minted tokens (the configured ones).
    audience: Option<String>,
    /// Seconds a token is still accepted after its `exp` (`JWT_LEEWAY_SECS`).
    leeway_secs: u64,
    issuer: Option<String>,
    /// Admin tokens already verified, by their exact text, until their
    /// `exp` (plus leeway): a back end sends the same token with every
    /// publish, and checking its signature each time was a few per cent of
    /// a publish's CPU. Only with a configured key, which cannot change
    /// while running (an identity provider's key set can).
    admin_cache: Mutex<HashMap<Box<str>, Identity>>,
}

impl Verifier {
    /// Builds the verifier. `generated_secret` is used when no secret is
    /// configured (development mode).
    pub fn new(config: &JwtConfig, generated_secret: Option<&str>) -> Result<Self, String> {
        let (algorithm, key, signer) = match config.algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = config
                    .secret
                    .as_deref()
                    .or(generated_secret)
                    .ok_or("JWT_SECRET is not set")?;
                (
                    Algorithm::HS256,
                    Keys::Static(DecodingKey::from_secret(secret.as_bytes())),
                    Some(EncodingKey::from_secret(secret.as_bytes())),
                )
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                let rsa = config.algorithm == JwtAlgorithm::Rs256;
                let pinned = if rsa {
                    Algorithm::RS256
                } else {
                    Algorithm::ES256
                };
                let key = match (&config.jwks_url, &config.public_key_file) {
                    (Some(url), _) => Keys::Jwks(Arc::new(Jwks::new(
                        url.clone(),
                        pinned,
                        config.jwks_refetch,
                    ))),
                    (None, Some(path)) => {
                        let pem = std::fs::read(path)
                            .map_err(|e| format!("JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
                        let key = if rsa {
                            DecodingKey::from_rsa_pem(&pem)
                        } else {
                            DecodingKey::from_ec_pem(&pem)
                        }
                        .map_err(|e| {
                            format!(
                                "JWT_PUBLIC_KEY_FILE {}: not a usable public key: {e}",
                                path.display()
                            )
                        })?;
                        Keys::Static(key)
                    }
                    (None, None) => {
                        return Err(
                            "JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL is required for RS256 and ES256"
                                .into(),
                        )
                    }
                };
                let signer = match &config.private_key_file {
                    Some(path) => {
                        let pem = std::fs::read(path)
                            .map_err(|e| format!("JWT_PRIVATE_KEY_FILE {}: {e}", path.display()))?;
                        let key = if rsa {
                            EncodingKey::from_rsa_pem(&pem)
                        } else {
                            EncodingKey::from_ec_pem(&pem)
                        }
                        .map_err(|e| {
                            format!(
                                "JWT_PRIVATE_KEY_FILE {}: not a usable private key: {e}",
                                path.display()
                            )
                        })?;
                        Some(key)
                    }
                    None => None,
                };
                (pinned, key, signer)
            }
        };

        // Written out rather than trusting the library's defaults: one
        // algorithm, `exp` and `sub` required, `nbf` checked, and `aud`/`iss`
        // required exactly when they are configured.
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            keys: key,
            validation,
            signer: signer.map(|key| (key, Header::new(algorithm))),
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway_secs: config.leeway_secs,
            admin_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Validates a token and reads who it speaks for. (Revocation is
    /// checked apart, by [`not_revoked`], on every request.)
    pub fn verify(&self, token: &str, source: TokenSource) -> Result<Identity, ApiError> {
        if !matches!(self.keys, Keys::Static(_)) {
            return self.check(token, source);
        }
        if let Some(identity) = self.remembered(token, unix_now()) {
            return Ok(Identity { source, ..identity });
        }
        let identity = self.check(token, source)?;
        if identity.admin {
            self.remember(token, &identity, unix_now());
        }
        Ok(identity)
    }

    /// A remembered admin token's identity, while it is still valid.
    fn remembered(&self, token: &str, now: u64) -> Option<Identity> {
        let mut cache = self.admin_cache.lock().unwrap_or_else(|e| e.into_inner());
        let identity = cache.get(token)?;
        if now <= identity.valid_until {
            return Some(identity.clone());
        }
        cache.remove(token);
        None
    }

    fn remember(&self, token: &str, identity: &Identity, now: u64) {
        let mut cache = self.admin_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= ADMIN_CACHE_SIZE {
            cache.retain(|_, identity| now <= identity.valid_until);
            if cache.len() >= ADMIN_CACHE_SIZE {
                cache.clear();
            }
        }
        cache.insert(token.into(), identity.clone());
    }

    /// Checks a token's signature and claims.
    fn check(&self, token: &str, source: TokenSource) -> Result<Identity, ApiError> {
        let fetched;
        let key = match &self.keys {
            Keys::Static(key) => key,
            Keys::Jwks(jwks) => {
                let kid = jsonwebtoken::decode_header(token)
                    .map_err(|_| ApiError::InvalidToken("malformed token".into()))?
                    .kid
                    .ok_or_else(|| ApiError::InvalidToken("the token names no key (kid)".into()))?;
                fetched = match jwks.lookup(&kid) {
                    Lookup::Found(key) => key,
                    Lookup::Unknown => {
                        return Err(ApiError::InvalidToken("unknown key (kid)".into()))
                    }
                    Lookup::NothingFetched => {
                        return Err(ApiError::Unavailable(
                            "the identity provider's keys have not been fetched yet".into(),
                        ))
                    }
                };
                &fetched
            }
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                    ErrorKind::ImmatureSignature => {
                        ApiError::InvalidToken("it is not valid yet (nbf)".into())
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        ApiError::InvalidToken(format!("the `{claim}` claim is required"))
                    }
                    ErrorKind::InvalidAudience => {
                        ApiError::InvalidToken("wrong audience (aud)".into())
                    }
                    ErrorKind::InvalidIssuer => ApiError::InvalidToken("wrong issuer (iss)".into()),
                    ErrorKind::InvalidSignature => ApiError::InvalidToken("bad signature".into()),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        ApiError::InvalidToken("wrong signing algorithm".into())
                    }
                    ErrorKind::Json(_) => {
                        ApiError::InvalidToken("a claim has the wrong type".into())
                    }
                    _ => ApiError::InvalidToken("malformed token".into()),
                }
            })?;
        let claims = data.claims;
        let user =
            UserId::parse(&claims.sub).map_err(|e| ApiError::InvalidToken(format!("sub: {e}")))?;
        let channel_patterns = claims
            .channels
            .unwrap_or_default()
            .iter()
            .map(|raw| ChannelPattern::parse(raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::InvalidToken(format!("channels claim: {e}")))?;
        let expires_at = claims.exp.max(0.0) as u64;
        Ok(Identity {
            user,
            admin: claims.roles.iter().any(|role| role == ADMIN_ROLE),
            channel_patterns,
            expires_at,
            valid_until: expires_at.saturating_add(self.leeway_secs),
            issued_at: claims.iat,
            token_id: claims.jti,
            source,
        })
    }

    /// The identity provider's key set, when `token` names a key it has not
    /// got (so it should be fetched again before the token is checked).
    fn stale_keys_for(&self, token: &str) -> Option<Arc<Jwks>> {
        let Keys::Jwks(jwks) = &self.keys else {
            return None;
        };
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        match jwks.lookup(&kid) {
            Lookup::Found(_) => None,
            Lookup::Unknown | Lookup::NothingFetched => Some(jwks.clone()),
        }
    }

    /// The identity provider's key set, if tokens are checked with one.
    pub(crate) fn jwks(&self) -> Option<Arc<Jwks>> {
        match &self.keys {
            Keys::Jwks(jwks) => Some(jwks.clone()),
            Keys::Static(_) => None,
        }
    }

    /// Signs a token for `sub`, valid for `ttl_secs`.
    pub fn mint(
        &self,
        sub: &str,
        admin: bool,
        channels: &[String],
        ttl_secs: u64,
    ) -> Result<String, String> {
        let (key, header) = self
            .signer
            .as_ref()
            .ok_or("no signing key: set JWT_PRIVATE_KEY_FILE to mint RS256/ES256 tokens")?;
        UserId::parse(sub)?;
        for pattern in channels {
            ChannelPattern::parse(pattern)?;
        }
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: (now + ttl_secs) as f64,
            nbf: None,
            iat: Some(now),
            jti: None,
            aud: self.audience.clone().map(serde_json::Value::String),
            iss: self.issuer.clone(),
            roles: if admin {
                vec![ADMIN_ROLE.to_owned()]
            } else {
                Vec::new()
            },
            channels: (!channels.is_empty()).then(|| channels.to_vec()),
        };
        jsonwebtoken::encode(header, &claims, key).map_err(|e| e.to_string())
    }
}

/// What the extractors need, registered once as app data.
pub struct Auth {
    pub verifier: Verifier,
    pub cookie_name: String,
    /// Origins besides the server's own that may use cookie auth on writes.
    pub allowed_origins: Vec<String>,
    /// Users and tokens cut off by `POST /api/revoke`.
    pub revocations: Arc<Revocations>,
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
            if identified.await?.admin {
                Ok(Admin)
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

    fn verifier_with_leeway(leeway_secs: u64) -> Verifier {
        let config = JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            secret: Some("a-test-secret-of-at-least-32-bytes!".into()),
            public_key_file: None,
            jwks_url: None,
            jwks_refetch: std::time::Duration::from_secs(10),
            private_key_file: None,
            audience: None,
            issuer: None,
            leeway_secs,
        };
        Verifier::new(&config, None).unwrap()
    }

    fn token_expiring_at(verifier: &Verifier, exp: u64) -> String {
        token_with_roles(verifier, exp, Vec::new())
    }

    fn token_with_roles(verifier: &Verifier, exp: u64, roles: Vec<String>) -> String {
        let (key, header) = verifier.signer.as_ref().unwrap();
        let claims = Claims {
            sub: "alice".into(),
            exp: exp as f64,
            nbf: None,
            iat: None,
            jti: None,
            aud: None,
            iss: None,
            roles,
            channels: None,
        };
        jsonwebtoken::encode(header, &claims, key).unwrap()
    }

    #[test]
    fn a_token_admitted_by_the_leeway_stays_valid_until_exp_plus_the_leeway() {
        let verifier = verifier_with_leeway(5);
        let exp = unix_now() - 2;
        let identity = verifier
            .verify(&token_expiring_at(&verifier, exp), TokenSource::Header)
            .expect("inside the leeway");
        assert_eq!(identity.expires_at, exp);
        assert_eq!(identity.valid_until, exp + 5);

        let late = token_expiring_at(&verifier, unix_now() - 30);
        assert!(matches!(
            verifier.verify(&late, TokenSource::Header),
            Err(ApiError::TokenExpired)
        ));
        let strict = verifier_with_leeway(0);
        let identity = strict
            .verify(
                &token_expiring_at(&strict, unix_now() + 60),
                TokenSource::Header,
            )
            .unwrap();
        assert_eq!(identity.valid_until, identity.expires_at);
    }

    #[test]
    fn admin_tokens_are_remembered_until_they_expire_and_others_never() {
        let verifier = verifier_with_leeway(5);
        let exp = unix_now() + 60;
        let admin = token_with_roles(&verifier, exp, vec![ADMIN_ROLE.into()]);
        let user = token_expiring_at(&verifier, exp);
        for token in [&admin, &user] {
            verifier.verify(token, TokenSource::Header).unwrap();
        }
        let now = unix_now();
        assert!(verifier.remembered(&user, now).is_none());
        let remembered = verifier.remembered(&admin, now).expect("an admin token");
        assert!(remembered.admin);
        let cookie = verifier.verify(&admin, TokenSource::Cookie).unwrap();
        assert_eq!(
            cookie.source,
            TokenSource::Cookie,
            "where it came from this time"
        );

        assert!(
            verifier.remembered(&admin, exp + 5).is_some(),
            "inside the leeway"
        );
        assert!(
            verifier.remembered(&admin, exp + 6).is_none(),
            "past exp + leeway"
        );
        assert!(
            verifier.remembered(&admin, now).is_none(),
            "an expired entry is dropped, so the next request checks the token again"
        );
        let mut tampered = admin.clone();
        tampered.pop();
        assert!(verifier.verify(&tampered, TokenSource::Header).is_err());
    }
}
