//! The reference device behaviour shared by `azsim run` and the ESP32 firmware, on top of
//! [`crate::session`]: what the simulated (or real) device sends and how it answers.
//!
//! - Telemetry `{"temperature":..,"humidity":..,"seq":n}` every interval (milliseconds, from
//!   [`MIN_INTERVAL_MS`] to a day), values from a [`Sensor`] (real on the board, the seeded
//!   [`RandomWalk`] on a laptop).
//! - Direct methods: `ping` (200, echoes the payload), `reboot` (200, then reconnects),
//!   `setTelemetryInterval` (`{"interval":seconds}`: 200, or 400 on bad input); anything else
//!   404 `{"message":"method not found"}`.
//! - Desired property `telemetryInterval`: applied and acknowledged in reported properties as
//!   `{"telemetryInterval":{"value":v,"ac":200,"av":<desired $version>}}` (the Plug and Play
//!   writable-property convention), from the full twin after a connect and from each patch.
//! - On every connect it reports `{"azsim":{"version":..}}`.
//!
//! Time is Unix milliseconds, as in [`crate::session`]. The desired `telemetryInterval`, the
//! `setTelemetryInterval` request and their acknowledgements stay in whole **seconds**, as a
//! device model defines them ([`MIN_INTERVAL_SECS`]..=[`MAX_INTERVAL_SECS`]); they are
//! converted at that edge.
//!
//! No heap: JSON is written with `core::fmt` into caller buffers and read with the small
//! [`crate::json`] scanner, which finds a value by key path without building a tree.

use core::fmt;

use crate::encoding;
use crate::rng::XorShift64;
use crate::session::{Event, Publish, PublishKind, Session, TwinRequestKind};

/// The JSON scanner and writer the behaviour uses, at its former path.
pub use crate::json;

/// Shortest telemetry interval, in milliseconds (10 messages a second).
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest telemetry interval (one day), in milliseconds.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// Shortest interval the desired `telemetryInterval` and `setTelemetryInterval` accept, in
/// seconds (their unit).
pub const MIN_INTERVAL_SECS: u64 = 1;
/// Longest interval the desired `telemetryInterval` and `setTelemetryInterval` accept (one
/// day), in seconds.
pub const MAX_INTERVAL_SECS: u64 = 86_400;
/// Size of the buffer [`Device::poll_telemetry`] writes the body into.
pub const TELEMETRY_BUFFER_LEN: usize = 128;
/// Room [`Device::handle_event`] and [`Device::poll_publish`] keep at the end of their buffer
/// for a body they write themselves (the topic goes in front of it).
pub const SMALL_BODY_LEN: usize = 160;

/// One sensor reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Degrees Celsius.
    pub temperature: f32,
    /// Relative humidity, percent.
    pub humidity: f32,
}

/// Where telemetry values come from.
pub trait Sensor {
    /// Takes a reading.
    fn read(&mut self) -> Reading;
}

/// A seeded random walk around room conditions: the same seed gives the same values, so a
/// simulated run is repeatable.
#[derive(Clone, Debug)]
pub struct RandomWalk {
    rng: XorShift64,
    current: Reading,
}

impl RandomWalk {
    /// A walk starting near 22 °C and 50 % from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut w = Self {
            rng: XorShift64::new(seed),
            current: Reading {
                temperature: 22.0,
                humidity: 50.0,
            },
        };
        w.current.temperature += w.step(2.0);
        w.current.humidity += w.step(10.0);
        w
    }

    /// The next pseudo-random number of the walk's generator.
    pub fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    /// A value in `[-span/2, span/2]`.
    fn step(&mut self, span: f32) -> f32 {
        let unit = self.next_u32() as f32 / u32::MAX as f32;
        (unit - 0.5) * span
    }
}

impl Sensor for RandomWalk {
    fn read(&mut self) -> Reading {
        let t = self.current.temperature + self.step(0.4);
        let h = self.current.humidity + self.step(1.0);
        self.current = Reading {
            temperature: t.clamp(-20.0, 50.0),
            humidity: h.clamp(0.0, 100.0),
        };
        self.current
    }
}

/// How the behaviour starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Telemetry interval in milliseconds, clamped to
    /// [`MIN_INTERVAL_MS`]..=[`MAX_INTERVAL_MS`].
    pub interval_ms: u64,
    /// Software version reported as `azsim.version`.
    pub version: &'static str,
}

/// A telemetry message due now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Telemetry<'b> {
    /// Sequence number, from 1.
    pub seq: u32,
    /// The JSON body.
    pub body: &'b str,
}

/// What the device answered to a method (for the driver's output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodOutcome {
    /// Status sent.
    pub status: u16,
    /// Whether the device will reconnect (`reboot`).
    pub reboot: bool,
}

