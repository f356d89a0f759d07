//! The provisioning mode: a DPS registration over MQTT, run with the hub session's machinery
//! (the same [`Connector`], [`Clock`] and [`Buffer`]s, the same mqttrs framing) before the
//! device knows its hub. The exchange itself is `azsim_proto::dps` (sans-IO); this performs
//! it: one connection to the provisioning host, CONNECT with the DPS username and a
//! registration token (or, for X.509 attestation, no password: the certificate went in the
//! connector's TLS handshake), SUBSCRIBE, the register request, the polls after each
//! `retry-after`, then DISCONNECT. The answer is an [`Assignment`] (the hub and the device id
//! to connect as) or a typed [`ProvisionError`] (DPS's status and error for a refusal).
//!
//! As in the hub session, [`Provisioning::run`] only performs what a synchronous step decides,
//! one await point per kind of I/O.
//!
//! What it does not do: retry a failed connection (the caller decides; see
//! [`ProvisionError::is_transient`]), TPM attestation, or derive a group enrollment's device
//! key (`azsim_proto::sas::derive_group_key` does, on the device, before this runs).

// No heap: a refusal carries DPS's message by value (up to `MESSAGE_LEN` bytes), so the error
// is large. It is returned once per registration, never on a hot path.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

use core::fmt;
use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;

use azsim_proto::dps::{DpsError, Outcome, Registration, Request};
use azsim_proto::sas::{self, DPS_POLICY, Key, KeyError, Resource};
use azsim_proto::secret::Secret;
use azsim_proto::session::{ConnackCode, DisconnectReason, QoS};
use azsim_proto::{connection_string, username};
use embedded_io_async::{Read, Write};
use heapless::String;
use mqttrs::{Pid, QosPid};

use crate::client::{Buffer, Clock, Connector};
use crate::wire;

/// How long a registration may take by default, from the connection to the assignment.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// The longest `assignedHub` kept (a DNS name and a port).
pub const ASSIGNED_HUB_LEN: usize = 260;
/// The longest device id (IoT Hub's limit).
pub const DEVICE_ID_LEN: usize = 128;
/// The longest `substatus` kept.
pub const SUBSTATUS_LEN: usize = 32;
/// The longest refusal message kept (a longer one is cut at a character boundary).
pub const MESSAGE_LEN: usize = 256;
/// The registration token lives this long (seconds): the exchange takes seconds.
const TOKEN_TTL_S: u64 = 3600;
/// Room for the DPS username and a registration token.
const USERNAME_LEN: usize = 512;
const TOKEN_LEN: usize = 1024;
/// Room for a request topic (an operation id is at most 128 bytes).
const TOPIC_LEN: usize = 320;
/// Keep-alive sent in CONNECT, seconds: longer than the whole exchange, so no PINGREQ.
const KEEP_ALIVE_S: u16 = 120;
/// Milliseconds to wait for CONNACK.
const CONNACK_TIMEOUT_MS: u64 = 30_000;

/// Whom to register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DpsIdentity<'a> {
    /// The DPS id scope (`0ne...`).
    pub id_scope: &'a str,
    /// The registration id (also the CONNECT's client id).
    pub registration_id: &'a str,
    /// Raw JSON sent as the register request's `payload`.
    pub payload: Option<&'a str>,
}

/// How the device proves who it is to DPS. `Debug` shows no secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpsCredential<'a> {
    /// The device's base64 symmetric key: an individual enrollment's, or the one derived from
    /// a group key.
    Key(Secret<&'a str>),
    /// X.509: the connector presents the device certificate; CONNECT carries no password.
    X509,
}

/// Where DPS assigned the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// `assignedHub`: the hub's host name (the local hub adds `:port`).
    pub assigned_hub: String<ASSIGNED_HUB_LEN>,
    /// `deviceId`: the device's id in that hub.
    pub device_id: String<DEVICE_ID_LEN>,
    /// `substatus` (`initialAssignment`, `reprovisionedToInitialAssignment`, ...), when given.
    pub substatus: Option<String<SUBSTATUS_LEN>>,
}

