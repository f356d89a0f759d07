//! The client loop: one [`Client`] owns the session, the device behaviour, the telemetry queue
//! and the packet buffers, and [`Client::run`] performs what the session decides until it
//! gives up or is told to stop.
//!
//! Each round: handle what arrived, check timeouts, produce telemetry, pump actions / events /
//! behaviour publishes / queued telemetry, then wait for a packet, the next deadline or a stop
//! request. The same loop runs on the board (fixed buffers, a [`FixedQueue`]) and on a laptop
//! (`azsim run`: a heap queue and the [`App`] hooks for templates, properties and canned
//! methods).
//!
//! Sans-IO inside too: `Core::step` is synchronous and returns the one piece of I/O to do next
//! (open a stream, write `tx[..n]`, or read while waiting for a deadline); `run` only performs
//! it. Every `.await` on the stream inlines the stream's futures (mbedtls on the board) and
//! adds state, so there is one of each.

use core::fmt;
use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;

use azsim_proto::device::{Device, Sensor, TELEMETRY_BUFFER_LEN};
use azsim_proto::property_bag::SystemProperties;
use azsim_proto::sas::{self, Key, KeyError, Resource};
use azsim_proto::secret::Secret;
use azsim_proto::session::{
    self, ACTION_BUFFER_LEN, Action, ConnackCode, DisconnectReason, Event, GiveUpReason,
    IdentityError, MAX_IN_FLIGHT, Publish, PublishKind, SendError, Session, SessionConfig, State,
};
use azsim_proto::username;
use embedded_io_async::{Read, Write};
use heapless::{Deque, String, Vec};
use mqttrs::{Pid, QosPid};

use crate::wire;

/// Telemetry messages a [`FixedQueue`] keeps while offline; when full the oldest is dropped.
pub const QUEUE_LEN: usize = 16;
/// `$.ct` of every telemetry message unless [`App::content_type`] says otherwise.
pub const TELEMETRY_CONTENT_TYPE: &str = "application/json";

/// Room for `{host}/{device}/{module}/?api-version=..&DeviceClientType=..&model-id=..`.
const USERNAME_LEN: usize = 1024;
/// Room for a SAS token: the encoded resource (ids may triple when percent-encoded), the
/// encoded signature, a 20-digit expiry and a policy name.
const TOKEN_LEN: usize = 1280;
/// Topics the session writes (telemetry with its property bag, method responses) plus the
/// small bodies the behaviour writes behind them.
const SCRATCH_LEN: usize = 1024;
/// Milliseconds to wait for CONNACK.
const CONNACK_TIMEOUT_MS: u64 = 30_000;
/// Milliseconds to wait, after DISCONNECT, for the hub to close the connection (it reads the
/// DISCONNECT before the connection goes; closing first could reset it unread).
const CLOSE_WAIT_MS: u64 = 2_000;
/// The session hands out QoS 1 packet ids up to here; SUBSCRIBE uses the ids above, so the
/// two never collide on one connection.
const SESSION_MAX_PACKET_ID: u16 = 60_000;
/// Shortest wait for a PINGRESP, in milliseconds.
const MIN_PING_WAIT_MS: u64 = 5_000;
/// Longest the loop sleeps when nothing is scheduled, in milliseconds (an hour).
const IDLE_WAKE_MS: u64 = 3_600_000;

/// Unix time for the loop, in milliseconds (the session's unit), and a way to wait for it.
pub trait Clock {
    /// Milliseconds since 1970-01-01T00:00:00Z. On a board that starts at an embedded epoch
    /// (for example 2000-01-01, 946 684 800 s later) the implementation adds the offset.
    fn now(&mut self) -> u64;

    /// Waits until Unix millisecond `unix_ms`, so that [`Clock::now`] returns at least
    /// `unix_ms` afterwards; returns at once for a time in the past.
    fn sleep_until(&mut self, unix_ms: u64) -> impl Future<Output = ()>;
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

/// Something that was done or seen, for the firmware's log, `azsim run`'s events or a test's
/// assertions. Bodies are borrowed from the packet buffers; nothing here holds a secret.
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
    /// What the session reported, exactly as it did: connected (again), token renewed,
    /// disconnected, reconnect scheduled, telemetry to be sent again, the twin, a desired
    /// patch, a reported PATCH accepted, a twin request failed, a C2D message (acknowledged),
    /// a method request (answered: see [`Note::Method`]). Telemetry acknowledgements come as
    /// [`Note::TelemetryAcked`], with the message id.
    Session(Event<'a>),
    /// A telemetry message was published (again, after a reconnect, if it was unacknowledged).
    TelemetrySent {
        /// Sequence number.
        seq: u32,
        /// `$.mid`.
        message_id: &'a str,
        /// The body.
        body: &'a [u8],
        /// Sent again with DUP=1, as the same PUBLISH that went out on an earlier connection.
        redelivery: bool,
    },
    /// The hub acknowledged a telemetry message.
    TelemetryAcked {
        /// Sequence number.
        seq: u32,
        /// `$.mid`.
        message_id: &'a str,
    },
    /// The offline queue was full: the oldest message was dropped.
    TelemetryDropped {
        /// Its sequence number.
        seq: u32,
    },
    /// A direct method was answered.
    Method {
        /// Method name.
        name: &'a str,
        /// The hub's request id, as in the topic.
        rid: &'a str,
        /// Status sent.
        status: u16,
        /// The request's payload.
        request: &'a [u8],
        /// The response's payload.
        response: &'a [u8],
    },
    /// A reported-properties PATCH was sent.
    ReportedSent {
        /// Request id.
        rid: u32,
        /// The JSON patch.
        patch: &'a [u8],
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

/// The application around the loop: it observes the [`Note`]s and may shape what the device
/// sends and when it stops. Every hook has a default that is the reference device's behaviour,
/// so an [`Observer`] closure is an `App` as it is (the firmware passes one); `azsim run`
/// overrides them for `--payload`, `--property`, `--content-type`, `--method`, `--count`,
/// `--duration` and Ctrl-C.
pub trait App: Observer {
    /// The body of telemetry message `seq`, given the reference device's JSON `reading`;
    /// `None` skips the message. Default: the reading.
    fn telemetry<'s>(&'s mut self, seq: u32, reading: &'s str) -> Option<&'s [u8]> {
        let _ = seq;
        Some(reading.as_bytes())
    }

    /// `$.ct` of telemetry messages. Default: [`TELEMETRY_CONTENT_TYPE`].
    fn content_type(&self) -> &str {
        TELEMETRY_CONTENT_TYPE
    }

    /// Application properties of every telemetry message (names and values as they are,
    /// not encoded). Default: none.
    fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        core::iter::empty()
    }

    /// A canned answer to direct method `name`, status and JSON body, taking precedence over
    /// the reference device's methods. Default: none.
    fn method(&mut self, name: &str) -> Option<(u16, &[u8])> {
        let _ = name;
        None
    }

    /// Asked at every step: `true` makes the loop disconnect cleanly (DISCONNECT) and return
    /// `Ok(())`. Default: never.
    fn stop_requested(&mut self) -> bool {
        false
    }

    /// Raced against every wait and connect: when it finishes, the loop stops as for
    /// [`App::stop_requested`]. Polled anew (never after it finished) for each wait. Default:
    /// never finishes.
    fn wait_for_stop(&mut self) -> impl Future<Output = ()> {
        core::future::pending()
    }
}

impl<F: FnMut(Note<'_>)> App for F {}

/// A telemetry message the loop still owns: queued, in flight, or waiting to be sent again.
/// [`Storage`] keeps the queued ones; only the loop reads or changes them.
#[derive(Debug)]
pub struct Message<B> {
    seq: u32,
    /// `$.mid`, an ASCII UUID.
    id: [u8; 36],
    body: B,
    /// The packet id it went out with (0: never on the wire). A redelivery reuses it with
    /// DUP=1, as MQTT 3.1.1 asks (4.4); the session's own id for it is `pkid`.
    wire: u16,
    /// The session's packet id for the current attempt.
    pkid: u16,
    /// Was in flight when the connection ended (or could not be sent): publish it again first.
    resend: bool,
}

impl<B: AsRef<[u8]>> Message<B> {
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.body.as_ref()
    }

    /// `$.mid`.
    pub fn message_id(&self) -> &str {
        core::str::from_utf8(&self.id).unwrap_or_default()
    }
}

/// Where telemetry waits for a connection, and what its bodies are: a fixed [`FixedQueue`]
/// on the board, a heap queue on a laptop. Messages in flight stay in the loop (at most
/// [`MAX_IN_FLIGHT`]), in the same body type.
pub trait Storage {
    /// A telemetry body the loop keeps until its PUBACK.
    type Body: AsRef<[u8]>;

    /// A body holding `bytes`; `None` when it cannot (too long for a fixed body).
    fn body(&mut self, bytes: &[u8]) -> Option<Self::Body>;

    /// Messages queued now.
    fn queued(&self) -> usize;

    /// Most messages kept while offline, queued and unacknowledged ones together; beyond
    /// it the oldest is dropped.
    fn capacity(&self) -> usize;

    /// Queues `m` last; gives it back when full.
    ///
    /// # Errors
    /// `m` itself when there is no room.
    fn push(&mut self, m: Message<Self::Body>) -> Result<(), Message<Self::Body>>;

    /// Takes the oldest queued message.
    fn pop(&mut self) -> Option<Message<Self::Body>>;
}

/// A telemetry body of at most [`TELEMETRY_BUFFER_LEN`] bytes (the reference JSON fits).
pub type FixedBody = Vec<u8, TELEMETRY_BUFFER_LEN>;

/// The board's queue: `N` messages with fixed bodies, no heap.
#[derive(Debug)]
pub struct FixedQueue<const N: usize = QUEUE_LEN>(Deque<Message<FixedBody>, N>);

impl<const N: usize> FixedQueue<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        Self(Deque::new())
    }
}

