//! One device of the fleet: the one device loop ([`azsim_mqtt::Client`], as `azsim run` and the
//! firmware run it) over tokio TCP + rustls with the fleet's shared TLS configuration, and an
//! [`App`] that counts what happens into the fleet's [`Stats`] instead of printing it. Only the
//! rare events people look for (C2D, methods, desired patches, reported acknowledgements) are
//! printed, one line each, with the device id.
//!
//! A device whose session gives up (refused, or out of attempts) is started again after a
//! backoff, so one bad device never stops the fleet; each give-up is counted.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use azsim_mqtt::{App, Client, Note, Observer};
use azsim_proto::device::{Device, DeviceConfig, RandomWalk};
use azsim_proto::session::{DisconnectReason, Event, GiveUpReason, SessionConfig};
use serde_json::json;
use tokio::sync::watch;

use super::clock::FleetClock;
use super::stats::Stats;
use crate::device::buffer::GrowingBuffer;
use crate::device::driver::MAX_PACKET;
use crate::device::driver::{Credential, HeapQueue};
use crate::device::net::{FailureSlot, TlsConnector, Transport};
use crate::device::output::{Output, body_value};
use crate::device::template::{Template, TemplateVars};

/// The resting size of a fleet device's packet buffers (the loop's minimum).
const FLEET_RESTING: usize = 512;

/// Where one device connects, and as whom.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Index in the fleet (`{prefix}{index}`; the line number for `--connection-strings`).
    pub index: u64,
    /// Device id.
    pub device_id: String,
    /// Hub host name (username, token).
    pub hub_host: String,
    /// Where TCP goes.
    pub connect_host: String,
    /// MQTT port.
    pub port: u16,
    /// Key or fixed token.
    pub credential: Credential,
}

/// What every device shares.
#[derive(Debug)]
pub struct Common {
    /// The counters.
    pub stats: Arc<Stats>,
    /// Event lines.
    pub out: Output,
    /// One TLS configuration for all.
    pub tls: Arc<rustls::ClientConfig>,
    /// Telemetry interval, ms, before jitter.
    pub interval_ms: u64,
    /// Jitter of each device's interval, percent either way.
    pub jitter_percent: u8,
    /// Stop a device after this many acknowledged messages.
    pub count: Option<u64>,
    /// Body template.
    pub payload: Option<Template>,
    /// Application properties.
    pub properties: Vec<(String, String)>,
    /// `$.ct`.
    pub content_type: String,
    /// Token lifetime, s.
    pub token_ttl: u64,
    /// Keep-alive, s.
    pub keep_alive: u16,
    /// Offline queue bound per device.
    pub max_queue: usize,
    /// QoS 1 messages in flight per device.
    pub max_in_flight: usize,
    /// Seed of the simulated sensors.
    pub seed: u64,
    /// An `acked` event per acknowledged message.
    pub print_acks: bool,
    /// First and longest wait before a device that gave up is started again.
    pub restart_backoff: (Duration, Duration),
    /// MQTT over TLS or over WebSockets.
    pub transport: Transport,
    /// The grid devices wake up on.
    pub timer_resolution: Duration,
}

/// The interval of device `index`: `interval_ms` moved by up to `jitter_percent` either way,
/// drawn from the device's own seed, so sends of a fleet started at once drift apart.
pub fn jittered_interval_ms(interval_ms: u64, jitter_percent: u8, seed: u64, index: u64) -> u64 {
    if jitter_percent == 0 {
        return interval_ms;
    }
    let mut r = RandomWalk::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let unit = f64::from(r.next_u32()) / f64::from(u32::MAX); // 0..=1
    let spread = f64::from(jitter_percent) / 100.0;
    let factor = 1.0 + spread * (2.0 * unit - 1.0);
    ((interval_ms as f64) * factor).round().max(1.0) as u64
}

/// Runs one device until `stop` turns true (clean DISCONNECT) or its `--count` is reached.
pub async fn run_device(spec: DeviceSpec, common: Arc<Common>, stop: watch::Receiver<bool>) {
    let mut backoff = common.restart_backoff.0;
    // Acknowledged messages over every restart, for --count and the devices_acked figure.
    let mut acked = 0;
    loop {
        let ended = run_once(&spec, &common, stop.clone(), &mut acked).await;
        match ended {
            Ok(()) => return,
            Err(reason) => {
                common.stats.error(match reason {
                    GiveUpReason::Refused(_) => "gave_up_refused",
                    GiveUpReason::Exhausted(_) => "gave_up_exhausted",
                });
            }
        }
        // Jittered so a hub that refused many devices at once is not hit by all again at once.
        let wait = backoff.mul_f64(0.5 + f64::from(rand::random::<u16>()) / f64::from(u16::MAX));
        let mut stop = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(common.restart_backoff.1);
    }
}