impl Assignment {
    /// The hub's host name without any `:port`, and the port when one is given.
    pub fn hub(&self) -> Option<(&str, Option<u16>)> {
        connection_string::split_host_port(&self.assigned_hub).filter(|(h, _)| !h.is_empty())
    }
}

/// What the provisioning mode tells the application (for a log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpsNote {
    /// Opening the connection to the provisioning host.
    Connecting,
    /// CONNACK 0: the registration starts.
    Connected,
    /// DPS is still assigning: the next poll goes in this many seconds.
    Assigning {
        /// `retry-after`, seconds.
        retry_after_s: u32,
    },
    /// DPS throttled the request (429) or failed it (5xx): it goes again in this many seconds.
    Throttled {
        /// The response's status.
        status: u16,
        /// `retry-after`, seconds.
        retry_after_s: u32,
    },
}

/// Why a registration failed. `Display` says it in one line, without secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvisionError {
    /// The key is not usable base64.
    Key(KeyError),
    /// The username or token would not fit its buffer (an id far past DPS's limits).
    IdTooLong,
    /// The receive or transmit buffer is smaller than 512 bytes.
    BufferTooSmall,
    /// The connection could not be opened (`Unreachable`, `Tls`), CONNACK refused it
    /// (`Refused`), or it ended before an answer (`Lost`).
    Connect(DisconnectReason),
    /// DPS refused the SUBSCRIBE to its response topic.
    SubscribeRefused,
    /// DPS refused or failed the registration: the response's status (a failed registration
    /// reports 200) and DPS's error fields.
    Refused {
        /// The response topic's status.
        status: u16,
        /// `errorCode` (`401002`), when given.
        error_code: Option<u64>,
        /// `message` (or `errorMessage`), cut to [`MESSAGE_LEN`] bytes.
        message: Option<String<MESSAGE_LEN>>,
    },
    /// An answer that is not DPS's documented one.
    Response(DpsError),
    /// The server sent something that is not MQTT.
    NotMqtt,
    /// An answer larger than the receive buffer.
    PacketTooLarge,
    /// A request (the register `payload`) larger than the buffers.
    RequestTooLarge,
    /// The assigned hub or device id is longer than [`ASSIGNED_HUB_LEN`] / [`DEVICE_ID_LEN`].
    AssignmentTooLong,
    /// No assignment within the timeout.
    TimedOut,
}

impl ProvisionError {
    /// Whether trying again later may succeed (the network, the server's state), as opposed
    /// to an answer that will be the same (a refusal, a bad key).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(DisconnectReason::Refused(code)) => {
                *code == ConnackCode::ServerUnavailable
            }
            Self::Connect(_) | Self::TimedOut => true,
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(e) => write!(f, "dps key: {e}"),
            Self::IdTooLong => f.write_str("id scope or registration id too long"),
            Self::BufferTooSmall => f.write_str("packet buffers must be at least 512 bytes"),
            Self::Connect(r) => write!(f, "dps connection: {r}"),
            Self::SubscribeRefused => f.write_str("dps refused the response subscription"),
            Self::Refused {
                status,
                error_code,
                message,
            } => {
                write!(f, "dps refused the registration: {status}")?;
                if let Some(c) = error_code {
                    write!(f, " {c}")?;
                }
                write!(
                    f,
                    ": {}",
                    message.as_ref().map_or("no message", |m| m.as_str())
                )
            }
            Self::Response(e) => e.fmt(f),
            Self::NotMqtt => f.write_str("dps sent something that is not MQTT"),
            Self::PacketTooLarge => f.write_str("dps answer larger than the receive buffer"),
            Self::RequestTooLarge => f.write_str("dps request larger than the transmit buffer"),
            Self::AssignmentTooLong => f.write_str("assigned hub or device id too long"),
            Self::TimedOut => f.write_str("dps did not assign the registration in time"),
        }
    }
}

