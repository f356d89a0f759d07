//! The MQTT 3.1.1 device endpoint over TLS: CONNECT authentication, the per-identity topic ACL,
//! telemetry ingest, twin and method traffic, and C2D delivery. Framing is `rumqttc`'s
//! `mqttbytes::v4`; every topic, username and token rule comes from `azsim-proto`. A protocol
//! violation closes only the offending connection, as IoT Hub does.
//!
//! This file accepts connections and runs each one's loop (keep-alive, token expiry, hub
//! commands, shutdown); [`connect`] reads and checks the CONNECT; [`session`] handles the
//! packets of an authenticated connection.
//!
//! Until its CONNACK a connection is unauthenticated and bounded: one deadline for the TLS
//! handshake, the CONNECT and its SAS check together (`HubLimits::connect_deadline`, so a
//! client trickling a byte at a time gains nothing), a cap on the CONNECT's size
//! (`pre_auth_max_bytes`), and a cap on how many such connections may be open at once
//! (`max_pre_auth_connections`, see `listen.rs`).
//!
//! # Device and module ids with `+` or `#`
//!
//! IoT Hub's registry accepts `+` and `#` in device and module ids, but MQTT 3.1.1 forbids
//! both in a topic name (MQTT-3.3.2-2) and allows them in a filter only as a whole level (`+`)
//! or the whole last level (`#`, 4.7.1). Every topic that carries the id (the
//! telemetry topic, the C2D and module-input filters) is then malformed MQTT: the hub closes
//! the connection on such a PUBLISH or SUBSCRIBE, as it does for any topic or filter it does not
//! accept (clients refuse to send them anyway: paho says "Publish topic cannot contain
//! wildcards", MicrosoftDocs/azure-docs#16302, Azure/azure-iot-sdk-python#953), and ignores a
//! will on such a topic. Such a device still connects (the client id and username may hold
//! any character) and can use twins and direct methods, whose `$iothub/` topics carry no id,
//! and receive C2D over HTTPS; it cannot send telemetry or receive C2D over MQTT.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use azsim_proto::topic::{self, DeviceTopic, Identity as TopicId};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::hub::{ConnCmd, ConnEntry, Hub, LiveGuard, Subs, client_id};
use crate::listen::{Admitted, Gate};
use crate::store::q;
use crate::telemetry::Origin;
use crate::untrusted::Untrusted;

mod c2d;
mod connect;
mod session;
pub(crate) mod websocket;

use connect::{Authed, authenticate, read_connect};
use session::Conn;

pub(crate) async fn accept_loop(
    hub: Arc<Hub>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let limits = &hub.cfg.limits;
    let mut gate = Gate::new(listener, "mqtt", limits.max_pre_auth_connections);
    loop {
        let Admitted { tcp, peer, permit } = gate.next().await;
        let hub = hub.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _live = LiveGuard::new(hub.clone());
            // One deadline for everything before the CONNACK: TLS, the CONNECT, its SAS check.
            let deadline = Instant::now() + hub.cfg.limits.connect_deadline;
            // Boxed: inline, the handshake and CONNECT future (a whole TLS connection while it
            // handshakes, the DPS session it may turn into) would size this task for the
            // connection's whole life, though it is over at the CONNACK.
            let opened =
                tokio::time::timeout_at(deadline, Box::pin(open(&hub, &acceptor, tcp, peer))).await;
            match opened {
                Ok(Some(opened)) => {
                    drop(permit);
                    connection(hub, opened, peer).await;
                }
                Ok(None) => {}
                Err(_) => {
                    tracing::info!(%peer, "closed: not authenticated within the connect deadline")
                }
            }
        });
    }
}

/// A connection that has authenticated: its stream, what it has sent beyond the CONNECT, the
/// CONNECT and who it proved to be.
pub(crate) struct Opened<S> {
    stream: S,
    buf: BytesMut,
    connect: Connect,
    authed: Authed,
}

/// TLS handshake, then [`open_stream`].
async fn open(
    hub: &Hub,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Box<Opened<TlsStream<TcpStream>>>> {
    let stream = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "tls handshake failed");
            return None;
        }
    };
    // The client certificate chain, if one was sent: X.509 identities are checked at CONNECT.
    let certs = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
    open_stream_with_certs(hub, stream, peer, certs).await
}