/// The acknowledgement of a desired `telemetryInterval` to report (Plug and Play's `value`,
/// `ac`, `av`). A newer one replaces it even while it is in flight: the older one's answer then
/// changes nothing (had it failed, the newer one is what would be sent anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IntervalAck {
    /// `av`: the desired `$version` answered.
    version: u64,
    /// `value`: the interval in force, in milliseconds (reported in seconds). At most
    /// [`MAX_INTERVAL_MS`]: 32 bits keep the record small.
    value_ms: u32,
    /// `ac`: 200 applied, 400 refused.
    status: u16,
    /// The reported PATCH carrying it, once sent.
    rid: Option<u32>,
}

/// The reference behaviour. Drive it next to a [`Session`]:
///
/// ```text
/// on each session event e:   device.handle_event(now, &e, &mut session, buf) -> maybe a publish
/// then:                      while let Some(p) = device.poll_publish(now, &mut session, buf) { send p }
/// when device.poll_timeout() passes: device.poll_telemetry(now, buf) -> body to queue and send
/// ```
/// A returned publish must be sent before the session's next actions (a `reboot` response
/// precedes its disconnect).
#[derive(Debug)]
pub struct Device<S> {
    sensor: S,
    // Milliseconds, at most MAX_INTERVAL_MS: 32 bits are enough.
    interval_ms: u32,
    version: &'static str,
    /// When telemetry is next due; `None` before the first message.
    next_at: Option<u64>,
    seq: u32,
    /// The software version is to be reported (again).
    report_version: bool,
    /// The reported PATCH carrying the version, while in flight.
    version_rid: Option<u32>,
    /// The interval acknowledgement not yet accepted by the hub.
    ack: Option<IntervalAck>,
}

impl<S: Sensor> Device<S> {
    /// A device reading `sensor`; the interval is clamped to
    /// [`MIN_INTERVAL_MS`]..=[`MAX_INTERVAL_MS`].
    pub fn new(sensor: S, config: DeviceConfig) -> Self {
        Self {
            sensor,
            interval_ms: clamp_interval_ms(config.interval_ms),
            version: config.version,
            next_at: None,
            seq: 0,
            report_version: false,
            version_rid: None,
            ack: None,
        }
    }

