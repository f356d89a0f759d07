//! The device session, sans-IO: what an IoT Hub device does on its MQTT connection, decided
//! without touching a socket or a clock (the quinn-proto pattern).
//!
//! The driver (tokio + rumqttc on a laptop, embassy on the ESP32) owns the connection and the
//! time. It tells the session what happened (`handle_*`), then performs what the session asks
//! (`poll_action`), hands the application what it produced (`poll_event`, and the event returned
//! by `handle_publish`), and sleeps until `poll_timeout`.
//!
//! Time is Unix **milliseconds**: every `now` argument, every deadline and
//! [`Session::poll_timeout`]. Durations in [`SessionConfig`] and [`Event::Reconnecting`] say their
//! unit in their name (`_ms`), except the two wire values that stay in the protocol's own unit: a
//! SAS token's expiry (`token_expiry`, `se`, Unix seconds; [`SessionConfig::token_ttl`] in
//! seconds) and the MQTT keep-alive (seconds).
//!
//! What the session owns: the connect / backoff / renewal schedule, the four subscriptions and
//! the twin GET after every connect, twin request ids with their correlation and timeouts,
//! desired-patch ordering across reconnects, and the packet ids and acknowledgement of QoS 1
//! telemetry. What it does not own: telemetry bodies and the offline queue (no heap here; the
//! driver keeps them and re-queues what [`Event::TelemetryUnacked`] hands back), MQTT framing,
//! TLS, and signing the token (the driver signs with `crate::sas` for the expiry in
//! [`Action::Connect`]).
//!
//! ```text
//! driver                         session
//! ------                         -------
//! (start)            poll_timeout() == Some(0) -> handle_timeout(now) -> Connect{expiry}
//! CONNACK 0          handle_connected(now)     -> Subscribe x4, Publish(twin GET)
//! PUBLISH in         handle_publish(now, t, p) -> Some(Event::MethodRequest{..}) ...
//! PUBACK             handle_puback(now, pkid)  -> Event::TelemetryAcked{tag}
//! renewal due        handle_timeout(now)       -> (drain acks) Disconnect{TokenRenewal} -> Connect
//! socket lost        handle_disconnected(..)   -> Event::Reconnecting{attempt, delay_ms} ... Connect
//! ```
//!
//! The state machine is one [`Session`], its `impl` split by concern: `lifecycle` (connect,
//! disconnect, backoff, token renewal and the drain before it), `telemetry` (the QoS 1 window
//! and packet ids), `twin` (request ids, timeouts, desired-patch ordering) and `wire` (the glue
//! to [`crate::topic`]). This file holds the state itself, the calls that route to those parts
//! (`handle_publish`, `handle_timeout`), method responses and the outputs (`poll_*`).

use core::fmt;

use heapless::{Deque, Vec};

pub use crate::property_bag::{PropertyBag, SystemProperties};

mod lifecycle;
mod telemetry;
mod twin;
// The public types (identity, config, actions, events), apart from the state machine.
mod types;
mod wire;

pub use types::{
    Action, ConnackCode, DisconnectCause, DisconnectReason, Event, GiveUpReason, Identity,
    IdentityError, Publish, PublishKind, QoS, SendError, SessionConfig, State, TwinRequestKind,
};

/// The most QoS 1 telemetry messages the session tracks in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// The most twin requests (GET, reported PATCH) awaiting an answer at once.
pub const MAX_TWIN_REQUESTS: usize = 8;
/// Size of the buffer [`Session::poll_action`] writes topics into: enough for the longest topic
/// the session itself produces (the module-inputs filter of a 128-character device id and a
/// 128-character module id, 281 bytes).
pub const ACTION_BUFFER_LEN: usize = 320;
/// Longest device or module id IoT Hub accepts.
pub const MAX_ID_LEN: usize = 128;

const EVENT_QUEUE_LEN: usize = MAX_IN_FLIGHT + MAX_TWIN_REQUESTS + 8;
const ACTION_QUEUE_LEN: usize = 8;
/// Milliseconds before a failed twin GET (error status or timeout) is retried.
const TWIN_GET_RETRY_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug)]
enum Pending {
    /// The token expiry is `Session::token_expiry`, set when this is queued (a newer connect
    /// replaces the queue), so the queue entries stay small.
    Connect {
        attempt: u32,
    },
    Subscribe(u8),
    TwinGet(u32),
    Disconnect(DisconnectCause),
    GiveUp(GiveUpReason),
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    pkid: u16,
    tag: u32,
}