/// The CONNECT and its authentication (a refusal gets its CONNACK here), on any byte stream
/// (TLS in the hub, an in-memory pipe in the fuzz harness).
/// Boxed: an async fn keeps its arguments for its whole life, so `connection` taking the ~1.5
/// KiB `Opened` by value would hold it twice (the argument and the fields moved out of it) in
/// every connection's task.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) async fn open_stream<S: Io>(
    hub: &Hub,
    stream: S,
    peer: SocketAddr,
) -> Option<Box<Opened<S>>> {
    open_stream_with_certs(hub, stream, peer, None).await
}

/// [`open_stream`] for a client that sent the certificate chain `certs` (leaf first) in its
/// TLS handshake.
pub(crate) async fn open_stream_with_certs<S: Io>(
    hub: &Hub,
    mut stream: S,
    peer: SocketAddr,
    certs: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
) -> Option<Box<Opened<S>>> {
    let mut buf = BytesMut::with_capacity(1024);
    let connect = read_connect(hub, &mut stream, &mut buf, peer).await?;
    if crate::dps::mqtt::is_dps_connect(&connect) {
        // Boxed: a DPS session's future would otherwise size every hub connection's.
        Box::pin(crate::dps::mqtt::serve(
            hub, stream, buf, connect, peer, certs,
        ))
        .await;
        return None;
    }
    match authenticate(hub, &connect, certs.as_deref()).await {
        Ok(authed) => Some(Box::new(Opened {
            stream,
            buf,
            connect,
            authed,
        })),
        Err(reason) => {
            tracing::info!(%peer, client_id = %Untrusted(&connect.client_id), reason = %reason, "CONNACK 5 not authorized");
            let _ = write_packet(
                &mut stream,
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false)),
            )
            .await;
            None
        }
    }
}

/// What a connection runs over: TLS over TCP in the hub.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A PUBLISH topic name MQTT 3.1.1 allows (no `+`, no `#`), by the codec's own rule. See the
/// module docs on ids with wildcards.
pub(super) fn is_valid_topic_name(topic: &str) -> bool {
    rumqttc::mqttbytes::valid_topic(topic)
}

/// A SUBSCRIBE filter MQTT 3.1.1 allows (`+` a whole level, `#` the whole last level), by the
/// codec's own rule. See the module docs on ids with wildcards.
pub(super) fn is_valid_filter(filter: &str) -> bool {
    rumqttc::mqttbytes::valid_filter(filter)
}

/// Whether a will may be sent on `topic`: a valid topic name that is this identity's telemetry
/// topic.
fn is_own_telemetry_topic(topic: &str, id: TopicId<'_>) -> bool {
    is_valid_topic_name(topic)
        && matches!(
            topic::parse_device_publish(topic, id),
            Ok(DeviceTopic::Telemetry { .. })
        )
}

pub(super) async fn write_packet(stream: &mut impl Io, p: Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    p.write(&mut out, usize::MAX)
        .map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.flush().await
}

pub(super) fn max_packet(hub: &Hub) -> usize {
    hub.cfg.limits.d2c_max_bytes + 64 * 1024
}

pub(super) fn packet_name(p: &Packet) -> &'static str {
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

/// Why a connection ends.
pub(super) enum Close {
    /// The device sent DISCONNECT: no will.
    Graceful,
    /// Anything else: the will is sent.
    Ungraceful(String),
    /// The hub is stopping.
    Shutdown,
}