async fn run_once(
    spec: &DeviceSpec,
    common: &Common,
    stop: watch::Receiver<bool>,
    acked: &mut u64,
) -> Result<(), GiveUpReason> {
    let failure = FailureSlot::default();
    let mut connector =
        match TlsConnector::new(&spec.connect_host, spec.port, common.tls.clone(), failure) {
            Ok(c) => c.over(common.transport),
            Err(_) => {
                common.stats.error("bad_host");
                return Ok(());
            }
        };
    let credential = spec.credential.for_loop();
    let device = Device::new(
        RandomWalk::new(common.seed ^ spec.index),
        DeviceConfig {
            interval_ms: jittered_interval_ms(
                common.interval_ms,
                common.jitter_percent,
                common.seed,
                spec.index,
            ),
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    let session = SessionConfig {
        token_ttl: Some(common.token_ttl),
        keep_alive: common.keep_alive,
        clean_session: false,
        max_in_flight: common.max_in_flight,
        max_initial_attempts: None,
        ..SessionConfig::default()
    };
    // Half of `azsim run`'s kilobyte each way (the loop's minimum), growing for a larger packet
    // up to the 256 KB limit and back: a fleet device's packets are a PUBACK in and a telemetry
    // PUBLISH (topic, properties, a JSON body: a few hundred bytes) out; CONNECT, the twin and
    // a method grow them for a moment. 1 KiB less per device of 10,000.
    let mut rx = GrowingBuffer::new(FLEET_RESTING, MAX_PACKET);
    let mut tx = GrowingBuffer::new(FLEET_RESTING, MAX_PACKET);
    let mut client = match Client::with_buffers(
        azsim_mqtt::Identity {
            host: &spec.hub_host,
            device_id: &spec.device_id,
            module_id: None,
            model_id: None,
        },
        credential,
        device,
        session,
        rand::random(),
        &mut rx,
        &mut tx,
        HeapQueue::new(common.max_queue),
    ) {
        Ok(c) => c,
        Err(e) => {
            common.stats.error("bad_identity");
            tracing::warn!(device = %spec.device_id, "cannot run: {e}");
            return Ok(());
        }
    };
    let mut app = FleetApp {
        spec,
        common,
        stop,
        acked: *acked,
        done: false,
        desired_pending: false,
        connecting_since: None,
        connected: false,
        ever_connected: false,
        sent_at: VecDeque::new(),
        body: String::new(),
    };
    let mut clock = FleetClock::new(common.timer_resolution);
    let r = client.run(&mut connector, &mut clock, &mut app).await;
    if app.connected {
        common.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    *acked = app.acked;
    r
}

/// The fleet's hooks around one device's loop.
struct FleetApp<'a> {
    spec: &'a DeviceSpec,
    common: &'a Common,
    stop: watch::Receiver<bool>,
    acked: u64,
    /// `--count` reached.
    done: bool,
    /// A desired patch arrived and its reported acknowledgement is still to come.
    desired_pending: bool,
    connecting_since: Option<Instant>,
    connected: bool,
    ever_connected: bool,
    /// Send times of the messages in flight, by sequence number (first send only: the latency
    /// of a redelivered message runs from its first publish).
    sent_at: VecDeque<(u32, Instant)>,
    body: String,
}

fn reason_kind(r: DisconnectReason) -> String {
    match r {
        DisconnectReason::Requested => "closed_by_device".into(),
        DisconnectReason::Refused(code) => format!("refused: {code}"),
        DisconnectReason::Unreachable => "unreachable".into(),
        DisconnectReason::Tls => "tls".into(),
        DisconnectReason::Lost => "connection_lost".into(),
    }
}

impl FleetApp<'_> {
    fn emit(&self, name: &str, fields: serde_json::Value, human: impl FnOnce() -> String) {
        let mut fields = fields;
        if let Some(m) = fields.as_object_mut() {
            m.insert("device_id".into(), json!(self.spec.device_id));
        }
        self.common.out.emit(name, fields, human);
    }

    fn on_session(&mut self, ev: Event<'_>) {
        let stats = &self.common.stats;
        let id = &self.spec.device_id;
        match ev {
            Event::Connected { reconnect, .. } => {
                if let Some(t) = self.connecting_since.take() {
                    stats.connect_time.record(t.elapsed());
                }
                if !self.connected {
                    self.connected = true;
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                }
                if !self.ever_connected {
                    self.ever_connected = true;
                    stats.ever_connected.fetch_add(1, Ordering::Relaxed);
                }
                if reconnect {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Disconnected { reason } => {
                if self.connected {
                    self.connected = false;
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                }
                if reason != DisconnectReason::Requested {
                    stats.error(reason_kind(reason));
                }
            }
            Event::C2d { properties, body } => {
                stats.c2d.fetch_add(1, Ordering::Relaxed);
                let props: serde_json::Map<String, serde_json::Value> = properties
                    .iter()
                    .map(|p| {
                        let value = p.value.map(|v| decode(v.as_raw()));
                        (decode(p.name.as_raw()), json!(value))
                    })
                    .collect();
                let body = body_value(body);
                self.emit("c2d", json!({"body": body, "properties": props}), || {
                    format!("{id}: c2d {body}")
                });
            }
            Event::DesiredPatch { version, patch } => {
                stats.desired.fetch_add(1, Ordering::Relaxed);
                self.desired_pending = true;
                let patch = body_value(patch);
                self.emit(
                    "desired",
                    json!({"version": version, "patch": patch}),
                    || format!("{id}: desired v{version} {patch}"),
                );
            }
            Event::ReportedAccepted { rid, version } => {
                stats.reported.fetch_add(1, Ordering::Relaxed);
                // Every device reports once when it starts; only the acknowledgement of a
                // desired patch is worth a line.
                if !std::mem::take(&mut self.desired_pending) {
                    return;
                }
                self.emit("reported", json!({"rid": rid, "version": version}), || {
                    format!("{id}: reported patch accepted (rid {rid})")
                });
            }
            Event::TwinRequestFailed { status, .. } => {
                stats.error(match status {
                    Some(s) => format!("twin_status_{s}"),
                    None => "twin_no_answer".into(),
                });
            }
            Event::TokenRenewed { .. }
            | Event::Reconnecting { .. }
            | Event::TelemetryAcked { .. }
            | Event::TelemetryUnacked { .. }
            | Event::Twin { .. }
            | Event::MethodRequest { .. } => {}
        }
    }
}

impl Observer for FleetApp<'_> {
    fn note(&mut self, note: Note<'_>) {
        let stats = &self.common.stats;
        match note {
            Note::Connecting { .. } => self.connecting_since = Some(Instant::now()),
            Note::ConnectFailed { reason } => stats.error(reason_kind(reason)),
            Note::Session(ev) => self.on_session(ev),
            Note::TelemetrySent {
                seq, redelivery, ..
            } => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                if redelivery {
                    stats.redelivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.sent_at.push_back((seq, Instant::now()));
                    // Bounded: a message dropped from the queue never gets its ack.
                    if self.sent_at.len() > 64 {
                        self.sent_at.pop_front();
                    }
                }
            }
            Note::TelemetryAcked { seq, message_id } => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                if self.common.print_acks {
                    let id = &self.spec.device_id;
                    self.emit(
                        "acked",
                        json!({"seq": seq, "message_id": message_id}),
                        || format!("{id}: #{seq} acknowledged ({message_id})"),
                    );
                }
                if let Some(i) = self.sent_at.iter().position(|(s, _)| *s == seq) {
                    let (_, t) = self.sent_at.remove(i).unwrap_or((seq, Instant::now()));
                    stats.latency.record(t.elapsed());
                }
                self.acked += 1;
                if self.acked == 1 {
                    stats.devices_acked.fetch_add(1, Ordering::Relaxed);
                }
                if self.common.count.is_some_and(|n| self.acked >= n) {
                    self.done = true;
                }
            }
            Note::TelemetryDropped { .. } => stats.error("dropped_offline_queue_full"),
            Note::Method {
                name, status, rid, ..
            } => {
                stats.methods.fetch_add(1, Ordering::Relaxed);
                let id = &self.spec.device_id;
                self.emit(
                    "method",
                    json!({"name": name, "rid": rid, "status": status}),
                    || format!("{id}: method {name} -> {status}"),
                );
            }
            Note::PacketTooLarge { .. } => stats.error("packet_too_large"),
            Note::NotSent { .. } => stats.error("not_sent_too_large"),
            Note::ReportedSent { .. } | Note::GaveUp { .. } => {}
        }
    }
}