impl<const N: usize> Default for FixedQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Storage for FixedQueue<N> {
    type Body = FixedBody;

    fn body(&mut self, bytes: &[u8]) -> Option<FixedBody> {
        Vec::from_slice(bytes).ok()
    }

    fn queued(&self) -> usize {
        self.0.len()
    }

    fn capacity(&self) -> usize {
        N
    }

    fn push(&mut self, m: Message<FixedBody>) -> Result<(), Message<FixedBody>> {
        self.0.push_back(m)
    }

    fn pop(&mut self) -> Option<Message<FixedBody>> {
        self.0.pop_front()
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

/// How the client proves who it is. `Debug` shows no secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// The device's (or module's) base64 `SharedAccessKey`: a fresh token is signed for each
    /// connection.
    Key(Secret<&'a str>),
    /// A hub policy key (`SharedAccessKeyName`) acting for the device: tokens carry `skn`.
    PolicyKey {
        /// Policy name.
        policy: &'a str,
        /// Base64 key.
        key: Secret<&'a str>,
    },
    /// A fixed `SharedAccessSignature sr=...` token (never renewed).
    Token(Secret<&'a str>),
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
            Self::Key(e) => {
                f.write_str("shared access key: ")?;
                e.fmt(f)
            }
            Self::UsernameTooLong => f.write_str("mqtt username is too long"),
            Self::TokenTooLong => f.write_str("sas token is too long"),
            Self::BufferTooSmall => f.write_str("packet buffers must be at least 512 bytes"),
        }
    }
}

impl core::error::Error for ClientError {}

#[derive(Clone, Copy, Debug)]
struct ConnectParams {
    token_expiry: Option<u64>,
    clean_session: bool,
    keep_alive: u16,
}

/// Where the connection stands, from the loop's side.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No stream: the session runs on timers alone.
    Offline,
    /// The driver is opening the stream.
    Opening(ConnectParams),
    /// The stream is open: CONNECT goes out next.
    Opened(ConnectParams),
    /// CONNECT was sent; CONNACK is due by this Unix millisecond.
    Handshake(u64),
    /// Connected.
    Up,
    /// DISCONNECT was sent; the hub closes the connection by this Unix millisecond, or the loop
    /// does.
    Closing(u64),
}

/// What the driver does next: the only I/O the loop performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Drop any stream and open a new one, then report `opened` or `failed`.
    Connect,
    /// Write `tx[..n]` and flush; report `failed` if that fails.
    Write(usize),
    /// Wait until this Unix millisecond, reading into the free end of the receive buffer when
    /// `read` (a stream is open); without `read` any stream is dropped.
    Wait { until: u64, read: bool },
    /// Stop for good: the session gave up.
    GiveUp(GiveUpReason),
    /// Stop for good: the application asked, and the connection is closed.
    Closed,
}

/// Everything but the packet buffers, so an event borrowing the receive buffer can be handled
/// by methods on this. All of it is synchronous: [`Client::run`] performs the [`Step`]s.
// `repr(C)` keeps the declared order: the small fields the loop touches on every step come
// first, where RISC-V's compressed loads and stores reach them (offsets below 128 bytes), and
// the kilobyte buffers last.
#[repr(C)]
struct Core<'b, S, Q: Storage> {
    phase: Phase,
    /// Bytes received and not yet consumed at the front of the receive buffer.
    rx_len: usize,
    sub_pid: u16,
    wire_pid: u16,
    /// A QoS 1 delivery to acknowledge before anything else.
    puback: Option<Pid>,
    keep_alive: u16,
    /// The application asked to stop; the session is closing.
    stopping: bool,
    last_tx: u64,
    ping_deadline: Option<u64>,
    rng: u64,
    identity: Identity<'b>,
    credential: Credential<'b>,
    session: Session,
    device: Device<S>,
    /// The decoded key, when the credential is one.
    key: Option<Key>,
    queue: Q,
    in_flight: Vec<Message<Q::Body>, MAX_IN_FLIGHT>,
    scratch: [u8; SCRATCH_LEN],
}

/// The MQTT client loop around a [`Session`] and a [`Device`], keeping queued telemetry in `Q`.
#[repr(C)]
pub struct Client<'b, S, Q: Storage = FixedQueue> {
    rx: &'b mut [u8],
    tx: &'b mut [u8],
    core: Core<'b, S, Q>,
}

impl<S, Q: Storage> fmt::Debug for Client<'_, S, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &self.core.identity.device_id)
            .field("module_id", &self.core.identity.module_id)
            .field("credential", &self.core.credential)
            .field("state", &self.core.session.state())
            .field("queued", &self.core.queue.queued())
            .field("in_flight", &self.core.in_flight.len())
            .finish_non_exhaustive()
    }
}

/// A `fmt::Write` that only counts, and fails past its limit.
struct Measure(usize);

impl fmt::Write for Measure {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = self.0.checked_sub(s.len()).ok_or(fmt::Error)?;
        Ok(())
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
    /// A client for `identity` running `device`, queueing telemetry in a [`FixedQueue`] (see
    /// [`Client::with_storage`]).
    ///
    /// # Errors
    /// [`ClientError`] for an unusable id or key, or buffers too small.
    pub fn new(
        identity: Identity<'b>,
        credential: Credential<'b>,
        device: Device<S>,
        config: SessionConfig,
        seed: u64,
        rx: &'b mut [u8],
        tx: &'b mut [u8],
    ) -> Result<Self, ClientError> {
        Self::with_storage(
            identity,
            credential,
            device,
            config,
            seed,
            rx,
            tx,
            FixedQueue::new(),
        )
    }
}

