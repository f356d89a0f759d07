//! The host driver of `azsim run`: the one device loop, [`azsim_mqtt::Client`] (the code the
//! ESP32 firmware runs), over tokio TCP and rustls ([`super::net`]), with what a laptop adds
//! around it, and the loop's notes printed as `azsim run`'s events.
//!
//! What the laptop adds, through the loop's [`App`] hooks: `--payload` templates (bodies of any
//! size up to the 256 KB D2C limit, not just the reference JSON), `--content-type` and
//! `--property`, canned `--method` answers checked before the built-in ones, an offline queue of
//! `--max-queue` messages on the heap ([`HeapQueue`]), and a clean stop (Ctrl-C or SIGTERM,
//! `--duration`, `--count` acknowledged) that sends DISCONNECT and prints the totals. When the
//! hub refuses the credentials, the token of the last CONNECT is signed again and checked by
//! [`super::diagnose`].

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use azsim_emulator::clock::rfc3339;
use azsim_mqtt::{App, Client, Message, Note, Observer, Storage};
use azsim_proto::device::{Device, DeviceConfig, RandomWalk, json};
use azsim_proto::sas::{self, Resource};
use azsim_proto::secret::Secret;
use azsim_proto::session::{DisconnectReason, Event, GiveUpReason, SessionConfig, TwinRequestKind};
use serde_json::{Value, json};

use super::diagnose::{self, Refusal};
use super::net::{FailureSlot, SystemClock, TlsConnector};
use super::output::{Output, body_text, body_value};
use super::template::{Template, TemplateVars};

/// Largest packet either way: a D2C message may be 256 KB, plus its topic and header. The
/// buffers are allocated at this size but only the pages a packet touches become resident.
pub const MAX_PACKET: usize = 256 * 1024 + 4096;

/// How the device proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A base64 symmetric key: a fresh token is signed for every connection.
    Key(Secret<String>),
    /// A hub policy key (`SharedAccessKeyName`) acting for the device: tokens carry `skn`.
    PolicyKey {
        /// Policy name.
        policy: String,
        /// Base64 key.
        key: Secret<String>,
    },
    /// A fixed `SharedAccessSignature ...` token from the connection string (never renewed).
    Token(Secret<String>),
}

/// A `--method NAME=STATUS[:JSON]` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodReply {
    /// Method name.
    pub name: String,
    /// Status to answer with.
    pub status: u16,
    /// JSON body (`null` when not given).
    pub body: String,
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct RunConfig {
    /// Hub host name, as in `HostName` without a port (used in the username and token).
    pub hub_host: String,
    /// Host to open TCP to (the gateway, or the hub).
    pub connect_host: String,
    /// MQTT port.
    pub port: u16,
    /// Device id.
    pub device_id: String,
    /// Module id.
    pub module_id: Option<String>,
    /// Key or fixed token.
    pub credential: Credential,
    /// Extra CA file.
    pub ca_file: Option<PathBuf>,
    /// Telemetry interval, milliseconds.
    pub interval_ms: u64,
    /// Stop after this many acknowledged messages.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Body template (default: the reference device's JSON).
    pub payload: Option<Template>,
    /// Application properties on every message.
    pub properties: Vec<(String, String)>,
    /// `$.ct` of every message.
    pub content_type: String,
    /// Canned method answers (checked before the built-in methods).
    pub methods: Vec<MethodReply>,
    /// Token lifetime, seconds.
    pub token_ttl: u64,
    /// Seed of the simulated sensor and template randomness.
    pub seed: u64,
    /// Plug and Play model id.
    pub model_id: Option<String>,
    /// MQTT keep-alive, seconds.
    pub keep_alive: u16,
    /// Offline queue bound.
    pub max_queue: usize,
    /// Give up after this many failed attempts before the first connect (`None`: forever).
    pub max_initial_attempts: Option<u32>,
    /// Where a local hub's `hub.json` lives (for the refusal diagnosis).
    pub state_dir: PathBuf,
}

