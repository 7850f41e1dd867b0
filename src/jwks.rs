//! Keys from an identity provider (`JWT_JWKS_URL`): a JSON Web Key Set,
//! fetched over HTTP(S), cached, and chosen by a token's `kid`.
//!
//! A token whose `kid` is not cached makes the set be fetched again, at most
//! once every `JWT_JWKS_REFETCH_SECS` (10), so a provider's key rotation is picked up
//! without a restart and a flood of made-up `kid`s cannot flood the
//! provider. While no key has ever been fetched, tokens cannot be checked
//! (`503`); once keys are cached, the provider being down changes nothing
//! for tokens signed with them.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set read.
const MAX_SET_BYTES: u64 = 1 << 20;

/// The cached keys of one provider.
pub(crate) struct Jwks {
    url: String,
    /// The one algorithm accepted: keys for any other are skipped.
    algorithm: Algorithm,
    /// Keys by `kid`, replaced whole by each successful fetch.
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the last fetch started; `None` before the first.
    last_fetch: Mutex<Option<Instant>>,
    /// Least time between two fetches.
    refetch_interval: Duration,
}

/// What the cache can say about a `kid`.
pub(crate) enum Lookup {
    Found(DecodingKey),
    /// Keys are cached, but not this one.
    Unknown,
    /// No key was ever fetched.
    NothingFetched,
}

impl Jwks {
    pub(crate) fn new(url: String, algorithm: Algorithm, refetch_interval: Duration) -> Self {
        Self {
            url,
            algorithm,
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            refetch_interval,
        }
    }

    pub(crate) fn lookup(&self, kid: &str) -> Lookup {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        match keys.get(kid) {
            Some(key) => Lookup::Found(key.clone()),
            None if keys.is_empty() => Lookup::NothingFetched,
            None => Lookup::Unknown,
        }
    }

    /// Fetches the set again unless that was done less than
    /// the refetch interval ago. Blocking: run it off the async workers.
    pub(crate) fn refetch(&self) {
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.refetch_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch() {
            Ok(keys) => {
                log::info!("jwks: {} usable keys from {}", keys.len(), self.url);
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
            }
            // The keys already cached stay in use.
            Err(why) => log::warn!("jwks: cannot fetch {}: {why}", self.url),
        }
    }

    fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(FETCH_TIMEOUT))
            .build()
            .into();
        let body = agent
            .get(&self.url)
            .call()
            .map_err(|e| e.to_string())?
            .into_body()
            .with_config()
            .limit(MAX_SET_BYTES)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let set: JwkSet = serde_json::from_str(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        Ok(self.usable(&set))
    }

    /// The keys of `set` that have a `kid` and fit the pinned algorithm.
    fn usable(&self, set: &JwkSet) -> HashMap<String, DecodingKey> {
        set.keys
            .iter()
            .filter(|jwk| {
                let kind_fits = matches!(
                    (&jwk.algorithm, self.algorithm),
                    (AlgorithmParameters::RSA(_), Algorithm::RS256)
                        | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
                );
                let named = jwk.common.key_algorithm.map(|named| format!("{named:?}"));
                kind_fits && named.is_none_or(|named| named == format!("{:?}", self.algorithm))
            })
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_of_the_pinned_algorithm_with_a_kid_are_used() {
        let set: JwkSet = serde_json::from_str(
            r#"{"keys": [
                {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec",
                 "x": "F-i8JEqyY-Sx8QGh0C91x5bOweC1oUeWA3NyTD3Magg",
                 "y": "8HTncuFc0cEy4_SnfnPswvnehE-69BsONaXaiQzGj3E"},
                {"kty": "EC", "crv": "P-256", "alg": "ES256",
                 "x": "F-i8JEqyY-Sx8QGh0C91x5bOweC1oUeWA3NyTD3Magg",
                 "y": "8HTncuFc0cEy4_SnfnPswvnehE-69BsONaXaiQzGj3E"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
            ]}"#,
        )
        .unwrap();
        let es256 = Jwks::new(String::new(), Algorithm::ES256, Duration::from_secs(10));
        let keys = es256.usable(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["ec"]);
        let rs256 = Jwks::new(String::new(), Algorithm::RS256, Duration::from_secs(10));
        assert!(rs256.usable(&set).is_empty(), "never an EC key for RS256");
    }
}
