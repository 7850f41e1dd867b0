//! Revoked users and tokens: `POST /api/revoke` cuts a user (every token
//! issued before the revocation) or one token (by its `jti`) off, for
//! `REVOKE_TTL_SECS`, long enough for any such token to have expired.
//!
//! Checked on every request that carries a token, so the check is a read of
//! a small map under a read lock. The durable store (one node) or Redis
//! (many nodes) keeps the list across restarts; this is its in-memory copy.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::domain::UserId;

/// What is revoked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Revocation {
    /// Every token of this user issued (`iat`) before the revocation.
    User(UserId),
    /// The token with this `jti`.
    Token(String),
}

impl Revocation {
    /// A short stable form: `u:<user>` or `j:<jti>` (stores and Redis use it).
    pub(crate) fn key(&self) -> String {
        match self {
            Self::User(user) => format!("u:{user}"),
            Self::Token(jti) => format!("j:{jti}"),
        }
    }

    /// Reads [`Revocation::key`] back.
    pub(crate) fn from_key(key: &str) -> Option<Self> {
        if let Some(user) = key.strip_prefix("u:") {
            return UserId::parse(user).ok().map(Self::User);
        }
        key.strip_prefix("j:")
            .filter(|jti| !jti.is_empty())
            .map(|jti| Self::Token(jti.to_owned()))
    }

    /// Whether a stream or request of `identity` falls under it.
    pub(crate) fn covers(&self, user: &UserId, token_id: Option<&str>) -> bool {
        match self {
            Self::User(revoked) => revoked == user,
            Self::Token(jti) => token_id == Some(jti.as_str()),
        }
    }
}

/// The revocations in force, each with when it was made (Unix seconds).
pub(crate) struct Revocations {
    in_force: RwLock<HashMap<Revocation, u64>>,
    /// How long a revocation is kept (`REVOKE_TTL_SECS`).
    ttl_secs: u64,
}

impl Revocations {
    pub(crate) fn new(ttl_secs: u64) -> Self {
        Self {
            in_force: RwLock::new(HashMap::new()),
            ttl_secs,
        }
    }

    /// Records a revocation made at `at` (a later one of the same kind wins).
    pub(crate) fn record(&self, revocation: Revocation, at: u64) {
        let mut in_force = self.in_force.write().unwrap_or_else(|p| p.into_inner());
        let entry = in_force.entry(revocation).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Whether a token of `user`, issued at `issued_at`, with id `token_id`,
    /// is refused at `now`. A user revocation refuses tokens issued before
    /// it, and tokens with no `iat` (their age cannot be told).
    pub(crate) fn refuses(
        &self,
        user: &UserId,
        issued_at: Option<u64>,
        token_id: Option<&str>,
        now: u64,
    ) -> bool {
        let in_force = self.in_force.read().unwrap_or_else(|p| p.into_inner());
        if in_force.is_empty() {
            return false;
        }
        let live = |at: u64| now < at.saturating_add(self.ttl_secs);
        let by_user = in_force
            .get(&Revocation::User(user.clone()))
            .is_some_and(|&at| live(at) && issued_at.is_none_or(|iat| iat < at));
        let by_token = token_id.is_some_and(|jti| {
            in_force
                .get(&Revocation::Token(jti.to_owned()))
                .is_some_and(|&at| live(at))
        });
        by_user || by_token
    }

    /// Forgets revocations older than the TTL; returns them, for a store to
    /// forget too.
    pub(crate) fn prune(&self, now: u64) -> Vec<Revocation> {
        let mut in_force = self.in_force.write().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<Revocation> = in_force
            .iter()
            .filter(|(_, &at)| now >= at.saturating_add(self.ttl_secs))
            .map(|(revocation, _)| revocation.clone())
            .collect();
        for revocation in &expired {
            in_force.remove(revocation);
        }
        expired
    }

    /// How long a revocation lasts.
    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token of `user` issued at `iat` with id `jti`.
    struct Token(UserId, Option<u64>, Option<&'static str>);

    fn identity(user: &str, iat: Option<u64>, jti: Option<&'static str>) -> Token {
        Token(UserId::parse(user).unwrap(), iat, jti)
    }

    impl Revocations {
        fn refuses_token(&self, token: &Token, now: u64) -> bool {
            self.refuses(&token.0, token.1, token.2, now)
        }
    }

    #[test]
    fn a_user_revocation_refuses_older_tokens_for_its_ttl() {
        let revocations = Revocations::new(100);
        revocations.record(Revocation::User(UserId::parse("alice").unwrap()), 1_000);
        assert!(revocations.refuses_token(&identity("alice", Some(999), None), 1_001));
        assert!(revocations.refuses_token(&identity("alice", None, None), 1_001));
        assert!(!revocations.refuses_token(&identity("alice", Some(1_000), None), 1_001));
        assert!(!revocations.refuses_token(&identity("bob", Some(999), None), 1_001));
        assert!(!revocations.refuses_token(&identity("alice", Some(999), None), 1_100));
        assert_eq!(revocations.prune(1_100).len(), 1);
    }

    #[test]
    fn a_token_revocation_refuses_that_token_only() {
        let revocations = Revocations::new(100);
        revocations.record(Revocation::Token("t-1".into()), 1_000);
        assert!(revocations.refuses_token(&identity("alice", Some(5), Some("t-1")), 1_050));
        assert!(!revocations.refuses_token(&identity("alice", Some(5), Some("t-2")), 1_050));
        assert!(!revocations.refuses_token(&identity("alice", Some(5), None), 1_050));
    }

    #[test]
    fn keys_round_trip() {
        for revocation in [
            Revocation::User(UserId::parse("Zoë: 1").unwrap()),
            Revocation::Token("abc:def".into()),
        ] {
            assert_eq!(Revocation::from_key(&revocation.key()), Some(revocation));
        }
        assert_eq!(Revocation::from_key("x:1"), None);
        assert_eq!(Revocation::from_key("j:"), None);
    }
}
