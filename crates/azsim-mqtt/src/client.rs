//! The client loop: one [`Client`] owns the session, the device behaviour, the telemetry queue
//! and the packet buffers, and [`Client::run`] performs what the session decides until it
//! gives up.
//!
//! It mirrors the laptop driver (`src/device/driver.rs`): check timeouts, produce telemetry,
//! pump actions / events / behaviour publishes / queued telemetry until nothing moves, then
//! wait for a packet or the next deadline. The only differences are the transport (raw MQTT
//! over `embedded-io-async` instead of rumqttc) and that every buffer is fixed.

use core::fmt;
use core::future::Future;

use azsim_proto::device::{Device, Sensor, TELEMETRY_BUFFER_LEN};
use azsim_proto::property_bag::SystemProperties;
use azsim_proto::sas::{self, Key, KeyError, Resource};
use azsim_proto::session::{
    self, ACTION_BUFFER_LEN, Action, ConnackCode, DisconnectReason, Event, GiveUpReason,
    IdentityError, MAX_ID_LEN, MAX_IN_FLIGHT, Publish, PublishKind, Session, SessionConfig,
};
use azsim_proto::username;
use embedded_io_async::{Read, Write};
use heapless::{Deque, String, Vec};
use mqttrs::{ConnectReturnCode, Packet, QosPid};

use crate::select::{Either, select};
use crate::wire;

/// Telemetry messages kept while offline; when full the oldest is dropped.
pub const QUEUE_LEN: usize = 16;
/// `$.ct` of every telemetry message.
pub const TELEMETRY_CONTENT_TYPE: &str = "application/json";

/// Room for `{host}/{device}/{module}/?api-version=..&DeviceClientType=..&model-id=..`.
const USERNAME_LEN: usize = 1024;
/// Room for a SAS token: the encoded resource (ids may triple when percent-encoded), the
/// encoded signature and a 20-digit expiry.
const TOKEN_LEN: usize = 1280;
/// Topics the session writes (telemetry with its property bag, method responses) plus the
/// small bodies the behaviour writes behind them.
const SCRATCH_LEN: usize = 1024;
/// Seconds to wait for CONNACK.
const CONNACK_TIMEOUT: u64 = 30;
/// The session hands out QoS 1 packet ids up to here; SUBSCRIBE uses the ids above, so the
/// two never collide on one connection.
const SESSION_MAX_PACKET_ID: u16 = 60_000;
/// Shortest wait for a PINGRESP, in seconds.
const MIN_PING_WAIT: u64 = 5;
/// Longest the loop sleeps when nothing is scheduled.
const IDLE_WAKE: u64 = 3600;

/// Unix time for the loop, and a way to wait for it.
pub trait Clock {
    /// Seconds since 1970-01-01T00:00:00Z. On a board that starts at an embedded epoch (for
    /// example 2000-01-01, 946 684 800 s later) the implementation adds the offset.
    fn now(&mut self) -> u64;

    /// Waits until Unix second `unix` has begun, so that [`Clock::now`] returns at least
    /// `unix` afterwards; returns at once for a time in the past.
    fn sleep_until(&mut self, unix: u64) -> impl Future<Output = ()>;
}

/// Opens the byte stream (TCP, then TLS) to the hub. The loop calls it whenever the session
/// asks for a connection and drops the stream when the connection ends.
pub trait Connector {
    /// The connected stream; it may borrow the connector's socket buffers.
    type Conn<'a>: Read + Write
    where
        Self: 'a;

    /// Connects. The error says which step failed: [`DisconnectReason::Unreachable`] for DNS or
    /// TCP, [`DisconnectReason::Tls`] for the handshake.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn<'_>, DisconnectReason>>;
}

