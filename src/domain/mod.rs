//! The domain layer: the names that travel through Herald, each validated
//! once where it enters, the events built from them ([`event`]), and what
//! identifies a stream and its token ([`stream`]).
//!
//! Once a value has one of these types it is known to be safe to write into an
//! SSE field or a log line: no control characters, bounded length.

mod event;
mod stream;

pub use event::{Audience, AudienceKey, Outgoing, Published, Stamped};
pub use stream::{ClientId, RefreshError, TokenRefresh};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest user id accepted (the token's `sub`).
pub const MAX_USER_ID_LEN: usize = 256;
/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest event name accepted.
pub const MAX_EVENT_NAME_LEN: usize = 64;

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '/')
}

fn is_event_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// A user id: the token's `sub`, 1–256 characters, no control characters.
///
/// Shared (`Arc<str>`) because the same id sits in several maps and events.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if len == 0 || len > MAX_USER_ID_LEN {
            return Err(format!(
                "a user id is 1 to {MAX_USER_ID_LEN} characters, got {len}"
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err("a user id may not contain control characters".into());
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A channel name: 1–128 characters of `A–Z a–z 0–9 _ . : - /`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

impl Channel {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_CHANNEL_LEN {
            return Err(format!(
                "a channel name is 1 to {MAX_CHANNEL_LEN} characters, got {}",
                raw.chars().count()
            ));
        }
        if !raw.chars().all(is_channel_char) {
            return Err(format!(
                "channel {:?} may only contain A-Z a-z 0-9 _ . : - /",
                truncate_for_message(raw)
            ));
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Channel {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event name: 1–64 characters of `A–Z a–z 0–9 _ . : -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventName(Box<str>);

impl EventName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_EVENT_NAME_LEN {
            return Err(format!(
                "an event name is 1 to {MAX_EVENT_NAME_LEN} characters, got {}",
                raw.chars().count()
            ));
        }
        if !raw.chars().all(is_event_name_char) {
            return Err(format!(
                "event name {:?} may only contain A-Z a-z 0-9 _ . : -",
                truncate_for_message(raw)
            ));
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for EventName {
    fn default() -> Self {
        Self("message".into())
    }
}

/// An event id: two numbers, `<epoch>-<sequence>`, ordered as a pair.
///
/// In memory mode the epoch is the millisecond the process started, so an id
/// from an earlier process is never mistaken for a recent one. With Redis the
/// id is the Redis stream entry id (`<ms>-<seq>`), ordered cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
}

impl EventId {
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ();

    fn from_str(raw: &str) -> Result<Self, ()> {
        let (epoch, seq) = raw.split_once('-').ok_or(())?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(seq) {
            return Err(());
        }
        Ok(Self {
            epoch: epoch.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// What a token's `channels` claim allows: an exact channel, or a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelPattern {
    Exact(Channel),
    /// `team-42.*` is stored as `team-42.`; `*` alone as the empty prefix.
    Prefix(Box<str>),
}

impl ChannelPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.strip_suffix('*') {
            Some(prefix)
                if prefix.chars().all(is_channel_char) && prefix.len() < MAX_CHANNEL_LEN =>
            {
                Ok(Self::Prefix(prefix.into()))
            }
            Some(_) => Err(format!(
                "channel pattern {:?} is not valid",
                truncate_for_message(raw)
            )),
            None => Channel::parse(raw).map(Self::Exact),
        }
    }

    pub fn allows(&self, channel: &Channel) -> bool {
        match self {
            Self::Exact(exact) => exact == channel,
            Self::Prefix(prefix) => channel.as_str().starts_with(&**prefix),
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(channel) => f.write_str(channel.as_str()),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Keeps error messages short and free of control characters when they quote input.
pub fn truncate_for_message(raw: &str) -> String {
    raw.chars()
        .take(40)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_contract() {
        for ok in [
            "a",
            "news",
            "team-42.alerts",
            "a/b:c_d-e.f",
            &"x".repeat(128),
        ] {
            assert!(Channel::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "with space",
            "new\nline",
            "nul\0",
            "é",
            "a*",
            &"x".repeat(129),
        ] {
            assert!(Channel::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn event_names_refuse_anything_that_could_inject_a_field() {
        assert!(EventName::parse("update").is_ok());
        assert!(EventName::parse("a.b:c-d_e").is_ok());
        for bad in [
            "",
            "a\r\nid: 9",
            "a\n",
            "a\0",
            "a b",
            "a/b",
            &"e".repeat(65),
        ] {
            assert!(EventName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn user_ids_refuse_control_characters_and_overlong_values() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("Zoë Ω 42").is_ok());
        assert!(UserId::parse(&"u".repeat(256)).is_ok());
        for bad in ["", "a\nb", "a\rb", "a\0b", &"u".repeat(257)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn event_ids_round_trip_and_order_numerically() {
        let id: EventId = "1700000000000-9".parse().unwrap();
        assert_eq!(id, EventId::new(1_700_000_000_000, 9));
        assert_eq!(id.to_string(), "1700000000000-9");
        let later: EventId = "1700000000000-10".parse().unwrap();
        assert!(later > id, "ids compare as numbers, not strings");
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1_2",
            "99999999999999999999999-1",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn channel_patterns_match_exact_names_and_prefixes() {
        let news = Channel::parse("news").unwrap();
        let team = Channel::parse("team-42.alerts").unwrap();
        let exact = ChannelPattern::parse("news").unwrap();
        let prefix = ChannelPattern::parse("team-42.*").unwrap();
        let all = ChannelPattern::parse("*").unwrap();
        assert!(exact.allows(&news) && !exact.allows(&team));
        assert!(prefix.allows(&team) && !prefix.allows(&news));
        assert!(all.allows(&news) && all.allows(&team));
        assert!(ChannelPattern::parse("bad pattern*").is_err());
        assert!(ChannelPattern::parse("a*b").is_err());
    }
}
