//! An authenticated connection's packets: telemetry (stored, then PUBACKed), twin GET and
//! reported patches, method responses, SUBSCRIBE/UNSUBSCRIBE against the identity's topic ACL,
//! and the PUBACKs of C2D deliveries (`c2d.rs` sends them).
//!
//! A QoS 1 telemetry message is PUBACKed only once the transaction holding it has committed
//! (see `store`): the connection numbers its messages, queues them for the writer and reads on,
//! holding the PUBACKs in order until the writer reports their numbers committed. MQTT 3.1.1
//! (4.6) wants PUBACKs in the order the PUBLISHes came, so the PUBACK of any other QoS 1
//! PUBLISH (twin, method response) waits behind the telemetry received before it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use azsim_proto::topic::{self, DeviceTopic, Identity as TopicId, SubscriptionKind};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    LastWill, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use serde_json::json;
use tokio::io::AsyncReadExt as _;

use super::{Close, Io, max_packet, packet_name};
use crate::fault::{self, Fault};
use crate::hub::{Hub, Subs, twin_device_view};
use crate::quota::Billed;
use crate::store::{Commits, EventBatch, q};
use crate::telemetry::{self, D2cRecord, Origin};
use crate::twin;
use crate::untrusted::Untrusted;

/// Stored with a persistent session's filters when its C2D subscription is QoS 0.
pub(super) const C2D_QOS0_MARK: &str = "azsim:c2d-qos0";

/// One authenticated connection's state, used by the loop in `mqtt/mod.rs`.
pub(super) struct Conn {
    pub(super) hub: Arc<Hub>,
    pub(super) cid: String,
    pub(super) device: String,
    pub(super) module: Option<String>,
    pub(super) conn_id: u64,
    pub(super) subs: Arc<Subs>,
    pub(super) filters: Vec<(String, SubscriptionKind)>,
    pub(super) clean: bool,
    pub(super) inflight: HashMap<u16, (i64, String)>,
    pub(super) next_pkid: u16,
    /// Who this connection's telemetry comes from (shared by its messages).
    pub(super) origin: Arc<Origin>,
    pub(super) out: BytesMut,
    pub(super) activity: Arc<crate::activity::Cell>,
    /// What the telemetry writer has committed of this connection's messages.
    pub(super) commits: Arc<Commits>,
    /// The number given to this connection's last QoS 1 telemetry message (0: none yet).
    pub(super) last_seq: u64,
    /// PUBACKs not sent yet, in PUBLISH order: the packet id and the telemetry number that must
    /// be committed first.
    pub(super) held_pubacks: VecDeque<(u64, u16)>,
    /// Telemetry of the read being handled, not yet handed to the writer (see
    /// [`Conn::process`]).
    pub(super) batch: EventBatch,
    /// The DTDL model id of the CONNECT's username (`model-id=`): recorded on the twin
    /// (`modelId`) and stamped on this connection's telemetry as `dt-dataschema`.
    pub(super) model_id: Option<String>,
    /// The hub's clock (Unix microseconds) when the bytes being handled were read: the
    /// enqueued time, activity time and quota time of every packet they hold (see
    /// [`Conn::note_read`]).
    pub(super) read_at_us: i64,
    /// Whether the live event stream had a watcher when the bytes being handled were read.
    pub(super) watched: bool,
}