/// Something that was done or seen, for the firmware's log or a test's assertions. Bodies are
/// borrowed from the packet buffers; nothing here holds a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note<'a> {
    /// Opening a connection (`attempt` failed attempts before it).
    Connecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
    },
    /// TCP, TLS or CONNACK failed.
    ConnectFailed {
        /// Why.
        reason: DisconnectReason,
    },
    /// The hub accepted the connection.
    Connected {
        /// Expiry of the token in use.
        token_expiry: Option<u64>,
        /// Whether this is a reconnect.
        reconnect: bool,
    },
    /// A planned reconnect with a fresh token succeeded.
    TokenRenewed {
        /// The new expiry.
        token_expiry: u64,
    },
    /// The connection ended.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The next attempt is scheduled.
    Reconnecting {
        /// Consecutive failed attempts.
        attempt: u32,
        /// Seconds until it.
        delay: u64,
    },
    /// A telemetry message was published (again, after a reconnect, if it was unacknowledged).
    TelemetrySent {
        /// Sequence number.
        seq: u32,
        /// JSON body.
        body: &'a str,
    },
    /// The hub acknowledged a telemetry message.
    TelemetryAcked {
        /// Sequence number.
        seq: u32,
    },
    /// The offline queue was full: the oldest message was dropped.
    TelemetryDropped {
        /// Its sequence number.
        seq: u32,
    },
    /// A cloud-to-device message arrived (and was acknowledged).
    C2d {
        /// Body.
        body: &'a [u8],
    },
    /// A direct method was answered.
    Method {
        /// Method name.
        name: &'a str,
        /// Status sent.
        status: u16,
    },
    /// The full twin arrived after a connect.
    Twin {
        /// `desired.$version`.
        desired_version: Option<u64>,
    },
    /// A desired-properties patch arrived.
    DesiredPatch {
        /// Its `$version`.
        version: u64,
        /// The JSON patch.
        patch: &'a [u8],
    },
    /// A reported-properties PATCH was sent.
    ReportedSent {
        /// Request id.
        rid: u32,
        /// The JSON patch.
        patch: &'a [u8],
    },
    /// The hub accepted a reported PATCH.
    ReportedAccepted {
        /// Request id.
        rid: u32,
        /// New reported `$version`.
        version: Option<u64>,
    },
    /// A twin request failed or went unanswered.
    TwinRequestFailed {
        /// Request id.
        rid: u32,
        /// Hub status, if it answered.
        status: Option<u16>,
    },
    /// An incoming packet was larger than the receive buffer; the connection is closed.
    PacketTooLarge {
        /// The receive buffer's size.
        buffer: usize,
    },
    /// A packet did not fit the transmit buffer and was not sent.
    NotSent {
        /// The topic.
        topic: &'a str,
    },
    /// The session stopped for good.
    GaveUp {
        /// Why.
        reason: GiveUpReason,
    },
}

/// Receives [`Note`]s. Any `FnMut(Note<'_>)` is one.
pub trait Observer {
    /// Called for each note, in order.
    fn note(&mut self, note: Note<'_>);
}

impl<F: FnMut(Note<'_>)> Observer for F {
    fn note(&mut self, note: Note<'_>) {
        self(note);
    }
}

/// The device or module the client connects as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The hub host name as in `HostName`, without a port (it goes into the username and the
    /// token; the connector decides where TCP goes).
    pub host: &'a str,
    /// Device id.
    pub device_id: &'a str,
    /// Module id, for a module identity.
    pub module_id: Option<&'a str>,
    /// Plug and Play model id (`dtmi:...`), sent in the username.
    pub model_id: Option<&'a str>,
}

/// How the client proves who it is. `Debug` shows neither secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A base64 `SharedAccessKey`: a fresh token is signed for each connection.
    Key(&'a str),
    /// A fixed `SharedAccessSignature sr=...` token (never renewed).
    Token(&'a str),
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(_) => f.write_str("Key(<redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Why a [`Client`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The device or module id is unusable.
    Identity(IdentityError),
    /// The `SharedAccessKey` is unusable.
    Key(KeyError),
    /// The MQTT username would not fit its buffer.
    UsernameTooLong,
    /// A token for this identity would not fit its buffer.
    TokenTooLong,
    /// The receive or transmit buffer is smaller than 512 bytes.
    BufferTooSmall,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity(e) => e.fmt(f),
            Self::Key(e) => write!(f, "shared access key: {e}"),
            Self::UsernameTooLong => f.write_str("mqtt username is too long"),
            Self::TokenTooLong => f.write_str("sas token is too long"),
            Self::BufferTooSmall => f.write_str("packet buffers must be at least 512 bytes"),
        }
    }
}

impl core::error::Error for ClientError {}

/// A telemetry message the loop still owns: queued, in flight, or waiting to be sent again.
#[derive(Debug)]
struct Message {
    seq: u32,
    id: String<36>,
    body: Vec<u8, TELEMETRY_BUFFER_LEN>,
    /// Was in flight when the connection ended: publish it again first.
    resend: bool,
}

#[derive(Clone, Copy, Debug)]
struct ConnectParams {
    token_expiry: Option<u64>,
    clean_session: bool,
    keep_alive: u16,
    attempt: u32,
}

/// What makes the current phase of [`Client::run`] end.
#[derive(Clone, Copy, Debug)]
enum Exit {
    Connect(ConnectParams),
    GiveUp(GiveUpReason),
    /// The connection was closed at the session's request.
    Closed,
}

/// The connection failed while in use.
#[derive(Clone, Copy, Debug)]
struct Lost;

