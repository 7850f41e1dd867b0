//! The log's format (`LOG_FORMAT`): plain text lines (the default), or one
//! JSON object per line for log pipelines.
//!
//! Both are env_logger underneath, filtered by `RUST_LOG`. A JSON line has
//! `ts` (RFC 3339, UTC, milliseconds), `level`, `target` and `msg`; an access
//! line also has `method`, `path` (tokens and tickets redacted, as in plain
//! text), `status`, `duration_ms` and `peer`. For those the access-log
//! middleware writes its fields separated by tabs ([`ACCESS_FORMAT_JSON`]),
//! which this formatter takes apart.

use std::io::Write;

use serde::Serialize;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT`'s value: `plain` (or unset) or `json`.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        match raw.map(str::trim) {
            None | Some("") | Some("plain") => Ok(Self::Plain),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(format!("LOG_FORMAT must be plain or json, got {other:?}")),
        }
    }
}

/// The target the access-log middleware writes under.
pub(crate) const ACCESS_TARGET: &str = "actix_web::middleware::logger";

/// The access line in plain text: peer, "METHOD path", status, bytes, time.
pub(crate) const ACCESS_FORMAT_PLAIN: &str = "%{r}a \"%{uri}xi\" %s %b %Dms";

/// The access line for the JSON formatter: its fields, tab-separated.
pub(crate) const ACCESS_FORMAT_JSON: &str = "%{r}a\t%{method}xi\t%{path}xi\t%s\t%D";

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    level: &'a str,
    target: &'a str,
    msg: String,
    #[serde(flatten)]
    access: Option<Access<'a>>,
}

#[derive(Serialize)]
struct Access<'a> {
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    peer: &'a str,
}

/// The fields of an access line written with [`ACCESS_FORMAT_JSON`].
fn access(message: &str) -> Option<Access<'_>> {
    let mut fields = message.split('\t');
    let peer = fields.next()?;
    let method = fields.next()?;
    let path = fields.next()?;
    let status = fields.next()?.parse().ok()?;
    let duration_ms = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    Some(Access {
        method,
        path,
        status,
        duration_ms,
        peer,
    })
}

/// The JSON line of one record.
fn json_line(ts: String, level: log::Level, target: &str, message: &str) -> String {
    let access = (target == ACCESS_TARGET).then(|| access(message)).flatten();
    let msg = match &access {
        Some(a) => format!("{} {} {} {}ms", a.method, a.path, a.status, a.duration_ms),
        None => message.to_owned(),
    };
    let line = Line {
        ts,
        level: level.as_str(),
        target,
        msg,
        access,
    };
    // Plain strings and numbers always serialize.
    serde_json::to_string(&line).unwrap_or_default()
}

/// Starts the logger: `RUST_LOG` filters (default `info`), `format` writes.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let ts = buf.timestamp_millis().to_string();
            let line = json_line(
                ts,
                record.level(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn an_access_line_becomes_fields_and_other_lines_keep_their_message() {
        let line = json_line(
            "2026-12-06T23:00:00.000Z".into(),
            log::Level::Info,
            ACCESS_TARGET,
            "127.0.0.1:5000\tGET\t/api/events?token=[redacted]\t200\t1.250000",
        );
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["method"], "GET");
        assert_eq!(value["path"], "/api/events?token=[redacted]");
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.25);
        assert_eq!(value["peer"], "127.0.0.1:5000");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["ts"], "2026-12-06T23:00:00.000Z");

        let plain = json_line(
            "t".into(),
            log::Level::Warn,
            "herald::startup",
            "a \"quoted\"\nmessage\twith a tab",
        );
        let value: Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(value["msg"], "a \"quoted\"\nmessage\twith a tab");
        assert!(value.get("method").is_none());
        assert!(!plain.contains('\n'), "one line: {plain}");
    }

    #[test]
    fn the_format_is_plain_unless_json_is_asked() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Plain));
        assert_eq!(LogFormat::parse(Some("json")), Ok(LogFormat::Json));
        assert!(LogFormat::parse(Some("xml"))
            .unwrap_err()
            .contains("LOG_FORMAT"));
    }
}
