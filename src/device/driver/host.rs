//! The laptop around the loop: the [`App`] hooks of `azsim run` (templates, properties, canned
//! methods, stop requests) and the loop's [`Note`]s printed as its events.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use azsim_emulator::clock::rfc3339;
use azsim_mqtt::{App, Note, Observer};
use azsim_proto::device::json;
use azsim_proto::session::{DisconnectReason, Event, TwinRequestKind};
use serde_json::{Value, json};

use crate::device::net::FailureSlot;
use crate::device::output::{Output, body_text, body_value};
use crate::device::template::TemplateVars;

use super::{MAX_PACKET, RunConfig, Totals};

type Shutdown<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The laptop around the loop: its hooks, and its notes printed as events.
pub(super) struct Host<'a> {
    cfg: &'a RunConfig,
    out: Output,
    /// `connect_host:port`, as people see it.
    peer: String,
    failure: FailureSlot,
    /// Why the last connection (attempt) failed, for `reconnecting` and the final error.
    pub(super) last_failure: Option<String>,
    /// Why the loop itself is dropping the connection (a packet too large for its buffer).
    dropping: Option<String>,
    pub(super) totals: Totals,
    stop_reason: Option<&'static str>,
    started: Instant,
    first_ack: Option<Duration>,
    /// Reported PATCHes by request id, printed when the hub accepts them.
    reported: HashMap<u32, Value>,
    /// The last rendered `--payload` body.
    body: String,
    shutdown: Option<Shutdown<'a>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<'a> Host<'a> {
    pub(super) fn new(
        cfg: &'a RunConfig,
        out: Output,
        failure: FailureSlot,
        peer: String,
        shutdown: impl Future<Output = ()> + Send + 'a,
    ) -> Self {
        Self {
            cfg,
            out,
            peer,
            failure,
            last_failure: None,
            dropping: None,
            totals: Totals::default(),
            stop_reason: None,
            started: Instant::now(),
            first_ack: None,
            reported: HashMap::new(),
            body: String::new(),
            shutdown: Some(Box::pin(shutdown)),
            deadline: cfg.duration.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    fn stop(&mut self, why: &'static str) {
        if self.stop_reason.is_none() {
            self.stop_reason = Some(why);
        }
    }

    pub(super) fn print_stopped(&self, queued: usize) {
        let t = self.totals;
        let reason = self.stop_reason.unwrap_or("error");
        let elapsed = self.started.elapsed().as_secs_f64();
        self.out.emit(
            "stopped",
            json!({
                "reason": reason,
                "sent": t.sent, "acked": t.acked, "dropped": t.dropped, "queued": queued,
                "c2d": t.c2d, "methods": t.methods, "reconnects": t.reconnects, "renewals": t.renewals,
                "seconds": (elapsed * 1000.0).round() / 1000.0,
                "first_ack_ms": self.first_ack.map(|x| x.as_millis() as u64),
            }),
            || {
                format!(
                    "stopped ({reason}): {} sent, {} acknowledged, {} dropped, {} c2d, {} methods, {} reconnects, {} token renewals in {elapsed:.1} s",
                    t.sent, t.acked, t.dropped, t.c2d, t.methods, t.reconnects, t.renewals
                )
            },
        );
    }

    /// Why a connection (or an attempt at one) ended, for people.
    fn describe(&mut self, reason: DisconnectReason, connecting: bool) -> String {
        match (reason, self.dropping.take()) {
            (DisconnectReason::Requested, _) => "closed by the device".to_owned(),
            (DisconnectReason::Refused(code), _) => {
                format!("the hub refused the connection: {code}")
            }
            (_, Some(why)) => why,
            (_, None) => match self.failure.get() {
                Some(text) if connecting && text.ends_with("closed the connection") => {
                    format!("{text} before CONNACK")
                }
                Some(text) => text,
                None if connecting => format!("no CONNACK from {}", self.peer),
                None => format!("connection to {} lost", self.peer),
            },
        }
    }

    fn on_session(&mut self, ev: Event<'_>) {
        match ev {
            Event::Connected {
                token_expiry,
                reconnect,
            } => {
                let host = &self.peer;
                let module = self.cfg.module_id.as_deref();
                let who = match module {
                    Some(m) => format!("{}/{m}", self.cfg.device_id),
                    None => self.cfg.device_id.clone(),
                };
                let exp = token_expiry.map(rfc3339);
                let mut v = json!({"host": host, "device_id": self.cfg.device_id, "token_expiry": exp, "reconnect": reconnect});
                if let Some(m) = module {
                    v["module_id"] = json!(m);
                }
                self.out.emit("connected", v, || match &exp {
                    Some(e) => format!("connected to {host} as {who} (token valid until {e})"),
                    None => format!("connected to {host} as {who}"),
                });
            }
            Event::TokenRenewed { token_expiry } => {
                self.totals.renewals += 1;
                let exp = rfc3339(token_expiry);
                self.out
                    .emit("token_renewed", json!({"token_expiry": exp}), || {
                        format!("token renewed (valid until {exp})")
                    });
            }
            Event::Disconnected { reason } => {
                let detail = self.describe(reason, false);
                if reason != DisconnectReason::Requested {
                    self.last_failure = Some(detail.clone());
                }
                self.out
                    .emit("disconnected", json!({"reason": detail}), || {
                        format!("disconnected: {detail}")
                    });
            }
            Event::Reconnecting { attempt, delay_ms } => {
                self.totals.reconnects += 1;
                let delay = delay_ms as f64 / 1000.0;
                let why = self.last_failure.clone().unwrap_or_default();
                self.out.emit(
                    "reconnecting",
                    json!({"attempt": attempt, "delay": delay, "reason": why}),
                    || format!("reconnecting in {delay:.1} s (attempt {attempt}): {why}"),
                );
            }
            Event::C2d { properties, body } => {
                self.totals.c2d += 1;
                let mut props = serde_json::Map::new();
                for p in properties.iter() {
                    let name = decode(p.name.as_raw());
                    let value = p.value.map(|v| decode(v.as_raw()));
                    props.insert(name, value.map_or(Value::Null, Value::String));
                }
                let text = body_text(body);
                let human_props = props
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.out
                    .emit("c2d", json!({"body": text, "properties": props}), || {
                        format!("c2d: {text} [{human_props}]")
                    });
            }
            Event::Twin { document, .. } => {
                let desired = json::find(document, &["desired"]).map_or(Value::Null, body_value);
                let reported = json::find(document, &["reported"]).map_or(Value::Null, body_value);
                self.out.emit(
                    "twin",
                    json!({"desired": desired, "reported": reported}),
                    || format!("twin: desired {desired} reported {reported}"),
                );
            }
            Event::DesiredPatch { version, patch } => {
                let patch = body_value(patch);
                self.out.emit(
                    "desired",
                    json!({"version": version, "patch": patch}),
                    || format!("desired v{version}: {patch}"),
                );
            }
            Event::ReportedAccepted { rid, version } => {
                let patch = self.reported.remove(&rid).unwrap_or(Value::Null);
                self.out.emit(
                    "reported",
                    json!({"rid": rid, "version": version, "patch": patch}),
                    || match version {
                        Some(v) => format!("reported v{v}: {patch}"),
                        None => format!("reported: {patch}"),
                    },
                );
            }
            Event::TwinRequestFailed {
                rid,
                kind,
                status,
                body,
            } => {
                self.reported.remove(&rid);
                let what = match kind {
                    TwinRequestKind::Get => "twin get",
                    TwinRequestKind::Reported => "reported patch",
                };
                let st = status.map_or_else(|| "no answer".to_owned(), |s| s.to_string());
                self.out.emit(
                    "twin_error",
                    json!({"rid": rid, "request": what, "status": status, "body": body_value(body)}),
                    || format!("{what} (rid {rid}) failed: {st}"),
                );
            }
            // Acknowledgements come as `Note::TelemetryAcked`, method calls as `Note::Method`;
            // unacknowledged telemetry is sent again by the loop.
            Event::TelemetryAcked { .. }
            | Event::TelemetryUnacked { .. }
            | Event::MethodRequest { .. } => {}
        }
    }
}

impl Observer for Host<'_> {
    fn note(&mut self, note: Note<'_>) {
        match note {
            Note::Connecting { .. } | Note::GaveUp { .. } => {}
            Note::ConnectFailed { reason } => {
                self.last_failure = Some(self.describe(reason, true));
            }
            Note::Session(ev) => self.on_session(ev),
            Note::TelemetrySent {
                seq,
                message_id,
                body,
                redelivery,
            } => {
                self.totals.sent += 1;
                self.out.emit(
                    "telemetry_sent",
                    json!({"seq": seq, "message_id": message_id, "bytes": body.len(), "body": body_value(body), "redelivery": redelivery}),
                    || {
                        let again = if redelivery { " again (DUP)" } else { "" };
                        format!("telemetry #{seq} sent{again}: {}", body_text(body))
                    },
                );
            }
            Note::TelemetryAcked { seq, message_id } => {
                self.totals.acked += 1;
                if self.first_ack.is_none() {
                    self.first_ack = Some(self.started.elapsed());
                }
                self.out.emit(
                    "telemetry_acked",
                    json!({"seq": seq, "message_id": message_id}),
                    || format!("telemetry #{seq} acknowledged"),
                );
                if self.cfg.count.is_some_and(|n| self.totals.acked >= n) {
                    self.stop("count");
                }
            }
            Note::TelemetryDropped { .. } => {
                self.totals.dropped += 1;
                let total = self.totals.dropped;
                let max = self.cfg.max_queue;
                self.out.emit(
                    "dropped",
                    json!({"count": 1, "total": total, "max_queue": max}),
                    || {
                        format!(
                            "offline queue full ({max}): dropped the oldest message, {total} in all"
                        )
                    },
                );
            }
            Note::Method {
                name,
                rid,
                status,
                request,
                response,
            } => {
                self.totals.methods += 1;
                let response = body_value(response);
                self.out.emit(
                    "method",
                    json!({"name": name, "rid": rid, "status": status, "request": body_value(request), "response": response}),
                    || format!("method {name} (rid {rid}) -> {status} {response}"),
                );
            }
            Note::ReportedSent { rid, patch } => {
                self.reported.insert(rid, body_value(patch));
            }
            Note::PacketTooLarge { buffer } => {
                self.dropping = Some(format!(
                    "a packet from {} is larger than the {buffer}-byte buffer",
                    self.peer
                ));
            }
            Note::NotSent { topic } => {
                tracing::warn!("publish to {topic} is larger than {MAX_PACKET} bytes, not sent");
            }
        }
    }
}