    /// The telemetry interval in milliseconds.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.into()
    }

    /// The last sequence number produced.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Changes the interval (milliseconds, clamped as in [`Device::new`]); the next message is
    /// due one new interval after the last one.
    pub fn set_interval_ms(&mut self, now: u64, interval_ms: u64) {
        let interval_ms = clamp_interval_ms(interval_ms);
        if let Some(next) = self.next_at {
            let last = next.saturating_sub(self.interval_ms.into());
            self.next_at = Some((last + u64::from(interval_ms)).max(now));
        }
        self.interval_ms = interval_ms;
    }

    /// When telemetry is next due, in Unix milliseconds (`None` before the first
    /// [`Device::poll_telemetry`], which produces a message at once).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_at
    }

    /// The telemetry message due at `now`, if any. Messages are produced whether or not the
    /// session is connected: the driver queues them.
    pub fn poll_telemetry<'b>(
        &mut self,
        now: u64,
        buf: &'b mut [u8; TELEMETRY_BUFFER_LEN],
    ) -> Option<Telemetry<'b>> {
        if self.next_at.is_some_and(|due| now < due) {
            return None;
        }
        let interval = u64::from(self.interval_ms);
        self.next_at = Some(match self.next_at {
            Some(due) if now < due + interval => due + interval,
            // The first message, or late by more than an interval (a paused process): resume
            // the cadence from now, no burst.
            _ => now + interval,
        });
        self.seq = self.seq.wrapping_add(1);
        let r = self.sensor.read();
        let seq = self.seq;
        let mut b = Body::new(&mut buf[..]);
        b.raw("{\"temperature\":")
            .two_decimals(r.temperature)
            .raw(",\"humidity\":")
            .two_decimals(r.humidity)
            .raw(",\"seq\":")
            .number(seq.into())
            .raw("}");
        let body = b.finish()?;
        Some(Telemetry { seq, body })
    }

    /// Reacts to a session event. For a method request it returns the response to send now
    /// (with [`Device::method_outcome`] telling what it was); other events only update state.
    pub fn handle_event<'a>(
        &mut self,
        now: u64,
        event: &Event<'a>,
        session: &mut Session,
        buf: &'a mut [u8],
    ) -> Option<Publish<'a>> {
        match *event {
            Event::Connected { .. } => {
                self.report_version = true;
                None
            }
            Event::MethodRequest { name, rid, payload } => {
                self.respond(now, name, rid, payload, session, buf)
            }
            Event::Twin {
                document,
                desired_version,
            } => {
                if let Some(raw) = json::find(document, &["desired", "telemetryInterval"]) {
                    let av = desired_version.unwrap_or(0);
                    let reported = json::find(document, &["reported", "telemetryInterval"]);
                    let already = reported.is_some_and(|r| {
                        json::find_u64(r, &["av"]) == Some(av)
                            && json::find_u64(r, &["value"]) == json::as_u64(raw)
                            && json::find_u64(r, &["ac"]) == Some(200)
                    });
                    self.apply_desired(now, raw, av);
                    let unsent_200 = self
                        .ack
                        .is_some_and(|ack| ack.status == 200 && ack.rid.is_none());
                    if already && unsent_200 {
                        self.ack = None;
                    }
                }
                None
            }
            Event::DesiredPatch { version, patch } => {
                if let Some(raw) = json::find(patch, &["telemetryInterval"]) {
                    self.apply_desired(now, raw, version);
                }
                None
            }
            Event::ReportedAccepted { rid, .. }
            | Event::TwinRequestFailed {
                rid,
                kind: TwinRequestKind::Reported,
                ..
            } => {
                // A failed report is sent again on the next chance rather than leave the twin
                // stale.
                let failed = matches!(event, Event::TwinRequestFailed { .. });
                if self.version_rid == Some(rid) {
                    self.version_rid = None;
                    self.report_version |= failed;
                }
                if let Some(ack) = &mut self.ack
                    && ack.rid == Some(rid)
                {
                    if failed {
                        ack.rid = None;
                    } else {
                        self.ack = None;
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// How the device answers method `name` (the driver's output uses it; the answer itself
    /// comes from [`Device::handle_event`]).
    pub fn method_outcome(name: &str, payload: &[u8]) -> MethodOutcome {
        match name {
            "ping" => MethodOutcome {
                status: 200,
                reboot: false,
            },
            "reboot" => MethodOutcome {
                status: 200,
                reboot: true,
            },
            "setTelemetryInterval" => MethodOutcome {
                status: if parse_interval_request(payload).is_ok() {
                    200
                } else {
                    400
                },
                reboot: false,
            },
            _ => MethodOutcome {
                status: 404,
                reboot: false,
            },
        }
    }

    /// The next reported-properties PATCH the behaviour wants sent, if the session takes it.
    pub fn poll_publish<'a>(
        &mut self,
        now: u64,
        session: &mut Session,
        buf: &'a mut [u8],
    ) -> Option<Publish<'a>> {
        if !session.is_connected() {
            return None;
        }
        let (topic_buf, body_buf) = split_for_body(buf)?;
        let mut b = Body::new(body_buf);
        let version = self.report_version && self.version_rid.is_none();
        if version {
            b.raw("{\"azsim\":{\"version\":")
                .string(self.version)
                .raw("}}");
        } else {
            // A newer acknowledgement goes out even while an older one is unanswered: the hub
            // applies patches in order, so the last one wins.
            let ack = self.ack.filter(|ack| ack.rid.is_none())?;
            b.raw("{\"telemetryInterval\":{\"value\":")
                .seconds(ack.value_ms)
                .raw(",\"ac\":")
                .number(ack.status.into())
                .raw(",\"av\":")
                .number(ack.version);
            if ack.status != 200 {
                b.raw(",\"ad\":\"telemetryInterval must be an integer from 1 to 86400\"");
            }
            b.raw("}}");
        }
        let body = b.finish()?;
        let p = session
            .send_reported(now, body.as_bytes(), topic_buf)
            .ok()?;
        if let PublishKind::Reported { rid } = p.kind {
            if version {
                self.version_rid = Some(rid);
                self.report_version = false;
            } else if let Some(ack) = &mut self.ack {
                ack.rid = Some(rid);
            }
        }
        Some(p)
    }

    /// `raw` is a whole JSON value (from [`json::find`]).
    fn apply_desired(&mut self, now: u64, raw: &[u8], version: u64) {
        if raw == b"null" {
            // The property was removed: keep the current interval, nothing to acknowledge.
            return;
        }
        let secs =
            json::as_u64(raw).filter(|v| (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(v));
        if let Some(secs) = secs {
            self.set_interval_ms(now, secs * 1000);
        }
        // Refused or not, the value acknowledged is the interval now in force.
        self.ack = Some(IntervalAck {
            version,
            value_ms: self.interval_ms,
            status: if secs.is_some() { 200 } else { 400 },
            rid: None,
        });
    }

    fn respond<'a>(
        &mut self,
        now: u64,
        name: &str,
        rid: &str,
        payload: &'a [u8],
        session: &mut Session,
        buf: &'a mut [u8],
    ) -> Option<Publish<'a>> {
        let reboot = name == "reboot";
        // `ping` echoes the payload and keeps the whole buffer for the topic; the others write
        // a small body at its end.
        let (status, body, topic_buf): (u16, &'a [u8], &'a mut [u8]) = if name == "ping" {
            (200, if payload.is_empty() { b"null" } else { payload }, buf)
        } else {
            let (topic_buf, body_buf) = split_for_body(buf)?;
            let (status, body) = match name {
                _ if reboot => (200, "{\"message\":\"rebooting\"}"),
                "setTelemetryInterval" => {
                    let mut b = Body::new(body_buf);
                    let status = match parse_interval_request(payload) {
                        Ok(secs) => {
                            self.set_interval_ms(now, secs * 1000);
                            b.raw("{\"interval\":").number(secs);
                            200
                        }
                        Err(msg) => {
                            b.raw("{\"message\":").string(msg);
                            400
                        }
                    };
                    b.raw("}");
                    (status, b.finish()?)
                }
                _ => (404, "{\"message\":\"method not found\"}"),
            };
            (status, body.as_bytes(), topic_buf)
        };
        let p = session.respond_method(rid, status, body, topic_buf).ok()?;
        if reboot {
            session.reconnect(now);
        }
        Some(p)
    }
}