impl App for FleetApp<'_> {
    fn telemetry<'s>(&'s mut self, seq: u32, reading: &'s str) -> Option<&'s [u8]> {
        let Some(tpl) = &self.common.payload else {
            return Some(reading.as_bytes());
        };
        let vars =
            TemplateVars::from_reading(seq, &self.spec.device_id, Some(self.spec.index), reading);
        match tpl.render_into(vars, &mut self.body) {
            Ok(()) => Some(self.body.as_bytes()),
            Err(_) => {
                self.common.stats.error("template");
                None
            }
        }
    }

    fn content_type(&self) -> &str {
        &self.common.content_type
    }

    fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.common
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn stop_requested(&mut self) -> bool {
        self.done || *self.stop.borrow()
    }

    fn wait_for_stop(&mut self) -> impl Future<Output = ()> {
        let stop = &mut self.stop;
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }
}

fn decode(raw: &str) -> String {
    let mut s = String::new();
    match azsim_proto::encoding::decode_to(&mut s, raw) {
        Ok(()) => s,
        Err(_) => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_intervals_within_the_bound() {
        let ms: Vec<u64> = (0..200)
            .map(|i| jittered_interval_ms(10_000, 10, 42, i))
            .collect();
        assert!(ms.iter().all(|m| (9_000..=11_000).contains(m)), "{ms:?}");
        let distinct: std::collections::HashSet<_> = ms.iter().collect();
        assert!(distinct.len() > 100, "only {} distinct", distinct.len());
        assert_eq!(jittered_interval_ms(10_000, 0, 42, 3), 10_000);
    }
}
