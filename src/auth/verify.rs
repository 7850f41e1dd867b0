//! The [`Verifier`]: checks a token's signature and claims, builds the
//! [`Identity`] it speaks for, and mints tokens (`herald token`, the demo
//! login).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::{KeySet, Keys};
use super::TokenSource;
use crate::clock::unix_now;
use crate::config::JwtConfig;
use crate::domain::{ChannelPattern, UserId};
use crate::error::ApiError;
use crate::jwks::Jwks;

/// The role that may publish and read stats.
pub const ADMIN_ROLE: &str = "admin";

/// The latest `exp` a minted token may have: 2^53 - 1 seconds since the
/// Unix epoch, the largest whole number a JSON number (an IEEE double, as
/// `exp` is read here and by JavaScript) holds exactly.
const MAX_EXP: u64 = (1 << 53) - 1;

/// Most admin tokens whose verification is remembered at once.
const ADMIN_CACHE_SIZE: usize = 1024;

/// The claims Herald reads. Unknown claims are ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user the token speaks for.
    pub sub: String,
    /// When it expires, in seconds since the Unix epoch (a JSON number,
    /// which may have a fraction).
    pub exp: f64,
    /// Not valid before this time, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<f64>,
    /// When it was issued, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The token's own id, by which it alone can be revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Audience: one string or several; checked when `JWT_AUDIENCE` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Issuer; checked when `JWT_ISSUER` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Roles; [`ADMIN_ROLE`] may publish and read stats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The channel patterns the token may join (`news`, `team-42.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

/// Who a valid token speaks for.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The token's `sub`.
    pub user: UserId,
    /// Whether the token carries the `admin` role.
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
    /// Where the request carried the token.
    pub source: TokenSource,
}

/// Validates tokens with the one configured algorithm and key.
pub struct Verifier {
    /// What checks a token's signature.
    keys: Keys,
    /// The claim rules: one algorithm, `exp` and `sub` required, `nbf`,
    /// `aud` and `iss` checked.
    validation: Validation,
    /// Key and header used by `herald token` and the demo login.
    signer: Option<(EncodingKey, Header)>,
    /// `aud` written into minted tokens (the configured one).
    audience: Option<String>,
    /// Seconds a token is still accepted after its `exp` (`JWT_LEEWAY_SECS`).
    leeway_secs: u64,
    /// `iss` written into minted tokens (the configured one).
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
        let KeySet {
            algorithm,
            keys,
            signer,
        } = KeySet::load(config, generated_secret)?;

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
            keys,
            validation,
            signer: signer.map(|key| (key, Header::new(algorithm))),
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway_secs: config.leeway_secs,
            admin_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Validates a token and reads who it speaks for. (Revocation is
    /// checked apart, by [`not_revoked`](super::not_revoked), on every request.)
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
        let key = self.keys.for_token(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                ErrorKind::ImmatureSignature => {
                    ApiError::InvalidToken("it is not valid yet (nbf)".into())
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    ApiError::InvalidToken(format!("the `{claim}` claim is required"))
                }
                ErrorKind::InvalidAudience => ApiError::InvalidToken("wrong audience (aud)".into()),
                ErrorKind::InvalidIssuer => ApiError::InvalidToken("wrong issuer (iss)".into()),
                ErrorKind::InvalidSignature => ApiError::InvalidToken("bad signature".into()),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    ApiError::InvalidToken("wrong signing algorithm".into())
                }
                ErrorKind::Json(_) => ApiError::InvalidToken("a claim has the wrong type".into()),
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
    pub(super) fn stale_keys_for(&self, token: &str) -> Option<Arc<Jwks>> {
        self.keys.stale_for(token)
    }

    /// The identity provider's key set, if tokens are checked with one.
    pub(crate) fn jwks(&self) -> Option<Arc<Jwks>> {
        self.keys.jwks()
    }

    /// Signs a token for `sub`, valid for `ttl_secs`. A TTL that would put
    /// `exp` past [`MAX_EXP`] is refused.
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
        let exp = now
            .checked_add(ttl_secs)
            .filter(|exp| *exp <= MAX_EXP)
            .ok_or_else(|| {
                format!(
                    "the ttl of {ttl_secs} seconds is too large: a token's exp (now plus \
                     the ttl) must be at most {MAX_EXP} seconds since the Unix epoch, so the \
                     ttl at most {}",
                    MAX_EXP.saturating_sub(now)
                )
            })?;
        let claims = Claims {
            sub: sub.to_owned(),
            exp: exp as f64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtAlgorithm;

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

    #[test]
    fn a_ttl_whose_exp_would_not_fit_is_refused_and_one_that_just_fits_reads_back_exactly() {
        let verifier = verifier_with_leeway(0);
        for ttl in [
            u64::MAX,
            u64::MAX - unix_now() + 1,
            MAX_EXP - unix_now() + 1,
        ] {
            let refused = verifier.mint("alice", false, &[], ttl);
            let message = refused.expect_err("an exp past MAX_EXP");
            assert!(message.contains("too large"), "{message}");
        }

        let ttl = MAX_EXP - unix_now() - 5;
        let before = unix_now();
        let token = verifier.mint("alice", false, &[], ttl).expect("fits");
        let identity = verifier.verify(&token, TokenSource::Header).unwrap();
        assert!(
            (before + ttl..=unix_now() + ttl).contains(&identity.expires_at),
            "exp reads back exactly: {} for a ttl of {ttl}",
            identity.expires_at
        );
    }
}
