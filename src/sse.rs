//! The Server-Sent Events wire format, and nothing else.
//!
//! Encoding happens once per event; the resulting [`Bytes`] are shared by every
//! stream that receives it. The [`Parser`] is the client side, used by the
//! examples, the load tool and the tests.

use bytes::{BufMut, Bytes, BytesMut};

/// The comment frame written as a heartbeat.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// `retry: <ms>` — how long a browser waits before reconnecting.
pub fn retry(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// One event frame: optional `id:`, `event:`, one `data:` line per line of `data`.
///
/// `id` and `event` are written without CR, LF or NUL whatever the caller
/// passes (callers pass validated names, so this never changes a real value);
/// line breaks in `data` become separate `data:` lines of the same event.
pub fn event(id: Option<&str>, name: &str, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(id.map_or(0, str::len) + name.len() + data.len() + 24);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        put_field(&mut out, id);
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    put_field(&mut out, name);
    out.put_u8(b'\n');
    for line in split_lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

fn put_field(out: &mut BytesMut, value: &str) {
    for &byte in value.as_bytes() {
        if !matches!(byte, b'\r' | b'\n' | b'\0') {
            out.put_u8(byte);
        }
    }
}

/// Splits on `\r\n`, `\r` or `\n`, the three line endings SSE recognises.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            Some(at) => {
                let skip = if text[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[at + skip..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// An event as a client sees it after parsing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// `id:` of this event, if it carried one.
    pub id: Option<String>,
    /// `event:` name; `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental SSE parser following the HTML spec's event-stream rules.
#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// The last `retry:` value seen.
    pub retry: Option<u64>,
    /// Comment lines seen (heartbeats).
    pub comments: u64,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns every event completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.buffer.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + offset;
            let mut next = end + 1;
            if self.buffer[end] == b'\r' {
                if next >= self.buffer.len() {
                    break; // a lone CR at the end may be the first half of CRLF
                }
                if self.buffer[next] == b'\n' {
                    next += 1;
                }
            }
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            start = next;
            if let Some(frame) = self.line(&line) {
                frames.push(frame);
            }
        }
        self.buffer.drain(..start);
        frames
    }

    fn line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let id = self.id.clone();
            return data.map(|data| Frame {
                id,
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "retry" => self.retry = value.parse().ok().or(self.retry),
            _ => {}
        }
        None
    }

    /// The id of the last event seen: what a reconnect sends as `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bytes_are_exact() {
        assert_eq!(
            &event(Some("17-3"), "update", r#"{"a":1}"#)[..],
            b"id: 17-3\nevent: update\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &event(None, "connected", "{}")[..],
            b"event: connected\ndata: {}\n\n"
        );
        assert_eq!(&retry(5000)[..], b"retry: 5000\n\n");
    }

    #[test]
    fn a_heartbeat_is_one_comment_that_leaves_the_events_around_it_intact() {
        let before = event(Some("7-1"), "before", "one");
        let after = event(None, "after", "two\nlines");
        let mut parser = Parser::new();
        assert_eq!(parser.feed(&before).len(), 1);

        // Fed on its own, between two events: a complete comment, so nothing
        // of it waits in the buffer to glue onto the next event's first line.
        assert_eq!(parser.feed(HEARTBEAT), Vec::<Frame>::new());
        assert_eq!(parser.comments, 1);
        assert!(parser.buffer.is_empty(), "the heartbeat ends its line");

        assert_eq!(
            parser.feed(&after),
            vec![Frame {
                id: Some("7-1".into()),
                event: "after".into(),
                data: "two\nlines".into()
            }]
        );
        assert_eq!(parser.comments, 1, "the heartbeat, once");

        // And in one buffer with both events, as a proxy may coalesce them.
        let mut wire = before.to_vec();
        wire.extend_from_slice(HEARTBEAT);
        wire.extend_from_slice(&after);
        let mut parser = Parser::new();
        assert_eq!(
            parser.feed(&wire),
            vec![
                Frame {
                    id: Some("7-1".into()),
                    event: "before".into(),
                    data: "one".into()
                },
                Frame {
                    id: Some("7-1".into()),
                    event: "after".into(),
                    data: "two\nlines".into()
                },
            ]
        );
        assert_eq!(parser.comments, 1);
        assert_eq!(parser.last_event_id(), Some("7-1"));
    }

    #[test]
    fn line_breaks_in_data_stay_one_event() {
        assert_eq!(
            &event(None, "m", "one\ntwo\r\nthree\rfour")[..],
            b"event: m\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        );
        assert_eq!(&event(None, "m", "")[..], b"event: m\ndata: \n\n");
        assert_eq!(
            &event(None, "m", "end\n")[..],
            b"event: m\ndata: end\ndata: \n\n"
        );
    }

    #[test]
    fn fields_can_never_be_injected() {
        let bytes = event(Some("1\nevent: evil"), "x\r\ndata: evil", "ok");
        assert_eq!(
            &bytes[..],
            b"id: 1event: evil\nevent: xdata: evil\ndata: ok\n\n"
        );
        let frames = Parser::new().feed(&bytes);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, "ok");
    }

    #[test]
    fn parser_reads_what_the_encoder_writes_even_split_anywhere() {
        let mut wire = retry(10).to_vec();
        wire.extend_from_slice(&event(Some("1-1"), "a", "x\ny"));
        wire.extend_from_slice(HEARTBEAT);
        wire.extend_from_slice(&event(None, "b", "z"));
        for split in 0..wire.len() {
            let mut parser = Parser::new();
            let mut frames = parser.feed(&wire[..split]);
            frames.extend(parser.feed(&wire[split..]));
            assert_eq!(
                frames,
                vec![
                    Frame {
                        id: Some("1-1".into()),
                        event: "a".into(),
                        data: "x\ny".into()
                    },
                    Frame {
                        id: Some("1-1".into()),
                        event: "b".into(),
                        data: "z".into()
                    },
                ],
                "split at {split}"
            );
            assert_eq!(parser.retry, Some(10));
            assert_eq!(parser.comments, 1);
        }
    }
}
