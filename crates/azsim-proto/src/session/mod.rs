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

use core::fmt;

use heapless::{Deque, Vec};

use crate::json;
pub use crate::property_bag::{PropertyBag, SystemProperties};

// The public types (identity, config, actions, events), apart from the state machine.
mod types;
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

    /// How many more telemetry messages may be sent now (0 while not connected or draining).
    pub fn telemetry_window(&self) -> usize {
        if self.is_connected() {
            self.config
                .max_in_flight
                .saturating_sub(self.in_flight.len())
        } else {
            0
        }
    }

    /// Telemetry messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Expiry of the token of the current connection, in Unix seconds (the token's `se`).
    pub fn token_expiry(&self) -> Option<u64> {
        self.token_expiry
    }

    // ---- inputs -------------------------------------------------------------------------

    /// The hub accepted CONNECT (CONNACK 0).
    pub fn handle_connected(&mut self, now: u64) {
        let _ = now;
        let reconnect = self.ever_connected;
        self.ever_connected = true;
        self.attempt = 0;
        self.state = State::Connected;
        self.closing = None;
        self.drain = None;
        for i in 0..wire::subscription_count(&self.identity) {
            self.push_action(Pending::Subscribe(i));
        }
        self.queue_twin_get(now);
        self.push_event(Event::Connected {
            token_expiry: self.token_expiry,
            reconnect,
        });
        if core::mem::take(&mut self.renewing)
            && let Some(token_expiry) = self.token_expiry
        {
            self.push_event(Event::TokenRenewed { token_expiry });
        }
    }

    /// The connection ended, or a connect attempt failed. `entropy` is any random number (it
    /// jitters the reconnect delay so a fleet does not reconnect in lockstep).
    pub fn handle_disconnected(&mut self, now: u64, reason: DisconnectReason, entropy: u32) {
        if matches!(self.state, State::Closed) {
            return;
        }
        let was_up = matches!(
            self.state,
            State::Connected | State::Draining | State::Disconnecting
        );
        if was_up {
            self.push_event(Event::Disconnected { reason });
        }
        // Whatever was in flight will not be acknowledged on this connection.
        // By index, in order, then cleared: no copy of the tables.
        let mut i = 0;
        while let Some(&InFlight { tag, .. }) = self.in_flight.get(i) {
            self.push_event(Event::TelemetryUnacked { tag });
            i += 1;
        }
        self.in_flight.clear();
        let mut i = 0;
        while let Some(&TwinRequest { rid, kind, .. }) = self.twin.get(i) {
            self.push_event(Event::TwinRequestFailed {
                rid,
                kind,
                status: None,
                body: &[],
            });
            i += 1;
        }
        self.twin.clear();
        self.get_rid = None;
        self.get_retry_at = None;
        self.patch_during_get = None;
        self.renew_at = None;
        self.drain = None;
        // Actions for the old connection (subscribes, GET) must not leak into the next one.
        self.actions.clear();

        let planned = if reason == DisconnectReason::Requested {
            self.closing.take()
        } else {
            self.closing = None;
            None
        };
        match planned {
            Some(DisconnectCause::Close) => {
                self.state = State::Closed;
                return;
            }
            Some(cause @ (DisconnectCause::TokenRenewal | DisconnectCause::Reconnect)) => {
                self.renewing = cause == DisconnectCause::TokenRenewal;
                self.queue_connect(now, 0);
                return;
            }
            None => {}
        }
        self.renewing = false;

        if let DisconnectReason::Refused(code) = reason
            && !self.ever_connected
            && code.is_credential_problem()
        {
            self.give_up(GiveUpReason::Refused(code));
            return;
        }
        self.attempt = self.attempt.saturating_add(1);
        let budget = if self.ever_connected {
            self.config.max_attempts
        } else {
            self.config.max_initial_attempts
        };
        if budget.is_some_and(|max| self.attempt >= max) {
            self.give_up(GiveUpReason::Exhausted(reason));
            return;
        }
        let delay_ms = self.backoff_delay(self.attempt, entropy);
        self.state = State::Backoff {
            until: now + delay_ms,
        };
        self.push_event(Event::Reconnecting {
            attempt: self.attempt,
            delay_ms,
        });
    }

    /// The hub acknowledged a QoS 1 publish.
    pub fn handle_puback(&mut self, now: u64, pkid: u16) {
        let _ = now;
        if let Some(i) = self.in_flight.iter().position(|f| f.pkid == pkid) {
            let f = self.in_flight.remove(i);
            self.push_event(Event::TelemetryAcked { tag: f.tag });
        }
        self.maybe_finish_drain();
    }

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
            let mut i = 0;
            while i < self.twin.len() {
                if now >= self.twin[i].deadline {
                    let r = self.twin.remove(i);
                    if self.get_rid == Some(r.rid) {
                        self.get_rid = None;
                        self.get_retry_at = Some(now + TWIN_GET_RETRY_MS);
                    }
                    self.push_event(Event::TwinRequestFailed {
                        rid: r.rid,
                        kind: r.kind,
                        status: None,
                        body: &[],
                    });
                } else {
                    i += 1;
                }
            }
            if matches!(self.state, State::Connected) && self.get_retry_at.is_some_and(|t| now >= t)
            {
                self.get_retry_at = None;
                self.queue_twin_get(now);
            }
        }
    }

    // ---- application calls --------------------------------------------------------------

    /// Builds a QoS 1 telemetry publish: the topic with its property bag (system properties
    /// `sys`, then the application properties `app`, values given decoded) goes into `buf`, the
    /// body is the caller's. `tag` comes back in [`Event::TelemetryAcked`] or
    /// [`Event::TelemetryUnacked`].
    ///
    /// # Errors
    /// [`SendError::NotConnected`] while not connected or draining, [`SendError::Busy`] when the
    /// in-flight window is full, [`SendError::BufferTooSmall`].
    pub fn send_telemetry<'a, 'x, I>(
        &mut self,
        now: u64,
        tag: u32,
        sys: &SystemProperties<'_>,
        app: I,
        payload: &'a [u8],
        buf: &'a mut [u8],
    ) -> Result<Publish<'a>, SendError>
    where
        I: IntoIterator<Item = (&'x str, &'x str)>,
    {
        let _ = now;
        if !self.is_connected() {
            return Err(SendError::NotConnected);
        }
        if self.telemetry_window() == 0 {
            return Err(SendError::Busy);
        }
        let id = wire::topic_id(&self.identity);
        let mut app = Some(app);
        let topic = write_into(buf, |w| {
            let app = app.take().ok_or(fmt::Error)?;
            crate::topic::write_telemetry_topic(w, id, sys, app)
        })?;
        let pkid = self.alloc_pkid();
        // Cannot fail: the window check above bounds the length.
        let _ = self.in_flight.push(InFlight { pkid, tag });
        Ok(Publish {
            topic,
            payload,
            qos: QoS::AtLeastOnce,
            pkid,
            kind: PublishKind::Telemetry { tag },
        })
    }

    /// Builds a reported-properties PATCH (QoS 0, as the SDKs send twin traffic). The answer
    /// arrives as [`Event::ReportedAccepted`] or [`Event::TwinRequestFailed`] with the request id
    /// in the returned [`PublishKind::Reported`].
    ///
    /// # Errors
    /// [`SendError::NotConnected`], [`SendError::Busy`] when [`MAX_TWIN_REQUESTS`] are pending,
    /// [`SendError::BufferTooSmall`].
    pub fn send_reported<'a>(
        &mut self,
        now: u64,
        patch: &'a [u8],
        buf: &'a mut [u8],
    ) -> Result<Publish<'a>, SendError> {
        if !self.is_connected() {
            return Err(SendError::NotConnected);
        }
        if self.twin.is_full() {
            return Err(SendError::Busy);
        }
        let rid = self.next_rid;
        let topic = write_into(buf, |w| wire::twin_reported(w, rid))?;
        self.next_rid = self.next_rid.wrapping_add(1).max(1);
        let _ = self.twin.push(TwinRequest {
            rid,
            kind: TwinRequestKind::Reported,
            deadline: now + self.config.twin_request_timeout_ms,
        });
        Ok(Publish {
            topic,
            payload: patch,
            qos: QoS::AtMostOnce,
            pkid: 0,
            kind: PublishKind::Reported { rid },
        })
    }

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

    /// Reconnects soon (the `reboot` method): waits for in-flight telemetry acks (at most
    /// `drain_timeout_ms`), asks for a disconnect, then connects again at once.
    pub fn reconnect(&mut self, now: u64) {
        match self.state {
            State::Connected => self.start_drain(now, DisconnectCause::Reconnect),
            State::Backoff { .. } => self.queue_connect(now, self.attempt),
            _ => {}
        }
    }

    /// Stops: disconnects at once if connected (in-flight telemetry is reported unacked) and
    /// never connects again.
    pub fn close(&mut self, now: u64) {
        let _ = now;
        match self.state {
            State::Connected | State::Draining => {
                self.actions.clear();
                self.drain = None;
                self.closing = Some(DisconnectCause::Close);
                self.state = State::Disconnecting;
                self.push_action(Pending::Disconnect(DisconnectCause::Close));
            }
            State::Disconnecting => self.closing = Some(DisconnectCause::Close),
            State::Connecting => {
                // The driver still owns a half-open attempt: ask it to drop that too.
                self.actions.clear();
                self.closing = Some(DisconnectCause::Close);
                self.state = State::Disconnecting;
                self.push_action(Pending::Disconnect(DisconnectCause::Close));
            }
            State::Idle | State::Backoff { .. } => {
                self.actions.clear();
                self.state = State::Closed;
            }
            State::Closed => {}
        }
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

    /// Asks for a connect with a token signed now: its expiry in whole seconds (the `se`), and
    /// its renewal `renew_at_percent` of its lifetime from now, in milliseconds.
    fn queue_connect(&mut self, now: u64, attempt: u32) {
        let ttl = self.config.token_ttl.map(|ttl| ttl.max(1));
        self.token_expiry = ttl.map(|ttl| now / 1000 + ttl);
        // ttl s * 1000 ms/s * percent / 100.
        self.renew_at = ttl.map(|ttl| now + ttl * 10 * u64::from(self.config.renew_at_percent));
        self.state = State::Connecting;
        self.actions.clear();
        self.push_action(Pending::Connect { attempt });
    }

    fn give_up(&mut self, reason: GiveUpReason) {
        self.state = State::Closed;
        self.actions.clear();
        self.push_action(Pending::GiveUp(reason));
    }

    fn start_drain(&mut self, now: u64, cause: DisconnectCause) {
        let mut deadline = now + self.config.drain_timeout_ms;
        if let Some(exp) = self.token_expiry {
            // Disconnect (a second early) before the hub closes us for an expired token.
            let last_safe = exp.saturating_sub(1) * 1000;
            deadline = deadline.min(last_safe.max(now));
        }
        self.drain = Some((deadline, cause));
        self.state = State::Draining;
        self.maybe_finish_drain();
    }

    fn maybe_finish_drain(&mut self) {
        if matches!(self.state, State::Draining) && self.in_flight.is_empty() {
            self.finish_drain();
        }
    }

    fn finish_drain(&mut self) {
        if let Some((_, cause)) = self.drain.take() {
            self.closing = Some(cause);
            self.state = State::Disconnecting;
            self.push_action(Pending::Disconnect(cause));
        }
    }

    fn queue_twin_get(&mut self, now: u64) {
        if self.get_rid.is_some() {
            return;
        }
        if self.twin.is_full() {
            self.get_retry_at = Some(now + TWIN_GET_RETRY_MS);
            return;
        }
        let rid = self.next_rid;
        self.next_rid = self.next_rid.wrapping_add(1).max(1);
        let _ = self.twin.push(TwinRequest {
            rid,
            kind: TwinRequestKind::Get,
            deadline: now + self.config.twin_request_timeout_ms,
        });
        self.get_rid = Some(rid);
        self.patch_during_get = None;
        self.push_action(Pending::TwinGet(rid));
    }

    fn on_twin_response<'p>(
        &mut self,
        now: u64,
        status: u16,
        rid: u32,
        version: Option<u64>,
        payload: &'p [u8],
    ) -> Option<Event<'p>> {
        let i = self.twin.iter().position(|r| r.rid == rid)?;
        let kind = self.twin.remove(i).kind;
        let get = kind == TwinRequestKind::Get;
        if get {
            self.get_rid = None;
        }
        if !(200..300).contains(&status) {
            if get {
                self.get_retry_at = Some(now + TWIN_GET_RETRY_MS);
            }
            return Some(Event::TwinRequestFailed {
                rid,
                kind,
                status: Some(status),
                body: payload,
            });
        }
        if !get {
            return Some(Event::ReportedAccepted { rid, version });
        }
        let desired_version = json::find_u64(payload, &["desired", "$version"]);
        if let Some(v) = desired_version {
            self.desired_version = Some(v);
        }
        // A patch newer than this document arrived (and was dropped) while the GET was in
        // flight: read the twin again rather than lose it.
        if let (Some(seen), Some(v)) = (self.patch_during_get.take(), desired_version)
            && seen > v
        {
            self.queue_twin_get(now);
        }
        Some(Event::Twin {
            document: payload,
            desired_version,
        })
    }

    fn on_desired_patch<'p>(
        &mut self,
        topic_version: Option<u64>,
        patch: &'p [u8],
    ) -> Option<Event<'p>> {
        let version = topic_version.or_else(|| json::find_u64(patch, &["$version"]))?;
        if self.get_rid.is_some() {
            // The GET's document decides what is current; remember that something newer may
            // exist so a second GET can fetch it.
            self.patch_during_get = Some(self.patch_during_get.map_or(version, |s| s.max(version)));
            return None;
        }
        if self.desired_version.is_some_and(|v| version <= v) {
            return None;
        }
        self.desired_version = Some(version);
        Some(Event::DesiredPatch { version, patch })
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            let p = self.next_pkid;
            self.next_pkid = if p >= self.config.max_packet_id {
                1
            } else {
                p + 1
            };
            if !self.in_flight.iter().any(|f| f.pkid == p) {
                return p;
            }
        }
    }

    /// The reconnect delay in milliseconds before attempt `attempt` (from 1).
    fn backoff_delay(&self, attempt: u32, entropy: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(32);
        let (min, max) = (self.config.backoff_min_ms, self.config.backoff_max_ms);
        // min * 2^shift capped at max, without a 64-bit multiply: it exceeds max exactly when
        // min exceeds max / 2^shift.
        let base = if min > max >> shift {
            max
        } else {
            min << shift
        };
        // Equal jitter: half fixed, half random, so delays still grow but spread out.
        let half = base / 2;
        // `entropy % span` in 32 bits (no 64-bit division, no divide-by-zero path): a span
        // beyond u32 leaves any u32 as it is.
        let span = base - half + 1;
        let jitter = match u32::try_from(span) {
            Ok(span) => entropy.checked_rem(span).unwrap_or(entropy),
            Err(_) => entropy,
        };
        half + u64::from(jitter)
    }

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

