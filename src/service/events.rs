//! The local hub's live event stream (`GET /emulator/events`, server-sent events; not an Azure
//! API): an incremental SSE decoder and the one-line rendering `azsim monitor` prints.

use std::fmt::Write as _;

use serde_json::Value;

/// One item of an SSE stream that azsim cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A comment line (`: ready`), without the colon and leading space.
    Comment(String),
    /// The joined `data:` lines of one event.
    Data(String),
}

/// Incremental decoder: feed it the body's chunks, take complete items out.
///
/// Follows the WHATWG rules azsim needs: lines end in `\n`, `\r\n` or `\r`; `data:` lines
/// accumulate until a blank line; `event:`, `id:` and `retry:` are ignored.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk and returns the items it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A lone `\r` at the end of the buffer may be the first half of `\r\n`: wait.
            if self.buf[pos] == b'\r' && pos + 1 == self.buf.len() {
                break;
            }
            let skip = if self.buf[pos] == b'\r' && self.buf.get(pos + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buf.drain(..pos + skip).take(pos).collect();
            let line = String::from_utf8_lossy(&line);
            self.line(&line, &mut out);
        }
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseItem>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseItem::Data(data));
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(SseItem::Comment(comment.trim_start().to_owned()));
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
    }
}

fn str_field<'a>(ev: &'a Value, key: &str) -> Option<&'a str> {
    ev.get(key).and_then(Value::as_str)
}

/// The event's `type`, or `"unknown"`.
pub fn event_type(ev: &Value) -> &str {
    str_field(ev, "type").unwrap_or("unknown")
}

/// `device` or `device/module`.
fn who(ev: &Value) -> String {
    let device = str_field(ev, "deviceId").unwrap_or("?");
    match str_field(ev, "moduleId") {
        Some(m) => format!("{device}/{m}"),
        None => device.to_owned(),
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// One readable line for an event, prefixed by `now` unless the event carries its own time.
pub fn render_line(ev: &Value, now: &str) -> String {
    let ty = event_type(ev);
    let time = str_field(ev, "enqueuedTime").unwrap_or(now);
    let mut line = format!("{time} {} ", who(ev));
    match ty {
        "telemetry" => {
            line.push_str("telemetry ");
            match (str_field(ev, "body"), str_field(ev, "bodyBase64")) {
                (Some(body), _) => line.push_str(body),
                (None, Some(b64)) => {
                    let _ = write!(line, "base64:{b64}");
                }
                (None, None) => line.push_str("(empty)"),
            }
            let mut props = Vec::new();
            if let Some(Value::Object(sys)) = ev.get("systemProperties") {
                for (k, v) in sys {
                    if let Some(s) = v.as_str() {
                        props.push(format!("{k}={s}"));
                    }
                }
            }
            if let Some(Value::Object(app)) = ev.get("properties") {
                for (k, v) in app {
                    match v.as_str() {
                        Some(s) => props.push(format!("{k}={s}")),
                        None => props.push(format!("{k}={}", compact(v))),
                    }
                }
            }
            if !props.is_empty() {
                let _ = write!(line, " | {}", props.join(" "));
            }
        }
        "connected" | "disconnected" => {
            line.push_str(ty);
            if let Some(reason) = str_field(ev, "reason") {
                let _ = write!(line, " ({reason})");
            }
        }
        "twinReported" | "twinDesired" => {
            let side = if ty == "twinReported" {
                "reported"
            } else {
                "desired"
            };
            let _ = write!(line, "{side} properties");
            if let Some(v) = ev.get("version").and_then(Value::as_i64) {
                let _ = write!(line, " $version {v}");
            }
            if let Some(patch) = ev.get("patch") {
                let _ = write!(line, ": {}", compact(patch));
            }
        }
        "c2dCompleted" => {
            line.push_str("completed c2d message");
            if let Some(id) = str_field(ev, "messageId") {
                let _ = write!(line, " {id}");
            }
        }
        "c2dFeedback" => {
            line.push_str("c2d feedback");
            if let Some(id) = str_field(ev, "messageId") {
                let _ = write!(line, " {id}");
            }
            if let Some(status) = str_field(ev, "statusCode") {
                let _ = write!(line, ": {status}");
            }
        }
        other => {
            let _ = write!(line, "{other}: {}", compact(ev));
        }
    }
    line.replace(['\n', '\r'], " ")
}

/// One line for a C2D feedback record (Azure's shape):
/// `{enqueuedTimeUtc} {deviceId} {originalMessageId} {statusCode}`.
pub fn feedback_line(rec: &Value) -> String {
    let f = |k: &str| str_field(rec, k).unwrap_or("-");
    let mut line = format!(
        "{} {} {} {}",
        f("enqueuedTimeUtc"),
        f("deviceId"),
        f("originalMessageId"),
        f("statusCode")
    );
    if let Some(d) = str_field(rec, "description").filter(|d| *d != f("statusCode")) {
        let _ = write!(line, " ({d})");
    }
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decoder_handles_split_chunks_comments_and_crlf() {
        let mut d = SseDecoder::new();
        assert_eq!(d.push(b": ready\r"), vec![]);
        assert_eq!(
            d.push(b"\n\r\ndata: {\"a\""),
            vec![SseItem::Comment("ready".into())]
        );
        assert_eq!(d.push(b":1}\n"), vec![]);
        assert_eq!(
            d.push(b"\ndata:x\ndata: y\n\n"),
            vec![
                SseItem::Data("{\"a\":1}".into()),
                SseItem::Data("x\ny".into())
            ]
        );
    }

    #[test]
    fn telemetry_line_shows_body_and_properties() {
        let ev = json!({"type":"telemetry","deviceId":"d1","moduleId":null,
            "enqueuedTime":"2026-01-01T00:00:00Z","body":"{\"t\":1}",
            "systemProperties":{"content-type":"application/json","message-id":null},
            "properties":{"alert":"hot"}});
        assert_eq!(
            render_line(&ev, "now"),
            "2026-01-01T00:00:00Z d1 telemetry {\"t\":1} | content-type=application/json alert=hot"
        );
    }

    #[test]
    fn other_events_render_on_one_line() {
        let ev = json!({"type":"twinReported","deviceId":"d1","version":3,"patch":{"a":{"b":1}}});
        assert_eq!(
            render_line(&ev, "T"),
            "T d1 reported properties $version 3: {\"a\":{\"b\":1}}"
        );
        let ev = json!({"type":"disconnected","deviceId":"d1","reason":"keep-alive"});
        assert_eq!(render_line(&ev, "T"), "T d1 disconnected (keep-alive)");
        let ev = json!({"type":"c2dFeedback","deviceId":"d1","messageId":"m1",
            "statusCode":"Expired","enqueuedTime":"E"});
        assert_eq!(render_line(&ev, "T"), "E d1 c2d feedback m1: Expired");
    }

    #[test]
    fn feedback_records_render_on_one_line() {
        let rec = json!({"originalMessageId":"m1","description":"Success","deviceGenerationId":"g",
            "deviceId":"d1","enqueuedTimeUtc":"2026-01-01T00:00:00.0000000Z","statusCode":"Success"});
        assert_eq!(
            feedback_line(&rec),
            "2026-01-01T00:00:00.0000000Z d1 m1 Success"
        );
        let rec = json!({"originalMessageId":"m2","description":"Message expired",
            "deviceId":"d1","enqueuedTimeUtc":"T","statusCode":"Expired"});
        assert_eq!(feedback_line(&rec), "T d1 m2 Expired (Message expired)");
    }
}