#[derive(Clone, Copy, Debug)]
struct TwinRequest {
    rid: u32,
    kind: TwinRequestKind,
    deadline: u64,
}

/// The device session. See the module docs for the driver loop.
#[derive(Debug)]
pub struct Session {
    identity: Identity,
    config: SessionConfig,
    state: State,
    actions: Deque<Pending, ACTION_QUEUE_LEN>,
    events: Deque<Event<'static>, EVENT_QUEUE_LEN>,
    in_flight: Vec<InFlight, MAX_IN_FLIGHT>,
    twin: Vec<TwinRequest, MAX_TWIN_REQUESTS>,
    next_pkid: u16,
    next_rid: u32,
    /// Consecutive failed attempts.
    attempt: u32,
    ever_connected: bool,
    /// Expiry of the token of the connection being made or in use (Unix seconds, as `se`).
    token_expiry: Option<u64>,
    /// When to start a renewal of the token of the connection being made or in use.
    renew_at: Option<u64>,
    /// Deadline of a drain in progress, and why we drain.
    drain: Option<(u64, DisconnectCause)>,
    /// Cause of the disconnect we asked for.
    closing: Option<DisconnectCause>,
    /// The connect in progress is a planned renewal.
    renewing: bool,
    /// Highest desired `$version` handed to the application.
    desired_version: Option<u64>,
    /// Request id of the twin GET in flight.
    get_rid: Option<u32>,
    /// Highest desired `$version` seen (and dropped) while the GET was in flight.
    patch_during_get: Option<u64>,
    /// When to retry a failed GET.
    get_retry_at: Option<u64>,
}