/// Reads `{"interval":seconds}` and returns the seconds.
///
/// # Errors
/// A short message saying what is wrong with the request.
pub fn parse_interval_request(payload: &[u8]) -> Result<u64, &'static str> {
    if !json::is_object(payload) {
        return Err("payload must be a JSON object like {\"interval\":5}");
    }
    let raw = json::find(payload, &["interval"]).ok_or("missing \"interval\"")?;
    json::as_u64(raw)
        .filter(|v| (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(v))
        .ok_or("\"interval\" must be an integer from 1 to 86400")
}

/// `interval_ms` clamped to [`MIN_INTERVAL_MS`]..=[`MAX_INTERVAL_MS`] (so it fits 32 bits).
fn clamp_interval_ms(interval_ms: u64) -> u32 {
    interval_ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS) as u32
}

fn finite(x: f32) -> f32 {
    if x.is_finite() { x } else { 0.0 }
}

/// Writes a finite `x` exactly as `{:.2}` does (the exact binary value rounded half to even,
/// `-` before any negative value, -0.0 included) without core's float formatting, which costs
/// the firmware about 16 KiB of flash. Integer arithmetic only (no soft-float calls).
fn write_fixed2(w: &mut dyn fmt::Write, x: f32) -> fmt::Result {
    let bits = x.to_bits();
    // |x| = m * 2^(e - 150), m < 2^24; a zero exponent field is a subnormal (e = 1, no
    // implicit bit).
    let (m, e) = match (bits >> 23) & 0xFF {
        0 => (bits & 0x7F_FFFF, 1),
        e => ((bits & 0x7F_FFFF) | 0x80_0000, e),
    };
    // The value in hundredths, as a 160-bit number in 16-bit limbs (least significant first),
    // in 32-bit arithmetic only: m * 100 < 2^31, doubled e - 150 times (at most 104) for a
    // whole number, or divided by 2^(150 - e) and rounded half to even (from a shift of 32 on it
    // is below half a hundredth).
    let scaled = m * 100;
    let v = if e >= 150 {
        scaled
    } else {
        let shift = 150 - e;
        if shift >= 32 {
            0
        } else {
            let whole = scaled >> shift;
            let rest = scaled & ((1 << shift) - 1);
            let half = 1 << (shift - 1);
            whole + u32::from(rest > half || (rest == half && whole & 1 == 1))
        }
    };
    let mut limbs = [0u16; 10];
    limbs[0] = v as u16;
    limbs[1] = (v >> 16) as u16;
    for _ in 150..e {
        let mut carry = 0;
        for limb in limbs.iter_mut() {
            let d = (u32::from(*limb) << 1) | carry;
            *limb = d as u16;
            carry = d >> 16;
        }
    }
    // Decimal digits from the right, a point after the first two, at least "0.00"; 160 bits
    // have at most 49 digits (then the sign).
    let mut text = [b'-'; 52];
    let mut start = text.len();
    for (n, slot) in text.iter_mut().rev().enumerate() {
        start -= 1;
        if n == 2 {
            *slot = b'.';
            continue;
        }
        let mut rem = 0u32;
        let mut more = false;
        for limb in limbs.iter_mut().rev() {
            let cur = (rem << 16) | u32::from(*limb);
            *limb = (cur / 10) as u16;
            rem = cur % 10;
            more |= *limb != 0;
        }
        *slot = b'0' + rem as u8;
        if !more && n >= 3 {
            break;
        }
    }
    // `text[start - 1]` is the `-` it was filled with.
    start -= (bits >> 31) as usize;
    encoding::write_ascii(w, text.get(start..).unwrap_or_default())
}

