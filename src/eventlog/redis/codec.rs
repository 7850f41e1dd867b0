//! How events and controls are written as Redis stream entries, and read
//! back: an event is `event`, `data` and (for targets) `users` and
//! `channels` as JSON arrays; a control is `control` = `revoke` with the
//! revocation's `key` and `at`.

use redis::streams::StreamId;
use redis::Value;

use crate::domain::{Audience, Channel, EventId, EventName, Outgoing, Stamped, UserId};
use crate::eventlog::{FlowItem, LogError};
use crate::revocations::Revocation;

/// Writes targets as a JSON array of strings, the form [`decode_event`] reads.
pub(super) fn encode_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<String, LogError> {
    serde_json::to_string(&names.collect::<Vec<_>>()).map_err(|e| LogError::Encoding(e.to_string()))
}

/// A field of an entry as text.
fn text(entry: &StreamId, field: &str) -> Option<String> {
    match entry.map.get(field)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// Reads a stream entry back into an event; `None` for an entry Herald did not write.
fn decode_event(entry: &StreamId) -> Option<Stamped> {
    let text = |field: &str| text(entry, field);
    let id: EventId = entry.id.parse().ok()?;
    let name = EventName::parse(&text("event")?).ok()?;
    let data = text("data")?;
    serde_json::from_str::<serde::de::IgnoredAny>(&data).ok()?;
    let audience = match (text("users"), text("channels")) {
        (None, None) => Audience::Everyone,
        (users, channels) => {
            let users: Vec<String> =
                serde_json::from_str(&users.unwrap_or_else(|| "[]".into())).ok()?;
            let channels: Vec<String> =
                serde_json::from_str(&channels.unwrap_or_else(|| "[]".into())).ok()?;
            Audience::Targets {
                users: users
                    .iter()
                    .map(|u| UserId::parse(u))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?
                    .into(),
                channels: channels
                    .iter()
                    .map(|c| Channel::parse(c))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?
                    .into(),
            }
        }
    };
    Some(Stamped {
        id,
        event: Outgoing {
            name,
            data,
            audience,
        },
        // A Redis entry id starts with the millisecond it was added.
        published_at: id.epoch,
    })
}

/// One entry in the flow, as the reader hands it on.
#[derive(Debug)]
pub(super) enum Entry {
    Event(Stamped),
    /// A revocation, and when it was made (Unix seconds).
    Revoke(Revocation, u64),
}

/// Reads a control entry; `None` for anything else.
fn decode_control(entry: &StreamId) -> Option<Entry> {
    match text(entry, "control")?.as_str() {
        "revoke" => Some(Entry::Revoke(
            Revocation::from_key(&text(entry, "key")?)?,
            text(entry, "at")?.parse().ok()?,
        )),
        _ => None,
    }
}

/// Reads entries in order; one Herald did not write is skipped and logged.
pub(super) fn decode_all<'a>(entries: impl Iterator<Item = &'a StreamId>) -> Vec<Entry> {
    entries
        .filter_map(|entry| {
            let decoded = if entry.map.contains_key("control") {
                decode_control(entry)
            } else {
                decode_event(entry).map(Entry::Event)
            };
            if decoded.is_none() {
                log::warn!(
                    "redis: skipping stream entry {} that Herald did not write",
                    entry.id
                );
            }
            decoded
        })
        .collect()
}

/// Only the events among `entries` (an audience stream holds nothing else).
pub(super) fn events_of(entries: Vec<Entry>) -> impl Iterator<Item = Stamped> {
    entries.into_iter().filter_map(|entry| match entry {
        Entry::Event(event) => Some(event),
        Entry::Revoke(..) => None,
    })
}

impl Entry {
    /// As the log hands it on.
    pub(super) fn into_item(self) -> FlowItem {
        match self {
            Self::Event(event) => FlowItem::Event(event),
            Self::Revoke(revocation, _) => FlowItem::Revoke(revocation),
        }
    }
}