/// Everything but the packet buffers, so an event borrowing the receive buffer can be handled
/// by methods on this.
struct Core<'b, S> {
    session: Session,
    device: Device<S>,
    host: &'b str,
    device_id: &'b str,
    module_id: Option<&'b str>,
    credential: Credential<'b>,
    /// The decoded `SharedAccessKey`, when the credential is a key.
    key: Option<Key>,
    client_id: String<{ 2 * MAX_ID_LEN + 1 }>,
    username: String<USERNAME_LEN>,
    rng: u64,
    queue: Deque<Message, QUEUE_LEN>,
    in_flight: Vec<Message, MAX_IN_FLIGHT>,
    scratch: [u8; SCRATCH_LEN],
    sub_pid: u16,
    keep_alive: u16,
    last_tx: u64,
    ping_deadline: Option<u64>,
    exit: Option<Exit>,
}

/// The MQTT client loop around a [`Session`] and a [`Device`].
pub struct Client<'b, S> {
    core: Core<'b, S>,
    rx: &'b mut [u8],
    rx_len: usize,
    tx: &'b mut [u8],
}

impl<S> fmt::Debug for Client<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &self.core.device_id)
            .field("module_id", &self.core.module_id)
            .field("credential", &self.core.credential)
            .field("state", &self.core.session.state())
            .field("queued", &self.core.queue.len())
            .field("in_flight", &self.core.in_flight.len())
            .finish_non_exhaustive()
    }
}

/// A `fmt::Write` that fails instead of truncating.
struct Sink<'a, const N: usize>(&'a mut String<N>);

impl<const N: usize> fmt::Write for Sink<'_, N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.push_str(s).map_err(|()| fmt::Error)
    }
}

impl<'b, S: Sensor> Client<'b, S> {
    /// A client for `identity` running `device`. `config` is the session's; its packet-id
    /// range is narrowed (SUBSCRIBE ids live above it) and a fixed token turns renewal off.
    /// `seed` seeds message ids and reconnect jitter (use the hardware RNG on a board). `rx`
    /// must hold the largest packet the hub may send (the twin document, a C2D message, a
    /// method request); `tx` the largest the device sends (a method response echoes its
    /// request).
    ///
    /// # Errors
    /// [`ClientError`] for an unusable id or key, or buffers too small.
    pub fn new(
        identity: Identity<'b>,
        credential: Credential<'b>,
        device: Device<S>,
        mut config: SessionConfig,
        seed: u64,
        rx: &'b mut [u8],
        tx: &'b mut [u8],
    ) -> Result<Self, ClientError> {
        if rx.len() < 512 || tx.len() < 512 {
            return Err(ClientError::BufferTooSmall);
        }
        let session_id = match identity.module_id {
            Some(m) => session::Identity::module(identity.device_id, m),
            None => session::Identity::device(identity.device_id),
        }
        .map_err(ClientError::Identity)?;
        let key = match credential {
            Credential::Key(k) => Some(Key::from_base64(k).map_err(ClientError::Key)?),
            Credential::Token(_) => {
                config.token_ttl = None;
                None
            }
        };
        config.max_packet_id = config.max_packet_id.min(SESSION_MAX_PACKET_ID);
        let mut client_id = String::new();
        // Cannot fail: both ids were checked to be at most MAX_ID_LEN long.
        let _ = username::write_client_id(
            &mut Sink(&mut client_id),
            identity.device_id,
            identity.module_id,
        );
        let mut user = String::new();
        username::write_username(
            &mut Sink(&mut user),
            identity.host,
            identity.device_id,
            identity.module_id,
            env!("CARGO_PKG_VERSION"),
            identity.model_id,
        )
        .map_err(|_| ClientError::UsernameTooLong)?;
        let core = Core {
            session: Session::new(session_id, config),
            device,
            host: identity.host,
            device_id: identity.device_id,
            module_id: identity.module_id,
            credential,
            key,
            client_id,
            username: user,
            rng: seed | 1,
            queue: Deque::new(),
            in_flight: Vec::new(),
            scratch: [0; SCRATCH_LEN],
            sub_pid: SESSION_MAX_PACKET_ID,
            keep_alive: 0,
            last_tx: 0,
            ping_deadline: None,
            exit: None,
        };
        // Sign once with the longest expiry, so a token that cannot fit fails here, not later.
        if let Some(key) = &core.key {
            let mut token: String<TOKEN_LEN> = String::new();
            sas::sign_with_key(&mut Sink(&mut token), &core.resource(), key, u64::MAX, None)
                .map_err(|_| ClientError::TokenTooLong)?;
        }
        Ok(Self {
            core,
            rx,
            rx_len: 0,
            tx,
        })
    }

    /// The session (state, token expiry, in-flight count).
    pub fn session(&self) -> &Session {
        &self.core.session
    }

    /// The device behaviour (interval, last sequence number).
    pub fn device(&self) -> &Device<S> {
        &self.core.device
    }

