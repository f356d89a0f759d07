//! The connection's lifecycle: connect, the subscriptions and twin GET after it, disconnects with
//! their backoff and attempt budgets, token renewal by a planned reconnect, and the drain that
//! waits for in-flight acks before any planned disconnect.

use super::{
    DisconnectCause, DisconnectReason, Event, GiveUpReason, InFlight, Pending, Session, State,
    TwinRequest, wire,
};

impl Session {
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

    /// Asks for a connect with a token signed now: its expiry in whole seconds (the `se`), and
    /// its renewal `renew_at_percent` of its lifetime from now, in milliseconds.
    pub(super) fn queue_connect(&mut self, now: u64, attempt: u32) {
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

    pub(super) fn start_drain(&mut self, now: u64, cause: DisconnectCause) {
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

    pub(super) fn maybe_finish_drain(&mut self) {
        if matches!(self.state, State::Draining) && self.in_flight.is_empty() {
            self.finish_drain();
        }
    }

    pub(super) fn finish_drain(&mut self) {
        if let Some((_, cause)) = self.drain.take() {
            self.closing = Some(cause);
            self.state = State::Disconnecting;
            self.push_action(Pending::Disconnect(cause));
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
}

#[cfg(test)]
mod tests {
    use crate::session::tests::{A, actions, connect, events, session};
    use crate::session::*;

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
}
