//! The session's public types: who connects ([`Identity`]), how ([`SessionConfig`]), what the
//! driver is asked to do ([`Action`], [`Publish`]), what the application is told ([`Event`]),
//! and the reasons and codes they carry. The state machine that produces them is in the parent
//! module.

use core::fmt;

#[cfg(doc)]
use super::Session;
use super::{MAX_ID_LEN, MAX_IN_FLIGHT, PropertyBag};

/// MQTT quality of service; IoT Hub has no QoS 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QoS {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1.
    AtLeastOnce,
}

/// Who the session connects as. Ids are kept as given (the hub does not URL-decode them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    device_id: heapless::String<MAX_ID_LEN>,
    module_id: Option<heapless::String<MAX_ID_LEN>>,
}

/// Why an [`Identity`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    TooLong,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "device id is empty",
            Self::TooLong => "device id is longer than 128 characters",
        })
    }
}

impl core::error::Error for IdentityError {}

/// Fills an empty id in place (no 132-byte string moved through a `Result`).
fn id_string(out: &mut heapless::String<MAX_ID_LEN>, s: &str) -> Result<(), IdentityError> {
    if s.is_empty() {
        return Err(IdentityError::Empty);
    }
    out.push_str(s).map_err(|()| IdentityError::TooLong)
}

impl Identity {
    /// A device identity.
    ///
    /// # Errors
    /// [`IdentityError`] when the id is empty or too long.
    pub fn device(device_id: &str) -> Result<Self, IdentityError> {
        let mut id = Self {
            device_id: heapless::String::new(),
            module_id: None,
        };
        id_string(&mut id.device_id, device_id)?;
        Ok(id)
    }

    /// A module identity. Modules get no C2D subscription (IoT Hub has no module C2D).
    ///
    /// # Errors
    /// [`IdentityError`] when an id is empty or too long.
    pub fn module(device_id: &str, module_id: &str) -> Result<Self, IdentityError> {
        let mut id = Self {
            device_id: heapless::String::new(),
            module_id: Some(heapless::String::new()),
        };
        id_string(&mut id.device_id, device_id)?;
        if let Some(m) = &mut id.module_id {
            id_string(m, module_id)?;
        }
        Ok(id)
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The module id, for a module identity.
    pub fn module_id(&self) -> Option<&str> {
        self.module_id.as_deref()
    }
}

/// The session's knobs. [`SessionConfig::default`] is what `azsim run` and the firmware use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Lifetime of each SAS token in seconds; `None` when the credential cannot be renewed
    /// (X.509, or a fixed `SharedAccessSignature` from the connection string).
    pub token_ttl: Option<u64>,
    /// Reconnect with a fresh token after this percentage of its lifetime (the C SDK's 80%).
    pub renew_at_percent: u8,
    /// First reconnect delay in milliseconds (before jitter); at least 1.
    pub backoff_min_ms: u64,
    /// Largest reconnect delay in milliseconds.
    pub backoff_max_ms: u64,
    /// Milliseconds to wait for a twin response before giving up on the request.
    pub twin_request_timeout_ms: u64,
    /// Milliseconds a planned reconnect (renewal, reboot) waits for in-flight telemetry acks,
    /// so nothing is sent twice; capped so the token never expires first.
    pub drain_timeout_ms: u64,
    /// QoS 1 telemetry messages allowed in flight (at most [`MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// Highest packet id handed out (ids cycle through `1..=max_packet_id`, skipping ids still in
    /// flight). Clients that index in-flight state by packet id (rumqttc) need it small; it is
    /// raised to at least `max_in_flight`.
    pub max_packet_id: u16,
    /// MQTT keep-alive in seconds, passed through to [`Action::Connect`] (IoT Hub allows 1177).
    pub keep_alive: u16,
    /// MQTT clean-session flag; the SDKs use `false` so C2D queued while offline arrives.
    pub clean_session: bool,
    /// Failed connection attempts tolerated before the first successful connect; `None` retries
    /// forever. A CLI wants `Some(1)` (report and exit), a device `None`.
    pub max_initial_attempts: Option<u32>,
    /// Consecutive failed attempts tolerated after having been connected; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            token_ttl: Some(3600),
            renew_at_percent: 80,
            backoff_min_ms: 1_000,
            backoff_max_ms: 60_000,
            twin_request_timeout_ms: 30_000,
            drain_timeout_ms: 5_000,
            max_in_flight: MAX_IN_FLIGHT,
            max_packet_id: u16::MAX,
            keep_alive: 60,
            clean_session: false,
            max_initial_attempts: None,
            max_attempts: None,
        }
    }
}