/// An authenticated connection's life, until it closes.
pub(crate) async fn connection<S: Io>(hub: Arc<Hub>, opened: Box<Opened<S>>, peer: SocketAddr) {
    // Moved out of its box in a block, so the box is freed now: a box moved out of in place
    // is freed only when its variable goes out of scope, at the connection's end (1.5 KiB per
    // connected device).
    let Opened {
        mut stream,
        mut buf,
        connect,
        authed,
    } = {
        let opened = opened;
        *opened
    };
    // Only these outlive the CONNECT: its credentials and client id are not kept (the client
    // id is `cid`, rebuilt from the identity it names).
    let Connect {
        keep_alive,
        clean_session,
        last_will,
        client_id: connect_id,
        login,
        protocol: _,
    } = connect;
    let model_id = login
        .as_ref()
        .and_then(|l| crate::auth::model_id(&l.username));
    drop((connect_id, login));
    let id = TopicId {
        device_id: &authed.device,
        module_id: authed.module.as_deref(),
    };
    let cid = client_id(&authed.device, authed.module.as_deref());
    let will = last_will.filter(|w| {
        let ok = is_own_telemetry_topic(&w.topic, id);
        if !ok {
            tracing::info!(client_id = %cid, "will ignored: its topic is not this identity's telemetry topic");
        }
        ok
    });
    // With a tier, new connections wait for their turn at the hub's rate (`throttle`).
    if hub.cfg.tier.is_some()
        && let Err(reason) = Box::pin(crate::throttle::wait_turn(
            &hub,
            crate::throttle::Shaped::Connection,
        ))
        .await
    {
        tracing::info!(%peer, client_id = %cid, reason, "CONNACK 3 server unavailable");
        let _ = write_packet(
            &mut stream,
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::ServiceUnavailable, false)),
        )
        .await;
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        conn_id: hub.new_conn_id(),
        hub: hub.clone(),
        cid: cid.clone(),
        device: authed.device.clone(),
        module: authed.module.clone(),
        subs: Arc::new(Subs::default()),
        filters: Vec::new(),
        clean: clean_session,
        inflight: HashMap::new(),
        next_pkid: 0,
        origin: Arc::new(Origin {
            device_id: authed.device.clone(),
            module_id: authed.module.clone(),
            generation_id: authed.generation_id.clone(),
            auth: authed.auth,
        }),
        out: BytesMut::with_capacity(256),
        activity: hub.store.activity().cell(&cid),
        commits: Arc::default(),
        last_seq: 0,
        held_pubacks: VecDeque::new(),
        batch: Default::default(),
        model_id,
        read_at_us: 0,
        watched: false,
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
    let qos0 = stored.iter().any(|f| f == session::C2D_QOS0_MARK);
    conn.subs.c2d_qos0.store(qos0, Ordering::Release);
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
    tracing::info!(%peer, client_id = %cid, clean = clean_session, keep_alive, "device connected");
    conn.activity.connected(hub.now_us());
    Box::pin(conn.record_model_id()).await;
    hub.emit(
        &authed.device,
        json!({"type":"connected","deviceId":authed.device,"moduleId":authed.module,"reason":null}),
    );

    let keep = (keep_alive > 0).then(|| {
        Duration::from_millis(u64::from(keep_alive.min(hub.cfg.limits.max_keep_alive)) * 1500)
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
    let commits = conn.commits.clone();
    // One waiter on the commits for as long as it has not fired, not a new one per turn of the
    // loop: registering and dropping a `Notified` each takes the `Notify`'s lock.
    let committed = commits.changed();
    tokio::pin!(idle, expiry, stopping, committed);
    // The packet handling, C2D delivery, will and flush futures are boxed where they are
    // awaited: inline, the largest of them would be part of every connection's task for its
    // whole life (memory per connected device), though each runs only briefly.
    let mut close = None;
    if conn.subs.c2d.load(Ordering::Acquire)
        && let Err(e) = Box::pin(conn.deliver_c2d()).await
    {
        close = Some(Close::Ungraceful(e));
    }
    // A client may send packets right behind its CONNECT without waiting for the CONNACK;
    // what came in the same read as the CONNECT is handled now, not after the next read.
    if close.is_none() && !buf.is_empty() {
        close = Box::pin(conn.process(&mut buf)).await;
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
                Some(ConnCmd::Publish(p)) => { let _ = Packet::Publish(*p).write(&mut conn.out, usize::MAX); }
                Some(ConnCmd::C2dWake) => if let Err(e) = Box::pin(conn.deliver_c2d()).await { close = Some(Close::Ungraceful(e)); },
                Some(ConnCmd::Kick(reason)) => close = Some(Close::Ungraceful(reason.to_string())),
                Some(ConnCmd::Close(reason)) => { tracing::info!(client_id = %cid, reason, "closing gracefully"); close = Some(Close::Graceful) }
                None => close = Some(Close::Ungraceful("hub dropped the connection".into())),
            },
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => close = Some(Close::Ungraceful("connection closed by the device".into())),
                Err(e) => close = Some(Close::Ungraceful(format!("read failed: {e}"))),
                Ok(_) => {
                    last_read = Instant::now();
                    close = Box::pin(conn.process_ready(&mut stream, &mut buf)).await;
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
            () = &mut committed, if !conn.held_pubacks.is_empty() => {
                committed.set(commits.changed());
                close = conn.release_pubacks();
            }
            () = &mut stopping => close = Some(Close::Shutdown),
        }
    }
    if matches!(close, Some(Close::Shutdown)) && !conn.held_pubacks.is_empty() {
        // The writer is still running: what this connection sent is committed by the flush,
        // and its PUBACKs spare the device a redelivery after the restart.
        Box::pin(hub.store.flush()).await;
        let _ = conn.release_pubacks();
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
        Box::pin(conn.ingest_will(w)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of an authenticated connection's future, of the type the hub spawns (TLS over
    /// TCP), without making one: it is part of every connected device's memory for the
    /// connection's whole life.
    fn connection_future_size<S, F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<Hub>, Box<Opened<S>>, SocketAddr) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_connection_s_future_stays_small() {
        let size = connection_future_size(connection::<TlsStream<TcpStream>>);
        eprintln!(
            "connection future: {size} bytes, of which the TLS stream {}, Conn {}",
            std::mem::size_of::<TlsStream<TcpStream>>(),
            std::mem::size_of::<Conn>()
        );
        // 3232 bytes in a dev build (1224 of them the TLS stream): everything awaited only
        // briefly is boxed where it is awaited (see `connection`). The handshake + CONNECT
        // future inline (d33272c) added about 5 KiB per device.
        assert!(size <= 4096, "connection future {size} bytes");
    }

    /// The size of the future that handles what one read brought (boxed per read, see
    /// `connection`).
    fn read_handling_future_size<'a, S: Io + 'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(&'a mut Conn, &'a mut S, &'a mut BytesMut) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_read_s_handling_future_fits_malloc_s_thread_cache() {
        let size = read_handling_future_size::<TlsStream<TcpStream>, _, _>(Conn::process_ready);
        eprintln!("read handling future: {size} bytes");
        // It is allocated and freed once per read: glibc serves requests up to 1032 bytes from
        // its per-thread cache; larger ones take the arena's bins (`unlink_chunk`,
        // `malloc_consolidate` in the load bench's profile). 944 bytes in a dev build once the
        // SUBSCRIBE, twin and unsubscribe work was boxed; 1256 before.
        assert!(size <= 1032, "read handling future {size} bytes");
    }

    #[test]
    fn a_will_goes_only_to_a_valid_topic_name_of_the_identity_s_telemetry() {
        let plain = TopicId {
            device_id: "d1",
            module_id: None,
        };
        assert!(is_own_telemetry_topic("devices/d1/messages/events/", plain));
        assert!(is_own_telemetry_topic(
            "devices/d1/messages/events/a=1",
            plain
        ));
        assert!(!is_own_telemetry_topic(
            "devices/d2/messages/events/",
            plain
        ));
        assert!(!is_own_telemetry_topic("$iothub/twin/GET/?$rid=1", plain));
        for (device_id, module_id, topic) in [
            ("d+1", None, "devices/d+1/messages/events/"),
            ("d#1", None, "devices/d#1/messages/events/"),
            ("d1", Some("m+"), "devices/d1/modules/m+/messages/events/"),
        ] {
            let id = TopicId {
                device_id,
                module_id,
            };
            assert!(!is_own_telemetry_topic(topic, id), "{topic}");
        }
    }

    #[test]
    fn wildcards_inside_a_level_make_a_filter_invalid_and_any_make_a_topic_name_invalid() {
        assert!(is_valid_filter("devices/d1/messages/devicebound/#"));
        assert!(is_valid_filter("$iothub/methods/POST/#"));
        assert!(is_valid_filter("devices/+/messages/devicebound/#"));
        assert!(!is_valid_filter("devices/d+1/messages/devicebound/#"));
        assert!(!is_valid_filter("devices/d#1/messages/devicebound/#"));
        assert!(is_valid_topic_name("devices/d1/messages/events/a=1"));
        assert!(!is_valid_topic_name("devices/d+1/messages/events/"));
        assert!(!is_valid_topic_name("devices/d#1/messages/events/"));
    }
}