    /// Telemetry messages waiting for a connection.
    pub fn queued(&self) -> usize {
        self.core.queue.len()
    }

    /// Runs the device: connects through `connector` when the session asks, reconnects after
    /// failures with backoff, renews the token, sends telemetry, answers methods and desired
    /// patches. Returns only when the session gives up (for example CONNACK 5 before the first
    /// connect, or an exhausted attempt budget).
    pub async fn run<C, K, O>(
        &mut self,
        connector: &mut C,
        clock: &mut K,
        obs: &mut O,
    ) -> GiveUpReason
    where
        C: Connector,
        K: Clock,
        O: Observer,
    {
        loop {
            match self.core.exit.take() {
                Some(Exit::GiveUp(reason)) => {
                    obs.note(Note::GaveUp { reason });
                    return reason;
                }
                Some(Exit::Connect(params)) => {
                    obs.note(Note::Connecting {
                        attempt: params.attempt,
                    });
                    match connector.connect().await {
                        Ok(mut conn) => self.connection(&mut conn, params, clock, obs).await,
                        Err(reason) => {
                            obs.note(Note::ConnectFailed { reason });
                            let entropy = self.core.next_u32();
                            self.core
                                .session
                                .handle_disconnected(clock.now(), reason, entropy);
                        }
                    }
                    continue;
                }
                Some(Exit::Closed) | None => {}
            }
            let now = clock.now();
            self.core.tick(now, obs);
            // Typed as the connected stream (which does not exist now) so both phases share one
            // copy of `pump` in the firmware image.
            let _ = self
                .core
                .pump(now, no_conn(connector), &mut self.tx[..], obs)
                .await;
            if self.core.exit.is_some() {
                continue;
            }
            let wake = earliest(
                self.core.session.poll_timeout(),
                self.core.device.poll_timeout(),
            )
            .unwrap_or(now + IDLE_WAKE);
            clock.sleep_until(wake).await;
        }
    }

    /// One connection, from CONNECT until it ends or the session wants it closed.
    async fn connection<T, K, O>(
        &mut self,
        conn: &mut T,
        params: ConnectParams,
        clock: &mut K,
        obs: &mut O,
    ) where
        T: Read + Write,
        K: Clock,
        O: Observer,
    {
        self.rx_len = 0;
        let now = clock.now();
        match self.handshake(conn, params, now, clock).await {
            Ok(()) => {}
            Err(reason) => {
                obs.note(Note::ConnectFailed { reason });
                let entropy = self.core.next_u32();
                self.core
                    .session
                    .handle_disconnected(clock.now(), reason, entropy);
                return;
            }
        }
        let core = &mut self.core;
        core.keep_alive = params.keep_alive;
        core.last_tx = clock.now();
        core.ping_deadline = None;
        core.session.handle_connected(clock.now());

        loop {
            let now = clock.now();
            if self.core.ping_deadline.is_some_and(|d| now >= d) {
                self.lost(clock);
                return;
            }
            self.core.tick(now, obs);
            if self.core.ping_due(now) {
                let ping = wire::send(conn, self.tx, &Packet::Pingreq);
                if ping.await.is_err() {
                    self.lost(clock);
                    return;
                }
                self.core.last_tx = now;
                self.core.ping_deadline =
                    Some(now + (u64::from(self.core.keep_alive) / 2).max(MIN_PING_WAIT));
            }
            if self
                .core
                .pump(now, Some(&mut *conn), &mut self.tx[..], obs)
                .await
                .is_err()
            {
                self.lost(clock);
                return;
            }
            if self.core.exit.is_some() {
                return;
            }

            let wake = self.core.wake(now);
            let read = wire::read_packet(conn, self.rx, &mut self.rx_len);
            match select(read, clock.sleep_until(wake)).await {
                Either::Right(()) => {}
                Either::Left(Ok(len)) => {
                    let now = clock.now();
                    let handled = self.on_packet(len, now, conn, obs).await;
                    self.rx.copy_within(len..self.rx_len, 0);
                    self.rx_len -= len;
                    if handled.is_err() {
                        self.lost(clock);
                        return;
                    }
                }
                Either::Left(Err(e)) => {
                    if e == wire::ReadError::TooLarge {
                        obs.note(Note::PacketTooLarge {
                            buffer: self.rx.len(),
                        });
                    }
                    self.lost(clock);
                    return;
                }
            }
        }
    }

    /// The connection failed; the outer loop's pump hands the resulting events to the
    /// behaviour and the observer.
    fn lost<K: Clock>(&mut self, clock: &mut K) {
        let entropy = self.core.next_u32();
        let now = clock.now();
        self.core
            .session
            .handle_disconnected(now, DisconnectReason::Lost, entropy);
    }

