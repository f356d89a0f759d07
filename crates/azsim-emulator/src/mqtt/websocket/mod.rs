//! MQTT over WebSockets: `wss://{host}:{https port}/$iothub/websocket` with the subprotocol
//! `mqtt`, served on the HTTPS listener as Azure serves REST and WebSockets on 443. After the
//! upgrade the connection is an MQTT connection like any other: the same CONNECT check, the
//! same connection loop, the same rules ([`super::open_stream_with_certs`], with the client
//! certificate of the HTTPS connection for X.509 devices; [`super::connection`]).
//!
//! The upgrade needs no `Authorization` header (the REST auth layer lets this path through):
//! a device proves who it is in its CONNECT, as over TCP. An upgrade without the `mqtt`
//! subprotocol gets 400. Until its CONNACK the connection is bounded as over TCP: one deadline
//! (`HubLimits::connect_deadline`, from the upgrade) for the CONNECT and its SAS check, the
//! CONNECT's size (`pre_auth_max_bytes`), and at most `max_pre_auth_connections` such
//! WebSocket connections at once (the HTTPS listener's own cap ends at the first request).
//!
//! tungstenite reads a frame whole (and reserves its announced length as soon as its header is
//! in) before its bytes reach the MQTT reader, and its size limits are fixed for the life of a
//! `WebSocketStream`. So until the CONNECT is authenticated the upgraded stream is read through
//! [`PreAuthLimit`], which scans the frame headers as they arrive: a frame, or a fragmented
//! message, whose payload is over `pre_auth_max_bytes` + [`PRE_AUTH_SLACK`] fails the read
//! before tungstenite has buffered it, and the hub answers with close code 1009 (message too
//! big) and ends the connection. From the CONNACK on the scan is off and tungstenite's own
//! limits apply: a frame or message up to the largest packet (`d2c_max_bytes` + 64 KiB), past
//! which it is closed with 1009 too. Before authentication all the frames together (pings
//! included) may carry at most twice that cap: tungstenite answers every ping, and a client
//! that pings without reading would make it queue the pongs. After it, the frames waiting to
//! be written are bounded ([`WRITE_CHUNK`] per write, twice that in all; a pong that does not
//! fit waits for the one before it). The upgrade request's head is bounded by the HTTPS
//! listener (`rest/mod.rs`: its buffer is `pre_auth_max_bytes`, 431 beyond, and the header
//! timeout).
//!
//! The same listener serves AMQP over WebSockets, as Azure does on 443: an upgrade offering the
//! subprotocol `AMQPWSB10` on [`PATH`] (the IoT Hub SDKs) or on [`SERVICEBUS_PATH`] (the Event
//! Hubs SDKs, `azure-amqp`) or on [`ROOT_PATH`] (the C# DPS client) is an AMQP connection
//! (`amqp/websocket.rs`), under the same
//! pre-auth cap, deadline and byte limits. A subprotocol the path does not serve gets 400, as
//! IoT Hub answers; another path is an ordinary REST request (400 InvalidProtocolVersion without
//! an api-version, which is what IoT Hub answers such an upgrade).
//!
//! Framing is tungstenite's; [`WsBytes`] turns the binary messages into the byte stream MQTT
//! runs over (the same adapter serves `azsim run --websockets` on the device side). MQTT
//! packets may span frames and frames may hold several packets (MQTT 3.1.1, 6.0), so the
//! bytes are simply concatenated.
//!
//! When the hub ends a device's connection (keep-alive expiry, token expiry, a newer
//! connection, a DISCONNECT) it runs the WebSocket closing handshake as Azure's WebSocket
//! channel does (`ServerWebSocketChannel.DoClose` in Azure/iotedge's edgeHub: `CloseAsync`
//! with 1000 NormalClosure, the TCP connection dropped only when the client's Close has come
//! back or the wait is over): a Close frame with code 1000, then it keeps reading (and drops
//! whatever data still comes) until the client's Close, its end of the stream, or
//! [`CLOSE_HANDSHAKE_TIMEOUT`]; only then is the TCP connection closed. paho-mqtt 1.6.1 (the
//! Python device SDK's MQTT client) answers a Close frame with a raw TLS write from its
//! network thread and catches only `ConnectionError` around it: when the hub dropped TCP
//! right behind its Close frame, data the client still had in flight (a flaky network's
//! backlog) drew a reset, that write raised `ssl.SSLEOFError`, and the network thread died
//! without reporting a disconnect, so the SDK never reconnected (the SDK's own flaky-network
//! stress test over WebSockets). A hub that is stopping does not wait for the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::hub::{Hub, LiveGuard};

