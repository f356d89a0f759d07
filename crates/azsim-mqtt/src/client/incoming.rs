//! What arrives: framing the receive buffer, packets, PUBACKs and session events.

use super::outgoing::publish;
use super::*;

impl<S: Sensor, Q: Storage> Core<'_, S, Q> {
    /// The length of the complete packet at the front of the receive buffer; `Err` when the
    /// bytes are not MQTT or the packet cannot fit.
    pub(super) fn next_packet<A: App>(&self, rx: &[u8], app: &mut A) -> Result<Option<usize>, ()> {
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
    pub(super) fn consume(&mut self, rx: &mut [u8], len: usize) {
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
    pub(super) fn on_packet<A: App, T: Buffer + ?Sized>(
        &mut self,
        now: u64,
        packet: &[u8],
        tx: &mut T,
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
            wire::Incoming::Connack(_) | wire::Incoming::Suback(_) | wire::Incoming::Other => {
                Ok(None)
            }
        }
    }

    /// A PUBACK for packet id `wire`. Telemetry is the only QoS 1 publish; the session knows
    /// it by the id it gave this attempt.
    pub(super) fn on_puback(&mut self, now: u64, wire: u16) {
        if let Some(m) = self.in_flight.iter().find(|m| m.wire == wire && !m.resend) {
            self.session.handle_puback(now, m.pkid);
        }
    }

    /// One session event: note it, keep the in-flight table straight, let the behaviour (or
    /// the application's canned answer) react; the length of its answer in `tx`, if it has one
    /// and it fits.
    pub(super) fn on_event<A: App, T: Buffer + ?Sized>(
        &mut self,
        now: u64,
        ev: Event<'_>,
        tx: &mut T,
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