    /// CONNECT, then CONNACK within [`CONNACK_TIMEOUT`].
    async fn handshake<T: Read + Write, K: Clock>(
        &mut self,
        conn: &mut T,
        params: ConnectParams,
        now: u64,
        clock: &mut K,
    ) -> Result<(), DisconnectReason> {
        let core = &self.core;
        // The token lives in this block only: CONNECT is encoded before anything is awaited,
        // so it never becomes part of the future's state.
        let send = {
            let mut token: String<TOKEN_LEN> = String::new();
            let password: Option<&[u8]> = match (&core.key, params.token_expiry, core.credential) {
                (Some(key), Some(exp), _) => {
                    // Cannot fail: `new` signed the longest possible token into the same size.
                    sas::sign_with_key(&mut Sink(&mut token), &core.resource(), key, exp, None)
                        .map_err(|_| DisconnectReason::Refused(ConnackCode::BadCredentials))?;
                    Some(token.as_bytes())
                }
                (_, _, Credential::Token(t)) => Some(t.as_bytes()),
                (_, _, Credential::Key(_)) => None,
            };
            let packet = wire::connect(
                &core.client_id,
                &core.username,
                password,
                params.keep_alive,
                params.clean_session,
            );
            wire::send(conn, self.tx, &packet)
        };
        let sent = send.await;
        // Nor does it stay in the transmit buffer.
        self.tx.fill(0);
        sent.map_err(|_| DisconnectReason::Lost)?;

        let deadline = now + CONNACK_TIMEOUT;
        let read = wire::read_packet(conn, self.rx, &mut self.rx_len);
        let len = match select(read, clock.sleep_until(deadline)).await {
            Either::Left(Ok(len)) => len,
            Either::Left(Err(_)) | Either::Right(()) => return Err(DisconnectReason::Lost),
        };
        let result = match mqttrs::decode_slice(&self.rx[..len]) {
            Ok(Some(Packet::Connack(c))) => match c.code {
                ConnectReturnCode::Accepted => Ok(()),
                code => Err(DisconnectReason::Refused(
                    ConnackCode::from_u8(connack_u8(code))
                        .unwrap_or(ConnackCode::Other(connack_u8(code))),
                )),
            },
            _ => Err(DisconnectReason::Lost),
        };
        self.rx.copy_within(len..self.rx_len, 0);
        self.rx_len -= len;
        result
    }

    /// One incoming packet, at the front of the receive buffer.
    async fn on_packet<T: Read + Write, O: Observer>(
        &mut self,
        len: usize,
        now: u64,
        conn: &mut T,
        obs: &mut O,
    ) -> Result<(), Lost> {
        let Self { core, rx, tx, .. } = self;
        // Only the small PUBLISH view is kept across the awaits below, not the decoded
        // `Packet` (over 1 KiB).
        let publish = match mqttrs::decode_slice(&rx[..len]) {
            Ok(Some(Packet::Publish(p))) => p,
            Ok(Some(Packet::Puback(pid))) => {
                core.session.handle_puback(now, pid.get());
                return Ok(());
            }
            Ok(Some(Packet::Pingresp)) => {
                core.ping_deadline = None;
                return Ok(());
            }
            // IoT Hub closes the connection rather than refuse a subscription, and never sends
            // DISCONNECT in 3.1.1; anything else (SUBACK, a stray CONNACK) needs no answer.
            Ok(Some(Packet::Disconnect)) => return Err(Lost),
            Ok(Some(_)) => return Ok(()),
            Ok(None) | Err(_) => return Err(Lost),
        };
        if let Some(ev) = core
            .session
            .handle_publish(now, publish.topic_name, publish.payload)
        {
            core.on_event(now, ev, Some(&mut *conn), tx, obs).await?;
        }
        // C2D is the hub's only QoS 1 delivery; the PUBACK completes it.
        if let QosPid::AtLeastOnce(pid) = publish.qospid {
            let puback = wire::send(conn, tx, &Packet::Puback(pid));
            puback.await.map_err(|_| Lost)?;
            core.last_tx = now;
        }
        Ok(())
    }
}

