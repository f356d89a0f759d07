//! What goes out: actions, publishes and telemetry, encoded into the transmit buffer.

use super::*;

impl<S: Sensor, Q: Storage> Core<'_, S, Q> {
    /// Runs actions, events, behaviour publishes and queued telemetry until one of them has a
    /// packet to send or a connection to open or the session stops; `None` when nothing
    /// more is to be done now. Offline, packets are dropped (the session asks for them again
    /// on the next connection).
    pub(super) fn pump<A: App, T: Buffer + ?Sized>(
        &mut self,
        now: u64,
        tx: &mut T,
        app: &mut A,
    ) -> Option<Step> {
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
                        let n = wire::encode_subscribe(self.sub_pid, filter, qos, tx.slice());
                        self.encode(now, n)
                    }
                    Action::Publish(p) => publish(self.phase, &mut self.last_tx, now, &p, tx, app),
                    Action::Disconnect { .. } => {
                        match self
                            .encode(now, wire::encode_bare(wire::Bare::Disconnect, tx.slice()))
                        {
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
    pub(super) fn encode(&mut self, now: u64, n: Option<usize>) -> Option<usize> {
        if !matches!(self.phase, Phase::Up) {
            return None;
        }
        self.last_tx = now;
        n
    }

    /// A packet id for a first transmission, not used by any message in flight.
    pub(super) fn fresh_wire_pid(&mut self) -> u16 {
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
    pub(super) fn send_telemetry<A: App, T: Buffer + ?Sized>(
        &mut self,
        now: u64,
        tx: &mut T,
        app: &mut A,
    ) -> Option<usize> {
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
        tx.reserve(wire::publish_len(p.topic, p.payload));
        let Some(n) = wire::encode_publish(p.topic, p.payload, qospid, dup, tx.slice()) else {
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
}

/// A session or behaviour publish, with the QoS and packet id the session chose, encoded
/// into `tx` when connected; noted when it does not fit or is a reported PATCH.
#[inline(never)]
pub(super) fn publish<O: Observer, T: Buffer + ?Sized>(
    phase: Phase,
    last_tx: &mut u64,
    now: u64,
    p: &Publish<'_>,
    tx: &mut T,
    obs: &mut O,
) -> Option<usize> {
    if !matches!(phase, Phase::Up) {
        return None;
    }
    let qospid = match p.qos {
        session::QoS::AtMostOnce => QosPid::AtMostOnce,
        session::QoS::AtLeastOnce => QosPid::AtLeastOnce(wire::pid(p.pkid)?),
    };
    tx.reserve(wire::publish_len(p.topic, p.payload));
    let Some(n) = wire::encode_publish(p.topic, p.payload, qospid, false, tx.slice()) else {
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