/// Counts printed with `stopped` and returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Telemetry publishes sent (republished ones count again).
    pub sent: u64,
    /// Telemetry acknowledged.
    pub acked: u64,
    /// Dropped from a full offline queue.
    pub dropped: u64,
    /// C2D messages received.
    pub c2d: u64,
    /// Method calls answered.
    pub methods: u64,
    /// Reconnects after a lost connection.
    pub reconnects: u64,
    /// Token renewals.
    pub renewals: u64,
}

/// Why a run ended badly (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The hub refused the credentials; the text holds the diagnosis.
    #[error("{0}")]
    Refused(String),
    /// Could not connect (or stay connected) and gave up; the text names the problem.
    #[error("{0}")]
    GaveUp(String),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The identity is unusable.
    #[error("{0}")]
    Identity(String),
}

/// The offline queue on the heap: at most `--max-queue` messages, bodies of any size.
#[derive(Debug)]
pub struct HeapQueue {
    items: std::collections::VecDeque<Message<Box<[u8]>>>,
    capacity: usize,
}

impl HeapQueue {
    /// A queue holding at most `capacity` messages (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            items: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }
}

impl Storage for HeapQueue {
    type Body = Box<[u8]>;

    fn body(&mut self, bytes: &[u8]) -> Option<Box<[u8]>> {
        Some(bytes.into())
    }