impl<S: Sensor> Core<'_, S> {
    fn resource(&self) -> Resource<'_> {
        match self.module_id {
            Some(m) => Resource::Module {
                host: self.host,
                device_id: self.device_id,
                module_id: m,
            },
            None => Resource::Device {
                host: self.host,
                device_id: self.device_id,
            },
        }
    }

    /// xorshift64*: message ids and reconnect jitter, nothing secret.
    fn next_u32(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// A random (version 4) UUID, as `azsim run` uses for `$.mid`.
    fn message_id(&mut self) -> String<36> {
        let mut b = [0u8; 16];
        for chunk in b.chunks_mut(4) {
            chunk.copy_from_slice(&self.next_u32().to_be_bytes());
        }
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::new();
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                let _ = s.push('-');
            }
            let _ = s.push(char::from(HEX[usize::from(byte >> 4)]));
            let _ = s.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
        s
    }

    /// Session timeouts and telemetry production for `now`.
    fn tick<O: Observer>(&mut self, now: u64, obs: &mut O) {
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        let mut tbuf = [0u8; TELEMETRY_BUFFER_LEN];
        while let Some(t) = self.device.poll_telemetry(now, &mut tbuf) {
            let mut body = Vec::new();
            // Cannot fail: both are TELEMETRY_BUFFER_LEN long.
            let _ = body.extend_from_slice(t.body.as_bytes());
            let seq = t.seq;
            let id = self.message_id();
            if self.queue.is_full()
                && let Some(old) = self.queue.pop_front()
            {
                obs.note(Note::TelemetryDropped { seq: old.seq });
            }
            let _ = self.queue.push_back(Message {
                seq,
                id,
                body,
                resend: false,
            });
        }
    }

    fn ping_due(&self, now: u64) -> bool {
        self.keep_alive > 0
            && self.ping_deadline.is_none()
            && now >= self.last_tx + self.ping_interval()
    }

    /// Half the keep-alive: the hub allows 1.5 times it, and the clock only has seconds.
    fn ping_interval(&self) -> u64 {
        (u64::from(self.keep_alive) / 2).max(1)
    }

    fn wake(&self, now: u64) -> u64 {
        let ping = (self.keep_alive > 0).then(|| match self.ping_deadline {
            Some(d) => d,
            None => self.last_tx + self.ping_interval(),
        });
        earliest(
            earliest(self.session.poll_timeout(), self.device.poll_timeout()),
            ping,
        )
        .unwrap_or(now + IDLE_WAKE)
    }

    /// Runs actions, events, behaviour publishes and queued telemetry until the session has
    /// nothing more to say, or the phase must end (`self.exit`).
    async fn pump<T: Read + Write, O: Observer>(
        &mut self,
        now: u64,
        mut conn: Option<&mut T>,
        tx: &mut [u8],
        obs: &mut O,
    ) -> Result<(), Lost> {
        loop {
            let mut progressed = false;
            let mut abuf = [0u8; ACTION_BUFFER_LEN];
            while let Some(action) = self.session.poll_action(&mut abuf) {
                progressed = true;
                match action {
                    Action::Connect {
                        token_expiry,
                        clean_session,
                        keep_alive,
                        attempt,
                    } => {
                        self.exit = Some(Exit::Connect(ConnectParams {
                            token_expiry,
                            clean_session,
                            keep_alive,
                            attempt,
                        }));
                        return Ok(());
                    }
                    Action::GiveUp { reason } => {
                        self.exit = Some(Exit::GiveUp(reason));
                        return Ok(());
                    }
                    Action::Subscribe { filter, qos } => {
                        if let Some(c) = conn.as_deref_mut() {
                            self.sub_pid = if self.sub_pid == u16::MAX {
                                SESSION_MAX_PACKET_ID + 1
                            } else {
                                self.sub_pid + 1
                            };
                            let pid = wire::pid(self.sub_pid).ok_or(Lost)?;
                            let send = wire::send(c, tx, &wire::subscribe(pid, filter, qos));
                            send.await.map_err(|_| Lost)?;
                            self.last_tx = now;
                        }
                    }
                    Action::Publish(p) => {
                        if let Some(c) = conn.as_deref_mut() {
                            let sent = send_publish(c, tx, &p).await?;
                            after_publish(now, &p, sent, &mut self.last_tx, obs);
                        }
                    }
                    Action::Disconnect { .. } => {
                        if let Some(c) = conn.as_deref_mut() {
                            // Best effort: the connection is dropped either way.
                            let send = wire::send(c, tx, &Packet::Disconnect);
                            let _ = send.await;
                        }
                        self.session
                            .handle_disconnected(now, DisconnectReason::Requested, 0);
                        self.exit = Some(Exit::Closed);
                        return Ok(());
                    }
                }
            }
            while let Some(ev) = self.session.poll_event() {
                progressed = true;
                self.on_event(now, ev, conn.as_deref_mut(), tx, obs).await?;
            }
            if let Some(c) = conn.as_deref_mut() {
                let Core {
                    device,
                    session,
                    scratch,
                    last_tx,
                    ..
                } = self;
                if let Some(p) = device.poll_publish(now, session, &mut scratch[..]) {
                    progressed = true;
                    let sent = send_publish(c, tx, &p).await?;
                    after_publish(now, &p, sent, last_tx, obs);
                }
                if self.send_queued(now, c, tx, obs).await? {
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Publishes telemetry while the session has room: first what a lost connection left
    /// unacknowledged (oldest first), then the queue.
    async fn send_queued<T: Write, O: Observer>(
        &mut self,
        now: u64,
        conn: &mut T,
        tx: &mut [u8],
        obs: &mut O,
    ) -> Result<bool, Lost> {
        let mut sent = false;
        while self.session.telemetry_window() > 0 {
            let i = match self.in_flight.iter().position(|m| m.resend) {
                Some(i) => i,
                None => {
                    if self.in_flight.is_full() {
                        break;
                    }
                    let Some(m) = self.queue.pop_front() else {
                        break;
                    };
                    // Cannot fail: checked not full above.
                    let _ = self.in_flight.push(m);
                    self.in_flight.len() - 1
                }
            };
            let Core {
                session,
                in_flight,
                scratch,
                last_tx,
                ..
            } = self;
            let m = &mut in_flight[i];
            m.resend = false;
            let sys = SystemProperties {
                message_id: Some(&m.id),
                content_type: Some(TELEMETRY_CONTENT_TYPE),
                content_encoding: Some("utf-8"),
                ..SystemProperties::default()
            };
            let p = match session.send_telemetry(
                now,
                m.seq,
                &sys,
                core::iter::empty::<(&str, &str)>(),
                &m.body,
                &mut scratch[..],
            ) {
                Ok(p) => p,
                Err(_) => {
                    m.resend = true;
                    break;
                }
            };
            if send_publish(conn, tx, &p).await? == Sent::TooLarge {
                // The session counts it in flight; the ack never comes, so the message is
                // sent again after the next reconnect like any other unacknowledged one.
                obs.note(Note::NotSent { topic: p.topic });
                break;
            }
            *last_tx = now;
            sent = true;
            obs.note(Note::TelemetrySent {
                seq: m.seq,
                body: core::str::from_utf8(&m.body).unwrap_or(""),
            });
        }
        Ok(sent)
    }

    /// Queue bookkeeping for telemetry events.
    fn on_bookkeeping(&mut self, ev: &Event<'_>) {
        match *ev {
            Event::TelemetryAcked { tag } => {
                if let Some(i) = self
                    .in_flight
                    .iter()
                    .position(|m| m.seq == tag && !m.resend)
                {
                    self.in_flight.remove(i);
                }
            }
            Event::TelemetryUnacked { tag } => {
                if let Some(m) = self.in_flight.iter_mut().find(|m| m.seq == tag) {
                    m.resend = true;
                }
            }
            _ => {}
        }
    }

    fn note_event<O: Observer>(&self, ev: &Event<'_>, obs: &mut O) {
        let note = match *ev {
            Event::Connected {
                token_expiry,
                reconnect,
            } => Note::Connected {
                token_expiry,
                reconnect,
            },
            Event::TokenRenewed { token_expiry } => Note::TokenRenewed { token_expiry },
            Event::Disconnected { reason } => Note::Disconnected { reason },
            Event::Reconnecting { attempt, delay } => Note::Reconnecting { attempt, delay },
            Event::TelemetryAcked { tag } => Note::TelemetryAcked { seq: tag },
            Event::ReportedAccepted { rid, version } => Note::ReportedAccepted { rid, version },
            Event::TwinRequestFailed { rid, status, .. } => Note::TwinRequestFailed { rid, status },
            Event::Twin {
                desired_version, ..
            } => Note::Twin { desired_version },
            Event::DesiredPatch { version, patch } => Note::DesiredPatch { version, patch },
            Event::C2d { body, .. } => Note::C2d { body },
            // Noted with its status once answered; unacked telemetry is simply sent again.
            Event::MethodRequest { .. } | Event::TelemetryUnacked { .. } => return,
        };
        obs.note(note);
    }

    /// One session event: note it, keep the queue straight, let the behaviour react, and send
    /// what it answers.
    async fn on_event<T: Write, O: Observer>(
        &mut self,
        now: u64,
        ev: Event<'_>,
        conn: Option<&mut T>,
        tx: &mut [u8],
        obs: &mut O,
    ) -> Result<(), Lost> {
        self.note_event(&ev, obs);
        self.on_bookkeeping(&ev);
        let Core {
            device,
            session,
            scratch,
            last_tx,
            ..
        } = self;
        let Some(p) = device.handle_event(now, &ev, session, &mut scratch[..]) else {
            return Ok(());
        };
        if let (Event::MethodRequest { name, .. }, PublishKind::MethodResponse { status }) =
            (ev, p.kind)
        {
            obs.note(Note::Method { name, status });
        }
        if let Some(c) = conn {
            let sent = send_publish(c, tx, &p).await?;
            after_publish(now, &p, sent, last_tx, obs);
        }
        Ok(())
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a publish went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Yes,
    /// It did not fit the transmit buffer and was skipped.
    TooLarge,
}

/// Sends a session publish with the QoS and packet id the session chose.
/// Encoded at the call, like [`wire::send`].
fn send_publish<'a, T: Write>(
    conn: &'a mut T,
    tx: &'a mut [u8],
    p: &Publish<'_>,
) -> impl Future<Output = Result<Sent, Lost>> + use<'a, T> {
    let pid = match p.qos {
        session::QoS::AtMostOnce => Some(QosPid::AtMostOnce),
        session::QoS::AtLeastOnce => wire::pid(p.pkid).map(QosPid::AtLeastOnce),
    };
    let send = pid.map(|qospid| wire::send(conn, tx, &wire::publish(p.topic, p.payload, qospid)));
    async move {
        match send.ok_or(Lost)?.await {
            Ok(()) => Ok(Sent::Yes),
            Err(wire::SendError::TooLarge) => Ok(Sent::TooLarge),
            Err(wire::SendError::Io) => Err(Lost),
        }
    }
}

fn after_publish<O: Observer>(
    now: u64,
    p: &Publish<'_>,
    sent: Sent,
    last_tx: &mut u64,
    obs: &mut O,
) {
    if sent == Sent::TooLarge {
        obs.note(Note::NotSent { topic: p.topic });
        return;
    }
    *last_tx = now;
    if let PublishKind::Reported { rid } = p.kind {
        obs.note(Note::ReportedSent {
            rid,
            patch: p.payload,
        });
    }
}

fn connack_u8(code: ConnectReturnCode) -> u8 {
    match code {
        ConnectReturnCode::Accepted => 0,
        ConnectReturnCode::RefusedProtocolVersion => 1,
        ConnectReturnCode::RefusedIdentifierRejected => 2,
        ConnectReturnCode::ServerUnavailable => 3,
        ConnectReturnCode::BadUsernamePassword => 4,
        ConnectReturnCode::NotAuthorized => 5,
    }
}

/// "No connection", with the type a connection from `connector` would have.
fn no_conn<'a, C: Connector + 'a>(_: &'a C) -> Option<&'a mut C::Conn<'a>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use azsim_proto::device::{DeviceConfig, RandomWalk};
    use core::convert::Infallible;
    use core::pin::pin;
    use core::task::{Context, Poll};
    use std::vec::Vec;

    /// An in-memory peer: reads come from a script, writes are kept.
    struct Scripted {
        incoming: Vec<u8>,
        written: Vec<u8>,
    }

    impl embedded_io_async::ErrorType for Scripted {
        type Error = Infallible;
    }

    impl Read for Scripted {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            let n = self.incoming.len().min(buf.len());
            buf[..n].copy_from_slice(&self.incoming[..n]);
            self.incoming.drain(..n);
            Ok(n)
        }
    }

    impl Write for Scripted {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        async fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    impl Connector for Scripted {
        type Conn<'a> = &'a mut Scripted;

        async fn connect(&mut self) -> Result<&mut Scripted, DisconnectReason> {
            Ok(self)
        }
    }

    struct Fixed;

    impl Clock for Fixed {
        fn now(&mut self) -> u64 {
            1_700_000_000
        }

        async fn sleep_until(&mut self, _: u64) {}
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut cx = Context::from_waker(core::task::Waker::noop());
        let mut f = pin!(f);
        loop {
            if let Poll::Ready(x) = f.as_mut().poll(&mut cx) {
                return x;
            }
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_token_is_wiped_from_the_transmit_buffer_once_connect_is_written() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let device = Device::new(
            RandomWalk::new(1),
            DeviceConfig {
                interval: 10,
                version: "0.1.0",
            },
        );
        let mut client = Client::new(
            Identity {
                host: "hub.example.net",
                device_id: "board-1",
                module_id: None,
                model_id: None,
            },
            Credential::Key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            device,
            SessionConfig::default(),
            7,
            &mut rx,
            &mut tx,
        )
        .unwrap();
        // CONNACK 5 (not authorized): the session gives up after this one connection.
        let mut peer = Scripted {
            incoming: std::vec![0x20, 0x02, 0x00, 0x05],
            written: Vec::new(),
        };
        let mut notes = |_: Note<'_>| {};
        let reason = block_on(client.run(&mut peer, &mut Fixed, &mut notes));
        assert_eq!(
            reason,
            GiveUpReason::Refused(ConnackCode::from_u8(5).unwrap())
        );
        drop(client);
        assert!(contains(&peer.written, b"SharedAccessSignature sr="));
        assert!(!contains(&tx, b"SharedAccessSignature"));
        assert!(!contains(&tx, b"&sig="));
    }
}
