//! The keys that check tokens and the one that signs them: an HS256 secret,
//! PEM files for RS256/ES256, or an identity provider's key set (JWKS)
//! chosen by the token's `kid`; and the one algorithm they are used with.

use std::borrow::Cow;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use crate::config::{JwtAlgorithm, JwtConfig};
use crate::error::ApiError;
use crate::jwks::{Jwks, Lookup};

/// Where the key that checks a token comes from.
pub(super) enum Keys {
    /// One key, configured (a secret or a PEM file).
    Static(DecodingKey),
    /// An identity provider's key set, chosen by the token's `kid`.
    Jwks(Arc<Jwks>),
}

/// The configured keys, read once at start-up.
pub(super) struct KeySet {
    /// The one algorithm tokens must be signed with.
    pub algorithm: Algorithm,
    /// What checks a token's signature.
    pub keys: Keys,
    /// What signs minted tokens: the secret, or the private key when one is
    /// configured for RS256/ES256.
    pub signer: Option<EncodingKey>,
}

impl KeySet {
    /// Reads the keys `config` names. `generated_secret` is used when no
    /// secret is configured (development mode).
    pub(super) fn load(config: &JwtConfig, generated_secret: Option<&str>) -> Result<Self, String> {
        let (algorithm, keys, signer) = match config.algorithm {
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
        Ok(Self {
            algorithm,
            keys,
            signer,
        })
    }
}

impl Keys {
    /// The key that checks `token`: the configured one, or the key set's
    /// key named by the token's `kid`.
    pub(super) fn for_token(&self, token: &str) -> Result<Cow<'_, DecodingKey>, ApiError> {
        match self {
            Keys::Static(key) => Ok(Cow::Borrowed(key)),
            Keys::Jwks(jwks) => {
                let kid = jsonwebtoken::decode_header(token)
                    .map_err(|_| ApiError::InvalidToken("malformed token".into()))?
                    .kid
                    .ok_or_else(|| ApiError::InvalidToken("the token names no key (kid)".into()))?;
                match jwks.lookup(&kid) {
                    Lookup::Found(key) => Ok(Cow::Owned(key)),
                    Lookup::Unknown => Err(ApiError::InvalidToken("unknown key (kid)".into())),
                    Lookup::NothingFetched => Err(ApiError::Unavailable(
                        "the identity provider's keys have not been fetched yet".into(),
                    )),
                }
            }
        }
    }

    /// The identity provider's key set, when `token` names a key it has not
    /// got (so it should be fetched again before the token is checked).
    pub(super) fn stale_for(&self, token: &str) -> Option<Arc<Jwks>> {
        let Keys::Jwks(jwks) = self else {
            return None;
        };
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        match jwks.lookup(&kid) {
            Lookup::Found(_) => None,
            Lookup::Unknown | Lookup::NothingFetched => Some(jwks.clone()),
        }
    }

    /// The identity provider's key set, if tokens are checked with one.
    pub(super) fn jwks(&self) -> Option<Arc<Jwks>> {
        match self {
            Keys::Jwks(jwks) => Some(jwks.clone()),
            Keys::Static(_) => None,
        }
    }
}