impl App for Host<'_> {
    fn telemetry<'s>(&'s mut self, seq: u32, reading: &'s str) -> Option<&'s [u8]> {
        let Some(tpl) = &self.cfg.payload else {
            return Some(reading.as_bytes());
        };
        match tpl.render(TemplateVars::from_reading(
            seq,
            &self.cfg.device_id,
            None,
            reading,
        )) {
            Ok(body) => {
                self.body = body;
                Some(self.body.as_bytes())
            }
            Err(e) => {
                self.out
                    .emit("template_error", json!({"seq": seq, "error": e}), || {
                        format!("payload template failed for #{seq}: {e}")
                    });
                None
            }
        }
    }

    fn content_type(&self) -> &str {
        &self.cfg.content_type
    }

    fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.cfg
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn method(&mut self, name: &str) -> Option<(u16, &[u8])> {
        self.cfg
            .methods
            .iter()
            .find(|m| m.name == name)
            .map(|m| (m.status, m.body.as_bytes()))
    }

    fn stop_requested(&mut self) -> bool {
        self.stop_reason.is_some()
    }

    fn wait_for_stop(&mut self) -> impl Future<Output = ()> {
        poll_fn(|cx| {
            if let Some(s) = self.shutdown.as_mut()
                && s.as_mut().poll(cx).is_ready()
            {
                self.shutdown = None;
                self.stop("interrupted");
                return Poll::Ready(());
            }
            if let Some(d) = self.deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                self.deadline = None;
                self.stop("duration");
                return Poll::Ready(());
            }
            Poll::Pending
        })
    }
}

fn decode(raw: &str) -> String {
    let mut s = String::new();
    match azsim_proto::encoding::decode_to(&mut s, raw) {
        Ok(()) => s,
        Err(_) => raw.to_owned(),
    }
}
