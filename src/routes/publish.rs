//! `POST /api/send`: publish one event or a batch (admin).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{read_json_body, AppState};
use crate::auth::Admin;
use crate::domain::{Audience, Channel, EventName, Outgoing, UserId};
use crate::error::ApiError;

/// One event as a publisher sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest {
    event: Option<String>,
    #[serde(default)]
    data: Value,
    user: Option<String>,
    users: Option<Vec<String>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
}

impl PublishRequest {
    /// Validates names and targets. Naming targets and leaving them all empty
    /// is refused rather than read as "everyone": an empty recipient list
    /// computed by a back end must never become a broadcast.
    pub(super) fn into_outgoing(self) -> Result<Outgoing, String> {
        let name = match self.event.as_deref() {
            Some(raw) => EventName::parse(raw)?,
            None => EventName::default(),
        };
        let targeted = self.user.is_some()
            || self.users.is_some()
            || self.channel.is_some()
            || self.channels.is_some();
        let mut users: Vec<UserId> = Vec::new();
        for raw in self.user.iter().chain(self.users.iter().flatten()) {
            let user = UserId::parse(raw)?;
            if !users.contains(&user) {
                users.push(user);
            }
        }
        let mut channels: Vec<Channel> = Vec::new();
        for raw in self.channel.iter().chain(self.channels.iter().flatten()) {
            let channel = Channel::parse(raw)?;
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        let audience = match (targeted, users.is_empty() && channels.is_empty()) {
            (false, _) => Audience::Everyone,
            (true, true) => {
                return Err("user, users, channel and channels are all empty; \
                            leave them out to send to everyone"
                    .into())
            }
            (true, false) => Audience::Targets {
                users: users.into(),
                channels: channels.into(),
            },
        };
        Ok(Outgoing {
            name,
            data: self.data.to_string(),
            audience,
        })
    }
}

/// Parses a publish body: one object, or an array of at most `max_batch`.
/// Returns the events and whether the body was a batch.
pub(super) fn parse_body(body: &[u8], max_batch: usize) -> Result<(Vec<Outgoing>, bool), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let parse_one = |value: Value| -> Result<Outgoing, String> {
        if !value.is_object() {
            return Err("an event must be a JSON object".into());
        }
        serde_json::from_value::<PublishRequest>(value)
            .map_err(|e| e.to_string())?
            .into_outgoing()
    };
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::BadRequest(
                    "a batch needs at least one event".into(),
                ));
            }
            if items.len() > max_batch {
                return Err(ApiError::BadRequest(format!(
                    "a batch holds at most {max_batch} events (MAX_BATCH), got {}",
                    items.len()
                )));
            }
            let events = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    parse_one(item).map_err(|e| ApiError::BadRequest(format!("event {index}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((events, true))
        }
        other => Ok((vec![parse_one(other).map_err(ApiError::BadRequest)?], false)),
    }
}

pub(super) async fn send(
    req: HttpRequest,
    _admin: Admin,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(&req, payload, state.config.max_body_bytes).await?;
    let (events, batch) = parse_body(&body, state.config.max_batch)?;
    let published = state.bus.publish(events).await?;
    let answer = if batch {
        json!({ "events": published })
    } else {
        json!(published.into_iter().next())
    };
    Ok(HttpResponse::Accepted().json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(body: &str) -> String {
        match parse_body(body.as_bytes(), 3) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{body}: expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn invalid_bodies_are_refused_with_a_reason() {
        for (body, reason) in [
            ("{", "not valid JSON"),
            ("42", "JSON object"),
            ("[]", "at least one"),
            ("[{},{},{},{}]", "at most 3"),
            (r#"{"event":"bad name"}"#, "event name"),
            (r#"{"event":"x\ny"}"#, "event name"),
            (r#"{"event":""}"#, "event name"),
            (r#"{"user":""}"#, "user id"),
            (r#"{"user":"a\nb"}"#, "control"),
            (r#"{"channel":"no spaces"}"#, "channel"),
            (r#"{"users":[]}"#, "all empty"),
            (r#"{"chanel":"typo"}"#, "unknown field"),
            (r#"{"users":"alice"}"#, "invalid type"),
            (r#"[{"event":"ok"},{"event":"bad name"}]"#, "event 1"),
        ] {
            let message = error_of(body);
            assert!(
                message.contains(reason),
                "{body}: {message:?} should mention {reason:?}"
            );
        }
    }

    #[test]
    fn targets_are_a_deduplicated_union() {
        let (events, batch) = parse_body(
            br#"{"user":"a","users":["a","b"],"channel":"n","channels":["n","m"],"data":{"x":1}}"#,
            3,
        )
        .unwrap();
        assert!(!batch);
        let Audience::Targets { users, channels } = &events[0].audience else {
            panic!("targeted")
        };
        assert_eq!(
            users.iter().map(UserId::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(
            channels.iter().map(Channel::as_str).collect::<Vec<_>>(),
            ["n", "m"]
        );
        assert_eq!(events[0].name.as_str(), "message");
        assert_eq!(events[0].data, r#"{"x":1}"#);
    }

    #[test]
    fn no_target_means_everyone_and_missing_data_is_null() {
        let (events, batch) =
            parse_body(br#"[{"event":"a"},{"event":"b","data":"line\nbreak"}]"#, 3).unwrap();
        assert!(batch);
        assert_eq!(events[0].audience, Audience::Everyone);
        assert_eq!(events[0].data, "null");
        assert_eq!(
            events[1].data, r#""line\nbreak""#,
            "JSON text never holds a raw line break"
        );
    }
}