impl<'b, S: Sensor, Q: Storage> Client<'b, S, Q> {
    /// A client for `identity` running `device`, queueing telemetry in `queue`. `config` is
    /// the session's; its packet-id range is narrowed (SUBSCRIBE ids live above it) and a
    /// fixed token turns renewal off. `seed` seeds message ids and reconnect jitter (use the
    /// hardware RNG on a board). `rx` must hold the largest packet the hub may send (the twin
    /// document, a C2D message, a method request); `tx` the largest the device sends (a
    /// telemetry message, a method response echoing its request).
    ///
    /// # Errors
    /// [`ClientError`] for an unusable id or key, or buffers too small.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub fn with_storage(
        identity: Identity<'b>,
        credential: Credential<'b>,
        device: Device<S>,
        mut config: SessionConfig,
        seed: u64,
        rx: &'b mut [u8],
        tx: &'b mut [u8],
        queue: Q,
    ) -> Result<Self, ClientError> {
        if rx.len() < 512 || tx.len() < 512 {
            return Err(ClientError::BufferTooSmall);
        }
        let session_id = match identity.module_id {
            Some(m) => session::Identity::module(identity.device_id, m),
            None => session::Identity::device(identity.device_id),
        }
        .map_err(ClientError::Identity)?;
        // The username and each token are written when CONNECT is; here they are only
        // measured, so that one that cannot fit fails now, not at the first connect.
        username::write_username(
            &mut Measure(USERNAME_LEN) as &mut dyn fmt::Write,
            identity.host,
            identity.device_id,
            identity.module_id,
            env!("CARGO_PKG_VERSION"),
            identity.model_id,
        )
        .map_err(|_| ClientError::UsernameTooLong)?;
        let key = match credential {
            Credential::Key(key) | Credential::PolicyKey { key, .. } => {
                let key = Key::from_base64(key.expose()).map_err(ClientError::Key)?;
                // The longest expiry makes the longest token.
                sas::sign_with_key(
                    &mut Measure(TOKEN_LEN) as &mut dyn fmt::Write,
                    &resource(&identity),
                    &key,
                    u64::MAX,
                    policy(credential),
                )
                .map_err(|_| ClientError::TokenTooLong)?;
                Some(key)
            }
            Credential::Token(_) => {
                config.token_ttl = None;
                None
            }
        };
        config.max_packet_id = config.max_packet_id.min(SESSION_MAX_PACKET_ID);
        Ok(Self {
            rx,
            tx,
            core: Core {
                phase: Phase::Offline,
                rx_len: 0,
                sub_pid: SESSION_MAX_PACKET_ID,
                wire_pid: 0,
                puback: None,
                keep_alive: 0,
                stopping: false,
                last_tx: 0,
                ping_deadline: None,
                rng: seed | 1,
                identity,
                credential,
                session: Session::new(session_id, config),
                device,
                key,
                queue,
                in_flight: Vec::new(),
                scratch: [0; SCRATCH_LEN],
            },
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

    /// Telemetry messages the loop still holds: queued, in flight, or to be sent again.
    pub fn queued(&self) -> usize {
        self.core.queue.queued() + self.core.in_flight.len()
    }

    /// Runs the device: connects through `connector` when the session asks, reconnects after
    /// failures with backoff, renews the token, sends telemetry, answers methods and desired
    /// patches, and tells `app` what happens. Returns `Ok(())` when `app` asked to stop (after
    /// a clean DISCONNECT), or the reason the session gave up (for example CONNACK 5 before the
    /// first connect, or an exhausted attempt budget).
    ///
    /// All protocol work happens in one synchronous step function; this driver only opens
    /// streams, writes what it encoded, and reads or sleeps, each at a single await point, so
    /// the stream's futures are inlined once.
    ///
    /// # Errors
    /// The [`GiveUpReason`] when the session stopped for good on its own.
    pub async fn run<C, K, A>(
        &mut self,
        connector: &mut C,
        clock: &mut K,
        app: &mut A,
    ) -> Result<(), GiveUpReason>
    where
        C: Connector,
        K: Clock,
        A: App,
    {
        let mut connect = false;
        loop {
            // Declared per round: the stream borrows the connector until the round ends.
            let mut conn = None;
            if connect {
                let stopping = self.core.stopping;
                // Opening, unless a stop is asked for first.
                let opened = {
                    let mut open = pin!(connector.connect());
                    let mut stop = pin!(app.wait_for_stop());
                    poll_fn(|cx| {
                        if let Poll::Ready(r) = open.as_mut().poll(cx) {
                            return Poll::Ready(Some(r));
                        }
                        if !stopping && stop.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                        Poll::Pending
                    })
                    .await
                };
                match opened {
                    Some(Ok(c)) => {
                        conn = Some(c);
                        self.core.opened();
                    }
                    Some(Err(reason)) => self.core.failed(clock.now(), reason, app),
                    None => self.core.stop(clock.now()),
                }
            }
            match self.drive(conn.as_mut(), clock, app).await {
                Step::GiveUp(reason) => return Err(reason),
                Step::Closed => return Ok(()),
                step => connect = step == Step::Connect,
            }
        }
    }

    /// Performs steps over `conn` until the loop needs a new stream ([`Step::Connect`]), has
    /// no use for this one (a `Wait` without `read`), or stops.
    async fn drive<T, K, A>(&mut self, mut conn: Option<&mut T>, clock: &mut K, app: &mut A) -> Step
    where
        T: Read + Write,
        K: Clock,
        A: App,
    {
        loop {
            let now = clock.now();
            let step = self.core.step(now, self.rx, self.tx, app);
            match step {
                Step::Connect | Step::GiveUp(_) | Step::Closed => return step,
                Step::Wait { read: false, .. } if conn.is_some() => return step,
                Step::Write(n) => {
                    let bytes = self.tx.get_mut(..n).unwrap_or_default();
                    let ok = match conn.as_deref_mut() {
                        Some(c) => c.write_all(bytes).await.is_ok() && c.flush().await.is_ok(),
                        None => false,
                    };
                    // Nothing sent stays behind: CONNECT carried the token.
                    bytes.fill(0);
                    if !ok {
                        self.core.failed(clock.now(), DisconnectReason::Lost, app);
                    }
                }
                Step::Wait { until, .. } => {
                    let free = self.rx.get_mut(self.core.rx_len..).unwrap_or_default();
                    let stopping = self.core.stopping;
                    let got = {
                        // Without a stream only the timer (or a stop) can finish.
                        let mut read = pin!(conn.as_deref_mut().map(|c| c.read(free)));
                        let mut sleep = pin!(clock.sleep_until(until));
                        let mut stop = pin!(app.wait_for_stop());
                        // Data first, then a stop (so a `--duration` ending with telemetry
                        // due at the same moment sends no more), then the timer.
                        poll_fn(|cx| {
                            if let Some(read) = read.as_mut().as_pin_mut()
                                && let Poll::Ready(got) = read.poll(cx)
                            {
                                // An error or the end of the stream ends the connection.
                                return Poll::Ready(Waited::Read(got.ok().filter(|&n| n > 0)));
                            }
                            if !stopping && stop.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(Waited::Stop);
                            }
                            sleep.as_mut().poll(cx).map(|()| Waited::Time)
                        })
                        .await
                    };
                    match got {
                        Waited::Read(Some(n)) => self.core.rx_len += n,
                        Waited::Read(None) => {
                            self.core.failed(clock.now(), DisconnectReason::Lost, app);
                        }
                        Waited::Time => {}
                        Waited::Stop => self.core.stop(clock.now()),
                    }
                }
            }
        }
    }
}

/// What ended a wait.
enum Waited {
    /// Bytes (their count), or the end of the stream (`None`).
    Read(Option<usize>),
    /// The deadline.
    Time,
    /// The application's stop request.
    Stop,
}

impl<S: Sensor, Q: Storage> Core<'_, S, Q> {
    /// xorshift64*: message ids and reconnect jitter, nothing secret.
    fn next_u32(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// A random (version 4) UUID for `$.mid`.
    fn message_id(&mut self) -> [u8; 36] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [b'-'; 36];
        let mut pos = 0;
        let mut r = 0;
        for digit in 0..32 {
            if digit % 8 == 0 {
                r = self.next_u32();
            }
            let nibble = match digit {
                // Version 4, and the RFC 4122 variant.
                12 => 4,
                16 => 8 | (r >> 28) & 3,
                _ => r >> 28,
            };
            r <<= 4;
            if matches!(digit, 8 | 12 | 16 | 20) {
                pos += 1;
            }
            if let (Some(slot), Some(&hex)) = (id.get_mut(pos), HEX.get(nibble as usize)) {
                *slot = hex;
            }
            pos += 1;
        }
        id
    }

    /// The driver opened the stream the last [`Step::Connect`] asked for.
    fn opened(&mut self) {
        if let Phase::Opening(params) = self.phase {
            self.phase = Phase::Opened(params);
        }
    }

    /// Opening, the handshake or the connection failed (or the stream ended). Nothing to do
    /// once the session let the connection go; after a DISCONNECT the end of the stream is
    /// the close the session asked for.
    fn failed<A: App>(&mut self, now: u64, reason: DisconnectReason, app: &mut A) {
        let reason = match self.phase {
            Phase::Offline => return,
            Phase::Up => reason,
            Phase::Closing(_) => DisconnectReason::Requested,
            Phase::Opening(_) | Phase::Opened(_) | Phase::Handshake(_) => {
                app.note(Note::ConnectFailed { reason });
                reason
            }
        };
        self.phase = Phase::Offline;
        let entropy = self.next_u32();
        self.session.handle_disconnected(now, reason, entropy);
    }

    /// The application asked to stop: the session closes (DISCONNECT if connected) and never
    /// connects again. A connection still being opened is dropped.
    fn stop(&mut self, now: u64) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.session.close(now);
        if let Phase::Opening(_) | Phase::Opened(_) | Phase::Handshake(_) = self.phase {
            self.phase = Phase::Offline;
        }
    }

    /// Everything the loop decides for `now`: it runs until there is I/O to perform.
    fn step<A: App>(&mut self, now: u64, rx: &mut [u8], tx: &mut [u8], app: &mut A) -> Step {
        if !self.stopping && app.stop_requested() {
            self.stop(now);
        }
        loop {
            // Every complete packet first, so none waits behind the timer; but a pending PUBACK
            // goes out before the next packet may ask for another.
            if let Phase::Up | Phase::Handshake(_) | Phase::Closing(_) = self.phase
                && self.puback.is_none()
            {
                match self.next_packet(rx, app) {
                    Ok(Some(len)) => {
                        let handled =
                            self.on_packet(now, rx.get(..len).unwrap_or_default(), tx, app);
                        self.consume(rx, len);
                        match handled {
                            Ok(Some(n)) => return Step::Write(n),
                            Ok(None) => {}
                            Err(reason) => self.failed(now, reason, app),
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(()) => {
                        self.failed(now, DisconnectReason::Lost, app);
                        continue;
                    }
                }
            }
            match self.phase {
                Phase::Opened(params) => match self.encode_connect(params, tx) {
                    Some(n) => {
                        self.phase = Phase::Handshake(now + CONNACK_TIMEOUT_MS);
                        return Step::Write(n);
                    }
                    None => self.failed(now, DisconnectReason::Lost, app),
                },
                Phase::Handshake(deadline) | Phase::Closing(deadline) if now < deadline => {
                    return Step::Wait {
                        until: deadline,
                        read: true,
                    };
                }
                Phase::Handshake(_) | Phase::Closing(_) => {
                    self.failed(now, DisconnectReason::Lost, app);
                }
                Phase::Up if self.ping_deadline.is_some_and(|d| now >= d) => {
                    self.failed(now, DisconnectReason::Lost, app);
                }
                Phase::Up | Phase::Offline | Phase::Opening(_) => {
                    let up = matches!(self.phase, Phase::Up);
                    if !up {
                        self.phase = Phase::Offline;
                    }
                    // Offline these encode nothing.
                    if let Some(pid) = self.puback.take()
                        && let Some(n) =
                            self.encode(now, wire::encode_bare(wire::Bare::Puback(pid), tx))
                    {
                        return Step::Write(n);
                    }
                    self.tick(now, app);
                    if self.ping_due(now)
                        && let Some(n) =
                            self.encode(now, wire::encode_bare(wire::Bare::Pingreq, tx))
                    {
                        self.ping_deadline = Some(now + self.ping_interval().max(MIN_PING_WAIT_MS));
                        return Step::Write(n);
                    }
                    if let Some(step) = self.pump(now, tx, app) {
                        return step;
                    }
                    if self.session.state() == State::Closed {
                        return Step::Closed;
                    }
                    // Still as it was (a requested disconnect changes it).
                    if matches!(self.phase, Phase::Up) == up {
                        return Step::Wait {
                            until: self.wake(now),
                            read: up,
                        };
                    }
                }
            }
        }
    }

    /// CONNECT with a freshly signed token, in `tx`. The token lives on this stack frame only
    /// and the driver wipes `tx` once it is written.
    #[inline(never)]
    fn encode_connect(&self, params: ConnectParams, tx: &mut [u8]) -> Option<usize> {
        let id = &self.identity;
        // One size for all three, so that one `Sink` is compiled.
        let mut client_id: String<TOKEN_LEN> = String::new();
        let mut user: String<TOKEN_LEN> = String::new();
        let mut token: String<TOKEN_LEN> = String::new();
        // Cannot fail: `new` measured all three.
        username::write_client_id(
            &mut Sink(&mut client_id) as &mut dyn fmt::Write,
            id.device_id,
            id.module_id,
        )
        .ok()?;
        username::write_username(
            &mut Sink(&mut user) as &mut dyn fmt::Write,
            id.host,
            id.device_id,
            id.module_id,
            env!("CARGO_PKG_VERSION"),
            id.model_id,
        )
        .ok()?;
        let password: Option<&[u8]> = match (&self.key, params.token_expiry, self.credential) {
            (Some(key), Some(exp), _) => {
                sas::sign_with_key(
                    &mut Sink(&mut token) as &mut dyn fmt::Write,
                    &resource(id),
                    key,
                    exp,
                    policy(self.credential),
                )
                .ok()?;
                Some(token.as_bytes())
            }
            (_, _, Credential::Token(t)) => Some(t.expose().as_bytes()),
            (_, _, Credential::Key(_) | Credential::PolicyKey { .. }) => None,
        };
        wire::encode_connect(
            &client_id,
            &user,
            password,
            params.keep_alive,
            params.clean_session,
            tx,
        )
    }

    /// CONNACK 0 arrived.
    fn connected(&mut self, now: u64) {
        self.phase = Phase::Up;
        self.last_tx = now;
        self.ping_deadline = None;
        self.puback = None;
        self.session.handle_connected(now);
    }

    /// The length of the complete packet at the front of the receive buffer; `Err` when the
    /// bytes are not MQTT or the packet cannot fit.
    fn next_packet<A: App>(&self, rx: &[u8], app: &mut A) -> Result<Option<usize>, ()> {
        match wire::frame_len(rx.get(..self.rx_len).unwrap_or_default()) {
            Ok(Some(n)) => Ok(Some(n)),
            Ok(None) if self.rx_len < rx.len() => Ok(None),
            Ok(None) => {
                app.note(Note::PacketTooLarge { buffer: rx.len() });
                Err(())
            }
            Err(_) => Err(()),
        }
    }

    /// Drops the first `len` bytes of the receive buffer.
    fn consume(&mut self, rx: &mut [u8], len: usize) {
        if let Some(rest) = rx.get(len..self.rx_len) {
            let rest = rest.len();
            rx.copy_within(len..len + rest, 0);
            self.rx_len = rest;
        } else {
            self.rx_len = 0;
        }
    }

    /// One incoming packet; `Ok(Some(n))` when an answer sits in `tx[..n]`, `Err` when the
    /// connection is over.
    #[inline(never)]
    fn on_packet<A: App>(
        &mut self,
        now: u64,
        packet: &[u8],
        tx: &mut [u8],
        app: &mut A,
    ) -> Result<Option<usize>, DisconnectReason> {
        let incoming = wire::decode(packet);
        match self.phase {
            Phase::Handshake(_) => {
                return match incoming {
                    wire::Incoming::Connack(0) => {
                        self.connected(now);
                        Ok(None)
                    }
                    wire::Incoming::Connack(code) => Err(DisconnectReason::Refused(
                        ConnackCode::from_u8(code).unwrap_or(ConnackCode::Other(code)),
                    )),
                    _ => Err(DisconnectReason::Lost),
                };
            }
            // After DISCONNECT nothing may be sent; acknowledgements already on their way
            // still count (a deliver is sent again by the hub on the next connection).
            Phase::Closing(_) => {
                return match incoming {
                    wire::Incoming::Puback(wire) => {
                        self.on_puback(now, wire);
                        Ok(None)
                    }
                    wire::Incoming::Closed => Err(DisconnectReason::Lost),
                    _ => Ok(None),
                };
            }
            _ => {}
        }
        match incoming {
            wire::Incoming::Publish(p) => {
                // C2D is the hub's only QoS 1 delivery; the PUBACK completes it, after any
                // answer below.
                if let QosPid::AtLeastOnce(pid) = p.qospid {
                    self.puback = Some(pid);
                }
                Ok(
                    match self.session.handle_publish(now, p.topic_name, p.payload) {
                        Some(ev) => self.on_event(now, ev, tx, app),
                        None => None,
                    },
                )
            }
            wire::Incoming::Puback(wire) => {
                self.on_puback(now, wire);
                Ok(None)
            }
            wire::Incoming::Pingresp => {
                self.ping_deadline = None;
                Ok(None)
            }
            // IoT Hub closes the connection rather than refuse a subscription, and never sends
            // DISCONNECT in 3.1.1; anything else (SUBACK, a stray CONNACK) needs no answer.
            wire::Incoming::Closed => Err(DisconnectReason::Lost),
            wire::Incoming::Connack(_) | wire::Incoming::Other => Ok(None),
        }
    }

    /// A PUBACK for packet id `wire`. Telemetry is the only QoS 1 publish; the session knows
    /// it by the id it gave this attempt.
    fn on_puback(&mut self, now: u64, wire: u16) {
        if let Some(m) = self.in_flight.iter().find(|m| m.wire == wire && !m.resend) {
            self.session.handle_puback(now, m.pkid);
        }
    }

    /// Session timeouts and, unless stopping, telemetry production for `now`.
    fn tick<A: App>(&mut self, now: u64, app: &mut A) {
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        if self.stopping {
            return;
        }
        let mut tbuf = [0u8; TELEMETRY_BUFFER_LEN];
        while let Some(t) = self.device.poll_telemetry(now, &mut tbuf) {
            let seq = t.seq;
            let body = match app.telemetry(seq, t.body) {
                Some(bytes) => self.queue.body(bytes),
                None => continue,
            };
            let Some(body) = body else {
                app.note(Note::TelemetryDropped { seq });
                continue;
            };
            self.make_room(app);
            let id = self.message_id();
            let m = Message {
                seq,
                id,
                body,
                wire: 0,
                pkid: 0,
                resend: false,
            };
            if self.queue.push(m).is_err() {
                app.note(Note::TelemetryDropped { seq });
            }
        }
    }

    /// Drops the oldest messages held offline (queued, or unacknowledged and to be sent again)
    /// until one more fits.
    fn make_room<A: App>(&mut self, app: &mut A) {
        loop {
            let resend = self.in_flight.iter().filter(|m| m.resend).count();
            if self.queue.queued() + resend < self.queue.capacity() {
                return;
            }
            // Unacknowledged ones are older than anything queued.
            let seq = match self.in_flight.iter().position(|m| m.resend) {
                Some(i) => self.in_flight.remove(i).seq,
                None => match self.queue.pop() {
                    Some(m) => m.seq,
                    None => return,
                },
            };
            app.note(Note::TelemetryDropped { seq });
        }
    }

    fn ping_due(&self, now: u64) -> bool {
        self.keep_alive > 0
            && self.ping_deadline.is_none()
            && now >= self.last_tx + self.ping_interval()
    }

    /// Half the keep-alive (seconds on the wire), in milliseconds: well inside the 1.5 times
    /// it the hub allows.
    fn ping_interval(&self) -> u64 {
        u64::from(self.keep_alive) * 500
    }

    /// When the loop must next step without news from the hub.
    fn wake(&self, now: u64) -> u64 {
        let up = matches!(self.phase, Phase::Up);
        let ping = (up && self.keep_alive > 0).then(|| match self.ping_deadline {
            Some(d) => d,
            None => self.last_tx + self.ping_interval(),
        });
        let telemetry = if self.stopping {
            None
        } else {
            self.device.poll_timeout()
        };
        earliest(earliest(self.session.poll_timeout(), telemetry), ping)
            .unwrap_or(now + IDLE_WAKE_MS)
    }

    /// Runs actions, events, behaviour publishes and queued telemetry until one of them has a
    /// packet to send or a connection to open or the session stops; `None` when nothing
    /// more is to be done now. Offline, packets are dropped (the session asks for them again
    /// on the next connection).
    fn pump<A: App>(&mut self, now: u64, tx: &mut [u8], app: &mut A) -> Option<Step> {
        loop {
            let mut abuf = [0u8; ACTION_BUFFER_LEN];
            if let Some(action) = self.session.poll_action(&mut abuf) {
                let sent = match action {
                    Action::Connect {
                        token_expiry,
                        clean_session,
                        keep_alive,
                        attempt,
                    } => {
                        app.note(Note::Connecting { attempt });
                        self.phase = Phase::Opening(ConnectParams {
                            token_expiry,
                            clean_session,
                            keep_alive,
                        });
                        self.keep_alive = keep_alive;
                        self.rx_len = 0;
                        return Some(Step::Connect);
                    }
                    Action::GiveUp { reason } => {
                        app.note(Note::GaveUp { reason });
                        return Some(Step::GiveUp(reason));
                    }
                    Action::Subscribe { filter, qos } => {
                        self.sub_pid = if self.sub_pid == u16::MAX {
                            SESSION_MAX_PACKET_ID + 1
                        } else {
                            self.sub_pid + 1
                        };
                        let n = wire::encode_subscribe(self.sub_pid, filter, qos, tx);
                        self.encode(now, n)
                    }
                    Action::Publish(p) => publish(self.phase, &mut self.last_tx, now, &p, tx, app),
                    Action::Disconnect { .. } => {
                        match self.encode(now, wire::encode_bare(wire::Bare::Disconnect, tx)) {
                            // The session hears of the disconnect once the hub has closed.
                            Some(n) => {
                                self.phase = Phase::Closing(now + CLOSE_WAIT_MS);
                                return Some(Step::Write(n));
                            }
                            None => {
                                self.phase = Phase::Offline;
                                self.session.handle_disconnected(
                                    now,
                                    DisconnectReason::Requested,
                                    0,
                                );
                                None
                            }
                        }
                    }
                };
                if let Some(n) = sent {
                    return Some(Step::Write(n));
                }
                continue;
            }
            if let Some(ev) = self.session.poll_event() {
                if let Some(n) = self.on_event(now, ev, tx, app) {
                    return Some(Step::Write(n));
                }
                continue;
            }
            if !matches!(self.phase, Phase::Up) {
                return None;
            }
            let Core {
                device,
                session,
                scratch,
                phase,
                last_tx,
                ..
            } = self;
            if let Some(p) = device.poll_publish(now, session, &mut scratch[..]) {
                if let Some(n) = publish(*phase, last_tx, now, &p, tx, app) {
                    return Some(Step::Write(n));
                }
                continue;
            }
            return self.send_telemetry(now, tx, app).map(Step::Write);
        }
    }

    /// A packet encoded for the connection (`n`, its length, from a `wire::encode_*`): sent
    /// only when connected.
    #[inline(never)]
    fn encode(&mut self, now: u64, n: Option<usize>) -> Option<usize> {
        if !matches!(self.phase, Phase::Up) {
            return None;
        }
        self.last_tx = now;
        n
    }

    /// A packet id for a first transmission, not used by any message in flight.
    fn fresh_wire_pid(&mut self) -> u16 {
        loop {
            self.wire_pid = if self.wire_pid >= SESSION_MAX_PACKET_ID {
                1
            } else {
                self.wire_pid + 1
            };
            let id = self.wire_pid;
            if !self.in_flight.iter().any(|m| m.wire == id) {
                return id;
            }
        }
    }

    /// The next telemetry message while the session has room: first what a lost connection
    /// left unacknowledged (oldest first, as the same PUBLISH with DUP=1 when it had gone
    /// out), then the queue.
    fn send_telemetry<A: App>(&mut self, now: u64, tx: &mut [u8], app: &mut A) -> Option<usize> {
        if self.session.telemetry_window() == 0 {
            return None;
        }
        let i = match self.in_flight.iter().position(|m| m.resend) {
            Some(i) => i,
            None => {
                if self.in_flight.is_full() {
                    return None;
                }
                let m = self.queue.pop()?;
                // Cannot fail: checked not full above.
                let _ = self.in_flight.push(m);
                self.in_flight.len() - 1
            }
        };
        // A redelivery keeps its id; a first transmission takes a free one.
        let id = match self.in_flight.get(i)?.wire {
            0 => self.fresh_wire_pid(),
            id => id,
        };
        let Core {
            session,
            in_flight,
            scratch,
            ..
        } = self;
        let m = in_flight.get_mut(i)?;
        m.resend = false;
        let sys = SystemProperties {
            message_id: Some(core::str::from_utf8(&m.id).unwrap_or_default()),
            content_type: Some(app.content_type()),
            content_encoding: Some("utf-8"),
            ..SystemProperties::default()
        };
        let sent = session.send_telemetry(
            now,
            m.seq,
            &sys,
            app.properties(),
            m.body.as_ref(),
            &mut scratch[..],
        );
        let p = match sent {
            Ok(p) => p,
            // Its properties do not fit a topic: it can never be sent.
            Err(SendError::BufferTooSmall) => {
                let seq = self.in_flight.remove(i).seq;
                app.note(Note::TelemetryDropped { seq });
                return None;
            }
            Err(SendError::NotConnected | SendError::Busy) => {
                m.resend = true;
                return None;
            }
        };
        m.pkid = p.pkid;
        let dup = m.wire != 0;
        let qospid = QosPid::AtLeastOnce(wire::pid(id)?);
        let Some(n) = wire::encode_publish(p.topic, p.payload, qospid, dup, tx) else {
            // The session counts it in flight; the ack never comes, so the message is sent
            // again after the next reconnect like any other unacknowledged one.
            app.note(Note::NotSent { topic: p.topic });
            return None;
        };
        m.wire = id;
        self.last_tx = now;
        let m = self.in_flight.get(i)?;
        app.note(Note::TelemetrySent {
            seq: m.seq,
            message_id: m.message_id(),
            body: m.body.as_ref(),
            redelivery: dup,
        });
        Some(n)
    }

    /// One session event: note it, keep the in-flight table straight, let the behaviour (or
    /// the application's canned answer) react; the length of its answer in `tx`, if it has one
    /// and it fits.
    fn on_event<A: App>(
        &mut self,
        now: u64,
        ev: Event<'_>,
        tx: &mut [u8],
        app: &mut A,
    ) -> Option<usize> {
        match ev {
            Event::TelemetryAcked { tag } => {
                if let Some(i) = self
                    .in_flight
                    .iter()
                    .position(|m| m.seq == tag && !m.resend)
                {
                    let m = self.in_flight.remove(i);
                    app.note(Note::TelemetryAcked {
                        seq: m.seq,
                        message_id: m.message_id(),
                    });
                }
                return None;
            }
            // Sent again (as a redelivery) once connected.
            Event::TelemetryUnacked { tag } => {
                if let Some(m) = self.in_flight.iter_mut().find(|m| m.seq == tag) {
                    m.resend = true;
                }
            }
            _ => {}
        }
        app.note(Note::Session(ev));
        if let Event::MethodRequest { name, rid, payload } = ev
            && let Some((status, canned)) = app.method(name)
        {
            // A copy, so the application is free to hear about it below.
            let body = self.queue.body(canned)?;
            let p = self
                .session
                .respond_method(rid, status, body.as_ref(), &mut self.scratch[..])
                .ok()?;
            let n = publish(self.phase, &mut self.last_tx, now, &p, tx, app);
            app.note(Note::Method {
                name,
                rid,
                status,
                request: payload,
                response: body.as_ref(),
            });
            return n;
        }
        let Core {
            device,
            session,
            scratch,
            phase,
            last_tx,
            ..
        } = self;
        let p = device.handle_event(now, &ev, session, &mut scratch[..])?;
        let n = publish(*phase, last_tx, now, &p, tx, app);
        if let (
            Event::MethodRequest { name, rid, payload },
            PublishKind::MethodResponse { status },
        ) = (ev, p.kind)
        {
            app.note(Note::Method {
                name,
                rid,
                status,
                request: payload,
                response: p.payload,
            });
        }
        n
    }
}

/// What the tokens are signed for.
fn resource<'a>(id: &Identity<'a>) -> Resource<'a> {
    match id.module_id {
        Some(m) => Resource::Module {
            host: id.host,
            device_id: id.device_id,
            module_id: m,
        },
        None => Resource::Device {
            host: id.host,
            device_id: id.device_id,
        },
    }
}