impl Conn {
    pub(super) fn topic_id(&self) -> TopicId<'_> {
        TopicId {
            device_id: &self.device,
            module_id: self.module.as_deref(),
        }
    }

    pub(super) fn set_flag(&self, kind: SubscriptionKind, on: bool) {
        let f = match kind {
            SubscriptionKind::C2d => &self.subs.c2d,
            SubscriptionKind::Methods => &self.subs.methods,
            SubscriptionKind::TwinResponses => &self.subs.twin_res,
            SubscriptionKind::DesiredPatches => &self.subs.desired,
            SubscriptionKind::ModuleInputs => return,
        };
        f.store(on, Ordering::Release);
    }

    /// Handle every complete packet in `buf`. The telemetry among them goes to the writer
    /// together once they are handled (or every [`EventBatch::MAX`] messages), also when the
    /// connection is to close: what was received before a bad packet is stored as before.
    pub(super) async fn process(&mut self, buf: &mut BytesMut) -> Option<Close> {
        self.note_read();
        let close = self.process_packets(buf).await;
        self.finish_round(close).await
    }

    /// [`Conn::process`], then again for whatever more `stream` has ready without waiting
    /// (TLS records already received and decrypted, bytes already in the socket), until it has
    /// none: a device that writes many PUBLISHes at once has them handled in one round, with
    /// one hand-off to the writer (and one wake-up of it), instead of one round per buffer-full
    /// of bytes through the connection's `select!`. Bounded by tokio's cooperative budget,
    /// which makes a socket read pending after enough of them.
    pub(super) async fn process_ready<S: Io>(
        &mut self,
        stream: &mut S,
        buf: &mut BytesMut,
    ) -> Option<Close> {
        let close = loop {
            self.note_read();
            if let Some(close) = self.process_packets(buf).await {
                break Some(close);
            }
            match read_ready(stream, buf).await {
                None => break None,
                Some(Ok(0)) => {
                    break Some(Close::Ungraceful("connection closed by the device".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(Close::Ungraceful(format!("read failed: {e}"))),
            }
        };
        self.finish_round(close).await
    }

    /// The time and the watcher check shared by the packets of one read: one clock read and
    /// one look at the live stream per read instead of several per message.
    fn note_read(&mut self) {
        self.read_at_us = self.hub.now_us();
        self.watched = self.hub.events.receiver_count() > 0;
    }

    /// Hands the round's telemetry to the writer; `close` unless the writer is gone.
    async fn finish_round(&mut self, close: Option<Close>) -> Option<Close> {
        if !self.send_batch().await {
            return Some(Close::Ungraceful(
                "the telemetry log is not running: message not stored".into(),
            ));
        }
        close
    }

    async fn process_packets(&mut self, buf: &mut BytesMut) -> Option<Close> {
        let max = max_packet(&self.hub);
        loop {
            let p = match Packet::read(buf, max) {
                Ok(p) => p,
                Err(MqttError::InsufficientBytes(_)) => return None,
                Err(MqttError::PayloadSizeLimitExceeded(n)) => {
                    return Some(Close::Ungraceful(format!(
                        "packet of {n} bytes exceeds the limit"
                    )));
                }
                Err(e) => return Some(Close::Ungraceful(format!("malformed packet: {e}"))),
            };
            if let Some(c) = self.handle(p).await {
                return Some(c);
            }
        }
    }

    /// Hand the gathered telemetry to the writer; false when the writer is gone.
    async fn send_batch(&mut self) -> bool {
        self.batch.is_empty() || self.hub.store.log_batch(&mut self.batch).await
    }

    async fn handle(&mut self, p: Packet) -> Option<Close> {
        match p {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(a) => {
                self.activity.touch(self.read_at_us);
                if let Some((seq, mid)) = self.inflight.remove(&a.pkid) {
                    self.complete_c2d(seq, mid).await;
                }
                None
            }
            // Boxed, as the other rare packets' work: inline, it would size the future of
            // every read's handling (a larger allocation per read, see `process_ready`).
            Packet::Subscribe(s) => Box::pin(self.on_subscribe(s)).await,
            Packet::Unsubscribe(u) => {
                self.filters.retain(|(p, _)| !u.topics.contains(p));
                for k in [
                    SubscriptionKind::C2d,
                    SubscriptionKind::Methods,
                    SubscriptionKind::TwinResponses,
                    SubscriptionKind::DesiredPatches,
                ] {
                    let on = self.filters.iter().any(|(_, kk)| *kk == k);
                    self.set_flag(k, on);
                }
                if !self.subs.c2d.load(Ordering::Acquire) {
                    self.subs.c2d_qos0.store(false, Ordering::Release);
                }
                let _ = Packet::UnsubAck(UnsubAck::new(u.pkid)).write(&mut self.out, usize::MAX);
                Box::pin(self.persist_filters()).await;
                self.hub.presence_changed();
                None
            }
            Packet::PingReq => {
                let _ = Packet::PingResp.write(&mut self.out, usize::MAX);
                None
            }
            Packet::Disconnect => Some(Close::Graceful),
            other => Some(Close::Ungraceful(format!(
                "unexpected {} packet",
                packet_name(&other)
            ))),
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Option<Close> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut wake = false;
        for f in &s.filters {
            if !super::is_valid_filter(&f.path) {
                return Some(Close::Ungraceful(format!(
                    "SUBSCRIBE to '{}': not a valid MQTT 3.1.1 filter (a wildcard inside a level: an id with + or #?)",
                    Untrusted(&f.path)
                )));
            }
            let kind = match topic::classify_subscription(&f.path, self.topic_id()) {
                Ok(k) => k,
                Err(e) => {
                    return Some(Close::Ungraceful(format!(
                        "SUBSCRIBE to '{}' not allowed: {e}",
                        Untrusted(&f.path)
                    )));
                }
            };
            if !self.filters.iter().any(|(p, _)| *p == f.path) {
                if self.filters.len() >= self.hub.cfg.limits.max_subscriptions {
                    return Some(Close::Ungraceful(format!(
                        "more than {} subscriptions",
                        self.hub.cfg.limits.max_subscriptions
                    )));
                }
                self.filters.push((f.path.clone(), kind));
            }
            wake |= kind == SubscriptionKind::C2d;
            self.set_flag(kind, true);
            // QoS 2 is granted 1, as the hub does.
            let granted = if f.qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            if kind == SubscriptionKind::C2d {
                // C2D goes out at the QoS granted (MQTT 3.1.1 3.8.4: a message is
                // delivered at the lower of its QoS and the subscription's); the
                // lenient hub sends QoS 1 whatever was asked.
                let qos0 = granted == QoS::AtMostOnce && !self.hub.cfg.lenient;
                self.subs.c2d_qos0.store(qos0, Ordering::Release);
            }
            codes.push(SubscribeReasonCode::Success(granted));
        }
        let _ = Packet::SubAck(SubAck::new(s.pkid, codes)).write(&mut self.out, usize::MAX);
        self.persist_filters().await;
        self.hub.presence_changed();
        if wake && let Err(e) = self.deliver_c2d().await {
            return Some(Close::Ungraceful(e));
        }
        None
    }

    async fn persist_filters(&self) {
        if self.clean {
            return;
        }
        let cid = self.cid.clone();
        let mut filters: Vec<String> = self.filters.iter().map(|(f, _)| f.clone()).collect();
        // A persistent session keeps its subscriptions with their QoS: the C2D one's is kept
        // as a mark beside the filters (not a filter: restoring skips it).
        if self.subs.c2d_qos0.load(Ordering::Acquire) {
            filters.push(C2D_QOS0_MARK.to_string());
        }
        if let Err(e) = self
            .hub
            .store
            .call(move |c| q::set_session_filters(c, &cid, &filters))
            .await
        {
            tracing::warn!(error = %e, "saving session failed");
        }
    }

    async fn on_publish(&mut self, p: Publish) -> Option<Close> {
        self.activity.touch(self.read_at_us);
        if p.qos == QoS::ExactlyOnce {
            return Some(Close::Ungraceful("QoS 2 PUBLISH is not supported".into()));
        }
        if !super::is_valid_topic_name(&p.topic) {
            return Some(Close::Ungraceful(format!(
                "PUBLISH to '{}': a topic name with a wildcard is not valid MQTT 3.1.1 (an id with + or #?)",
                Untrusted(&p.topic)
            )));
        }
        let parsed = match topic::parse_device_publish(&p.topic, self.topic_id()) {
            Ok(t) => t,
            Err(e) => {
                return Some(Close::Ungraceful(format!(
                    "PUBLISH to '{}' not allowed: {e}",
                    Untrusted(&p.topic)
                )));
            }
        };
        match parsed {
            DeviceTopic::Telemetry { bag } => {
                let size = p.payload.len() + bag.as_raw().len();
                if size > self.hub.cfg.limits.d2c_max_bytes {
                    return Some(Close::Ungraceful(format!(
                        "telemetry of {size} bytes exceeds {} bytes",
                        self.hub.cfg.limits.d2c_max_bytes
                    )));
                }
                if let Err(e) = bag.validate() {
                    return Some(Close::Ungraceful(format!(
                        "undecodable property name or value: {e}"
                    )));
                }
                if let Some(req) = fault::requested(bag.as_raw()) {
                    match req.fault {
                        Some(f) => {
                            // As the SDKs' e2e tests expect of Azure: the fault message is not
                            // acknowledged (nor routed); the fault comes after its delay.
                            tracing::info!(client_id = %self.cid, operation = %Untrusted(&req.operation), "fault requested in telemetry");
                            fault::inject(&self.hub, &self.device, f, req.delay, req.duration);
                            return None;
                        }
                        None => {
                            tracing::info!(client_id = %self.cid, operation = %Untrusted(&req.operation), "fault operation does not apply to MQTT: taken as telemetry");
                        }
                    }
                }
                // With a tier, telemetry waits for its turn at the hub's rate (`throttle`);
                // boxed, so the wait is no part of this future without one.
                if self.hub.cfg.tier.is_some()
                    && let Err(reason) = Box::pin(crate::throttle::wait_turn(
                        &self.hub,
                        crate::throttle::Shaped::D2c,
                    ))
                    .await
                {
                    return Some(Close::Ungraceful(reason.into()));
                }
                if self.hub.cfg.tier.is_some() {
                    // It may have waited for its turn: accepted now.
                    self.read_at_us = self.hub.now_us();
                }
                let now = u64::try_from(self.read_at_us / 1000).unwrap_or(0);
                if self.hub.faults.active(&self.device, Fault::Quota, now)
                    || !self.hub.faults.charge_message(
                        self.hub.cfg.tier,
                        self.hub.cfg.units,
                        size,
                        now,
                    )
                {
                    return Some(Close::Ungraceful(
                        "403002 IoTHubQuotaExceeded: the hub's daily message quota is used up"
                            .into(),
                    ));
                }
                if self.hub.faults.active(&self.device, Fault::Throttle, now) {
                    return Some(Close::Ungraceful("429001 ThrottlingException".into()));
                }
                // Stored as received; the JSON is built only when read.
                let mut props = bag.as_raw().to_owned();
                if p.retain {
                    telemetry::push_pair(&mut props, "mqtt-retain", "true");
                }
                // A Plug and Play device's messages carry its model as `dt-dataschema` (IoT
                // Plug and Play developer guide, "telemetry": the hub adds it from the
                // model-id the device announced when it connected).
                if let Some(model) = &self.model_id {
                    telemetry::push_pair(&mut props, "dt-dataschema", model);
                }
                let acked = p.qos == QoS::AtLeastOnce;
                if !self.ingest(props, &p.payload, acked).await {
                    return Some(Close::Ungraceful(
                        "the telemetry log is not running: message not stored".into(),
                    ));
                }
                if acked {
                    return self.puback(&p);
                }
            }
            DeviceTopic::MethodResponse { status, rid } => {
                let mut r = String::new();
                if rid.decode_to(&mut r).is_ok()
                    && !self
                        .hub
                        .method_reply(&self.cid, &r, status, p.payload.clone())
                {
                    tracing::info!(client_id = %self.cid, rid = %Untrusted(&r), "method response dropped: no pending request (late or unknown)");
                }
                return self.puback(&p);
            }
            DeviceTopic::TwinGet { rid } => {
                let mut r = String::new();
                let _ = rid.decode_to(&mut r);
                if self.twin_throttled(&r) {
                    return self.puback(&p);
                }
                let (d, m) = (self.device.clone(), self.module.clone());
                let res = Box::pin(
                    self.hub
                        .store
                        .call(move |c| q::get_identity(c, &d, m.as_deref())),
                )
                .await;
                match res {
                    Ok(Some(i)) => {
                        let body = twin_device_view(&i).to_string().into_bytes();
                        if crate::quota::charge(&self.hub, Billed::DeviceTwinRead, body.len()) {
                            self.twin_response(200, &r, None, body);
                        } else {
                            self.twin_error(403, 403002, &r, crate::quota::EXCEEDED);
                        }
                    }
                    _ => self.twin_error(404, 404001, &r, "device not found"),
                }
                return self.puback(&p);
            }
            DeviceTopic::TwinPatchReported { rid } => {
                let mut r = String::new();
                let _ = rid.decode_to(&mut r);
                if self.twin_throttled(&r) {
                    return self.puback(&p);
                }
                if !crate::quota::charge(&self.hub, Billed::ReportedPatch, p.payload.len()) {
                    self.twin_error(403, 403002, &r, crate::quota::EXCEEDED);
                    return self.puback(&p);
                }
                Box::pin(self.patch_reported(&r, &p.payload)).await;
                return self.puback(&p);
            }
        }
        None
    }

    /// Record the model the device announced in its CONNECT on its twin (`modelId`). A
    /// CONNECT without `model-id` leaves the twin's as it was.
    pub(super) async fn record_model_id(&self) {
        let Some(model) = self.model_id.clone() else {
            return;
        };
        let (d, m) = (self.device.clone(), self.module.clone());
        let r = self
            .hub
            .store
            .call(move |c| {
                if let Some(mut i) = q::get_identity(c, &d, m.as_deref())?
                    && i.model_id.as_deref() != Some(model.as_str())
                {
                    i.model_id = Some(model);
                    q::put_identity(c, &i)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(client_id = %self.cid, error = %e, "recording the model id failed");
        }
    }

    /// PUBACK a QoS 1 PUBLISH once every telemetry message received up to it is committed:
    /// now if it is, else held (see [`Conn::release_pubacks`]).
    fn puback(&mut self, p: &Publish) -> Option<Close> {
        if p.qos != QoS::AtLeastOnce {
            return None;
        }
        if self.held_pubacks.is_empty() && self.last_seq <= self.commits.committed() {
            let _ = Packet::PubAck(PubAck::new(p.pkid)).write(&mut self.out, usize::MAX);
            return None;
        }
        // A client keeps at most one unacknowledged PUBLISH per packet id.
        if self.held_pubacks.len() >= usize::from(u16::MAX) {
            return Some(Close::Ungraceful(
                "more unacknowledged PUBLISH packets than packet ids".into(),
            ));
        }
        self.held_pubacks.push_back((self.last_seq, p.pkid));
        None
    }

    /// Write the held PUBACKs whose telemetry is now committed. If a transaction failed, the
    /// connection closes without them: the device sends those messages again.
    pub(super) fn release_pubacks(&mut self) -> Option<Close> {
        if self.commits.failed() {
            return Some(Close::Ungraceful(
                "telemetry could not be stored; its PUBLISHes are not acknowledged".into(),
            ));
        }
        let done = self.commits.committed();
        while let Some(&(seq, pkid)) = self.held_pubacks.front() {
            if seq > done {
                break;
            }
            let _ = Packet::PubAck(PubAck::new(pkid)).write(&mut self.out, usize::MAX);
            self.held_pubacks.pop_front();
        }
        None
    }

    fn twin_response(&mut self, status: u16, rid: &str, version: Option<u64>, body: Vec<u8>) {
        // IoT Hub answers twin requests on `$iothub/twin/res/...` only to a client subscribed to
        // `$iothub/twin/res/#` ("the device must subscribe to $iothub/twin/res/# to receive the
        // operation's responses": MQTT support doc, "Retrieving a device twin's properties");
        // otherwise the request is carried out and nothing comes back.
        if !self.hub.cfg.lenient && !self.subs.twin_res.load(Ordering::Acquire) {
            tracing::info!(client_id = %self.cid, status, "twin response not sent: not subscribed to $iothub/twin/res/#");
            return;
        }
        let mut t = String::new();
        if topic::write_twin_response(&mut t, status, rid, version).is_ok() {
            let _ = Packet::Publish(Publish::new(t, QoS::AtMostOnce, body))
                .write(&mut self.out, usize::MAX);
        }
    }

    /// Under injected throttling a twin request is answered 429 (429001), as the spec says
    /// twin-over-MQTT is throttled; true when it was.
    fn twin_throttled(&mut self, rid: &str) -> bool {
        let now = self.hub.clock().unix_ms();
        if !self.hub.faults.active(&self.device, Fault::Throttle, now) {
            return false;
        }
        self.twin_error(429, 429001, rid, "Throttling: retry later");
        true
    }

    fn twin_error(&mut self, status: u16, code: u32, rid: &str, message: &str) {
        let body = json!({
            "errorCode": code, "trackingId": uuid::Uuid::new_v4().simple().to_string(),
            "message": message, "timestampUtc": self.hub.clock().now_rfc3339(),
        });
        self.twin_response(status, rid, None, body.to_string().into_bytes());
    }

    async fn patch_reported(&mut self, rid: &str, body: &[u8]) {
        let Some(patch) = twin::parse_reported_patch(body) else {
            return self.twin_error(400, 400004, rid, "reported patch must be a JSON object");
        };
        if let Err(e) = twin::validate_patch(&patch) {
            return self.twin_error(400, 400004, rid, &e.0);
        }
        let (d, m) = (self.device.clone(), self.module.clone());
        let p2 = patch.clone();
        let now = self.hub.clock().now_rfc3339();
        let res = self
            .hub
            .store
            .call(move |c| {
                let Some(mut i) = q::get_identity(c, &d, m.as_deref())? else {
                    return Ok(Err((404, 404001, "device not found".to_string())));
                };
                let mut next = i.reported.clone();
                twin::merge(&mut next, &p2);
                if let Err(e) =
                    twin::check_size(&next, twin::MAX_SECTION_BYTES, "Properties.Reported")
                {
                    return Ok(Err((twin::SIZE_ERROR_STATUS, twin::SIZE_ERROR_CODE, e.0)));
                }
                i.reported = next;
                i.reported_version += 1;
                i.twin_version += 1;
                twin::touch_metadata(&mut i.reported_meta, &p2, &now, i.reported_version);
                i.reported_updated = now;
                q::put_identity(c, &i)?;
                Ok(Ok((i.reported_version, i.twin_version)))
            })
            .await;
        match res {
            Ok(Ok((v, twin_version))) => {
                self.twin_response(204, rid, Some(v), Vec::new());
                let change = crate::routing::TwinChange {
                    replace: false,
                    version: twin_version,
                    tags: None,
                    properties: Some(("reported", &patch)),
                };
                crate::routing::twin_changed(
                    &self.hub,
                    &self.device,
                    self.module.as_deref(),
                    &change,
                );
                self.hub.emit(&self.device, json!({"type":"twinReported","deviceId":self.device,"moduleId":self.module,"version":v,"patch":patch}));
            }
            Ok(Err((status, code, msg))) => self.twin_error(status, code, rid, &msg),
            Err(e) => self.twin_error(500, 500001, rid, &e.to_string()),
        }
    }

    /// Store and broadcast one telemetry message (also used for the will): it joins
    /// [`Conn::batch`], sent once the read is handled (or now, when the batch is full). `props`
    /// is a validated raw property bag. With `acked`, the message gets the next number for
    /// [`Conn::commits`]. False when the telemetry log is not running.
    async fn ingest(&mut self, props: String, payload: &[u8], acked: bool) -> bool {
        let record = D2cRecord {
            origin: self.origin.clone(),
            enqueued_ns: self.read_at_us.saturating_mul(1000),
            properties: props,
            body: payload.to_vec(),
            source: crate::routing::Source::Telemetry,
        };
        // Only build the JSON for the live stream when someone is watching it.
        if self.watched {
            let _ = self.hub.events.send(Arc::new(crate::hub::HubEvent {
                device_id: self.device.clone(),
                json: record.to_json(),
            }));
        }
        if acked {
            self.last_seq += 1;
            self.batch
                .push(record, Some((&self.commits, self.last_seq)));
        } else {
            self.batch.push(record, None);
        }
        !self.batch.is_full() || self.send_batch().await
    }

    pub(super) async fn ingest_will(&mut self, w: LastWill) {
        let mut props = String::new();
        if let Ok(DeviceTopic::Telemetry { bag }) =
            topic::parse_device_publish(&w.topic, self.topic_id())
        {
            if bag.validate().is_ok() {
                props.push_str(bag.as_raw());
            } else {
                tracing::info!(client_id = %self.cid, "will properties dropped: undecodable");
            }
        }
        telemetry::push_pair(&mut props, "iothub-MessageType", "Will");
        if w.retain {
            telemetry::push_pair(&mut props, "mqtt-retain", "true");
        }
        tracing::info!(client_id = %self.cid, "forwarding will message as telemetry");
        self.note_read();
        self.ingest(props, &w.message, false).await;
        self.send_batch().await;
    }
}

/// A read of `stream` into `buf` if it completes without waiting: `None` when it would wait
/// (the task's waker is registered, as by any poll).
async fn read_ready<S: Io>(stream: &mut S, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
    let mut read = std::pin::pin!(stream.read_buf(buf));
    std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}