fn split_for_body(buf: &mut [u8]) -> Option<(&mut [u8], &mut [u8])> {
    let at = buf.len().checked_sub(SMALL_BODY_LEN)?;
    Some(buf.split_at_mut(at))
}

/// A JSON body written into a caller buffer. Pieces chain without a check each: the writer
/// stays failed after the first one that does not fit, which makes [`Body::finish`] `None`.
struct Body<'b> {
    w: encoding::SliceWriter<'b>,
}

impl<'b> Body<'b> {
    fn new(buf: &'b mut [u8]) -> Self {
        Self {
            w: encoding::SliceWriter::new(buf),
        }
    }

    /// JSON text written as it is (punctuation, keys, literals).
    #[inline(never)]
    fn raw(&mut self, json: &str) -> &mut Self {
        let _ = fmt::Write::write_str(&mut self.w, json);
        self
    }

    /// An unsigned integer.
    #[inline(never)]
    fn number(&mut self, n: u64) -> &mut Self {
        let _ = encoding::write_u64(&mut self.w, n);
        self
    }

    /// A string, quoted and escaped.
    fn string(&mut self, s: &str) -> &mut Self {
        let _ = json::write_quoted(&mut self.w, s);
        self
    }

    /// Milliseconds as a number of seconds: `5` for 5000, `0.25` for 250.
    fn seconds(&mut self, ms: u32) -> &mut Self {
        self.number((ms / 1000).into());
        let frac = ms % 1000;
        if frac != 0 {
            // The point and three digits, trailing zeros dropped (frac is not 0).
            let digits = [
                b'.',
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            let mut len = digits.len();
            while digits[len - 1] == b'0' {
                len -= 1;
            }
            let _ = encoding::write_ascii(&mut self.w, &digits[..len]);
        }
        self
    }

    /// A reading with two decimals; a non-finite one as 0.00.
    #[inline(never)]
    fn two_decimals(&mut self, x: f32) -> &mut Self {
        let _ = write_fixed2(&mut self.w, finite(x));
        self
    }

    /// The body; `None` when it did not fit.
    fn finish(self) -> Option<&'b str> {
        self.w.into_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ACTION_BUFFER_LEN, Action, Identity, SessionConfig};
    use std::string::{String, ToString};
    use std::vec::Vec;

    struct Fixed(f32, f32);
    impl Sensor for Fixed {
        fn read(&mut self) -> Reading {
            Reading {
                temperature: self.0,
                humidity: self.1,
            }
        }
    }

    fn device(interval_ms: u64) -> Device<Fixed> {
        Device::new(
            Fixed(21.5, 40.25),
            DeviceConfig {
                interval_ms,
                version: "0.1.0",
            },
        )
    }

    fn connected() -> Session {
        let mut s = Session::new(Identity::device("d").unwrap(), SessionConfig::default());
        s.handle_timeout(0);
        s.handle_connected(0);
        let mut b = [0u8; ACTION_BUFFER_LEN];
        while s.poll_action(&mut b).is_some() {}
        while s.poll_event().is_some() {}
        s
    }