/// A CONNACK return code other than 0 (MQTT 3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnackCode {
    /// 1: unacceptable protocol version.
    BadProtocol,
    /// 2: identifier rejected.
    IdentifierRejected,
    /// 3: server unavailable (seen during hub trouble).
    ServerUnavailable,
    /// 4: bad user name or password.
    BadCredentials,
    /// 5: not authorized (what IoT Hub sends for every credential problem).
    NotAuthorized,
    /// Anything else.
    Other(u8),
}

impl ConnackCode {
    /// Maps a CONNACK return code; `None` for 0 (accepted).
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0 => return None,
            1 => Self::BadProtocol,
            2 => Self::IdentifierRejected,
            3 => Self::ServerUnavailable,
            4 => Self::BadCredentials,
            5 => Self::NotAuthorized,
            n => Self::Other(n),
        })
    }

    /// The numeric code.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::BadProtocol => 1,
            Self::IdentifierRejected => 2,
            Self::ServerUnavailable => 3,
            Self::BadCredentials => 4,
            Self::NotAuthorized => 5,
            Self::Other(n) => n,
        }
    }

    /// Whether retrying with the same credentials is pointless.
    pub(super) fn is_credential_problem(self) -> bool {
        matches!(
            self,
            Self::IdentifierRejected | Self::BadCredentials | Self::NotAuthorized
        )
    }
}

impl fmt::Display for ConnackCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One table lookup rather than a `write_str` call per variant (firmware flash).
        const TEXT: [&str; 5] = [
            "unacceptable protocol version",
            "identifier rejected",
            "server unavailable",
            "bad user name or password",
            "not authorized",
        ];
        let code = self.as_u8();
        match TEXT.get(usize::from(code.wrapping_sub(1))) {
            Some(text) if !matches!(self, Self::Other(_)) => f.write_str(text),
            _ => {
                f.write_str("connack code ")?;
                crate::encoding::write_u64(f, code.into())
            }
        }
    }
}

/// Why the connection ended or could not be made, as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The driver closed it because the session asked ([`Action::Disconnect`]).
    Requested,
    /// The hub answered CONNECT with a refusal.
    Refused(ConnackCode),
    /// Name resolution or the TCP connect failed.
    Unreachable,
    /// The TLS handshake failed (certificate or protocol).
    Tls,
    /// The connection dropped after it was up: I/O error, EOF, keep-alive timeout, or the hub
    /// closing it (token expiry, duplicate client, bad topic).
    Lost,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Requested => "closed by the device",
            Self::Refused(c) => {
                f.write_str("connection refused: ")?;
                return fmt::Display::fmt(c, f);
            }
            Self::Unreachable => "hub unreachable",
            Self::Tls => "tls handshake failed",
            Self::Lost => "connection lost",
        };
        f.write_str(text)
    }
}

/// Why the session asks the driver to close a healthy connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The token reached `renew_at_percent` of its lifetime: reconnect with a fresh one.
    TokenRenewal,
    /// The application asked for a reconnect (the `reboot` method).
    Reconnect,
    /// The application is stopping.
    Close,
}

/// Why the session stopped trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The hub refused the credentials before the session was ever connected.
    Refused(ConnackCode),
    /// The last attempt failed this way and the attempt budget is spent.
    Exhausted(DisconnectReason),
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, inner): (_, &dyn fmt::Display) = match self {
            Self::Refused(c) => ("the hub refused the connection: ", c),
            Self::Exhausted(r) => ("gave up reconnecting: ", r),
        };
        f.write_str(text)?;
        inner.fmt(f)
    }
}

/// What a publish carries, so the driver can label it in its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishKind {
    /// Telemetry with the application's tag (the driver's sequence number).
    Telemetry {
        /// The tag given to [`Session::send_telemetry`].
        tag: u32,
    },
    /// Twin GET with its request id.
    TwinGet {
        /// Request id.
        rid: u32,
    },
    /// Reported-properties PATCH with its request id.
    Reported {
        /// Request id.
        rid: u32,
    },
    /// Direct-method response.
    MethodResponse {
        /// Status sent.
        status: u16,
    },
}

/// An MQTT PUBLISH for the driver to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Body.
    pub payload: &'a [u8],
    /// QoS.
    pub qos: QoS,
    /// Packet id for QoS 1 (the driver must use this one; [`Session::handle_puback`] takes it
    /// back), 0 for QoS 0.
    pub pkid: u16,
    /// What it is.
    pub kind: PublishKind,
}