mod pre_auth;
mod stream;

pub(crate) use pre_auth::{PRE_AUTH_SLACK, PreAuthLimit};
pub use stream::{WRITE_CHUNK, WsBytes};

/// The path devices open (IoT Hub's).
pub(crate) const PATH: &str = "/$iothub/websocket";
/// The subprotocol a client must offer.
pub const SUBPROTOCOL: &str = "mqtt";
/// The path the Event Hubs and Service Bus clients open for AMQP (`azure-amqp`, pyAMQP).
pub(crate) const SERVICEBUS_PATH: &str = "/$servicebus/websocket";
/// The subprotocol of AMQP over WebSockets (AMQP WebSocket Binding 1.0).
pub(crate) const AMQP_SUBPROTOCOL: &str = "AMQPWSB10";
/// How long the hub waits for a client's Close frame after sending its own before it closes
/// the TCP connection anyway (a client that is gone, or never answers). A client that reads
/// answers within milliseconds; edgeHub gives its `CloseAsync` 30 s.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The root path, where the C# provisioning SDK opens AMQP over WebSockets
/// (`ProvisioningTransportHandlerAmqp` with `WebSocketOnly`: `wss://{host}:443/`, no path, in
/// `AMQPWSB10`). Only such an upgrade is served there; anything else on `/` is answered as
/// before (the REST API's).
pub(crate) const ROOT_PATH: &str = "/";

/// [`PATH`] and [`SERVICEBUS_PATH`], each also with a trailing `/` (uamqp, inside
/// `azure-iot-hub`, opens `/$servicebus/websocket/`), and [`ROOT_PATH`] for `AMQPWSB10`, sharing
/// one cap on unauthenticated WebSocket connections.
pub(crate) fn routes(hub: &Hub) -> axum::Router<Arc<Hub>> {
    let pre_auth = Arc::new(Semaphore::new(
        hub.cfg
            .limits
            .max_pre_auth_connections
            .min(Semaphore::MAX_PERMITS),
    ));
    let handler = route(pre_auth.clone());
    let mut router = axum::Router::new();
    for path in [PATH, SERVICEBUS_PATH] {
        router = router
            .route(path, handler.clone())
            .route(&format!("{path}/"), handler.clone());
    }
    router.route(
        ROOT_PATH,
        axum::routing::any(move |State(hub): State<Arc<Hub>>, req: Request| {
            let pre_auth = pre_auth.clone();
            async move {
                if is_root_amqp_upgrade(req.uri().path(), req.headers()) {
                    upgrade(hub, pre_auth, req).await
                } else {
                    // Authenticated REST on `/` (the auth layer let it through): no resource.
                    crate::rest::not_found().await.into_response()
                }
            }
        }),
    )
}

/// `path` without one trailing `/`.
fn endpoint(path: &str) -> &str {
    path.strip_suffix('/').unwrap_or(path)
}

/// Whether `path` is a WebSocket endpoint (the client authenticates in its protocol, not in
/// the upgrade).
pub(crate) fn is_upgrade_path(path: &str) -> bool {
    let path = endpoint(path);
    path == PATH || path == SERVICEBUS_PATH
}

/// Whether a request is a WebSocket upgrade of [`ROOT_PATH`] offering `AMQPWSB10` (C#'s DPS
/// client): it authenticates in AMQP, not in the upgrade. Another request of `/` is REST.
pub(crate) fn is_root_amqp_upgrade(path: &str, h: &HeaderMap) -> bool {
    path == ROOT_PATH
        && has_token(h, header::CONNECTION, "upgrade", false)
        && has_token(h, header::UPGRADE, "websocket", false)
        && has_token(h, header::SEC_WEBSOCKET_PROTOCOL, AMQP_SUBPROTOCOL, true)
}

/// Whether the comma-separated values of header `name` hold `token` (its case ignored unless
/// `exact`).
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str, exact: bool) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| {
            if exact {
                t == token
            } else {
                t.eq_ignore_ascii_case(token)
            }
        })
}

/// What the upgraded connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Mqtt,
    Amqp,
}

/// The handler of the WebSocket paths, with the cap on unauthenticated connections.
fn route(pre_auth: Arc<Semaphore>) -> axum::routing::MethodRouter<Arc<Hub>> {
    axum::routing::get(move |State(hub): State<Arc<Hub>>, req: Request| {
        upgrade(hub, pre_auth.clone(), req)
    })
}