/// The `skn` the tokens carry: the policy of a policy key.
fn policy(credential: Credential<'_>) -> Option<&str> {
    match credential {
        Credential::PolicyKey { policy, .. } => Some(policy),
        Credential::Key(_) | Credential::Token(_) => None,
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A session or behaviour publish, with the QoS and packet id the session chose, encoded
/// into `tx` when connected; noted when it does not fit or is a reported PATCH.
#[inline(never)]
fn publish<O: Observer>(
    phase: Phase,
    last_tx: &mut u64,
    now: u64,
    p: &Publish<'_>,
    tx: &mut [u8],
    obs: &mut O,
) -> Option<usize> {
    if !matches!(phase, Phase::Up) {
        return None;
    }
    let qospid = match p.qos {
        session::QoS::AtMostOnce => QosPid::AtMostOnce,
        session::QoS::AtLeastOnce => QosPid::AtLeastOnce(wire::pid(p.pkid)?),
    };
    let Some(n) = wire::encode_publish(p.topic, p.payload, qospid, false, tx) else {
        obs.note(Note::NotSent { topic: p.topic });
        return None;
    };
    *last_tx = now;
    if let PublishKind::Reported { rid } = p.kind {
        obs.note(Note::ReportedSent {
            rid,
            patch: p.payload,
        });
    }
    Some(n)
}
#[cfg(test)]
mod tests {
    use super::*;
    use azsim_proto::device::{DeviceConfig, RandomWalk};
    use core::convert::Infallible;
    use core::pin::pin;
    use core::task::{Context, Poll};
    use mqttrs::Packet;
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
            1_700_000_000_000
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
                interval_ms: 10_000,
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
            Credential::Key(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
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
            Err(GiveUpReason::Refused(ConnackCode::from_u8(5).unwrap()))
        );
        drop(client);
        assert!(contains(&peer.written, b"SharedAccessSignature sr="));
        assert!(!contains(&tx, b"SharedAccessSignature"));
        assert!(!contains(&tx, b"&sig="));
    }

    /// A hub that plays one script per connection: each read returns the next chunk, an
    /// empty chunk is silence (the read waits for the timer), the end of the script is EOF.
    /// What the client writes is kept per connection.
    struct Hub {
        scripts: std::collections::VecDeque<Vec<Vec<u8>>>,
        written: Vec<Vec<u8>>,
    }

    struct HubConn<'a> {
        chunks: std::collections::VecDeque<Vec<u8>>,
        out: &'a mut Vec<u8>,
    }

    impl embedded_io_async::ErrorType for HubConn<'_> {
        type Error = Infallible;
    }

    impl Read for HubConn<'_> {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            match self.chunks.pop_front() {
                None => Ok(0),
                Some(c) if c.is_empty() => core::future::pending().await,
                Some(c) => {
                    buf[..c.len()].copy_from_slice(&c);
                    Ok(c.len())
                }
            }
        }
    }

    impl Write for HubConn<'_> {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }

        async fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    impl Connector for Hub {
        type Conn<'a> = HubConn<'a>;

        async fn connect(&mut self) -> Result<HubConn<'_>, DisconnectReason> {
            let chunks = self
                .scripts
                .pop_front()
                .ok_or(DisconnectReason::Unreachable)?;
            self.written.push(Vec::new());
            Ok(HubConn {
                chunks: chunks.into(),
                out: self.written.last_mut().unwrap(),
            })
        }
    }

    /// A clock that jumps to whatever time is slept until; clones share the time.
    #[derive(Clone)]
    struct Jumping(std::rc::Rc<core::cell::Cell<u64>>);

    impl Jumping {
        fn at(t: u64) -> Self {
            Self(std::rc::Rc::new(core::cell::Cell::new(t)))
        }
    }

    impl Clock for Jumping {
        fn now(&mut self) -> u64 {
            self.0.get()
        }

        async fn sleep_until(&mut self, unix_ms: u64) {
            self.0.set(self.0.get().max(unix_ms));
        }
    }

    const CONNACK_0: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

    /// The packets in `bytes`, as `(first byte, packet id, topic)`.
    fn packets(mut bytes: &[u8]) -> Vec<(u8, Option<u16>, std::string::String)> {
        let mut out = Vec::new();
        while let Ok(Some(n)) = wire::frame_len(bytes) {
            let (packet, rest) = bytes.split_at(n);
            let entry = match mqttrs::decode_slice(packet).unwrap().unwrap() {
                Packet::Publish(p) => {
                    let pid = match p.qospid {
                        QosPid::AtLeastOnce(pid) => Some(pid.get()),
                        _ => None,
                    };
                    (packet[0], pid, p.topic_name.into())
                }
                Packet::Puback(pid) => (packet[0], Some(pid.get()), std::string::String::new()),
                _ => (packet[0], None, std::string::String::new()),
            };
            out.push(entry);
            bytes = rest;
        }
        out
    }

    fn client<'b>(
        rx: &'b mut [u8],
        tx: &'b mut [u8],
        config: SessionConfig,
    ) -> Client<'b, RandomWalk> {
        let device = Device::new(
            RandomWalk::new(1),
            DeviceConfig {
                interval_ms: 3_600_000,
                version: "0.1.0",
            },
        );
        Client::new(
            Identity {
                host: "hub.example.net",
                device_id: "board-1",
                module_id: None,
                model_id: None,
            },
            Credential::Key(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            device,
            config,
            7,
            rx,
            tx,
        )
        .unwrap()
    }

    fn is_telemetry(topic: &str) -> bool {
        topic.starts_with("devices/board-1/messages/events/")
    }

    #[test]
    fn unacknowledged_telemetry_goes_out_again_as_the_same_publish_with_dup_after_a_reconnect() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = client(
            &mut rx,
            &mut tx,
            SessionConfig {
                max_attempts: Some(2),
                ..SessionConfig::default()
            },
        );
        let mut hub = Hub {
            // The first connection ends before the PUBACK; the second acknowledges id 1.
            scripts: std::vec![
                std::vec![CONNACK_0.to_vec()],
                std::vec![CONNACK_0.to_vec(), std::vec![0x40, 0x02, 0x00, 0x01]],
            ]
            .into(),
            written: Vec::new(),
        };
        let mut notes = Vec::new();
        let mut obs = |n: Note<'_>| notes.push(std::format!("{n:?}"));
        let reason = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut obs));
        assert_eq!(
            reason,
            Err(GiveUpReason::Exhausted(DisconnectReason::Unreachable))
        );

        let first: Vec<_> = packets(&hub.written[0])
            .into_iter()
            .filter(|p| is_telemetry(&p.2))
            .collect();
        let again: Vec<_> = packets(&hub.written[1])
            .into_iter()
            .filter(|p| is_telemetry(&p.2))
            .collect();
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(again.len(), 1, "{again:?}");
        // PUBLISH, QoS 1; DUP (0x08) only on the redelivery, with the same id and topic
        // (so the same $.mid).
        assert_eq!(first[0].0, 0x32);
        assert_eq!(again[0].0, 0x3A);
        assert_eq!(first[0].1, Some(1));
        assert_eq!(again[0].1, first[0].1);
        assert_eq!(again[0].2, first[0].2);
        assert!(first[0].2.contains("%24.mid="), "{}", first[0].2);
        // The hub's PUBACK for the wire id reaches the session, which knows it by its own.
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("TelemetryAcked { seq: 1, message_id: ")),
            "{notes:?}"
        );
    }

    #[test]
    fn a_qos1_c2d_message_is_noted_and_acknowledged() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = client(
            &mut rx,
            &mut tx,
            SessionConfig {
                max_attempts: Some(1),
                ..SessionConfig::default()
            },
        );
        let mut hub = Hub {
            scripts: std::vec![std::vec![CONNACK_0.to_vec(), c2d(7)]].into(),
            written: Vec::new(),
        };
        let mut notes = Vec::new();
        let mut obs = |n: Note<'_>| notes.push(std::format!("{n:?}"));
        let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut obs));
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("Session(C2d {") && n.contains("body: [104, 101, 108")),
            "{notes:?}"
        );
        assert!(
            packets(&hub.written[0]).contains(&(0x40, Some(7), std::string::String::new())),
            "no PUBACK 7"
        );
    }

    #[test]
    fn an_idle_connection_pings_and_one_without_a_pingresp_is_dropped() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = client(
            &mut rx,
            &mut tx,
            SessionConfig {
                keep_alive: 4,
                max_attempts: Some(2),
                ..SessionConfig::default()
            },
        );
        let silence = Vec::new;
        let mut hub = Hub {
            scripts: std::vec![std::vec![
                CONNACK_0.to_vec(),
                silence(),
                silence(),
                silence()
            ]]
            .into(),
            written: Vec::new(),
        };
        let mut notes = Vec::new();
        let mut obs = |n: Note<'_>| notes.push(std::format!("{n:?}"));
        let reason = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut obs));
        assert_eq!(
            reason,
            Err(GiveUpReason::Exhausted(DisconnectReason::Unreachable))
        );
        let pings = packets(&hub.written[0])
            .iter()
            .filter(|p| p.0 == 0xC0)
            .count();
        assert_eq!(
            pings, 1,
            "one PINGREQ, then the wait for its answer runs out"
        );
        assert!(
            notes
                .iter()
                .any(|n| n == "Session(Disconnected { reason: Lost })"),
            "{notes:?}"
        );
    }

    fn c2d(pid: u16) -> Vec<u8> {
        let mut buf = std::vec![0u8; 128];
        let n = wire::encode_publish(
            "devices/board-1/messages/devicebound/%24.mid=m1",
            b"hello",
            QosPid::AtLeastOnce(wire::pid(pid).unwrap()),
            false,
            &mut buf,
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn packets_arriving_together_are_all_handled_before_the_loop_waits() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = client(
            &mut rx,
            &mut tx,
            SessionConfig {
                keep_alive: 4,
                max_attempts: Some(1),
                ..SessionConfig::default()
            },
        );
        // A packet that needs no answer (SUBACK) between two that do.
        let mut both = c2d(7);
        both.extend_from_slice(&[0x90, 0x03, 0xEA, 0x61, 0x00]);
        both.extend_from_slice(&c2d(8));
        let mut hub = Hub {
            scripts: std::vec![std::vec![CONNACK_0.to_vec(), both, Vec::new()]].into(),
            written: Vec::new(),
        };
        let clock = Jumping::at(1_700_000_000_000);
        let seen_at = clock.clone();
        let mut c2d_times = Vec::new();
        let mut obs = |n: Note<'_>| {
            if let Note::Session(Event::C2d { .. }) = n {
                c2d_times.push(seen_at.0.get());
            }
        };
        let _ = block_on(client.run(&mut hub, &mut clock.clone(), &mut obs));
        assert_eq!(c2d_times.len(), 2);
        assert_eq!(
            c2d_times[0], c2d_times[1],
            "the second waited for the timer"
        );
        let pubacks: Vec<_> = packets(&hub.written[0])
            .into_iter()
            .filter(|p| p.0 == 0x40)
            .map(|p| p.1)
            .collect();
        assert_eq!(pubacks, [Some(7), Some(8)]);
    }

    #[test]
    fn message_ids_are_version_4_uuids() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = client(&mut rx, &mut tx, SessionConfig::default());
        let a = client.core.message_id();
        let b = client.core.message_id();
        assert_ne!(a, b);
        for id in [a, b] {
            let text = core::str::from_utf8(&id).unwrap();
            let groups: Vec<&str> = text.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{text}"
            );
            assert!(
                text.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{text}"
            );
            assert!(groups[2].starts_with('4'), "{text}");
            assert!(
                matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "{text}"
            );
        }
    }

    /// A heap queue, as a laptop keeps one.
    struct VecQueue(std::collections::VecDeque<Message<Vec<u8>>>);

    impl Storage for VecQueue {
        type Body = Vec<u8>;

        fn body(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
            Some(bytes.to_vec())
        }

        fn queued(&self) -> usize {
            self.0.len()
        }

        fn capacity(&self) -> usize {
            100
        }

        fn push(&mut self, m: Message<Vec<u8>>) -> Result<(), Message<Vec<u8>>> {
            self.0.push_back(m);
            Ok(())
        }

        fn pop(&mut self) -> Option<Message<Vec<u8>>> {
            self.0.pop_front()
        }
    }

    /// An application with every hook: its own bodies (longer than the reference JSON), a
    /// content type, a property, a canned `ping`, and a stop once connected when asked.
    #[derive(Default)]
    struct Laptop {
        notes: Vec<std::string::String>,
        stop_once_connected: bool,
        connected: bool,
        body: std::string::String,
    }

    impl Observer for Laptop {
        fn note(&mut self, n: Note<'_>) {
            if let Note::Session(Event::Connected { .. }) = n {
                self.connected = true;
            }
            self.notes.push(std::format!("{n:?}"));
        }
    }

    impl App for Laptop {
        fn telemetry<'s>(&'s mut self, seq: u32, _: &'s str) -> Option<&'s [u8]> {
            self.body = std::format!("{{\"n\":{seq},\"pad\":\"{}\"}}", "x".repeat(300));
            Some(self.body.as_bytes())
        }

        fn content_type(&self) -> &str {
            "text/plain"
        }

        fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
            [("site", "lab 1")].into_iter()
        }

        fn method(&mut self, name: &str) -> Option<(u16, &[u8])> {
            (name == "ping").then_some((503, b"{\"busy\":true}"))
        }

        fn stop_requested(&mut self) -> bool {
            self.stop_once_connected && self.connected
        }
    }

    /// PUBLISH packets in `bytes`: `(topic, payload)`.
    fn publishes(mut bytes: &[u8]) -> Vec<(std::string::String, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(n)) = wire::frame_len(bytes) {
            let (packet, rest) = bytes.split_at(n);
            if let Ok(Some(Packet::Publish(p))) = mqttrs::decode_slice(packet) {
                out.push((p.topic_name.into(), p.payload.to_vec()));
            }
            bytes = rest;
        }
        out
    }

    fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut buf = std::vec![0u8; 512];
        let n = wire::encode_publish(topic, payload, QosPid::AtMostOnce, false, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_stop_request_sends_disconnect_and_returns_once_the_hub_closed() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = client(&mut rx, &mut tx, SessionConfig::default());
        let mut hub = Hub {
            // The hub closes the connection after the DISCONNECT (the end of the script).
            scripts: std::vec![std::vec![CONNACK_0.to_vec()]].into(),
            written: Vec::new(),
        };
        let mut app = Laptop {
            stop_once_connected: true,
            ..Laptop::default()
        };
        let ended = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
        assert_eq!(ended, Ok(()));
        assert_eq!(hub.written.len(), 1, "no reconnect after a stop");
        let sent = packets(&hub.written[0]);
        assert_eq!(
            sent.last().map(|p| p.0),
            Some(0xE0),
            "DISCONNECT last: {sent:?}"
        );
        assert!(
            app.notes
                .iter()
                .any(|n| n == "Session(Disconnected { reason: Requested })"),
            "{:?}",
            app.notes
        );
        assert_eq!(client.session().state(), State::Closed);
    }

    #[test]
    fn a_canned_method_answer_takes_precedence_over_the_built_in_one() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = client(
            &mut rx,
            &mut tx,
            SessionConfig {
                max_attempts: Some(1),
                ..SessionConfig::default()
            },
        );
        let mut hub = Hub {
            scripts: std::vec![std::vec![
                CONNACK_0.to_vec(),
                publish_packet("$iothub/methods/POST/ping/?$rid=9", b"{\"a\":1}"),
            ]]
            .into(),
            written: Vec::new(),
        };
        let mut app = Laptop::default();
        let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
        let answer = publishes(&hub.written[0])
            .into_iter()
            .find(|p| p.0.starts_with("$iothub/methods/res/"))
            .expect("a method response");
        assert_eq!(answer.0, "$iothub/methods/res/503/?$rid=9");
        assert_eq!(answer.1, b"{\"busy\":true}");
        assert!(
            app.notes.iter().any(|n| n.starts_with(
                "Method { name: \"ping\", rid: \"9\", status: 503, request: [123, 34, 97"
            )),
            "{:?}",
            app.notes
        );
    }

    #[test]
    fn telemetry_carries_the_application_body_content_type_and_properties() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = Client::with_storage(
            Identity {
                host: "hub.example.net",
                device_id: "board-1",
                module_id: None,
                model_id: None,
            },
            Credential::PolicyKey {
                policy: "device",
                key: Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            },
            Device::new(
                RandomWalk::new(1),
                DeviceConfig {
                    interval_ms: 3_600_000,
                    version: "0.1.0",
                },
            ),
            SessionConfig {
                max_attempts: Some(1),
                ..SessionConfig::default()
            },
            7,
            &mut rx,
            &mut tx,
            VecQueue(Default::default()),
        )
        .unwrap();
        let mut hub = Hub {
            scripts: std::vec![std::vec![
                CONNACK_0.to_vec(),
                std::vec![0x40, 0x02, 0x00, 0x01]
            ]]
            .into(),
            written: Vec::new(),
        };
        let mut app = Laptop::default();
        let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
        let written = &hub.written[0];
        assert!(
            contains(written, b"&skn=device"),
            "a policy key's token names it"
        );
        let (topic, body) = publishes(written)
            .into_iter()
            .find(|p| is_telemetry(&p.0))
            .expect("telemetry");
        assert!(
            topic.contains("&%24.ct=text%2Fplain&%24.ce=utf-8&site=lab%201"),
            "{topic}"
        );
        assert!(body.len() > TELEMETRY_BUFFER_LEN, "{}", body.len());
        assert!(body.starts_with(b"{\"n\":1,\"pad\":\"xxx"));
        assert!(
            app.notes
                .iter()
                .any(|n| n.starts_with("TelemetryAcked { seq: 1, ")),
            "{:?}",
            app.notes
        );
    }

    /// Stops after the third dropped message.
    #[derive(Default)]
    struct DropWatch(Vec<u32>);

    impl Observer for DropWatch {
        fn note(&mut self, n: Note<'_>) {
            if let Note::TelemetryDropped { seq } = n {
                self.0.push(seq);
            }
        }
    }

    impl App for DropWatch {
        fn stop_requested(&mut self) -> bool {
            self.0.len() >= 3
        }
    }

    #[test]
    fn a_full_offline_queue_drops_the_oldest_message_first() {
        let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
        let mut client = Client::with_storage(
            Identity {
                host: "hub.example.net",
                device_id: "board-1",
                module_id: None,
                model_id: None,
            },
            Credential::Key(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            Device::new(
                RandomWalk::new(1),
                DeviceConfig {
                    interval_ms: 1_000,
                    version: "0.1.0",
                },
            ),
            SessionConfig::default(),
            7,
            &mut rx,
            &mut tx,
            FixedQueue::<2>::new(),
        )
        .unwrap();
        // No hub at all: every attempt fails, and the loop keeps trying.
        let mut hub = Hub {
            scripts: Default::default(),
            written: Vec::new(),
        };
        let mut app = DropWatch::default();
        let ended = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
        assert_eq!(ended, Ok(()));
        assert_eq!(app.0, [1, 2, 3]);
        assert_eq!(client.queued(), 2);
    }
}
