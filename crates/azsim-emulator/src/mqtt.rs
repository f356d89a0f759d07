//! The MQTT 3.1.1 device endpoint over TLS: CONNECT authentication, the per-identity topic ACL,
//! telemetry ingest, twin and method traffic, and C2D delivery. Framing is `rumqttc`'s
//! `mqttbytes::v4`; every topic, username and token rule comes from `azsim-proto`. A protocol
//! violation closes only the offending connection, as IoT Hub does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use azsim_proto::property_bag::Ack;
use azsim_proto::topic::{self, DeviceTopic, Identity as TopicId, SubscriptionKind};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as MqttError, Protocol, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::hub::{ConnCmd, ConnEntry, Hub, LiveGuard, Subs, client_id, twin_device_view};
use crate::store::{C2dMessage, q};
use crate::telemetry::{self, D2cRecord, Origin};
use crate::twin;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn accept_loop(
    hub: Arc<Hub>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "mqtt accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Without NODELAY every TLS handshake stalls ~40 ms on delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let hub = hub.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _live = LiveGuard::new(hub.clone());
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => connection(hub, stream, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

type Stream = TlsStream<TcpStream>;

async fn write_packet(stream: &mut Stream, p: Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    p.write(&mut out, usize::MAX)
        .map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.flush().await
}

fn max_packet(hub: &Hub) -> usize {
    hub.cfg.limits.d2c_max_bytes + 64 * 1024
}

/// Read the first packet; answer CONNACK 1 to anything that is not MQTT 3.1.1.
async fn read_connect(
    hub: &Hub,
    stream: &mut Stream,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> Option<Connect> {
    let max = max_packet(hub);
    loop {
        let snapshot = buf.clone();
        match Packet::read(buf, max) {
            Ok(Packet::Connect(c)) if c.protocol == Protocol::V4 => return Some(c),
            Ok(Packet::Connect(_))
            | Err(MqttError::InvalidProtocolLevel(_) | MqttError::InvalidProtocol) => {
                tracing::info!(%peer, "refused: unacceptable protocol (only MQTT 3.1.1 is supported)");
                let _ = write_packet(
                    stream,
                    Packet::ConnAck(ConnAck::new(
                        ConnectReturnCode::RefusedProtocolVersion,
                        false,
                    )),
                )
                .await;
                return None;
            }
            Ok(other) => {
                tracing::info!(%peer, packet = ?packet_name(&other), "closed: first packet is not CONNECT");
                return None;
            }
            Err(MqttError::InsufficientBytes(_)) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_buf(buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                }
            }
            Err(e) => {
                // An MQTT 5 CONNECT does not parse as v4; recognise it with the v5 codec so the
                // client gets the documented CONNACK 1 rather than a silent close.
                let mut copy = snapshot;
                if let Ok(rumqttc::v5::mqttbytes::v5::Packet::Connect(..)) =
                    rumqttc::v5::mqttbytes::v5::Packet::read(&mut copy, Some(max as u32))
                {
                    tracing::info!(%peer, "refused: MQTT 5 CONNECT (only MQTT 3.1.1 is supported)");
                    let _ = write_packet(
                        stream,
                        Packet::ConnAck(ConnAck::new(
                            ConnectReturnCode::RefusedProtocolVersion,
                            false,
                        )),
                    )
                    .await;
                } else {
                    tracing::info!(%peer, error = %e, "closed: malformed first packet");
                }
                return None;
            }
        }
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

struct Authed {
    device: String,
    module: Option<String>,
    generation_id: String,
    se: u64,
}

/// CONNECT checks. Errors are the precise reason, logged by the caller (never the token).
async fn authenticate(hub: &Hub, c: &Connect) -> Result<Authed, String> {
    let (device, module) = azsim_proto::username::parse_client_id(&c.client_id)
        .map(|(d, m)| (d.to_string(), m.map(str::to_string)))
        .ok_or("bad client id")?;
    let login = c.login.as_ref().ok_or("no username/password")?;
    crate::auth::check_username(&login.username, &hub.cfg.hostname, &c.client_id)?;
    if login.password.is_empty() {
        return Err("no password (x509 is not supported by the local hub)".into());
    }
    let token = azsim_proto::sas::Token::parse(&login.password)
        .map_err(|e| format!("malformed token: {e}"))?;
    let ident = crate::hub::load_identity(hub, &device, module.as_deref())
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "unknown {}",
                if module.is_some() { "module" } else { "device" }
            )
        })?;
    if !ident.enabled {
        return Err("device disabled".into());
    }
    let resources = crate::auth::identity_resources(
        &hub.cfg.hostname,
        hub.mqtt_port,
        &device,
        module.as_deref(),
    );
    crate::auth::verify_device_token(
        &token,
        &[ident.primary_key.expose(), ident.secondary_key.expose()],
        &resources,
        hub.clock().unix_secs(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Authed {
        device,
        module,
        generation_id: ident.generation_id,
        se: token.expiry(),
    })
}

enum Close {
    /// The device sent DISCONNECT: no will.
    Graceful,
    /// Anything else: the will is sent.
    Ungraceful(String),
    /// The hub is stopping.
    Shutdown,
}

struct Conn {
    hub: Arc<Hub>,
    cid: String,
    device: String,
    module: Option<String>,
    conn_id: u64,
    subs: Arc<Subs>,
    filters: Vec<(String, SubscriptionKind)>,
    clean: bool,
    inflight: HashMap<u16, (i64, String)>,
    next_pkid: u16,
    /// Who this connection's telemetry comes from (shared by its messages).
    origin: Arc<Origin>,
    out: BytesMut,
    activity: Arc<crate::activity::Cell>,
}

async fn connection(hub: Arc<Hub>, mut stream: Stream, peer: SocketAddr) {
    let mut buf = BytesMut::with_capacity(4096);
    let Some(connect) = read_connect(&hub, &mut stream, &mut buf, peer).await else {
        return;
    };
    let authed = match authenticate(&hub, &connect).await {
        Ok(a) => a,
        Err(reason) => {
            tracing::info!(%peer, client_id = %connect.client_id, reason = %reason, "CONNACK 5 not authorized");
            let _ = write_packet(
                &mut stream,
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false)),
            )
            .await;
            return;
        }
    };
    let id = TopicId {
        device_id: &authed.device,
        module_id: authed.module.as_deref(),
    };
    let will = connect.last_will.clone().filter(|w| {
        let ok = matches!(topic::parse_device_publish(&w.topic, id), Ok(DeviceTopic::Telemetry { .. }));
        if !ok {
            tracing::info!(client_id = %connect.client_id, "will ignored: its topic is not this identity's telemetry topic");
        }
        ok
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cid = client_id(&authed.device, authed.module.as_deref());
    let mut conn = Conn {
        conn_id: hub.new_conn_id(),
        hub: hub.clone(),
        cid: cid.clone(),
        device: authed.device.clone(),
        module: authed.module.clone(),
        subs: Arc::new(Subs::default()),
        filters: Vec::new(),
        clean: connect.clean_session,
        inflight: HashMap::new(),
        next_pkid: 0,
        origin: Arc::new(Origin {
            device_id: authed.device.clone(),
            module_id: authed.module.clone(),
            generation_id: authed.generation_id.clone(),
        }),
        out: BytesMut::with_capacity(256),
        activity: hub.store.activity().cell(&cid),
    };
    // Session state: a persistent session keeps its subscriptions (and so its C2D delivery).
    let cid2 = cid.clone();
    let clean = conn.clean;
    let stored = hub
        .store
        .call(move |c| {
            if clean {
                q::set_session_filters(c, &cid2, &[])?;
                Ok(Vec::new())
            } else {
                q::session_filters(c, &cid2)
            }
        })
        .await
        .unwrap_or_default();
    for f in stored {
        if let Ok(kind) = topic::classify_subscription(&f, conn.topic_id()) {
            conn.set_flag(kind, true);
            conn.filters.push((f, kind));
        }
    }
    hub.register(
        &cid,
        ConnEntry {
            conn_id: conn.conn_id,
            tx,
            subs: conn.subs.clone(),
        },
    );
    if write_packet(
        &mut stream,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await
    .is_err()
    {
        hub.unregister(&cid, conn.conn_id);
        return;
    }
    tracing::info!(%peer, client_id = %cid, clean = connect.clean_session, keep_alive = connect.keep_alive, "device connected");
    conn.activity.connected(hub.now_us());
    hub.emit(
        &authed.device,
        json!({"type":"connected","deviceId":authed.device,"moduleId":authed.module,"reason":null}),
    );

    let keep = (connect.keep_alive > 0).then(|| {
        Duration::from_millis(
            u64::from(connect.keep_alive.min(hub.cfg.limits.max_keep_alive)) * 1500,
        )
    });
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    // One keep-alive timer for the whole connection: a read only notes the time, and when the
    // timer fires early it moves to the last read plus the keep-alive (no timer work per packet).
    let mut last_read = Instant::now();
    let idle = tokio::time::sleep_until(keep.map_or(far, |k| last_read + k));
    // Token expiry is Unix time, so it follows the hub's clock (a test's manual clock too).
    let clock = hub.clock().clone();
    let expiry = clock.sleep_until_ms(authed.se.saturating_mul(1000));
    let mut shutdown = hub.shutdown.subscribe();
    let stopping = crate::hub::until_shutdown(&mut shutdown);
    tokio::pin!(idle, expiry, stopping);
    let mut close = None;
    if conn.subs.c2d.load(Ordering::Acquire)
        && let Err(e) = conn.deliver_c2d().await
    {
        close = Some(Close::Ungraceful(e));
    }
    while close.is_none() {
        // Everything the last read batch (or command) produced goes out in one write.
        if !conn.out.is_empty() {
            if let Err(e) = stream.write_all(&conn.out).await {
                close = Some(Close::Ungraceful(format!("write failed: {e}")));
                break;
            }
            conn.out.clear();
            let _ = stream.flush().await;
        }
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(ConnCmd::Publish(p)) => { let _ = Packet::Publish(p).write(&mut conn.out, usize::MAX); }
                Some(ConnCmd::C2dWake) => if let Err(e) = conn.deliver_c2d().await { close = Some(Close::Ungraceful(e)); },
                Some(ConnCmd::Kick(reason)) => close = Some(Close::Ungraceful(reason.to_string())),
                None => close = Some(Close::Ungraceful("hub dropped the connection".into())),
            },
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => close = Some(Close::Ungraceful("connection closed by the device".into())),
                Err(e) => close = Some(Close::Ungraceful(format!("read failed: {e}"))),
                Ok(_) => {
                    last_read = Instant::now();
                    close = conn.process(&mut buf).await;
                }
            },
            () = &mut idle => {
                let due = keep.map_or(far, |k| last_read + k);
                if due > Instant::now() {
                    idle.as_mut().reset(due);
                } else {
                    close = Some(Close::Ungraceful("404104 DeviceConnectionClosedRemotely: keep-alive timeout".into()));
                }
            }
            () = &mut expiry => {
                close = Some(Close::Ungraceful("401003 IoTHubUnauthorized: sas token expired".into()));
            }
            () = &mut stopping => close = Some(Close::Shutdown),
        }
    }
    if !conn.out.is_empty() {
        let _ = stream.write_all(&conn.out).await;
    }
    let _ = stream.shutdown().await;
    let close = close.unwrap_or(Close::Shutdown);
    let reason = match &close {
        Close::Graceful => "disconnect".to_string(),
        Close::Ungraceful(r) => r.clone(),
        Close::Shutdown => "hub shutting down".to_string(),
    };
    tracing::info!(client_id = %cid, reason = %reason, "device disconnected");
    if hub.unregister(&cid, conn.conn_id) {
        conn.activity.disconnected(hub.now_us());
        hub.emit(&conn.device, json!({"type":"disconnected","deviceId":conn.device,"moduleId":conn.module,"reason":reason}));
    }
    if let (Close::Ungraceful(_), Some(w)) = (&close, will) {
        conn.ingest_will(w).await;
    }
}