/// Checks the upgrade request, answers 101 and runs the MQTT connection on the upgraded stream.
async fn upgrade(hub: Arc<Hub>, pre_auth: Arc<Semaphore>, mut req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let (key, protocol) = match check_upgrade(req.uri().path(), req.headers()) {
        Ok(ok) => ok,
        Err(why) => {
            tracing::info!(%peer, reason = why, "websocket upgrade refused: 400");
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    if protocol == Protocol::Amqp && hub.amqp_eventhub.get().is_none() {
        tracing::info!(%peer, "amqp websocket upgrade refused: AMQP is off on this hub: 404");
        return (StatusCode::NOT_FOUND, "AMQP is off on this hub").into_response();
    }
    let Ok(permit) = pre_auth.try_acquire_owned() else {
        tracing::warn!(%peer, "too many unauthenticated websocket connections: 503");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    // The HTTPS connection's client certificate authenticates an X.509 device (both protocols).
    let certs = req
        .extensions()
        .get::<crate::x509::PeerCerts>()
        .and_then(crate::x509::PeerCerts::to_vec);
    if protocol == Protocol::Amqp {
        let on_upgrade = hyper::upgrade::on(&mut req);
        crate::amqp::websocket::spawn(hub, permit, on_upgrade, peer, certs);
        return switching_protocols(&key, AMQP_SUBPROTOCOL);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * WRITE_CHUNK)
        .max_frame_size(Some(super::max_packet(&hub)))
        .max_message_size(Some(super::max_packet(&hub)));
    tokio::spawn(async move {
        let _live = LiveGuard::new(hub.clone());
        let deadline = Instant::now() + hub.cfg.limits.connect_deadline;
        let opened = tokio::time::timeout_at(deadline, async {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "websocket upgrade failed");
                    return None;
                }
            };
            let max = hub
                .cfg
                .limits
                .pre_auth_max_bytes
                .saturating_add(PRE_AUTH_SLACK);
            let ws = WebSocketStream::from_raw_socket(
                PreAuthLimit::new(TokioIo::new(upgraded), max, peer),
                Role::Server,
                Some(config),
            )
            .await;
            let ws =
                WsBytes::new(ws).close_handshake(CLOSE_HANDSHAKE_TIMEOUT, hub.shutdown.subscribe());
            super::open_stream_with_certs(&hub, ws, peer, certs).await
        })
        .await;
        match opened {
            Ok(Some(mut opened)) => {
                // Authenticated: from here on tungstenite's limits (the largest packet) apply.
                opened.stream.lift_pre_auth();
                drop(permit);
                super::connection(hub, opened, peer).await;
            }
            Ok(None) => {}
            Err(_) => {
                tracing::info!(%peer, "closed: websocket not authenticated within the connect deadline")
            }
        }
    });
    switching_protocols(&key, SUBPROTOCOL)
}

/// The 101 answer to an upgrade with `key`, in `subprotocol`.
fn switching_protocols(key: &[u8], subprotocol: &'static str) -> Response {
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol),
    );
    if let Ok(accept) = HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r
}

/// The `Sec-WebSocket-Key` of a valid WebSocket upgrade (RFC 6455, 4.2.1) of `path` and the
/// protocol its offered subprotocol picks (`mqtt` on [`PATH`], `AMQPWSB10` on either path);
/// otherwise why not.
fn check_upgrade(path: &str, h: &HeaderMap) -> Result<(Vec<u8>, Protocol), &'static str> {
    let tokens = |name: header::HeaderName| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    if !tokens(header::CONNECTION)
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
        || !tokens(header::UPGRADE)
            .iter()
            .any(|t| t.eq_ignore_ascii_case("websocket"))
    {
        return Err("not a websocket upgrade");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("unsupported websocket version (13 is)");
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("missing Sec-WebSocket-Key")?;
    let path = endpoint(path);
    let offered = tokens(header::SEC_WEBSOCKET_PROTOCOL);
    let offers = |p: &str| offered.iter().any(|t| t == p);
    let protocol = if path == PATH && offers(SUBPROTOCOL) {
        Protocol::Mqtt
    } else if offers(AMQP_SUBPROTOCOL) {
        Protocol::Amqp
    } else if path == PATH {
        return Err("the websocket subprotocol must be mqtt or AMQPWSB10");
    } else {
        return Err("the websocket subprotocol must be AMQPWSB10");
    };
    Ok((key.as_bytes().to_vec(), protocol))
}