impl core::error::Error for ProvisionError {}

/// A `fmt::Write` into a byte slice that fails when full.
struct Bytes<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A copy of `s` cut at a character boundary to fit `N` bytes.
fn clip<const N: usize>(s: &str) -> String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::new();
    let _ = out.push_str(s.get(..end).unwrap_or_default());
    out
}

/// Where the exchange stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The stream is open: CONNECT goes out next.
    Opened,
    /// CONNECT sent; CONNACK due by this Unix millisecond.
    Handshake(u64),
    /// Connected: the registration runs.
    Up,
    /// Finished on a healthy connection: a pending PUBACK, then DISCONNECT.
    Closing,
    /// Over; the result is kept.
    Done,
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Write `tx[..n]` and flush.
    Write(usize),
    /// Read until this Unix millisecond.
    Wait(u64),
    /// Finished: take the result.
    Done,
}

/// One device's DPS registration over MQTT, in packet buffers of type `B`.
pub struct Provisioning<'b, B: Buffer + ?Sized = [u8]> {
    rx: &'b mut B,
    tx: &'b mut B,
    core: Core<'b>,
}

impl<B: Buffer + ?Sized> fmt::Debug for Provisioning<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provisioning")
            .field("identity", &self.core.identity)
            .field("phase", &self.core.phase)
            .finish_non_exhaustive()
    }
}

struct Core<'b> {
    phase: Phase,
    rx_len: usize,
    pid: u16,
    puback: Option<Pid>,
    deadline: u64,
    timeout_ms: u64,
    identity: DpsIdentity<'b>,
    key: Option<Key>,
    reg: Registration<'b>,
    result: Option<Result<Assignment, ProvisionError>>,
}

impl<'b, B: Buffer + ?Sized> Provisioning<'b, B> {
    /// A registration of `identity` proven by `credential`, framing packets in `rx` and `tx`
    /// (at least 512 bytes each; `rx` must hold DPS's largest answer, about 1 KiB, and `tx`
    /// the register request with its `payload`).
    ///
    /// # Errors
    /// [`ProvisionError::Key`], [`ProvisionError::IdTooLong`] or
    /// [`ProvisionError::BufferTooSmall`].
    pub fn new(
        identity: DpsIdentity<'b>,
        credential: DpsCredential<'b>,
        rx: &'b mut B,
        tx: &'b mut B,
    ) -> Result<Self, ProvisionError> {
        if rx.slice().len() < 512 || tx.slice().len() < 512 {
            return Err(ProvisionError::BufferTooSmall);
        }
        let key = match credential {
            DpsCredential::Key(k) => {
                Some(Key::from_base64(k.expose()).map_err(ProvisionError::Key)?)
            }
            DpsCredential::X509 => None,
        };
        let core = Core {
            phase: Phase::Done,
            rx_len: 0,
            pid: 0,
            puback: None,
            deadline: 0,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            identity,
            key,
            reg: Registration::new(identity.registration_id),
            result: None,
        };
        // The longest expiry makes the longest token: one that fits now always will.
        core.credentials(u64::MAX)
            .ok_or(ProvisionError::IdTooLong)?;
        Ok(Self { rx, tx, core })
    }

