//! The names of Herald's keys in Redis, all under the flow's key
//! (`REDIS_STREAM_KEY`): the flow itself, one stream per audience, the
//! trimmed-ids and revocations hashes, and the refresh channel.

use crate::domain::{AudienceKey, Channel, UserId};

/// The hash of revocations (`Revocation::key` → when) under `flow`.
pub(super) fn revoked_key(flow: &str) -> String {
    format!("{flow}:revoked")
}

/// The hash of the newest id each audience stream under `flow` trimmed.
pub(super) fn trimmed_key(flow: &str) -> String {
    format!("{flow}:trimmed")
}
/// The Redis key of an idempotency record, by its name (scope and key,
/// joined by a line break, which neither holds).
pub(super) fn idempotency_key(flow: &str, name: &str) -> String {
    format!("{flow}:idempotency:{name}")
}

/// The Redis key of one audience's stream, under the flow's key.
pub(super) fn audience_key(flow: &str, audience: &AudienceKey) -> String {
    match audience {
        AudienceKey::Everyone => format!("{flow}:everyone"),
        AudienceKey::User(user) => format!("{flow}:u:{user}"),
        AudienceKey::Channel(channel) => format!("{flow}:c:{channel}"),
    }
}

/// The audience a stream key under `flow` is for; `None` for other keys.
pub(super) fn parse_audience_key(flow: &str, key: &str) -> Option<AudienceKey> {
    let rest = key.strip_prefix(flow)?.strip_prefix(':')?;
    if rest == "everyone" {
        return Some(AudienceKey::Everyone);
    }
    if let Some(user) = rest.strip_prefix("u:") {
        return UserId::parse(user).ok().map(AudienceKey::User);
    }
    Channel::parse(rest.strip_prefix("c:")?)
        .ok()
        .map(AudienceKey::Channel)
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
pub(super) fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The pub/sub channel on which nodes ask each other to refresh a stream.
pub(super) fn refresh_channel(flow: &str) -> String {
    format!("{flow}:refresh")
}

/// A fresh list for the answers to one refresh request.
pub(super) fn refresh_reply(flow: &str) -> String {
    format!("{flow}:reply:{}", uuid::Uuid::new_v4())
}