/// Glue between the session and [`crate::topic`], where every topic string lives.
mod wire {
    use core::fmt;

    use super::QoS;
    use crate::property_bag::PropertyBag;
    use crate::topic::{self, SubscriptionKind, TopicError};

    pub(super) fn subscription(id: &super::Identity, i: u8) -> Option<(SubscriptionKind, QoS)> {
        let kind = *SubscriptionKind::for_identity(topic_id(id)).get(usize::from(i))?;
        let qos = match kind {
            // C2D and module inputs are at-least-once; twin and method traffic is QoS 0, as the
            // SDKs subscribe it.
            SubscriptionKind::C2d | SubscriptionKind::ModuleInputs => QoS::AtLeastOnce,
            _ => QoS::AtMostOnce,
        };
        Some((kind, qos))
    }

    pub(super) fn subscription_count(id: &super::Identity) -> u8 {
        SubscriptionKind::for_identity(topic_id(id)).len() as u8
    }

    pub(super) fn topic_id(id: &super::Identity) -> topic::Identity<'_> {
        match id.module_id() {
            Some(m) => topic::Identity::module(id.device_id(), m),
            None => topic::Identity::device(id.device_id()),
        }
    }

    pub(super) fn twin_get(w: &mut dyn fmt::Write, rid: u32) -> fmt::Result {
        topic::write_twin_request(w, false, rid)
    }

    pub(super) fn twin_reported(w: &mut dyn fmt::Write, rid: u32) -> fmt::Result {
        topic::write_twin_request(w, true, rid)
    }

    /// `rid` is the raw (still percent-encoded) id from the request topic; the builder encodes
    /// it again, so it is decoded first.
    pub(super) fn method_response(w: &mut dyn fmt::Write, status: u16, rid: &str) -> fmt::Result {
        let mut decoded = [0u8; 128];
        let decoded = crate::encoding::decode(rid, &mut decoded).map_err(|_| fmt::Error)?;
        topic::write_method_response(w, status, decoded)
    }

    pub(super) enum Incoming<'t> {
        C2d {
            properties: PropertyBag<'t>,
        },
        Method {
            name: &'t str,
            rid: &'t str,
        },
        TwinResponse {
            status: u16,
            rid: u32,
            version: Option<u64>,
        },
        DesiredPatch {
            version: Option<u64>,
        },
    }

    /// The hub publishes the session acts on. Module input messages are the application's
    /// business and not parsed here (a device id has no `/`, so such a topic never matches the
    /// C2D shape for this identity).
    pub(super) fn parse_incoming<'t>(t: &'t str, id: &super::Identity) -> Option<Incoming<'t>> {
        // Each prefix compared once: the parsers take what follows it.
        if let Some(rest) = t.strip_prefix(topic::METHOD_REQUEST_PREFIX) {
            let m = topic::method_request(rest).ok()?;
            return Some(Incoming::Method {
                name: m.name.as_str(),
                rid: m.rid.as_raw(),
            });
        }
        if let Some(rest) = t.strip_prefix(topic::TWIN_RESPONSE_PREFIX) {
            let r = topic::twin_response(rest).ok()?;
            // Our own ids are plain decimal; anything else is not ours.
            let rid =
                crate::encoding::parse_decimal(r.rid.as_plain()?.as_bytes(), u32::MAX.into())?;
            return Some(Incoming::TwinResponse {
                status: r.status,
                rid: rid as u32,
                version: r.version,
            });
        }
        if let Some(rest) = t.strip_prefix("devices/") {
            let c = topic::c2d(rest).ok()?;
            return (c.device_id == id.device_id()).then_some(Incoming::C2d { properties: c.bag });
        }
        match topic::parse_desired_patch(t) {
            Ok(version) => Some(Incoming::DesiredPatch {
                version: Some(version),
            }),
            // Lenient on the device side: the body's `$version` is used instead.
            Err(TopicError::VersionMissing) => Some(Incoming::DesiredPatch { version: None }),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The 32-bit jitter is the 64-bit `half + entropy % (base - half + 1)` it replaced.
        #[test]
        fn backoff_delay_is_the_64_bit_formula(
            min in proptest::prop_oneof![1u64..100, proptest::num::u64::ANY],
            max in proptest::prop_oneof![1u64..10_000, proptest::num::u64::ANY],
            attempt in 0u32..70,
            entropy in proptest::num::u32::ANY,
        ) {
            let s = session(SessionConfig {
                backoff_min_ms: min,
                backoff_max_ms: max,
                ..SessionConfig::default()
            });
            let (min, max) = (s.config.backoff_min_ms, s.config.backoff_max_ms);
            let shift = attempt.saturating_sub(1).min(32);
            let base = if min > max >> shift { max } else { min << shift };
            let half = base / 2;
            let expected = half + u64::from(entropy) % (base - half + 1);
            proptest::prop_assert_eq!(s.backoff_delay(attempt, entropy), expected);
        }
    }

    fn session(config: SessionConfig) -> Session {
        Session::new(Identity::device("dev-1").unwrap(), config)
    }

    /// Owned copy of an action, so tests can hold several.
    #[derive(Debug, PartialEq, Eq)]
    enum A {
        Connect(Option<u64>, u32),
        Sub(std::string::String, QoS),
        Pub(std::string::String, QoS, u16),
        Disconnect(DisconnectCause),
        GiveUp(GiveUpReason),
    }

    fn actions(s: &mut Session) -> std::vec::Vec<A> {
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

    fn events(s: &mut Session) -> std::vec::Vec<Event<'static>> {
        core::iter::from_fn(|| s.poll_event()).collect()
    }

    /// Starts and connects a session at `now`; returns the GET's rid.
    fn connect(s: &mut Session, now: u64) -> u32 {
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
    fn a_new_session_connects_at_once_with_a_fresh_token() {
        let mut s = session(SessionConfig::default());
        assert_eq!(s.poll_timeout(), Some(0));
        // Time is in milliseconds; the token's expiry in seconds.
        s.handle_timeout(1_000_000);
        assert_eq!(actions(&mut s), [A::Connect(Some(4_600), 0)]);
        assert_eq!(s.state(), State::Connecting);
    }

    #[test]
    fn after_connect_it_subscribes_the_four_filters_then_gets_the_twin() {
        let mut s = session(SessionConfig::default());
        s.handle_timeout(10_000);
        actions(&mut s);
        s.handle_connected(10_000);
        assert_eq!(
            actions(&mut s),
            [
                A::Sub(
                    "devices/dev-1/messages/devicebound/#".into(),
                    QoS::AtLeastOnce
                ),
                A::Sub("$iothub/methods/POST/#".into(), QoS::AtMostOnce),
                A::Sub("$iothub/twin/res/#".into(), QoS::AtMostOnce),
                A::Sub(
                    "$iothub/twin/PATCH/properties/desired/#".into(),
                    QoS::AtMostOnce
                ),
                A::Pub("$iothub/twin/GET/?$rid=1".into(), QoS::AtMostOnce, 0),
            ]
        );
        assert_eq!(
            events(&mut s),
            [Event::Connected {
                token_expiry: Some(3610),
                reconnect: false
            }]
        );
    }

    #[test]
    fn a_module_subscribes_to_its_inputs_instead_of_c2d() {
        let mut s = Session::new(
            Identity::module("dev-1", "mod-a").unwrap(),
            SessionConfig::default(),
        );
        s.handle_timeout(0);
        actions(&mut s);
        s.handle_connected(0);
        let a = actions(&mut s);
        assert_eq!(a.len(), 5);
        assert!(
            !a.iter()
                .any(|a| matches!(a, A::Sub(f, _) if f.contains("devicebound")))
        );
        assert_eq!(
            a[0],
            A::Sub(
                "devices/dev-1/modules/mod-a/inputs/#".into(),
                QoS::AtLeastOnce
            )
        );
        let mut buf = [0u8; 128];
        let p = s
            .send_telemetry(0, 1, &SystemProperties::default(), [], b"{}", &mut buf)
            .unwrap();
        assert_eq!(p.topic, "devices/dev-1/modules/mod-a/messages/events/");
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
    fn telemetry_gets_packet_ids_and_acks_come_back_with_the_tag() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, 0);
        events(&mut s);
        let mut buf = [0u8; 256];
        let p = s
            .send_telemetry(
                1,
                7,
                &SystemProperties {
                    content_type: Some("application/json"),
                    content_encoding: Some("utf-8"),
                    ..SystemProperties::default()
                },
                [("k", "a b")],
                b"{}",
                &mut buf,
            )
            .unwrap();
        assert_eq!(
            p.topic,
            "devices/dev-1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&k=a%20b"
        );
        assert_eq!((p.qos, p.pkid), (QoS::AtLeastOnce, 1));
        let p2 = s
            .send_telemetry(1, 8, &SystemProperties::default(), [], b"{}", &mut buf)
            .unwrap()
            .pkid;
        assert_eq!(p2, 2);
        assert_eq!(s.in_flight(), 2);
        s.handle_puback(2, 2);
        s.handle_puback(2, 1);
        s.handle_puback(2, 1); // duplicate ack: ignored
        assert_eq!(
            events(&mut s),
            [
                Event::TelemetryAcked { tag: 8 },
                Event::TelemetryAcked { tag: 7 }
            ]
        );
    }

    #[test]
    fn the_in_flight_window_is_enforced() {
        let mut s = session(SessionConfig {
            max_in_flight: 2,
            ..SessionConfig::default()
        });
        let mut buf = [0u8; 128];
        assert_eq!(
            s.send_telemetry(0, 1, &SystemProperties::default(), [], b"", &mut buf),
            Err(SendError::NotConnected)
        );
        connect(&mut s, 0);
        s.send_telemetry(0, 1, &SystemProperties::default(), [], b"", &mut buf)
            .unwrap();
        s.send_telemetry(0, 2, &SystemProperties::default(), [], b"", &mut buf)
            .unwrap();
        assert_eq!(s.telemetry_window(), 0);
        assert_eq!(
            s.send_telemetry(0, 3, &SystemProperties::default(), [], b"", &mut buf),
            Err(SendError::Busy)
        );
        let mut tiny = [0u8; 8];
        s.handle_puback(0, 1);
        assert_eq!(
            s.send_telemetry(0, 3, &SystemProperties::default(), [], b"", &mut tiny),
            Err(SendError::BufferTooSmall)
        );
        assert_eq!(s.telemetry_window(), 1, "a failed send takes no slot");
    }

    #[test]
    fn unacked_telemetry_is_handed_back_when_the_connection_drops() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, 0);
        events(&mut s);
        let mut buf = [0u8; 128];
        s.send_telemetry(0, 1, &SystemProperties::default(), [], b"", &mut buf)
            .unwrap();
        s.send_telemetry(0, 2, &SystemProperties::default(), [], b"", &mut buf)
            .unwrap();
        s.handle_puback(1_000, 1);
        s.handle_disconnected(5_000, DisconnectReason::Lost, 0);
        let ev = events(&mut s);
        assert_eq!(
            ev,
            [
                Event::TelemetryAcked { tag: 1 },
                Event::Disconnected {
                    reason: DisconnectReason::Lost
                },
                Event::TelemetryUnacked { tag: 2 },
                Event::TwinRequestFailed {
                    rid: 1,
                    kind: TwinRequestKind::Get,
                    status: None,
                    body: &[]
                },
                // No entropy: half the first backoff.
                Event::Reconnecting {
                    attempt: 1,
                    delay_ms: 500
                },
            ]
        );
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn reconnects_back_off_exponentially_with_jitter_up_to_the_cap() {
        let mut s = session(SessionConfig {
            backoff_min_ms: 2_000,
            backoff_max_ms: 30_000,
            ..SessionConfig::default()
        });
        connect(&mut s, 0);
        let mut now = 100_000;
        let mut delays = std::vec::Vec::new();
        for attempt in 1..=7u32 {
            s.handle_disconnected(now, DisconnectReason::Lost, u32::MAX - 1);
            let ev = events(&mut s);
            let Some(Event::Reconnecting {
                attempt: a,
                delay_ms: delay,
            }) = ev.last().copied()
            else {
                panic!("{ev:?}")
            };
            assert_eq!(a, attempt);
            delays.push(delay);
            assert_eq!(s.poll_timeout(), Some(now + delay));
            s.handle_timeout(now + delay - 1);
            assert_eq!(actions(&mut s), [], "not a millisecond before the delay");
            now += delay;
            s.handle_timeout(now);
            assert_eq!(
                actions(&mut s),
                [A::Connect(Some(now / 1000 + 3600), attempt)]
            );
        }
        for (d, base) in delays
            .iter()
            .zip([2_000u64, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000])
        {
            assert!((base / 2..=base).contains(d), "{d} vs base {base}");
        }
        // Jitter spreads: entropy 0 gives the low end.
        s.handle_disconnected(now, DisconnectReason::Lost, 0);
        assert_eq!(
            events(&mut s).last(),
            Some(&Event::Reconnecting {
                attempt: 8,
                delay_ms: 15_000
            })
        );
        // A success resets the schedule.
        s.handle_timeout(now + 15_000);
        actions(&mut s);
        s.handle_connected(now + 15_000);
        s.handle_disconnected(now + 20_000, DisconnectReason::Lost, u32::MAX);
        let ev = events(&mut s);
        assert!(
            matches!(
                ev.last(),
                Some(&Event::Reconnecting {
                    attempt: 1,
                    delay_ms: 1_000..=2_000
                })
            ),
            "{ev:?}"
        );
    }

    #[test]
    fn the_token_is_renewed_at_80_percent_by_a_planned_reconnect() {
        let mut s = session(SessionConfig {
            token_ttl: Some(100),
            ..SessionConfig::default()
        });
        connect(&mut s, 1_000_000);
        events(&mut s);
        assert_eq!(s.token_expiry(), Some(1_100), "Unix seconds");
        assert_eq!(s.poll_timeout(), Some(1_030_000), "twin GET timeout first");
        s.handle_publish(
            1_001_000,
            "$iothub/twin/res/200/?$rid=1",
            b"{\"desired\":{\"$version\":1}}",
        );
        assert_eq!(s.poll_timeout(), Some(1_080_000));
        s.handle_timeout(1_079_999);
        assert_eq!(actions(&mut s), []);
        s.handle_timeout(1_080_000);
        assert_eq!(
            actions(&mut s),
            [A::Disconnect(DisconnectCause::TokenRenewal)]
        );
        s.handle_disconnected(1_080_000, DisconnectReason::Requested, 0);
        assert_eq!(actions(&mut s), [A::Connect(Some(1_180), 0)]);
        s.handle_connected(1_081_000);
        let ev = events(&mut s);
        assert!(ev.contains(&Event::TokenRenewed {
            token_expiry: 1_180
        }));
        assert!(!ev.iter().any(|e| matches!(e, Event::Reconnecting { .. })));
        assert_eq!(
            s.poll_timeout(),
            Some(1_111_000),
            "GET timeout before renewal"
        );
    }

    #[test]
    fn renewal_waits_for_in_flight_acks_so_nothing_is_sent_twice() {
        let mut s = session(SessionConfig {
            token_ttl: Some(60),
            ..SessionConfig::default()
        });
        connect(&mut s, 0);
        let mut buf = [0u8; 128];
        s.send_telemetry(0, 1, &SystemProperties::default(), [], b"", &mut buf)
            .unwrap();
        s.handle_timeout(48_000);
        assert_eq!(s.state(), State::Draining);
        assert_eq!(actions(&mut s), []);
        assert_eq!(
            s.send_telemetry(48_000, 2, &SystemProperties::default(), [], b"", &mut buf),
            Err(SendError::NotConnected)
        );
        s.handle_puback(49_000, 1);
        assert_eq!(
            actions(&mut s),
            [A::Disconnect(DisconnectCause::TokenRenewal)]
        );
    }

    #[test]
    fn a_drain_ends_at_its_deadline_and_never_outlives_the_token() {
        let mut s = session(SessionConfig {
            token_ttl: Some(6),
            drain_timeout_ms: 5_000,
            ..SessionConfig::default()
        });
        connect(&mut s, 0);
        let mut buf = [0u8; 128];
        s.send_telemetry(0, 1, &SystemProperties::default(), [], b"", &mut buf)
            .unwrap();
        assert_eq!(s.poll_timeout(), Some(4_800), "80 % of 6 s");
        s.handle_timeout(4_800);
        assert_eq!(
            s.poll_timeout(),
            Some(5_000),
            "one second before expiry, not 4.8 s + 5 s"
        );
        s.handle_timeout(4_999);
        assert_eq!(actions(&mut s), []);
        s.handle_timeout(5_000);
        assert_eq!(
            actions(&mut s),
            [A::Disconnect(DisconnectCause::TokenRenewal)]
        );
        s.handle_disconnected(5_000, DisconnectReason::Requested, 0);
        let ev = events(&mut s);
        assert!(ev.contains(&Event::TelemetryUnacked { tag: 1 }), "{ev:?}");
    }

    #[test]
    fn twin_requests_are_correlated_by_request_id() {
        let mut s = session(SessionConfig::default());
        let get = connect(&mut s, 0);
        events(&mut s);
        let mut buf = [0u8; 128];
        let p = s.send_reported(1, b"{\"a\":1}", &mut buf).unwrap();
        assert_eq!(p.topic, "$iothub/twin/PATCH/properties/reported/?$rid=2");
        assert_eq!(p.kind, PublishKind::Reported { rid: 2 });
        let p = s.send_reported(1, b"{\"a\":2}", &mut buf).unwrap();
        assert_eq!(p.kind, PublishKind::Reported { rid: 3 });
        // Answers out of order, and one for a request nobody made.
        assert_eq!(
            s.handle_publish(2, "$iothub/twin/res/204/?$rid=3&$version=7", b""),
            Some(Event::ReportedAccepted {
                rid: 3,
                version: Some(7)
            })
        );
        assert_eq!(
            s.handle_publish(2, "$iothub/twin/res/204/?$rid=99&$version=8", b""),
            None
        );
        assert_eq!(
            s.handle_publish(2, "$iothub/twin/res/400/?$rid=2", b"{\"errorCode\":400004}"),
            Some(Event::TwinRequestFailed {
                rid: 2,
                kind: TwinRequestKind::Reported,
                status: Some(400),
                body: b"{\"errorCode\":400004}"
            })
        );
        let doc =
            b"{\"desired\":{\"telemetryInterval\":5,\"$version\":4},\"reported\":{\"$version\":7}}";
        assert_eq!(
            s.handle_publish(2, "$iothub/twin/res/200/?$rid=1", doc),
            Some(Event::Twin {
                document: doc,
                desired_version: Some(4)
            })
        );
        assert_eq!(get, 1);
    }

    #[test]
    fn twin_requests_time_out_and_a_failed_get_is_retried() {
        let mut s = session(SessionConfig {
            twin_request_timeout_ms: 10_000,
            ..SessionConfig::default()
        });
        connect(&mut s, 0);
        events(&mut s);
        let mut buf = [0u8; 128];
        s.send_reported(3_000, b"{}", &mut buf).unwrap();
        assert_eq!(s.poll_timeout(), Some(10_000));
        s.handle_timeout(10_000);
        assert_eq!(
            events(&mut s),
            [Event::TwinRequestFailed {
                rid: 1,
                kind: TwinRequestKind::Get,
                status: None,
                body: &[]
            }]
        );
        assert_eq!(s.poll_timeout(), Some(13_000));
        s.handle_timeout(13_000);
        let ev = events(&mut s);
        assert!(matches!(
            ev[..],
            [Event::TwinRequestFailed {
                rid: 2,
                kind: TwinRequestKind::Reported,
                ..
            }]
        ));
        s.handle_timeout(15_000);
        assert_eq!(
            actions(&mut s),
            [A::Pub(
                "$iothub/twin/GET/?$rid=3".into(),
                QoS::AtMostOnce,
                0
            )]
        );
        // An error status is retried the same way.
        s.handle_publish(16_000, "$iothub/twin/res/429/?$rid=3", b"{}");
        s.handle_timeout(20_999);
        assert_eq!(actions(&mut s), [], "5 s after the error");
        s.handle_timeout(21_000);
        assert_eq!(
            actions(&mut s),
            [A::Pub(
                "$iothub/twin/GET/?$rid=4".into(),
                QoS::AtMostOnce,
                0
            )]
        );
    }

    #[test]
    fn desired_patches_are_delivered_in_order_and_stale_ones_dropped() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, 0);
        let patch = |v: u64| {
            let mut t =
                std::string::String::from("$iothub/twin/PATCH/properties/desired/?$version=");
            t += &std::string::ToString::to_string(&v);
            t
        };
        // Before the GET answers, patches are held back (the document will cover them).
        assert_eq!(
            s.handle_publish(1, &patch(3), b"{\"x\":1,\"$version\":3}"),
            None
        );
        let doc = b"{\"desired\":{\"x\":1,\"$version\":3},\"reported\":{\"$version\":1}}";
        assert!(matches!(
            s.handle_publish(1, "$iothub/twin/res/200/?$rid=1", doc),
            Some(Event::Twin {
                desired_version: Some(3),
                ..
            })
        ));
        assert_eq!(actions(&mut s), [], "nothing newer was missed");
        assert_eq!(s.handle_publish(2, &patch(3), b"{}"), None, "duplicate");
        assert_eq!(
            s.handle_publish(2, &patch(4), b"{\"x\":2,\"$version\":4}"),
            Some(Event::DesiredPatch {
                version: 4,
                patch: b"{\"x\":2,\"$version\":4}"
            })
        );
        assert_eq!(s.handle_publish(2, &patch(2), b"{}"), None, "older");
        // The version in the body is used when the topic has none.
        assert!(matches!(
            s.handle_publish(
                3,
                "$iothub/twin/PATCH/properties/desired/",
                b"{\"x\":3,\"$version\":6}"
            ),
            Some(Event::DesiredPatch { version: 6, .. })
        ));
    }

    #[test]
    fn after_a_reconnect_patches_older_than_the_get_are_dropped_and_newer_ones_refetched() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, 0);
        s.handle_publish(
            0,
            "$iothub/twin/res/200/?$rid=1",
            b"{\"desired\":{\"$version\":2}}",
        );
        s.handle_disconnected(10_000, DisconnectReason::Lost, 0);
        s.handle_timeout(11_000);
        actions(&mut s);
        s.handle_connected(11_000);
        let a = actions(&mut s);
        assert_eq!(
            a.last(),
            Some(&A::Pub(
                "$iothub/twin/GET/?$rid=2".into(),
                QoS::AtMostOnce,
                0
            ))
        );
        // Version 6 arrives before the GET's answer, which is at version 5.
        let t = "$iothub/twin/PATCH/properties/desired/?$version=6";
        assert_eq!(s.handle_publish(12, t, b"{\"$version\":6}"), None);
        s.handle_publish(
            12,
            "$iothub/twin/res/200/?$rid=2",
            b"{\"desired\":{\"$version\":5}}",
        );
        assert_eq!(
            actions(&mut s),
            [A::Pub(
                "$iothub/twin/GET/?$rid=3".into(),
                QoS::AtMostOnce,
                0
            )],
            "a second GET fetches version 6"
        );
        s.handle_publish(
            13,
            "$iothub/twin/res/200/?$rid=3",
            b"{\"desired\":{\"$version\":6}}",
        );
        let t = "$iothub/twin/PATCH/properties/desired/?$version=6";
        assert_eq!(s.handle_publish(14, t, b"{}"), None);
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

    #[test]
    fn bad_credentials_before_the_first_connect_give_up() {
        let mut s = session(SessionConfig::default());
        s.handle_timeout(0);
        actions(&mut s);
        s.handle_disconnected(1, DisconnectReason::Refused(ConnackCode::NotAuthorized), 0);
        assert_eq!(
            actions(&mut s),
            [A::GiveUp(GiveUpReason::Refused(ConnackCode::NotAuthorized))]
        );
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(100);
        assert_eq!(actions(&mut s), []);
    }

    #[test]
    fn the_attempt_budget_gives_up_with_the_last_reason() {
        let mut s = session(SessionConfig {
            max_initial_attempts: Some(1),
            ..SessionConfig::default()
        });
        s.handle_timeout(0);
        actions(&mut s);
        s.handle_disconnected(1, DisconnectReason::Unreachable, 0);
        assert_eq!(
            actions(&mut s),
            [A::GiveUp(GiveUpReason::Exhausted(
                DisconnectReason::Unreachable
            ))]
        );
        // Once connected, a refusal is retried (a disabled device may come back).
        let mut s = session(SessionConfig {
            max_attempts: Some(3),
            ..SessionConfig::default()
        });
        connect(&mut s, 0);
        let refused = DisconnectReason::Refused(ConnackCode::NotAuthorized);
        s.handle_disconnected(1_000, DisconnectReason::Lost, 0);
        for now in [10_000, 20_000] {
            s.handle_timeout(now);
            actions(&mut s);
            s.handle_disconnected(now, refused, 0);
        }
        assert_eq!(
            actions(&mut s),
            [A::GiveUp(GiveUpReason::Exhausted(refused))]
        );
    }

    #[test]
    fn reboot_reconnects_at_once_and_close_stops_for_good() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, 0);
        events(&mut s);
        let mut buf = [0u8; 64];
        s.respond_method("1", 200, b"", &mut buf).unwrap();
        s.reconnect(1_000);
        assert_eq!(actions(&mut s), [A::Disconnect(DisconnectCause::Reconnect)]);
        s.handle_disconnected(1_000, DisconnectReason::Requested, 0);
        assert_eq!(actions(&mut s), [A::Connect(Some(3601), 0)]);
        s.handle_connected(2_000);
        actions(&mut s);
        s.close(3_000);
        assert_eq!(actions(&mut s), [A::Disconnect(DisconnectCause::Close)]);
        s.handle_disconnected(3_000, DisconnectReason::Requested, 0);
        assert_eq!(s.state(), State::Closed);
        s.handle_timeout(10_000_000);
        assert_eq!(actions(&mut s), []);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_fixed_credential_is_never_renewed() {
        let mut s = session(SessionConfig {
            token_ttl: None,
            ..SessionConfig::default()
        });
        s.handle_timeout(0);
        assert_eq!(actions(&mut s), [A::Connect(None, 0)]);
        s.handle_connected(0);
        s.handle_publish(0, "$iothub/twin/res/200/?$rid=1", b"{}");
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn packet_ids_stay_within_the_configured_range() {
        let mut s = session(SessionConfig {
            max_in_flight: 2,
            max_packet_id: 3,
            ..SessionConfig::default()
        });
        connect(&mut s, 0);
        let mut buf = [0u8; 128];
        let mut ids = std::vec::Vec::new();
        for tag in 0..6 {
            let p = s
                .send_telemetry(0, tag, &SystemProperties::default(), [], b"", &mut buf)
                .unwrap()
                .pkid;
            ids.push(p);
            s.handle_puback(0, p);
        }
        assert_eq!(ids, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_still_in_flight() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, 0);
        let mut buf = [0u8; 128];
        s.next_pkid = u16::MAX;
        assert_eq!(
            s.send_telemetry(0, 1, &SystemProperties::default(), [], b"", &mut buf)
                .unwrap()
                .pkid,
            u16::MAX
        );
        assert_eq!(
            s.send_telemetry(0, 2, &SystemProperties::default(), [], b"", &mut buf)
                .unwrap()
                .pkid,
            1
        );
        s.next_pkid = u16::MAX;
        assert_eq!(
            s.send_telemetry(0, 3, &SystemProperties::default(), [], b"", &mut buf)
                .unwrap()
                .pkid,
            2
        );
    }
}