    /// The same registration giving up after `timeout_ms` (default [`DEFAULT_TIMEOUT_MS`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout_ms: u64) -> Self {
        self.core.timeout_ms = timeout_ms;
        self
    }

    /// Registers: opens one connection through `connector`, runs the exchange on `clock`,
    /// tells `note` how it goes, and returns where DPS assigned the device. May be called
    /// again (after a transient error, say): each call starts afresh.
    ///
    /// # Errors
    /// [`ProvisionError`]: the connection, DPS's refusal, a malformed answer, the timeout.
    pub async fn run<C, K, N>(
        &mut self,
        connector: &mut C,
        clock: &mut K,
        note: &mut N,
    ) -> Result<Assignment, ProvisionError>
    where
        C: Connector,
        K: Clock,
        N: FnMut(DpsNote),
    {
        let now = clock.now();
        self.core.start(now);
        note(DpsNote::Connecting);
        let mut conn = connector.connect().await.map_err(ProvisionError::Connect)?;
        loop {
            let now = clock.now();
            match self.core.step(now, self.rx, self.tx, note) {
                Step::Done => {
                    return self
                        .core
                        .result
                        .take()
                        .unwrap_or(Err(ProvisionError::Connect(DisconnectReason::Lost)));
                }
                Step::Write(n) => {
                    let bytes = self.tx.slice().get_mut(..n).unwrap_or_default();
                    let ok = conn.write_all(bytes).await.is_ok() && conn.flush().await.is_ok();
                    // CONNECT carried the token.
                    bytes.fill(0);
                    if B::GROWS {
                        self.tx.relax();
                    }
                    if !ok {
                        self.core.lost();
                    }
                }
                Step::Wait(until) => {
                    let free = self
                        .rx
                        .slice()
                        .get_mut(self.core.rx_len..)
                        .unwrap_or_default();
                    let got = {
                        let mut read = pin!(conn.read(free));
                        let mut sleep = pin!(clock.sleep_until(until));
                        poll_fn(|cx| {
                            if let Poll::Ready(r) = read.as_mut().poll(cx) {
                                return Poll::Ready(Some(r.ok().filter(|&n| n > 0)));
                            }
                            sleep.as_mut().poll(cx).map(|()| None)
                        })
                        .await
                    };
                    match got {
                        Some(Some(n)) => {
                            self.core.rx_len += n;
                            let rx = self.rx.slice();
                            if B::GROWS
                                && let Some(total) =
                                    wire::packet_len(rx.get(..self.core.rx_len).unwrap_or_default())
                                && total > rx.len()
                            {
                                self.rx.reserve(total);
                            }
                        }
                        Some(None) => self.core.lost(),
                        None => {}
                    }
                }
            }
        }
    }
}

