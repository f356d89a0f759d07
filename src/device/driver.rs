//! The host driver: feeds the sans-IO session and the reference device behaviour from
//! `azsim-proto` with tokio time and a rumqttc connection, performs what they decide, and prints
//! what happens.
//!
//! The driver owns what the no-heap core cannot: telemetry bodies and the offline queue (bounded
//! by `--max-queue`; when full the oldest message is dropped and counted), and the bodies of
//! telemetry in flight, which go back to the front of the queue when the session reports them
//! unacknowledged after a disconnect, so they are published again on the next connection: one
//! that had gone out goes out again as the same PUBLISH (same topic and `$.mid`, its original
//! packet id, DUP=1) right after CONNACK; one that never reached the wire is simply sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use azsim_proto::device::{Device, DeviceConfig, RandomWalk, TELEMETRY_BUFFER_LEN, json};
use azsim_proto::property_bag::SystemProperties;
use azsim_proto::sas::{self, Resource};
use azsim_proto::session::{
    ACTION_BUFFER_LEN, Action, ConnackCode, DisconnectReason, Event, GiveUpReason, Identity,
    Publish, PublishKind, Session, SessionConfig, TwinRequestKind,
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::conn::{Conn, ConnEvent, ConnectParams, Failure, Redelivery};
use super::diagnose::{self, Refusal};
use super::output::{Output, body_text, body_value};
use super::template::{Template, TemplateVars};

/// Buffer for topics plus small bodies the behaviour writes itself.
const PUBLISH_BUFFER_LEN: usize = 1024;

/// How the device proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// A base64 symmetric key: a fresh token is signed for every connection.
    Key(String),
    /// A hub policy key (`SharedAccessKeyName`) acting for the device: tokens carry `skn`.
    PolicyKey {
        /// Policy name.
        policy: String,
        /// Base64 key.
        key: String,
    },
    /// A fixed `SharedAccessSignature ...` token from the connection string (never renewed).
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(_) => f.write_str("Key(<redacted>)"),
            Self::PolicyKey { policy, .. } => write!(f, "PolicyKey({policy}, <redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
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
    /// Telemetry interval, seconds.
    pub interval: u64,
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

struct Message {
    seq: u32,
    message_id: String,
    body: Vec<u8>,
    /// The session's packet id while in flight.
    pkid: u16,
    /// Topic and packet id it went out with, once on the wire: a resend repeats both.
    wire: Option<(String, u16)>,
}

/// Unix milliseconds, the session's unit.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The tokio `Instant` at Unix millisecond `t`.
fn instant_at(t: u64) -> tokio::time::Instant {
    let now_sys = SystemTime::now();
    let target = UNIX_EPOCH + Duration::from_millis(t);
    let now = tokio::time::Instant::now();
    match target.duration_since(now_sys) {
        Ok(d) => now + d,
        Err(_) => now,
    }
}

/// The driver's state across connections.
struct Driver {
    cfg: RunConfig,
    out: Output,
    tls: Arc<rustls::ClientConfig>,
    session: Session,
    device: Device<RandomWalk>,
    rng: rand::rngs::StdRng,
    queue: VecDeque<Message>,
    in_flight: HashMap<u32, Message>,
    conn: Option<Conn>,
    /// Wire packet ids redelivered on the current connection and not yet handed to the session.
    redelivering: HashSet<u16>,
    totals: Totals,
    last_failure: Option<Failure>,
    /// The token of the last CONNECT, kept to diagnose a refusal.
    last_token: Option<String>,
    stop_reason: Option<&'static str>,
    started: Instant,
    first_ack: Option<Duration>,
    twin_rids: HashMap<u32, Value>,
}

/// Runs the device until `--count`, `--duration`, `shutdown` or a fatal error.
///
/// # Errors
/// [`RunError`] when the hub refuses the credentials, the connection cannot be made, or the TLS
/// configuration is unusable. Nothing in it holds a secret.
pub async fn run(
    cfg: RunConfig,
    out: Output,
    shutdown: impl Future<Output = ()>,
) -> Result<Totals, RunError> {
    let tls = crate::tls::client_config(cfg.ca_file.as_deref())?;
    let identity = match &cfg.module_id {
        Some(m) => Identity::module(&cfg.device_id, m),
        None => Identity::device(&cfg.device_id),
    }
    .map_err(|e| RunError::Identity(e.to_string()))?;
    let token_ttl = match cfg.credential {
        Credential::Key(_) | Credential::PolicyKey { .. } => Some(cfg.token_ttl),
        Credential::Token(_) => None,
    };
    let session = Session::new(
        identity,
        SessionConfig {
            token_ttl,
            keep_alive: cfg.keep_alive,
            clean_session: false,
            max_initial_attempts: cfg.max_initial_attempts,
            ..SessionConfig::default()
        },
    );
    let device = Device::new(
        RandomWalk::new(cfg.seed),
        DeviceConfig {
            interval_ms: cfg.interval.saturating_mul(1000),
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    let rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut d = Driver {
        cfg,
        out,
        tls,
        session,
        device,
        rng,
        queue: VecDeque::new(),
        in_flight: HashMap::new(),
        conn: None,
        redelivering: HashSet::new(),
        totals: Totals::default(),
        last_failure: None,
        last_token: None,
        stop_reason: None,
        started: Instant::now(),
        first_ack: None,
        twin_rids: HashMap::new(),
    };
    let result = d.run_loop(shutdown).await;
    if let Some(c) = d.conn.take() {
        c.abort();
    }
    let t = d.totals;
    let reason = d.stop_reason.unwrap_or("error");
    let elapsed = d.started.elapsed().as_secs_f64();
    d.out.emit(
        "stopped",
        json!({
            "reason": reason,
            "sent": t.sent, "acked": t.acked, "dropped": t.dropped, "queued": d.queue.len() + d.in_flight.len(),
            "c2d": t.c2d, "methods": t.methods, "reconnects": t.reconnects, "renewals": t.renewals,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "first_ack_ms": d.first_ack.map(|x| x.as_millis() as u64),
        }),
        || {
            format!(
                "stopped ({reason}): {} sent, {} acknowledged, {} dropped, {} c2d, {} methods, {} reconnects, {} token renewals in {elapsed:.1} s",
                t.sent, t.acked, t.dropped, t.c2d, t.methods, t.reconnects, t.renewals
            )
        },
    );
    result.map(|()| t)
}

impl Driver {
    async fn run_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        let deadline = self.cfg.duration.map(|d| tokio::time::Instant::now() + d);
        // The same end on the session's clock: telemetry due at the very millisecond the run
        // ends (start + n intervals) is not produced, whichever timer fires first.
        let end_ms = self
            .cfg
            .duration
            .map(|d| unix_now().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        let mut shutdown_done = false;
        loop {
            let now = unix_now();
            if end_ms.is_some_and(|end| now >= end) && self.stop_reason.is_none() {
                self.stop("duration");
            }
            if self.session.poll_timeout().is_some_and(|t| t <= now) {
                self.session.handle_timeout(now);
            }
            self.produce_telemetry(now);
            self.pump(now).await?;
            if self.session.state() == azsim_proto::session::State::Closed {
                return Ok(());
            }

            let wake = [self.session.poll_timeout(), self.device.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .map(instant_at);
            let sleep_until =
                wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let duration_end = deadline.unwrap_or(sleep_until + Duration::from_secs(1));

            tokio::select! {
                ev = next_conn_event(&mut self.conn) => self.on_conn_event(ev).await,
                () = tokio::time::sleep_until(sleep_until) => {}
                () = tokio::time::sleep_until(duration_end), if deadline.is_some() => {
                    self.stop("duration");
                }
                () = &mut shutdown, if !shutdown_done => {
                    shutdown_done = true;
                    self.stop("interrupted");
                }
            }
        }
    }

    fn stop(&mut self, why: &'static str) {
        if self.stop_reason.is_none() {
            self.stop_reason = Some(why);
        }
        self.session.close(unix_now());
    }

    /// Runs actions, events and publishes until the session has nothing more to say.
    async fn pump(&mut self, now: u64) -> Result<(), RunError> {
        loop {
            let mut progressed = false;
            let mut abuf = [0u8; ACTION_BUFFER_LEN];
            while let Some(action) = self.session.poll_action(&mut abuf) {
                progressed = true;
                self.perform(action).await?;
            }
            while let Some(ev) = self.session.poll_event() {
                progressed = true;
                self.on_session_event(now, ev);
            }
            let mut buf = [0u8; PUBLISH_BUFFER_LEN];
            if let Some(p) = self.device.poll_publish(now, &mut self.session, &mut buf) {
                progressed = true;
                if let PublishKind::Reported { rid } = p.kind {
                    self.twin_rids.insert(rid, body_value(p.payload));
                }
                send(&mut self.conn, &p);
            }
            if self.send_queued(now) {
                progressed = true;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    async fn perform(&mut self, action: Action<'_>) -> Result<(), RunError> {
        match action {
            Action::Connect {
                token_expiry,
                clean_session,
                keep_alive,
                attempt: _,
            } => {
                if let Some(old) = self.conn.take() {
                    old.abort();
                }
                let password = match (&self.cfg.credential, token_expiry) {
                    (Credential::Key(key) | Credential::PolicyKey { key, .. }, Some(exp)) => {
                        let policy = match &self.cfg.credential {
                            Credential::PolicyKey { policy, .. } => Some(policy.as_str()),
                            _ => None,
                        };
                        let mut token = String::new();
                        let resource = self.resource();
                        sas::sign(&mut token, &resource, key, exp, policy)
                            .map_err(|e| RunError::Identity(format!("cannot sign a token: {e}")))?;
                        self.last_token = Some(token.clone());
                        token
                    }
                    (Credential::Token(t), _) => {
                        self.last_token = Some(t.clone());
                        t.clone()
                    }
                    (Credential::Key(_) | Credential::PolicyKey { .. }, None) => String::new(),
                };
                let username = self.username();
                let client_id = super::credentials::client_id(
                    &self.cfg.device_id,
                    self.cfg.module_id.as_deref(),
                );
                // Unacknowledged telemetry that had gone out, oldest first (the session may not
                // have handed all of it back to the queue yet).
                let mut redeliver: Vec<(u32, Redelivery)> = self
                    .queue
                    .iter()
                    .chain(self.in_flight.values())
                    .filter_map(|m| {
                        m.wire
                            .as_ref()
                            .filter(|(_, pkid)| *pkid != 0)
                            .map(|(topic, pkid)| {
                                let r = Redelivery {
                                    pkid: *pkid,
                                    topic: topic.clone(),
                                    payload: m.body.clone(),
                                };
                                (m.seq, r)
                            })
                    })
                    .collect();
                redeliver.sort_by_key(|(seq, _)| *seq);
                self.redelivering = redeliver.iter().map(|(_, r)| r.pkid).collect();
                self.conn = Some(Conn::start(ConnectParams {
                    host: self.cfg.connect_host.clone(),
                    port: self.cfg.port,
                    client_id,
                    username,
                    password,
                    tls: self.tls.clone(),
                    keep_alive,
                    clean_session,
                    redeliver: redeliver.into_iter().map(|(_, r)| r).collect(),
                }));
            }
            Action::Subscribe { filter, qos } => {
                if let Some(c) = self.conn.as_mut() {
                    let _ = c.subscribe(filter, qos);
                }
            }
            Action::Publish(p) => send(&mut self.conn, &p),
            Action::Disconnect { cause: _ } => {
                if let Some(c) = self.conn.take() {
                    c.disconnect().await;
                }
                self.session
                    .handle_disconnected(unix_now(), DisconnectReason::Requested, 0);
            }
            Action::GiveUp { reason } => return Err(self.give_up(reason).await),
        }
        Ok(())
    }

    fn resource(&self) -> Resource<'_> {
        match &self.cfg.module_id {
            Some(m) => Resource::Module {
                host: &self.cfg.hub_host,
                device_id: &self.cfg.device_id,
                module_id: m,
            },
            None => Resource::Device {
                host: &self.cfg.hub_host,
                device_id: &self.cfg.device_id,
            },
        }
    }

    fn username(&self) -> String {
        super::credentials::username(
            &self.cfg.hub_host,
            &self.cfg.device_id,
            self.cfg.module_id.as_deref(),
            self.cfg.model_id.as_deref(),
        )
    }

    async fn give_up(&mut self, reason: GiveUpReason) -> RunError {
        match reason {
            GiveUpReason::Refused(code) => {
                let (fixed_token, policy) = match &self.cfg.credential {
                    Credential::Key(_) => (false, Some(None)),
                    Credential::PolicyKey { policy, .. } => (false, Some(Some(policy.clone()))),
                    Credential::Token(_) => (true, None),
                };
                let refusal = Refusal {
                    host: self.cfg.hub_host.clone(),
                    device_id: self.cfg.device_id.clone(),
                    module_id: self.cfg.module_id.clone(),
                    port: self.cfg.port,
                    token: self.last_token.clone(),
                    fixed_token,
                    policy,
                    ca_file: self.cfg.ca_file.clone(),
                    state_dir: self.cfg.state_dir.clone(),
                };
                let text = diagnose::explain(&refusal, &code.to_string()).await;
                RunError::Refused(text)
            }
            GiveUpReason::Exhausted(_) => RunError::GaveUp(
                self.last_failure
                    .as_ref()
                    .map_or_else(|| "cannot connect".to_owned(), |f| f.detail.clone()),
            ),
        }
    }

    async fn on_conn_event(&mut self, ev: ConnEvent) {
        let now = unix_now();
        match ev {
            ConnEvent::Connected => self.session.handle_connected(now),
            ConnEvent::Publish { topic, payload } => {
                let mut buf = vec![0u8; payload.len() + PUBLISH_BUFFER_LEN];
                if let Some(ev) = self.session.handle_publish(now, &topic, &payload) {
                    self.on_incoming(now, &ev, &mut buf);
                }
            }
            ConnEvent::PubAck(pkid) => self.session.handle_puback(now, pkid),
            ConnEvent::OnWire { pkid, wire } => {
                if let Some(m) = self.in_flight.values_mut().find(|m| m.pkid == pkid) {
                    m.wire = m.wire.take().map(|(topic, _)| (topic, wire));
                }
            }
            ConnEvent::Closed(f) => {
                self.conn = None;
                let reason = f.reason;
                if reason != DisconnectReason::Requested {
                    if let DisconnectReason::Refused(ConnackCode::NotAuthorized) = reason {
                        tracing::debug!("connack 5");
                    }
                    self.last_failure = Some(f);
                }
                let entropy = self.rng.r#gen::<u32>();
                self.session.handle_disconnected(now, reason, entropy);
            }
        }
    }

    /// Incoming events that borrow the PUBLISH.
    fn on_incoming(&mut self, now: u64, ev: &Event<'_>, buf: &mut [u8]) {
        match *ev {
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
            Event::MethodRequest { name, rid, payload } => {
                self.totals.methods += 1;
                let canned = self.cfg.methods.iter().find(|m| m.name == name).cloned();
                let (status, response) = if let Some(m) = canned {
                    if let Ok(p) =
                        self.session
                            .respond_method(rid, m.status, m.body.as_bytes(), buf)
                    {
                        send(&mut self.conn, &p);
                    }
                    (m.status, body_value(m.body.as_bytes()))
                } else {
                    let outcome = Device::<RandomWalk>::method_outcome(name, payload);
                    match self.device.handle_event(now, ev, &mut self.session, buf) {
                        Some(p) => {
                            let body = body_value(p.payload);
                            let status = match p.kind {
                                PublishKind::MethodResponse { status } => status,
                                _ => outcome.status,
                            };
                            send(&mut self.conn, &p);
                            (status, body)
                        }
                        None => (outcome.status, Value::Null),
                    }
                };
                self.out.emit(
                    "method",
                    json!({"name": name, "rid": rid, "status": status, "request": body_value(payload), "response": response}),
                    || format!("method {name} (rid {rid}) -> {status} {response}"),
                );
            }
            Event::Twin { document, .. } => {
                let desired = json::find(document, &["desired"]).map_or(Value::Null, body_value);
                let reported = json::find(document, &["reported"]).map_or(Value::Null, body_value);
                self.out.emit(
                    "twin",
                    json!({"desired": desired, "reported": reported}),
                    || format!("twin: desired {desired} reported {reported}"),
                );
                self.device.handle_event(now, ev, &mut self.session, buf);
            }
            Event::DesiredPatch { version, patch } => {
                let patch_v = body_value(patch);
                self.out.emit(
                    "desired",
                    json!({"version": version, "patch": patch_v}),
                    || format!("desired v{version}: {patch_v}"),
                );
                self.device.handle_event(now, ev, &mut self.session, buf);
            }
            Event::ReportedAccepted { rid, version } => {
                let patch = self.twin_rids.remove(&rid).unwrap_or(Value::Null);
                self.out.emit(
                    "reported",
                    json!({"rid": rid, "version": version, "patch": patch}),
                    || match version {
                        Some(v) => format!("reported v{v}: {patch}"),
                        None => format!("reported: {patch}"),
                    },
                );
                self.device.handle_event(now, ev, &mut self.session, buf);
            }
            Event::TwinRequestFailed {
                rid,
                kind,
                status,
                body,
            } => {
                self.twin_rids.remove(&rid);
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
                self.device.handle_event(now, ev, &mut self.session, buf);
            }
            _ => {}
        }
    }

    fn on_session_event(&mut self, now: u64, ev: Event<'static>) {
        match ev {
            Event::Connected {
                token_expiry,
                reconnect,
            } => {
                let host = format!("{}:{}", self.cfg.connect_host, self.cfg.port);
                let dev = self.cfg.device_id.clone();
                let exp = token_expiry.map(rfc3339);
                self.out.emit(
                    "connected",
                    json!({"host": host, "device_id": dev, "token_expiry": exp, "reconnect": reconnect}),
                    || match &exp {
                        Some(e) => format!("connected to {host} as {dev} (token valid until {e})"),
                        None => format!("connected to {host} as {dev}"),
                    },
                );
                // The queue goes out before new messages; the in-flight map is empty here.
                self.device
                    .handle_event(now, &ev, &mut self.session, &mut []);
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
                let detail = match (&self.last_failure, reason) {
                    (_, DisconnectReason::Requested) => "closed by the device".to_owned(),
                    (Some(f), _) => f.detail.clone(),
                    (None, r) => r.to_string(),
                };
                self.out
                    .emit("disconnected", json!({"reason": detail}), || {
                        format!("disconnected: {detail}")
                    });
            }
            Event::Reconnecting { attempt, delay_ms } => {
                let delay = delay_ms as f64 / 1000.0;
                self.totals.reconnects += 1;
                let why = self
                    .last_failure
                    .as_ref()
                    .map_or_else(String::new, |f| f.detail.clone());
                self.out.emit(
                    "reconnecting",
                    json!({"attempt": attempt, "delay": delay, "reason": why}),
                    || format!("reconnecting in {delay:.1} s (attempt {attempt}): {why}"),
                );
            }
            Event::TelemetryAcked { tag } => {
                if let Some(m) = self.in_flight.remove(&tag) {
                    self.totals.acked += 1;
                    if self.first_ack.is_none() {
                        self.first_ack = Some(self.started.elapsed());
                    }
                    self.out.emit(
                        "telemetry_acked",
                        json!({"seq": m.seq, "message_id": m.message_id}),
                        || format!("telemetry #{} acknowledged", m.seq),
                    );
                    if self.cfg.count.is_some_and(|n| self.totals.acked >= n) {
                        self.stop("count");
                    }
                }
            }
            Event::TelemetryUnacked { tag } => {
                // Back to the front, oldest first (events come in send order).
                if let Some(m) = self.in_flight.remove(&tag) {
                    let pos = self
                        .queue
                        .iter()
                        .position(|q| q.seq > m.seq)
                        .unwrap_or(self.queue.len());
                    self.queue.insert(pos, m);
                }
            }
            other => {
                let mut buf = [0u8; PUBLISH_BUFFER_LEN];
                self.on_incoming(now, &other, &mut buf);
            }
        }
    }

    fn produce_telemetry(&mut self, now: u64) {
        if self.stop_reason.is_some() {
            return;
        }
        let mut tbuf = [0u8; TELEMETRY_BUFFER_LEN];
        while let Some(t) = self.device.poll_telemetry(now, &mut tbuf) {
            let body = match &self.cfg.payload {
                None => t.body.as_bytes().to_vec(),
                Some(tpl) => {
                    let f = |k: &str| {
                        json::find(t.body.as_bytes(), &[k])
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|v| v.parse::<f64>().ok())
                            .unwrap_or(0.0)
                    };
                    match tpl.render(TemplateVars {
                        seq: t.seq,
                        device_id: &self.cfg.device_id,
                        temperature: f("temperature"),
                        humidity: f("humidity"),
                    }) {
                        Ok(s) => s.into_bytes(),
                        Err(e) => {
                            self.out.emit(
                                "template_error",
                                json!({"seq": t.seq, "error": e}),
                                || format!("payload template failed for #{}: {e}", t.seq),
                            );
                            continue;
                        }
                    }
                }
            };
            self.queue.push_back(Message {
                seq: t.seq,
                message_id: uuid::Uuid::new_v4().to_string(),
                body,
                pkid: 0,
                wire: None,
            });
            let mut dropped = 0u64;
            while self.queue.len() > self.cfg.max_queue {
                self.queue.pop_front();
                dropped += 1;
            }
            if dropped > 0 {
                self.totals.dropped += dropped;
                let total = self.totals.dropped;
                let max = self.cfg.max_queue;
                self.out.emit(
                    "dropped",
                    json!({"count": dropped, "total": total, "max_queue": max}),
                    || format!("offline queue full ({max}): dropped {dropped} oldest message(s), {total} in all"),
                );
            }
        }
    }

    /// Publishes queued telemetry while the session has room.
    fn send_queued(&mut self, now: u64) -> bool {
        let mut sent = false;
        while self.session.telemetry_window() > 0 {
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            let mut buf = [0u8; PUBLISH_BUFFER_LEN * 2];
            let sys = SystemProperties {
                message_id: Some(&m.message_id),
                content_type: Some(&self.cfg.content_type),
                content_encoding: Some("utf-8"),
                ..SystemProperties::default()
            };
            let app = self
                .cfg
                .properties
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()));
            let p = match self
                .session
                .send_telemetry(now, m.seq, &sys, app, &m.body, &mut buf)
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("telemetry #{} not sent: {e}", m.seq);
                    self.queue.push_front(m);
                    break;
                }
            };
            let pkid = p.pkid;
            let redelivered = match (&m.wire, self.conn.as_mut()) {
                (Some((_, wire)), Some(c)) if self.redelivering.remove(wire) => {
                    // Already sent again after CONNACK, as the same PUBLISH with DUP=1.
                    c.adopt(*wire, pkid);
                    true
                }
                _ => false,
            };
            let topic = (!redelivered).then(|| p.topic.to_owned());
            if !redelivered {
                send(&mut self.conn, &p);
            }
            let mut m = m;
            m.pkid = pkid;
            if let Some(topic) = topic {
                // The packet id (0 until then) comes with `ConnEvent::OnWire`.
                m.wire = Some((topic, 0));
            }
            self.totals.sent += 1;
            sent = true;
            let bytes = m.body.len();
            self.out.emit(
                "telemetry_sent",
                json!({"seq": m.seq, "message_id": m.message_id, "bytes": bytes, "body": body_value(&m.body), "redelivery": redelivered}),
                || {
                    let again = if redelivered { " again (DUP)" } else { "" };
                    format!("telemetry #{} sent{again}: {}", m.seq, body_text(&m.body))
                },
            );
            self.in_flight.insert(m.seq, m);
        }
        sent
    }
}

fn send(conn: &mut Option<Conn>, p: &Publish<'_>) {
    if let Some(c) = conn.as_mut()
        && let Err(e) = c.publish(p)
    {
        tracing::warn!("publish to {} not queued: {e}", p.topic);
    }
}

async fn next_conn_event(conn: &mut Option<Conn>) -> ConnEvent {
    match conn {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

fn decode(raw: &str) -> String {
    let mut s = String::new();
    match azsim_proto::encoding::decode_to(&mut s, raw) {
        Ok(()) => s,
        Err(_) => raw.to_owned(),
    }
}