impl Session {
    /// A new, idle session: its first [`Session::poll_timeout`] is `Some(0)`, and the
    /// `handle_timeout` that follows asks for the first connect.
    pub fn new(identity: Identity, mut config: SessionConfig) -> Self {
        config.max_in_flight = config.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        config.renew_at_percent = config.renew_at_percent.clamp(1, 100);
        config.max_packet_id = config.max_packet_id.max(config.max_in_flight as u16);
        config.backoff_min_ms = config.backoff_min_ms.max(1);
        config.backoff_max_ms = config.backoff_max_ms.max(config.backoff_min_ms);
        Self {
            identity,
            config,
            state: State::Idle,
            actions: Deque::new(),
            events: Deque::new(),
            in_flight: Vec::new(),
            twin: Vec::new(),
            next_pkid: 1,
            next_rid: 1,
            attempt: 0,
            ever_connected: false,
            token_expiry: None,
            renew_at: None,
            drain: None,
            closing: None,
            renewing: false,
            desired_version: None,
            get_rid: None,
            patch_during_get: None,
            get_retry_at: None,
        }
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The configuration in effect.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Where the connection stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether application publishes are accepted now.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected)
    }

    /// Expiry of the token of the current connection, in Unix seconds (the token's `se`).
    pub fn token_expiry(&self) -> Option<u64> {
        self.token_expiry
    }

    // ---- inputs -------------------------------------------------------------------------

    /// A PUBLISH arrived. Returns the event it carries for the application, if any (a late twin
    /// response, a stale desired patch or a topic this session does not know give `None`).
    pub fn handle_publish<'p>(
        &mut self,
        now: u64,
        topic: &'p str,
        payload: &'p [u8],
    ) -> Option<Event<'p>> {
        match wire::parse_incoming(topic, &self.identity)? {
            wire::Incoming::C2d { properties } => Some(Event::C2d {
                properties,
                body: payload,
            }),
            wire::Incoming::Method { name, rid } => {
                Some(Event::MethodRequest { name, rid, payload })
            }
            wire::Incoming::TwinResponse {
                status,
                rid,
                version,
            } => self.on_twin_response(now, status, rid, version, payload),
            wire::Incoming::DesiredPatch { version } => self.on_desired_patch(version, payload),
        }
    }

    /// Advances time: starts the first connect, reconnects after backoff, starts token
    /// renewal, ends a drain, expires twin requests.
    pub fn handle_timeout(&mut self, now: u64) {
        match self.state {
            State::Idle => self.queue_connect(now, 0),
            State::Backoff { until } if now >= until => self.queue_connect(now, self.attempt),
            State::Connected if self.renew_at.is_some_and(|t| now >= t) => {
                self.renew_at = None;
                self.start_drain(now, DisconnectCause::TokenRenewal);
            }
            State::Draining if self.drain.is_some_and(|(t, _)| now >= t) => self.finish_drain(),
            _ => {}
        }
        if matches!(self.state, State::Connected | State::Draining) {
            self.handle_twin_timeouts(now);
        }
    }

    // ---- application calls --------------------------------------------------------------

    /// Builds the response to a direct method (`rid` exactly as received).
    ///
    /// # Errors
    /// [`SendError::NotConnected`] (the hub will time the call out),
    /// [`SendError::BufferTooSmall`].
    pub fn respond_method<'a>(
        &mut self,
        rid: &str,
        status: u16,
        payload: &'a [u8],
        buf: &'a mut [u8],
    ) -> Result<Publish<'a>, SendError> {
        if !matches!(self.state, State::Connected | State::Draining) {
            return Err(SendError::NotConnected);
        }
        let topic = write_into(buf, |w| wire::method_response(w, status, rid))?;
        Ok(Publish {
            topic,
            payload,
            qos: QoS::AtMostOnce,
            pkid: 0,
            kind: PublishKind::MethodResponse { status },
        })
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next thing the driver must do, with topics written into `buf`.
    pub fn poll_action<'b>(&mut self, buf: &'b mut [u8; ACTION_BUFFER_LEN]) -> Option<Action<'b>> {
        let pending = self.actions.pop_front()?;
        Some(match pending {
            Pending::Connect { attempt } => Action::Connect {
                token_expiry: self.token_expiry,
                clean_session: self.config.clean_session,
                keep_alive: self.config.keep_alive,
                attempt,
            },
            Pending::Subscribe(i) => {
                let (kind, qos) = wire::subscription(&self.identity, i)?;
                let id = wire::topic_id(&self.identity);
                // Cannot fail: ids are at most 128 bytes and the buffer is sized for two.
                let filter = write_into(buf, |w| {
                    crate::topic::write_filter(w, kind, id).map_err(|_| fmt::Error)
                })
                .unwrap_or("");
                Action::Subscribe { filter, qos }
            }
            Pending::TwinGet(rid) => {
                let topic = write_into(buf, |w| wire::twin_get(w, rid)).unwrap_or("");
                Action::Publish(Publish {
                    topic,
                    payload: &[],
                    qos: QoS::AtMostOnce,
                    pkid: 0,
                    kind: PublishKind::TwinGet { rid },
                })
            }
            Pending::Disconnect(cause) => Action::Disconnect { cause },
            Pending::GiveUp(reason) => Action::GiveUp { reason },
        })
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event<'static>> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called (Unix milliseconds); `None` when nothing is
    /// timed.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut take = |x: Option<u64>| {
            if let Some(x) = x
                && t.is_none_or(|t| x < t)
            {
                t = Some(x);
            }
        };
        match self.state {
            State::Idle => take(Some(0)),
            State::Backoff { until } => take(Some(until)),
            State::Connected => {
                take(self.renew_at);
                take(self.get_retry_at);
            }
            State::Draining => take(self.drain.map(|(t, _)| t)),
            _ => {}
        }
        if matches!(self.state, State::Connected | State::Draining) {
            for r in &self.twin {
                take(Some(r.deadline));
            }
        }
        t
    }

    // ---- internals ----------------------------------------------------------------------

    fn push_action(&mut self, a: Pending) {
        // The queue is sized for the longest sequence (4 subscribes + GET + disconnect).
        let _ = self.actions.push_back(a);
    }

    fn push_event(&mut self, e: Event<'static>) {
        if self.events.is_full() {
            // Sized for a full in-flight window plus the twin table; an application that never
            // polls loses the oldest rather than the session failing.
            let _ = self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }
}

fn write_into(
    buf: &mut [u8],
    mut f: impl FnMut(&mut dyn fmt::Write) -> fmt::Result,
) -> Result<&str, SendError> {
    crate::encoding::write_slice(buf, &mut f).ok_or(SendError::BufferTooSmall)
}

#[cfg(test)]
mod tests {
    //! Helpers the tests of every part of the session share.

    use super::*;

