//! Twin requests: request ids and their correlation, timeouts and GET retries, and the ordering
//! of desired patches across a GET and across reconnects.

use super::{
    Event, Pending, Publish, PublishKind, QoS, SendError, Session, State, TWIN_GET_RETRY_MS,
    TwinRequest, TwinRequestKind, wire, write_into,
};
use crate::json;

#[cfg(doc)]
use super::MAX_TWIN_REQUESTS;

impl Session {
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

    /// Fails the twin requests whose deadline has passed, and sends a failed GET again once its
    /// retry is due (only while connected: a draining connection is about to close).
    pub(super) fn handle_twin_timeouts(&mut self, now: u64) {
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
        if matches!(self.state, State::Connected) && self.get_retry_at.is_some_and(|t| now >= t) {
            self.get_retry_at = None;
            self.queue_twin_get(now);
        }
    }

    pub(super) fn queue_twin_get(&mut self, now: u64) {
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

    pub(super) fn on_twin_response<'p>(
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

    pub(super) fn on_desired_patch<'p>(
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
}

#[cfg(test)]
mod tests {
    use crate::session::tests::{A, actions, connect, events, session};
    use crate::session::*;

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
}
