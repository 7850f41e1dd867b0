//! `POST /api/send`: publish one event or a batch (admin).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::{read_json_body, AppState};
use crate::auth::Admin;
use crate::domain::{Audience, Channel, EventName, Outgoing, UserId};
use crate::error::ApiError;
use crate::eventlog::idempotency::IdempotencyKey;
use crate::notifier::PublishError;

/// One event as a publisher sends it. `data` stays the publisher's JSON
/// text: it is never parsed into a tree and written out again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest<'a> {
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    user: Option<String>,
    users: Option<Vec<String>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
}

impl PublishRequest<'_> {
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
        if let Some(raw) = self.data {
            if nesting_depth(raw.get()) > MAX_DATA_DEPTH {
                return Err(format!(
                    "`data` is nested deeper than {MAX_DATA_DEPTH} levels of arrays and objects"
                ));
            }
        }
        Ok(Outgoing {
            name,
            data: self
                .data
                .map_or_else(|| "null".to_owned(), |raw| compact(raw.get())),
            audience,
        })
    }
}

/// `json` (valid JSON text) without the whitespace between its tokens, so
/// it fits on one `data:` line. Key order, numbers and string escapes stay
/// exactly as the publisher wrote them.
/// The deepest `data` accepted: arrays and objects within each other. Deeper
/// data could not be read back by common JSON parsers (serde_json stops at
/// 128, Python's at about 1,000 on a default stack).
pub(crate) const MAX_DATA_DEPTH: usize = 64;

/// How deeply arrays and objects nest in the (valid) JSON text `json`.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn compact(json: &str) -> String {
    if !json
        .bytes()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Reads one event object; `Err` holds the reason, and whether the text
/// was not JSON at all.
fn parse_one(json: &str) -> Result<Outgoing, (String, bool)> {
    match serde_json::from_str::<PublishRequest<'_>>(json) {
        Ok(request) => request.into_outgoing().map_err(|e| (e, false)),
        Err(e) if matches!(e.classify(), Category::Syntax | Category::Eof) => {
            Err((e.to_string(), true))
        }
        Err(e) => Err((e.to_string(), false)),
    }
}

fn not_json(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("the body is not valid JSON: {e}"))
}

/// Parses a publish body: one object, or an array of at most `max_batch`.
/// Returns the events and whether the body was a batch.
pub(super) fn parse_body(body: &[u8], max_batch: usize) -> Result<(Vec<Outgoing>, bool), ApiError> {
    let text = std::str::from_utf8(body).map_err(not_json)?;
    const NOT_AN_OBJECT: &str = "an event must be a JSON object";
    match text.trim_start().as_bytes().first() {
        Some(b'{') => match parse_one(text) {
            Ok(event) => Ok((vec![event], false)),
            Err((why, true)) => Err(not_json(why)),
            Err((why, false)) => Err(ApiError::BadRequest(why)),
        },
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(not_json)?;
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
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let item = item.get();
                    if !item.starts_with('{') {
                        return Err(ApiError::BadRequest(format!(
                            "event {index}: {NOT_AN_OBJECT}"
                        )));
                    }
                    parse_one(item)
                        .map_err(|(why, _)| ApiError::BadRequest(format!("event {index}: {why}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((events, true))
        }
        _ => match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => Err(ApiError::BadRequest(NOT_AN_OBJECT.into())),
            Err(e) => Err(not_json(e)),
        },
    }
}

/// The `Idempotency-Key` header, checked: 1–128 visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all("idempotency-key");
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(
            "Idempotency-Key must be one header of 1 to 128 visible ASCII characters".into(),
        )
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let key = value.as_bytes();
    if key.is_empty() || key.len() > 128 || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad());
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// SHA-256, in hex, of the body as JSON with its object keys sorted: the
/// same events sent again with other spacing or key order are the same body.
fn fingerprint(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|value| value.to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    ring::digest::digest(&ring::digest::SHA256, &canonical)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub(super) async fn send(
    req: HttpRequest,
    admin: Admin,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = read_json_body(&req, payload, state.config.max_body_bytes).await?;
    let (events, batch) = parse_body(&body, state.config.max_batch)?;
    let key = key.map(|key| IdempotencyKey {
        scope: admin.user.as_str().to_owned(),
        key,
        fingerprint: fingerprint(&body),
    });
    let answer = state
        .notifier
        .publish(events, batch, key)
        .await
        .map_err(|error| match error {
            PublishError::Log(error) => ApiError::from(error),
            PublishError::KeyReused => ApiError::IdempotencyConflict,
            PublishError::InFlight => ApiError::Conflict(
                "the first publish with this Idempotency-Key is still in flight; try again".into(),
            ),
        })?;
    let mut response = HttpResponse::Accepted();
    response.content_type("application/json");
    if answer.replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    Ok(response.body(answer.body))
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
    fn data_nested_deeper_than_the_limit_is_refused_and_strings_do_not_count() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let at_limit = format!(r#"{{"data":{}}}"#, nested(MAX_DATA_DEPTH));
        assert!(parse_body(at_limit.as_bytes(), 3).is_ok());
        let deeper = format!(r#"{{"data":{}}}"#, nested(MAX_DATA_DEPTH + 1));
        assert!(error_of(&deeper).contains("nested deeper than 64"));
        let far = format!(r#"[{{"data":{}}}]"#, nested(30_000));
        assert!(error_of(&far).contains("event 0: `data` is nested deeper"));
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!(
            r#"{{"data":{{"a":"{}\"{}"}}}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(parse_body(text.as_bytes(), 3).is_ok());
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
    fn data_keeps_the_publishers_text_without_whitespace_between_tokens() {
        let body = "{\"data\": {\"b\": [1, 2.50, 1e3],\r\n\t\"a\": \"x y \\\" \\\\\"}}";
        let (events, _) = parse_body(body.as_bytes(), 3).unwrap();
        assert_eq!(
            events[0].data, r#"{"b":[1,2.50,1e3],"a":"x y \" \\"}"#,
            "key order, numbers and escapes as sent; spaces inside strings kept"
        );
        let big = r#"{"data":123456789012345678901234567890}"#;
        assert_eq!(
            parse_body(big.as_bytes(), 3).unwrap().0[0].data,
            "123456789012345678901234567890"
        );
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