    fn owned(p: Option<Publish<'_>>) -> Option<(String, String)> {
        p.map(|p| {
            (
                p.topic.to_string(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
            )
        })
    }

    fn method(
        d: &mut Device<Fixed>,
        s: &mut Session,
        name: &str,
        payload: &[u8],
    ) -> (String, String) {
        let mut buf = [0u8; 512];
        let ev = Event::MethodRequest {
            name,
            rid: "7",
            payload,
        };
        owned(d.handle_event(0, &ev, s, &mut buf)).unwrap()
    }

    #[test]
    fn telemetry_is_json_with_a_sequence_at_each_interval() {
        let mut d = device(10_000);
        let mut buf = [0u8; TELEMETRY_BUFFER_LEN];
        let t = d.poll_telemetry(100_000, &mut buf).unwrap();
        assert_eq!(t.seq, 1);
        assert_eq!(
            t.body,
            "{\"temperature\":21.50,\"humidity\":40.25,\"seq\":1}"
        );
        assert_eq!(d.poll_timeout(), Some(110_000));
        assert!(d.poll_telemetry(109_999, &mut buf).is_none());
        assert_eq!(d.poll_telemetry(111_000, &mut buf).unwrap().seq, 2);
        assert_eq!(
            d.poll_timeout(),
            Some(120_000),
            "cadence kept after a late poll"
        );
        assert_eq!(d.poll_telemetry(500_000, &mut buf).unwrap().seq, 3);
        assert_eq!(
            d.poll_timeout(),
            Some(510_000),
            "no burst after a long pause"
        );
        let v: serde_json::Value =
            serde_json::from_str(d.poll_telemetry(510_000, &mut buf).unwrap().body).unwrap();
        assert_eq!(v["seq"], 4);
    }

    #[test]
    fn telemetry_runs_at_sub_second_intervals_down_to_100_ms() {
        let mut d = device(200);
        let mut buf = [0u8; TELEMETRY_BUFFER_LEN];
        let start = 1_700_000_000_000;
        let mut sent = 0;
        let mut now = start;
        while now < start + 1_000 {
            if d.poll_telemetry(now, &mut buf).is_some() {
                sent += 1;
            }
            now += 1;
        }
        assert_eq!(sent, 5, "5 Hz");
        assert_eq!(d.poll_timeout(), Some(start + 1_000));
        // Out-of-range intervals are clamped.
        assert_eq!(device(10).interval_ms(), MIN_INTERVAL_MS);
        assert_eq!(device(u64::MAX).interval_ms(), MAX_INTERVAL_MS);
        d.set_interval_ms(start + 1_000, 0);
        assert_eq!(d.interval_ms(), 100);
    }

    #[test]
    fn the_random_walk_is_repeatable_and_plausible() {
        let mut a = RandomWalk::new(42);
        let mut b = RandomWalk::new(42);
        let mut c = RandomWalk::new(43);
        let ra: Vec<Reading> = (0..1000).map(|_| a.read()).collect();
        let rb: Vec<Reading> = (0..1000).map(|_| b.read()).collect();
        assert_eq!(ra, rb);
        assert_ne!(ra[0], c.read());
        for r in &ra {
            assert!((-20.0..=50.0).contains(&r.temperature));
            assert!((0.0..=100.0).contains(&r.humidity));
        }
        for w in ra.windows(2) {
            assert!((w[1].temperature - w[0].temperature).abs() <= 0.21);
        }
    }

    #[test]
    fn ping_echoes_the_payload() {
        let mut d = device(10_000);
        let mut s = connected();
        assert_eq!(
            method(&mut d, &mut s, "ping", b"{\"hello\":[1,2]}"),
            (
                "$iothub/methods/res/200/?$rid=7".into(),
                "{\"hello\":[1,2]}".into()
            )
        );
    }

    #[test]
    fn unknown_methods_get_404() {
        let mut d = device(10_000);
        let mut s = connected();
        assert_eq!(
            method(&mut d, &mut s, "selfDestruct", b"{}"),
            (
                "$iothub/methods/res/404/?$rid=7".into(),
                "{\"message\":\"method not found\"}".into()
            )
        );
    }

    #[test]
    fn set_telemetry_interval_validates_its_input() {
        let mut d = device(10_000);
        let mut s = connected();
        assert_eq!(
            method(&mut d, &mut s, "setTelemetryInterval", b"{\"interval\": 3}"),
            (
                "$iothub/methods/res/200/?$rid=7".into(),
                "{\"interval\":3}".into()
            )
        );
        assert_eq!(d.interval_ms(), 3_000, "the request is in seconds");
        for bad in [
            &b"{\"interval\":0}"[..],
            b"{\"interval\":\"5\"}",
            b"{\"interval\":2.5}",
            b"{\"interval\":-1}",
            b"{\"interval\":86401}",
            b"{\"other\":1}",
            b"[5]",
            b"not json",
            b"{\"interval\":5",
            b"",
        ] {
            let (topic, body) = method(&mut d, &mut s, "setTelemetryInterval", bad);
            assert_eq!(topic, "$iothub/methods/res/400/?$rid=7", "{bad:?}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["message"].is_string());
            assert_eq!(
                Device::<Fixed>::method_outcome("setTelemetryInterval", bad).status,
                400
            );
        }
        assert_eq!(d.interval_ms(), 3_000);
    }

    #[test]
    fn reboot_answers_then_reconnects() {
        let mut d = device(10_000);
        let mut s = connected();
        let (topic, _) = method(&mut d, &mut s, "reboot", b"null");
        assert_eq!(topic, "$iothub/methods/res/200/?$rid=7");
        let mut b = [0u8; ACTION_BUFFER_LEN];
        assert!(matches!(
            s.poll_action(&mut b),
            Some(Action::Disconnect { .. })
        ));
    }

    fn reported(d: &mut Device<Fixed>, s: &mut Session) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; 512];
            let Some((topic, body)) = owned(d.poll_publish(0, s, &mut buf)) else {
                break;
            };
            assert!(topic.starts_with("$iothub/twin/PATCH/properties/reported/?$rid="));
            out.push(body);
        }
        out
    }

    #[test]
    fn on_connect_it_reports_its_version() {
        let mut d = device(10_000);
        let mut s = connected();
        let mut buf = [0u8; 64];
        let ev = Event::Connected {
            token_expiry: None,
            reconnect: false,
        };
        assert!(d.handle_event(0, &ev, &mut s, &mut buf).is_none());
        assert_eq!(
            reported(&mut d, &mut s),
            ["{\"azsim\":{\"version\":\"0.1.0\"}}"]
        );
        assert_eq!(reported(&mut d, &mut s), Vec::<String>::new());
    }

    #[test]
    fn desired_interval_is_applied_and_acknowledged() {
        let mut d = device(10_000);
        let mut s = connected();
        let mut buf = [0u8; 64];
        let patch = Event::DesiredPatch {
            version: 5,
            patch: b"{\"telemetryInterval\":2,\"$version\":5}",
        };
        d.handle_event(0, &patch, &mut s, &mut buf);
        assert_eq!(d.interval_ms(), 2_000, "the desired value is in seconds");
        assert_eq!(
            reported(&mut d, &mut s),
            ["{\"telemetryInterval\":{\"value\":2,\"ac\":200,\"av\":5}}"]
        );
        let bad = Event::DesiredPatch {
            version: 6,
            patch: b"{\"telemetryInterval\":\"fast\",\"$version\":6}",
        };
        d.handle_event(0, &bad, &mut s, &mut buf);
        assert_eq!(d.interval_ms(), 2_000);
        let r = reported(&mut d, &mut s);
        let v: serde_json::Value = serde_json::from_str(&r[0]).unwrap();
        assert_eq!(v["telemetryInterval"]["ac"], 400);
        assert_eq!(v["telemetryInterval"]["av"], 6);
        assert_eq!(v["telemetryInterval"]["value"], 2);
        // Other desired properties are left alone.
        let other = Event::DesiredPatch {
            version: 7,
            patch: b"{\"colour\":\"red\",\"$version\":7}",
        };
        d.handle_event(0, &other, &mut s, &mut buf);
        assert!(reported(&mut d, &mut s).is_empty());
    }

    #[test]
    fn a_removed_desired_interval_keeps_the_interval_and_acknowledges_nothing() {
        let mut d = device(10_000);
        let mut s = connected();
        let mut buf = [0u8; 64];
        let removed = Event::DesiredPatch {
            version: 4,
            patch: b"{\"telemetryInterval\":null,\"$version\":4}",
        };
        d.handle_event(0, &removed, &mut s, &mut buf);
        assert_eq!(d.interval_ms(), 10_000);
        assert!(reported(&mut d, &mut s).is_empty());
        // A value that only holds a null is not a removal: refused with 400.
        let bad = Event::DesiredPatch {
            version: 5,
            patch: b"{\"telemetryInterval\":[null]}",
        };
        d.handle_event(0, &bad, &mut s, &mut buf);
        let r = reported(&mut d, &mut s);
        assert!(r[0].contains("\"ac\":400"), "{r:?}");
    }

    #[test]
    fn a_refused_desired_interval_acknowledges_a_sub_second_interval_in_seconds() {
        let mut d = device(250);
        let mut s = connected();
        let mut buf = [0u8; 64];
        let bad = Event::DesiredPatch {
            version: 3,
            patch: b"{\"telemetryInterval\":0}",
        };
        d.handle_event(0, &bad, &mut s, &mut buf);
        let r = reported(&mut d, &mut s);
        assert!(
            r[0].starts_with("{\"telemetryInterval\":{\"value\":0.25,\"ac\":400,\"av\":3,"),
            "{r:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&r[0]).unwrap();
        assert_eq!(v["telemetryInterval"]["value"], 0.25);
        assert_eq!(d.interval_ms(), 250);
        for (ms, text) in [
            (100, "0.1"),
            (1_500, "1.5"),
            (86_400_000, "86400"),
            (12_345, "12.345"),
        ] {
            let mut buf = [0u8; 32];
            let mut b = Body::new(&mut buf);
            b.seconds(ms);
            assert_eq!(b.finish(), Some(text));
        }
    }

    #[test]
    fn the_twin_document_sets_the_interval_unless_already_acknowledged() {
        let mut d = device(10_000);
        let mut s = connected();
        let mut buf = [0u8; 64];
        let doc = Event::Twin {
            document: b"{\"desired\":{\"telemetryInterval\":4,\"$version\":9},\"reported\":{\"$version\":3}}",
            desired_version: Some(9),
        };
        d.handle_event(0, &doc, &mut s, &mut buf);
        assert_eq!(d.interval_ms(), 4_000);
        assert_eq!(
            reported(&mut d, &mut s),
            ["{\"telemetryInterval\":{\"value\":4,\"ac\":200,\"av\":9}}"]
        );
        let acked = Event::Twin {
            document: b"{\"desired\":{\"telemetryInterval\":4,\"$version\":9},\"reported\":{\"telemetryInterval\":{\"value\":4,\"ac\":200,\"av\":9},\"$version\":4}}",
            desired_version: Some(9),
        };
        d.handle_event(0, &acked, &mut s, &mut buf);
        assert!(reported(&mut d, &mut s).is_empty());
    }

    #[test]
    fn a_failed_report_is_sent_again() {
        let mut d = device(10_000);
        let mut s = connected();
        let mut buf = [0u8; 64];
        let ev = Event::Connected {
            token_expiry: None,
            reconnect: false,
        };
        d.handle_event(0, &ev, &mut s, &mut buf);
        assert_eq!(reported(&mut d, &mut s).len(), 1);
        let failed = Event::TwinRequestFailed {
            rid: 2, // rid 1 is the session's GET
            kind: TwinRequestKind::Reported,
            status: Some(429),
            body: b"",
        };
        d.handle_event(0, &failed, &mut s, &mut buf);
        assert_eq!(reported(&mut d, &mut s).len(), 1);
    }

    #[test]
    fn a_failed_acknowledgement_is_sent_again_unless_a_newer_one_replaced_it() {
        let mut d = device(10_000);
        let mut s = connected();
        let mut buf = [0u8; 64];
        let failed = |rid| Event::TwinRequestFailed {
            rid,
            kind: TwinRequestKind::Reported,
            status: Some(429),
            body: b"",
        };
        let patch = Event::DesiredPatch {
            version: 5,
            patch: b"{\"telemetryInterval\":2}",
        };
        d.handle_event(0, &patch, &mut s, &mut buf);
        let ack2 = "{\"telemetryInterval\":{\"value\":2,\"ac\":200,\"av\":5}}";
        assert_eq!(reported(&mut d, &mut s), [ack2]); // rid 2
        // Accepted for an unrelated request, or for one not sent yet: nothing changes.
        let unrelated = Event::ReportedAccepted {
            rid: 9,
            version: None,
        };
        d.handle_event(0, &unrelated, &mut s, &mut buf);
        d.handle_event(0, &failed(2), &mut s, &mut buf);
        assert_eq!(reported(&mut d, &mut s), [ack2]); // rid 3
        let newer = Event::DesiredPatch {
            version: 6,
            patch: b"{\"telemetryInterval\":3}",
        };
        d.handle_event(0, &newer, &mut s, &mut buf);
        d.handle_event(0, &failed(3), &mut s, &mut buf);
        let ack3 = "{\"telemetryInterval\":{\"value\":3,\"ac\":200,\"av\":6}}";
        assert_eq!(reported(&mut d, &mut s), [ack3]); // rid 4
        d.handle_event(0, &failed(3), &mut s, &mut buf);
        assert!(reported(&mut d, &mut s).is_empty(), "in flight");
        let accepted = Event::ReportedAccepted {
            rid: 4,
            version: Some(7),
        };
        d.handle_event(0, &accepted, &mut s, &mut buf);
        d.handle_event(0, &failed(4), &mut s, &mut buf);
        assert!(reported(&mut d, &mut s).is_empty(), "answered");
        assert_eq!(d.interval_ms(), 3_000);
    }

    fn fixed2(x: f32) -> String {
        let mut s = String::new();
        write_fixed2(&mut s, x).unwrap();
        s
    }

    #[test]
    fn two_decimals_are_written_as_core_fmt_writes_them() {
        for x in [
            0.0,
            -0.0,
            -0.001,
            0.125,
            0.375,
            0.005,
            1.005,
            21.5,
            -19.995,
            99.99,
            16_777_216.0,
            9.0e13,
            1.0e14,
            -1.0e20,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
        ] {
            assert_eq!(fixed2(x), std::format!("{x:.2}"), "{x:e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        #[test]
        fn two_decimals_match_core_fmt_for_every_finite_f32(bits in proptest::num::u32::ANY) {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                proptest::prop_assert_eq!(fixed2(x), std::format!("{x:.2}"));
            }
        }

        #[test]
        fn two_decimals_match_core_fmt_for_sensor_values(x in -100.0f32..200.0) {
            proptest::prop_assert_eq!(fixed2(x), std::format!("{x:.2}"));
        }
    }
}