/// What the driver must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'b> {
    /// Open a connection: TLS, then CONNECT with a token signed for `token_expiry` (`None`: use
    /// the fixed credential). Then report [`Session::handle_connected`] or
    /// [`Session::handle_disconnected`].
    Connect {
        /// Expiry of the token to sign for this connection, in Unix **seconds** (the token's
        /// `se`).
        token_expiry: Option<u64>,
        /// MQTT clean-session flag.
        clean_session: bool,
        /// MQTT keep-alive in seconds.
        keep_alive: u16,
        /// Consecutive failed attempts before this one (0 for a first or planned connect).
        attempt: u32,
    },
    /// SUBSCRIBE to one filter.
    Subscribe {
        /// Topic filter.
        filter: &'b str,
        /// Requested QoS.
        qos: QoS,
    },
    /// PUBLISH.
    Publish(Publish<'b>),
    /// Send DISCONNECT and close, then report `handle_disconnected(now, Requested)`.
    Disconnect {
        /// Why.
        cause: DisconnectCause,
    },
    /// Stop: the session will not connect again.
    GiveUp {
        /// Why.
        reason: GiveUpReason,
    },
}

/// Which twin request an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwinRequestKind {
    /// `$iothub/twin/GET`.
    Get,
    /// Reported-properties PATCH.
    Reported,
}

/// What the session tells the application. Events from [`Session::handle_publish`] borrow the
/// incoming topic and payload; those from [`Session::poll_event`] are `'static`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The connection is up (subscriptions and the twin GET are being sent).
    Connected {
        /// Expiry of the token in use (Unix seconds, its `se`), if it expires.
        token_expiry: Option<u64>,
        /// Whether this is a reconnect.
        reconnect: bool,
    },
    /// A planned reconnect with a fresh token succeeded.
    TokenRenewed {
        /// The new token's expiry (Unix seconds, its `se`).
        token_expiry: u64,
    },
    /// The connection ended.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The next attempt is scheduled.
    Reconnecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
        /// Milliseconds until it.
        delay_ms: u64,
    },
    /// The hub acknowledged telemetry.
    TelemetryAcked {
        /// The application's tag.
        tag: u32,
    },
    /// The connection ended before this telemetry was acknowledged: send it again.
    TelemetryUnacked {
        /// The application's tag.
        tag: u32,
    },
    /// The hub accepted a reported PATCH.
    ReportedAccepted {
        /// Request id.
        rid: u32,
        /// New reported `$version`, when the hub gave one.
        version: Option<u64>,
    },
    /// A twin request failed: an error status (`status` set, hub error JSON in `body`), or no
    /// answer before the timeout or the connection ended (`status` `None`).
    TwinRequestFailed {
        /// Request id.
        rid: u32,
        /// Which request.
        kind: TwinRequestKind,
        /// Hub status, if it answered.
        status: Option<u16>,
        /// Hub error body.
        body: &'a [u8],
    },
    /// The full twin (`{"desired":{..},"reported":{..}}`) from the GET after a connect.
    Twin {
        /// The JSON document.
        document: &'a [u8],
        /// `desired.$version`, when present.
        desired_version: Option<u64>,
    },
    /// A desired-properties patch newer than anything applied so far.
    DesiredPatch {
        /// Its `$version`.
        version: u64,
        /// The JSON patch.
        patch: &'a [u8],
    },
    /// A cloud-to-device message.
    C2d {
        /// The property bag from the topic (still encoded; iterate and decode as needed).
        properties: PropertyBag<'a>,
        /// Body.
        body: &'a [u8],
    },
    /// A direct-method call; answer with [`Session::respond_method`].
    MethodRequest {
        /// Method name.
        name: &'a str,
        /// The hub's request id exactly as in the topic (still percent-encoded); pass it to
        /// [`Session::respond_method`] as is.
        rid: &'a str,
        /// JSON payload.
        payload: &'a [u8],
    },
}

/// Why an application publish could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Not connected (or closing for a planned reconnect): try again after `Connected`.
    NotConnected,
    /// The in-flight window or twin request table is full: wait for acks.
    Busy,
    /// The caller's buffer cannot hold the topic.
    BufferTooSmall,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotConnected => "not connected",
            Self::Busy => "too many requests in flight",
            Self::BufferTooSmall => "buffer too small for topic",
        })
    }
}

impl core::error::Error for SendError {}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not started: the first `handle_timeout` asks for a connect.
    Idle,
    /// A connect was asked for; waiting for the driver's verdict.
    Connecting,
    /// Connected.
    Connected,
    /// Connected, waiting for telemetry acks before a planned disconnect.
    Draining,
    /// Disconnect asked for; waiting for the driver to confirm.
    Disconnecting,
    /// Waiting until `until` to reconnect.
    Backoff {
        /// Unix milliseconds.
        until: u64,
    },
    /// Stopped (closed by the application, or given up).
    Closed,
}