impl Core<'_> {
    fn start(&mut self, now: u64) {
        self.phase = Phase::Opened;
        self.rx_len = 0;
        self.pid = 0;
        self.puback = None;
        self.deadline = now.saturating_add(self.timeout_ms);
        self.reg = Registration::new(self.identity.registration_id);
        self.result = None;
    }

    /// The username and, with a key, a token expiring at Unix second `expiry`.
    fn credentials(
        &self,
        expiry: u64,
    ) -> Option<(String<USERNAME_LEN>, Option<Secret<String<TOKEN_LEN>>>)> {
        let id = &self.identity;
        let mut user = String::new();
        username::write_dps_username(&mut user, id.id_scope, id.registration_id).ok()?;
        let token = match &self.key {
            Some(key) => {
                let mut t = String::new();
                sas::sign_with_key(
                    &mut t,
                    &Resource::DpsRegistration {
                        id_scope: id.id_scope,
                        registration_id: id.registration_id,
                    },
                    key,
                    expiry,
                    Some(DPS_POLICY),
                )
                .ok()?;
                Some(Secret::new(t))
            }
            None => None,
        };
        Some((user, token))
    }

    /// The connection ended under the exchange.
    fn lost(&mut self) {
        if self.phase != Phase::Done {
            self.finish(Err(ProvisionError::Connect(DisconnectReason::Lost)), false);
        }
    }

    /// Done with `result`; on a healthy connection DISCONNECT goes out first.
    fn finish(&mut self, result: Result<Assignment, ProvisionError>, disconnect: bool) {
        if self.result.is_none() {
            self.result = Some(result);
        }
        self.phase = if disconnect {
            Phase::Closing
        } else {
            Phase::Done
        };
    }

    fn next_pid(&mut self) -> Option<Pid> {
        self.pid = self.pid.checked_add(1).unwrap_or(1);
        wire::pid(self.pid)
    }

    #[inline(never)]
    fn step<B: Buffer + ?Sized, N: FnMut(DpsNote)>(
        &mut self,
        now: u64,
        rx: &mut B,
        tx: &mut B,
        note: &mut N,
    ) -> Step {
        loop {
            match self.phase {
                Phase::Done => return Step::Done,
                Phase::Closing => {
                    let packet = match self.puback.take() {
                        Some(pid) => wire::Bare::Puback(pid),
                        None => {
                            self.phase = Phase::Done;
                            wire::Bare::Disconnect
                        }
                    };
                    if let Some(n) = wire::encode_bare(packet, tx.slice()) {
                        return Step::Write(n);
                    }
                    continue;
                }
                Phase::Opened => {
                    match self.encode_connect(now, tx) {
                        Some(n) => {
                            self.phase = Phase::Handshake(now + CONNACK_TIMEOUT_MS);
                            return Step::Write(n);
                        }
                        None => self.finish(Err(ProvisionError::IdTooLong), false),
                    }
                    continue;
                }
                Phase::Handshake(_) | Phase::Up => {}
            }
            if now >= self.deadline {
                self.finish(Err(ProvisionError::TimedOut), self.phase == Phase::Up);
                continue;
            }
            if let Some(pid) = self.puback.take()
                && let Some(n) = wire::encode_bare(wire::Bare::Puback(pid), tx.slice())
            {
                return Step::Write(n);
            }
            let rx_bytes = rx.slice();
            match wire::frame_len(rx_bytes.get(..self.rx_len).unwrap_or_default()) {
                Ok(Some(len)) => {
                    self.on_packet(now, rx_bytes.get(..len).unwrap_or_default(), note);
                    rx_bytes.copy_within(len..self.rx_len, 0);
                    self.rx_len -= len;
                    continue;
                }
                Ok(None) if self.rx_len >= rx_bytes.len() => {
                    self.finish(Err(ProvisionError::PacketTooLarge), false);
                    continue;
                }
                Ok(None) => {}
                Err(_) => {
                    self.finish(Err(ProvisionError::NotMqtt), false);
                    continue;
                }
            }
            if let Phase::Handshake(d) = self.phase {
                if now >= d {
                    self.finish(Err(ProvisionError::TimedOut), false);
                    continue;
                }
                return Step::Wait(d.min(self.deadline));
            }
            match self.request(now, rx, tx) {
                Ok(Some(n)) => return Step::Write(n),
                Ok(None) => {}
                Err(e) => {
                    self.finish(Err(e), true);
                    continue;
                }
            }
            let until = self
                .reg
                .poll_timeout()
                .map_or(self.deadline, |t| t.min(self.deadline));
            return Step::Wait(until);
        }
    }

    /// CONNECT into `tx`.
    #[inline(never)]
    fn encode_connect<B: Buffer + ?Sized>(&self, now: u64, tx: &mut B) -> Option<usize> {
        let (user, token) = self.credentials(now / 1000 + TOKEN_TTL_S)?;
        let password = token.as_ref().map(|t| t.expose().as_bytes());
        let id = self.identity.registration_id;
        tx.reserve(21 + id.len() + user.len() + password.map_or(0, <[u8]>::len));
        wire::encode_connect(id, &user, password, KEEP_ALIVE_S, true, tx.slice())
    }

    /// The next request the registration has due, encoded into `tx`. The register body is
    /// written into the free end of `rx` (nothing is read while a request is written).
    #[inline(never)]
    fn request<B: Buffer + ?Sized>(
        &mut self,
        now: u64,
        rx: &mut B,
        tx: &mut B,
    ) -> Result<Option<usize>, ProvisionError> {
        let custom = self.identity.payload;
        rx.reserve(
            self.rx_len + 64 + 6 * self.identity.registration_id.len() + custom.map_or(0, str::len),
        );
        let mut topic: String<TOPIC_LEN> = String::new();
        let mut body = Bytes {
            buf: rx.slice().get_mut(self.rx_len..).unwrap_or_default(),
            len: 0,
        };
        let req = self
            .reg
            .next_request(now, &mut topic, &mut body, custom)
            .map_err(|fmt::Error| ProvisionError::RequestTooLarge)?;
        let Some(req) = req else {
            return Ok(None);
        };
        let pid = self.next_pid().ok_or(ProvisionError::RequestTooLarge)?;
        let n = match req {
            Request::Subscribe => {
                wire::encode_subscribe(pid.get(), &topic, QoS::AtLeastOnce, tx.slice())
            }
            Request::Register | Request::Poll => {
                let payload = body.buf.get(..body.len).unwrap_or_default();
                tx.reserve(wire::publish_len(&topic, payload));
                wire::encode_publish(&topic, payload, QosPid::AtLeastOnce(pid), false, tx.slice())
            }
        };
        n.map(Some).ok_or(ProvisionError::RequestTooLarge)
    }

    /// One complete packet.
    fn on_packet<N: FnMut(DpsNote)>(&mut self, now: u64, packet: &[u8], note: &mut N) {
        match (self.phase, wire::decode(packet)) {
            (Phase::Handshake(_), wire::Incoming::Connack(0)) => {
                self.phase = Phase::Up;
                self.reg.handle_connected();
                note(DpsNote::Connected);
            }
            (Phase::Handshake(_), wire::Incoming::Connack(code)) => {
                let code = ConnackCode::from_u8(code).unwrap_or(ConnackCode::Other(code));
                self.finish(
                    Err(ProvisionError::Connect(DisconnectReason::Refused(code))),
                    false,
                );
            }
            // A complete packet that is a DISCONNECT (a server never sends one in 3.1.1) or not
            // MQTT at all (an HTTPS port, say).
            (_, wire::Incoming::Closed) => self.finish(Err(ProvisionError::NotMqtt), false),
            (Phase::Up, wire::Incoming::Suback(true)) => self.reg.handle_subscribed(),
            (Phase::Up, wire::Incoming::Suback(false)) => {
                self.finish(Err(ProvisionError::SubscribeRefused), true);
            }
            (Phase::Up, wire::Incoming::Publish(p)) => {
                if let QosPid::AtLeastOnce(pid) = p.qospid {
                    self.puback = Some(pid);
                }
                let outcome = self.reg.handle_response(now, p.topic_name, p.payload);
                let result = match outcome {
                    Ok(Outcome::Ignored) => return,
                    Ok(Outcome::Assigning { retry_after_s }) => {
                        note(DpsNote::Assigning { retry_after_s });
                        return;
                    }
                    Ok(Outcome::Throttled {
                        status,
                        retry_after_s,
                    }) => {
                        note(DpsNote::Throttled {
                            status,
                            retry_after_s,
                        });
                        return;
                    }
                    Ok(Outcome::Assigned(a)) => assignment(&a),
                    Ok(Outcome::Refused(r)) => Err(ProvisionError::Refused {
                        status: r.status,
                        error_code: r.error_code,
                        message: r.message.map(clip),
                    }),
                    Err(DpsError::Topic(_)) if !p.topic_name.starts_with("$dps/") => {
                        // Not a DPS answer at all: nothing the registration waits for.
                        return;
                    }
                    Err(e) => Err(ProvisionError::Response(e)),
                };
                self.finish(result, true);
            }
            (Phase::Handshake(_), _) => self.finish(Err(ProvisionError::NotMqtt), false),
            _ => {}
        }
    }
}

/// The assignment, copied out of the receive buffer.
fn assignment(a: &azsim_proto::dps::Assignment<'_>) -> Result<Assignment, ProvisionError> {
    let mut out = Assignment {
        assigned_hub: String::new(),
        device_id: String::new(),
        substatus: a.substatus.map(clip),
    };
    out.assigned_hub
        .push_str(a.assigned_hub)
        .and_then(|()| out.device_id.push_str(a.device_id))
        .map_err(|()| ProvisionError::AssignmentTooLong)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