    pub(super) fn session(config: SessionConfig) -> Session {
        Session::new(Identity::device("dev-1").unwrap(), config)
    }

    /// Owned copy of an action, so tests can hold several.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum A {
        Connect(Option<u64>, u32),
        Sub(std::string::String, QoS),
        Pub(std::string::String, QoS, u16),
        Disconnect(DisconnectCause),
        GiveUp(GiveUpReason),
    }

    pub(super) fn actions(s: &mut Session) -> std::vec::Vec<A> {
        let mut out = std::vec::Vec::new();
        let mut buf = [0u8; ACTION_BUFFER_LEN];
        while let Some(a) = s.poll_action(&mut buf) {
            out.push(match a {
                Action::Connect {
                    token_expiry,
                    attempt,
                    ..
                } => A::Connect(token_expiry, attempt),
                Action::Subscribe { filter, qos } => A::Sub(filter.into(), qos),
                Action::Publish(p) => A::Pub(p.topic.into(), p.qos, p.pkid),
                Action::Disconnect { cause } => A::Disconnect(cause),
                Action::GiveUp { reason } => A::GiveUp(reason),
            });
        }
        out
    }

    pub(super) fn events(s: &mut Session) -> std::vec::Vec<Event<'static>> {
        core::iter::from_fn(|| s.poll_event()).collect()
    }

    /// Starts and connects a session at `now`; returns the GET's rid.
    pub(super) fn connect(s: &mut Session, now: u64) -> u32 {
        s.handle_timeout(now);
        let a = actions(s);
        assert!(matches!(a[0], A::Connect(..)), "{a:?}");
        s.handle_connected(now);
        let a = actions(s);
        let A::Pub(get, ..) = a.last().unwrap() else {
            panic!("{a:?}")
        };
        get.rsplit('=').next().unwrap().parse().unwrap()
    }

    #[test]
    fn the_longest_ids_fit_the_action_buffer() {
        let d = "d".repeat(MAX_ID_LEN);
        let m = "m".repeat(MAX_ID_LEN);
        let mut s = Session::new(Identity::module(&d, &m).unwrap(), SessionConfig::default());
        s.handle_timeout(0);
        actions(&mut s);
        s.handle_connected(0);
        let a = actions(&mut s);
        let A::Sub(filter, _) = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(filter, &std::format!("devices/{d}/modules/{m}/inputs/#"));
        let mut s = Session::new(Identity::device(&d).unwrap(), SessionConfig::default());
        s.handle_timeout(0);
        actions(&mut s);
        s.handle_connected(0);
        assert!(actions(&mut s).iter().all(|a| match a {
            A::Sub(f, _) | A::Pub(f, ..) => !f.is_empty(),
            _ => true,
        }));
        assert!(Identity::device(&"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(Identity::device("").is_err());
    }

    #[test]
    fn c2d_and_method_requests_are_recognised() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, 0);
        assert_eq!(
            s.handle_publish(
                1,
                "devices/dev-1/messages/devicebound/%24.mid=m1&%24.to=%2Fdevices%2Fdev-1%2Fmessages%2FdeviceBound&k=v",
                b"hello"
            ),
            Some(Event::C2d {
                properties: PropertyBag::new(
                    "%24.mid=m1&%24.to=%2Fdevices%2Fdev-1%2Fmessages%2FdeviceBound&k=v"
                ),
                body: b"hello"
            })
        );
        assert_eq!(
            s.handle_publish(1, "devices/other/messages/devicebound/", b"x"),
            None
        );
        assert_eq!(
            s.handle_publish(1, "$iothub/methods/POST/ping/?$rid=a1", b"{\"x\":1}"),
            Some(Event::MethodRequest {
                name: "ping",
                rid: "a1",
                payload: b"{\"x\":1}"
            })
        );
        let mut buf = [0u8; 64];
        let p = s.respond_method("a1", 200, b"{}", &mut buf).unwrap();
        assert_eq!(p.topic, "$iothub/methods/res/200/?$rid=a1");
        // An encoded request id is echoed exactly, not encoded twice.
        let p = s.respond_method("a%20b", 200, b"{}", &mut buf).unwrap();
        assert_eq!(p.topic, "$iothub/methods/res/200/?$rid=a%20b");
        assert_eq!(p.qos, QoS::AtMostOnce);
        assert_eq!(s.handle_publish(1, "some/other/topic", b""), None);
    }
}