impl Conn {
    fn topic_id(&self) -> TopicId<'_> {
        TopicId {
            device_id: &self.device,
            module_id: self.module.as_deref(),
        }
    }

    fn set_flag(&self, kind: SubscriptionKind, on: bool) {
        let f = match kind {
            SubscriptionKind::C2d => &self.subs.c2d,
            SubscriptionKind::Methods => &self.subs.methods,
            SubscriptionKind::TwinResponses => &self.subs.twin_res,
            SubscriptionKind::DesiredPatches => &self.subs.desired,
            SubscriptionKind::ModuleInputs => return,
        };
        f.store(on, Ordering::Release);
    }

    /// Handle every complete packet in `buf`.
    async fn process(&mut self, buf: &mut BytesMut) -> Option<Close> {
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

    async fn handle(&mut self, p: Packet) -> Option<Close> {
        match p {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(a) => {
                self.activity.touch(self.hub.now_us());
                if let Some((seq, mid)) = self.inflight.remove(&a.pkid) {
                    self.complete_c2d(seq, mid).await;
                }
                None
            }
            Packet::Subscribe(s) => {
                let mut codes = Vec::with_capacity(s.filters.len());
                let mut wake = false;
                for f in &s.filters {
                    let kind = match topic::classify_subscription(&f.path, self.topic_id()) {
                        Ok(k) => k,
                        Err(e) => {
                            return Some(Close::Ungraceful(format!(
                                "SUBSCRIBE to '{}' not allowed: {e}",
                                f.path
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
                let _ = Packet::UnsubAck(UnsubAck::new(u.pkid)).write(&mut self.out, usize::MAX);
                self.persist_filters().await;
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

    async fn persist_filters(&self) {
        if self.clean {
            return;
        }
        let cid = self.cid.clone();
        let filters: Vec<String> = self.filters.iter().map(|(f, _)| f.clone()).collect();
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
        self.activity.touch(self.hub.now_us());
        if p.qos == QoS::ExactlyOnce {
            return Some(Close::Ungraceful("QoS 2 PUBLISH is not supported".into()));
        }
        let parsed = match topic::parse_device_publish(&p.topic, self.topic_id()) {
            Ok(t) => t,
            Err(e) => {
                return Some(Close::Ungraceful(format!(
                    "PUBLISH to '{}' not allowed: {e}",
                    p.topic
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
                // Stored as received; the JSON is built only when read.
                let mut props = bag.as_raw().to_owned();
                if p.retain {
                    telemetry::push_pair(&mut props, "mqtt-retain", "true");
                }
                self.ingest(props, &p.payload).await;
                if p.qos == QoS::AtLeastOnce {
                    let _ = Packet::PubAck(PubAck::new(p.pkid)).write(&mut self.out, usize::MAX);
                }
            }
            DeviceTopic::MethodResponse { status, rid } => {
                let mut r = String::new();
                if rid.decode_to(&mut r).is_ok()
                    && !self
                        .hub
                        .method_reply(&self.cid, &r, status, p.payload.clone())
                {
                    tracing::info!(client_id = %self.cid, rid = %r, "method response dropped: no pending request (late or unknown)");
                }
                self.puback(&p);
            }
            DeviceTopic::TwinGet { rid } => {
                let mut r = String::new();
                let _ = rid.decode_to(&mut r);
                let (d, m) = (self.device.clone(), self.module.clone());
                let res = self
                    .hub
                    .store
                    .call(move |c| q::get_identity(c, &d, m.as_deref()))
                    .await;
                match res {
                    Ok(Some(i)) => self.twin_response(
                        200,
                        &r,
                        None,
                        twin_device_view(&i).to_string().into_bytes(),
                    ),
                    _ => self.twin_error(404, 404001, &r, "device not found"),
                }
                self.puback(&p);
            }
            DeviceTopic::TwinPatchReported { rid } => {
                let mut r = String::new();
                let _ = rid.decode_to(&mut r);
                self.patch_reported(&r, &p.payload).await;
                self.puback(&p);
            }
        }
        None
    }

    fn puback(&mut self, p: &Publish) {
        if p.qos == QoS::AtLeastOnce {
            let _ = Packet::PubAck(PubAck::new(p.pkid)).write(&mut self.out, usize::MAX);
        }
    }

    fn twin_response(&mut self, status: u16, rid: &str, version: Option<u64>, body: Vec<u8>) {
        let mut t = String::new();
        if topic::write_twin_response(&mut t, status, rid, version).is_ok() {
            let _ = Packet::Publish(Publish::new(t, QoS::AtMostOnce, body))
                .write(&mut self.out, usize::MAX);
        }
    }

    fn twin_error(&mut self, status: u16, code: u32, rid: &str, message: &str) {
        let body = json!({
            "errorCode": code, "trackingId": uuid::Uuid::new_v4().simple().to_string(),
            "message": message, "timestampUtc": self.hub.clock().now_rfc3339(),
        });
        self.twin_response(status, rid, None, body.to_string().into_bytes());
    }

    async fn patch_reported(&mut self, rid: &str, body: &[u8]) {
        let patch = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            _ => return self.twin_error(400, 400004, rid, "reported patch must be a JSON object"),
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
                    return Ok(Err("device not found".to_string()));
                };
                let mut next = i.reported.clone();
                twin::merge(&mut next, &p2);
                if let Err(e) =
                    twin::check_size(&next, twin::MAX_SECTION_BYTES, "reported properties")
                {
                    return Ok(Err(e.0));
                }
                i.reported = next;
                i.reported_version += 1;
                i.twin_version += 1;
                i.reported_updated = now;
                q::put_identity(c, &i)?;
                Ok(Ok(i.reported_version))
            })
            .await;
        match res {
            Ok(Ok(v)) => {
                self.twin_response(204, rid, Some(v), Vec::new());
                self.hub.emit(&self.device, json!({"type":"twinReported","deviceId":self.device,"moduleId":self.module,"version":v,"patch":patch}));
            }
            Ok(Err(msg)) => self.twin_error(400, 400004, rid, &msg),
            Err(e) => self.twin_error(500, 500001, rid, &e.to_string()),
        }
    }

    /// Store and broadcast one telemetry message (also used for the will). `props` is a
    /// validated raw property bag.
    async fn ingest(&self, props: String, payload: &[u8]) {
        let record = D2cRecord {
            origin: self.origin.clone(),
            enqueued_ns: self.hub.clock().unix_ns(),
            properties: props,
            body: payload.to_vec(),
        };
        // Only build the JSON for the live stream when someone is watching it.
        if self.hub.events.receiver_count() > 0 {
            let _ = self.hub.events.send(Arc::new(crate::hub::HubEvent {
                device_id: self.device.clone(),
                json: record.to_json(),
            }));
        }
        self.hub.store.log_event(record).await;
    }

    async fn ingest_will(&self, w: LastWill) {
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
        self.ingest(props, &w.message).await;
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Send every queued C2D message not already in flight (expired or over-delivered ones are
    /// dead-lettered instead).
    async fn deliver_c2d(&mut self) -> Result<(), String> {
        if self.module.is_some() || !self.subs.c2d.load(Ordering::Acquire) {
            return Ok(());
        }
        let device = self.device.clone();
        let skip: Vec<i64> = self.inflight.values().map(|(s, _)| *s).collect();
        let max_dc = self.hub.cfg.limits.c2d_max_delivery_count;
        let now = self.hub.now_ms();
        let batch = self
            .hub
            .store
            .call(move |c| {
                let mut send = Vec::new();
                for m in q::c2d_pending(c, &device)? {
                    if skip.contains(&m.seq) {
                        continue;
                    }
                    if m.expiry_ms <= now {
                        tracing::info!(device = %device, message_id = %m.message_id, "c2d dead-lettered: Expired");
                        q::c2d_dead_letter(c, m.seq, "Expired", now)?;
                    } else if m.delivery_count >= max_dc {
                        tracing::info!(device = %device, message_id = %m.message_id, "c2d dead-lettered: DeliveryCountExceeded");
                        q::c2d_dead_letter(c, m.seq, "DeliveryCountExceeded", now)?;
                    } else {
                        q::c2d_mark_delivered(c, m.seq)?;
                        send.push(m);
                    }
                }
                Ok(send)
            })
            .await
            .map_err(|e| e.to_string())?;
        for m in batch {
            let pkid = self.alloc_pkid();
            let topic = c2d_topic(&m);
            let mut p = Publish::new(topic, QoS::AtLeastOnce, m.body.clone());
            p.pkid = pkid;
            p.dup = m.delivery_count > 0;
            self.inflight.insert(pkid, (m.seq, m.message_id.clone()));
            let _ = Packet::Publish(p).write(&mut self.out, usize::MAX);
        }
        Ok(())
    }

    async fn complete_c2d(&self, seq: i64, message_id: String) {
        let now = self.hub.now_ms();
        let r = self
            .hub
            .store
            .call(move |c| q::c2d_complete(c, seq, now))
            .await;
        if let Ok(true) = r {
            self.hub.emit(
                &self.device,
                json!({"type":"c2dCompleted","deviceId":self.device,"messageId":message_id}),
            );
        }
    }
}

fn c2d_topic(m: &C2dMessage) -> String {
    let mut to = String::new();
    let _ = topic::write_c2d_to(&mut to, &m.device_id);
    let sys = azsim_proto::property_bag::SystemProperties {
        message_id: Some(&m.message_id),
        correlation_id: m.correlation_id.as_deref(),
        user_id: m.user_id.as_deref(),
        content_type: m.content_type.as_deref(),
        content_encoding: m.content_encoding.as_deref(),
        to: Some(&to),
        ack: Some(Ack::parse(&m.ack).unwrap_or_default()),
        ..Default::default()
    };
    let mut t = String::new();
    let _ = topic::write_c2d_topic(
        &mut t,
        &m.device_id,
        &sys,
        m.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    t
}