    fn queued(&self) -> usize {
        self.items.len()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn push(&mut self, m: Message<Box<[u8]>>) -> Result<(), Message<Box<[u8]>>> {
        if self.items.len() >= self.capacity {
            return Err(m);
        }
        self.items.push_back(m);
        Ok(())
    }

    fn pop(&mut self) -> Option<Message<Box<[u8]>>> {
        self.items.pop_front()
    }
}

/// Runs the device until `--count`, `--duration`, `shutdown` or a fatal error.
///
/// # Errors
/// [`RunError`] when the hub refuses the credentials, the connection cannot be made, or the TLS
/// configuration is unusable. Nothing in it holds a secret.
pub async fn run(
    cfg: RunConfig,
    out: Output,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Totals, RunError> {
    let tls = crate::tls::client_config(cfg.ca_file.as_deref())?;
    run_with_tls(cfg, tls, out, shutdown).await
}

/// [`run`] with a TLS client configuration built once for many devices (`cfg.ca_file` is then
/// only used by the refusal diagnosis).
///
/// # Errors
/// As [`run`].
pub async fn run_with_tls(
    cfg: RunConfig,
    tls: Arc<rustls::ClientConfig>,
    out: Output,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Totals, RunError> {
    let failure = FailureSlot::default();
    let mut connector = TlsConnector::new(&cfg.connect_host, cfg.port, tls, failure.clone())
        .map_err(RunError::GaveUp)?;
    let credential = match &cfg.credential {
        Credential::Key(k) => azsim_mqtt::Credential::Key(Secret::new(k.expose().as_str())),
        Credential::PolicyKey { policy, key } => azsim_mqtt::Credential::PolicyKey {
            policy,
            key: Secret::new(key.expose().as_str()),
        },
        Credential::Token(t) => azsim_mqtt::Credential::Token(Secret::new(t.expose().as_str())),
    };
    let device = Device::new(
        RandomWalk::new(cfg.seed),
        DeviceConfig {
            interval_ms: cfg.interval_ms,
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    let session = SessionConfig {
        token_ttl: Some(cfg.token_ttl),
        keep_alive: cfg.keep_alive,
        clean_session: false,
        max_initial_attempts: cfg.max_initial_attempts,
        ..SessionConfig::default()
    };
    let (mut rx, mut tx) = (vec![0u8; MAX_PACKET], vec![0u8; MAX_PACKET]);
    let mut client = Client::with_storage(
        azsim_mqtt::Identity {
            host: &cfg.hub_host,
            device_id: &cfg.device_id,
            module_id: cfg.module_id.as_deref(),
            model_id: cfg.model_id.as_deref(),
        },
        credential,
        device,
        session,
        // Message ids and reconnect jitter: fresh for every run, whatever --seed says.
        rand::random(),
        &mut rx,
        &mut tx,
        HeapQueue::new(cfg.max_queue),
    )
    .map_err(|e| RunError::Identity(e.to_string()))?;
    let mut host = Host::new(&cfg, out, failure, connector.peer(), shutdown);
    let ended = client
        .run(&mut connector, &mut SystemClock, &mut host)
        .await;
    let token_expiry = client.session().token_expiry();
    let queued = client.queued();
    drop(client);
    let result = match ended {
        Ok(()) => Ok(host.totals),
        Err(GiveUpReason::Refused(code)) => Err(RunError::Refused(
            diagnose::explain(&refusal(&cfg, token_expiry), &code.to_string()).await,
        )),
        Err(GiveUpReason::Exhausted(_)) => Err(RunError::GaveUp(
            host.last_failure
                .clone()
                .unwrap_or_else(|| "cannot connect".to_owned()),
        )),
    };
    host.print_stopped(queued);
    result
}

/// What the diagnosis needs to know about the refused CONNECT: the token it carried is signed
/// again from the key and the session's expiry (the same bytes: signing is deterministic).
fn refusal(cfg: &RunConfig, token_expiry: Option<u64>) -> Refusal {
    let resource = match &cfg.module_id {
        Some(m) => Resource::Module {
            host: &cfg.hub_host,
            device_id: &cfg.device_id,
            module_id: m,
        },
        None => Resource::Device {
            host: &cfg.hub_host,
            device_id: &cfg.device_id,
        },
    };
    let sign = |key: &Secret<String>, policy: Option<&str>| {
        let mut token = String::new();
        let exp = token_expiry?;
        sas::sign(&mut token, &resource, key.expose(), exp, policy).ok()?;
        Some(Secret::new(token))
    };
    let (token, fixed_token, policy) = match &cfg.credential {
        Credential::Key(k) => (sign(k, None), false, Some(None)),
        Credential::PolicyKey { policy, key } => {
            (sign(key, Some(policy)), false, Some(Some(policy.clone())))
        }
        Credential::Token(t) => (Some(t.clone()), true, None),
    };
    Refusal {
        host: cfg.hub_host.clone(),
        device_id: cfg.device_id.clone(),
        module_id: cfg.module_id.clone(),
        port: cfg.port,
        token,
        fixed_token,
        policy,
        ca_file: cfg.ca_file.clone(),
        state_dir: cfg.state_dir.clone(),
    }
}

type Shutdown<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The laptop around the loop: its hooks, and its notes printed as events.
struct Host<'a> {
    cfg: &'a RunConfig,
    out: Output,
    /// `connect_host:port`, as people see it.
    peer: String,
    failure: FailureSlot,
    /// Why the last connection (attempt) failed, for `reconnecting` and the final error.
    last_failure: Option<String>,
    /// Why the loop itself is dropping the connection (a packet too large for its buffer).
    dropping: Option<String>,
    totals: Totals,
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
    fn new(
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

    fn print_stopped(&self, queued: usize) {
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
                let dev = &self.cfg.device_id;
                let exp = token_expiry.map(rfc3339);
                self.out.emit(
                    "connected",
                    json!({"host": host, "device_id": dev, "token_expiry": exp, "reconnect": reconnect}),
                    || match &exp {
                        Some(e) => format!("connected to {host} as {dev} (token valid until {e})"),
                        None => format!("connected to {host} as {dev}"),
                    },
                );
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
        let value = |k: &str| {
            json::find(reading.as_bytes(), &[k])
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        match tpl.render(TemplateVars {
            seq,
            device_id: &self.cfg.device_id,
            temperature: value("temperature"),
            humidity: value("humidity"),
        }) {
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
