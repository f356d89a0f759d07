//! QoS 1 telemetry: the in-flight window, packet ids, and acknowledgements handed back to the
//! application by tag.

use core::fmt;

use super::{
    Event, InFlight, Publish, PublishKind, QoS, SendError, Session, SystemProperties, wire,
    write_into,
};

impl Session {
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

    /// The hub acknowledged a QoS 1 publish.
    pub fn handle_puback(&mut self, now: u64, pkid: u16) {
        let _ = now;
        if let Some(i) = self.in_flight.iter().position(|f| f.pkid == pkid) {
            let f = self.in_flight.remove(i);
            self.push_event(Event::TelemetryAcked { tag: f.tag });
        }
        self.maybe_finish_drain();
    }

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
}

#[cfg(test)]
mod tests {
    use crate::session::tests::{connect, events, session};
    use crate::session::*;

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
