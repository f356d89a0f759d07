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

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Sink, Stream};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::hub::{Hub, LiveGuard};

/// The path devices open (IoT Hub's).
pub(crate) const PATH: &str = "/$iothub/websocket";
/// The subprotocol a client must offer.
pub const SUBPROTOCOL: &str = "mqtt";
/// The path the Event Hubs and Service Bus clients open for AMQP (`azure-amqp`, pyAMQP).
pub(crate) const SERVICEBUS_PATH: &str = "/$servicebus/websocket";
/// The subprotocol of AMQP over WebSockets (AMQP WebSocket Binding 1.0).
pub(crate) const AMQP_SUBPROTOCOL: &str = "AMQPWSB10";
/// What a WebSocket message may carry before authentication beyond `pre_auth_max_bytes`: the
/// CONNECT's fixed header and a small packet a client sends right behind it.
pub(crate) const PRE_AUTH_SLACK: usize = 1024;
/// The most bytes [`WsBytes`] sends as one WebSocket message: more than any one MQTT packet the
/// hub sends (so none is split), less than what a write of several packets may hold.
pub const WRITE_CHUNK: usize = 512 * 1024;
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
                opened.stream.ws.get_mut().lift();
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

/// A WebSocket connection as a byte stream: binary messages in, one binary message per write
/// (of at most [`WRITE_CHUNK`]) out. A text message is an error (MQTT over WebSockets is
/// binary, MQTT 3.1.1 6.0); pings are answered by tungstenite; a close, or the end of the
/// stream, reads as the end of the stream. A frame or message over the reader's limit gets the
/// close frame 1009 and fails the read. Shutting it down sends a Close frame (1000) and, with
/// [`WsBytes::close_handshake`], waits for the peer's.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary message.
    read: Bytes,
    /// A frame or message too big to take: the read fails with this after the close frame
    /// (1009) was queued.
    too_big: Option<io::Error>,
    /// That close frame is queued.
    close_queued: bool,
    /// Whether, and how long, a shutdown waits for the peer's Close frame.
    handshake: Option<CloseHandshake>,
    /// The shutdown's Close frame is queued.
    close_sent: bool,
}

/// How a shutdown waits for the peer's Close frame: at most `timeout`, and not at all once
/// `stopping` is true (the hub is stopping).
struct CloseHandshake {
    timeout: Duration,
    stopping: watch::Receiver<bool>,
    /// Started by the first poll of the shutdown that waits.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> std::fmt::Debug for WsBytes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsBytes")
            .field("buffered", &self.read.len())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsBytes<PreAuthLimit<S>> {
    /// The client is authenticated: the pre-auth scan ends, tungstenite's limits apply.
    pub(crate) fn lift_pre_auth(&mut self) {
        self.ws.get_mut().lift();
    }
}

impl<S> WsBytes<S> {
    /// Wraps a WebSocket connection whose handshake is done.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            read: Bytes::new(),
            too_big: None,
            close_queued: false,
            handshake: None,
            close_sent: false,
        }
    }

    /// A shutdown waits up to `timeout` for the peer's Close frame before it completes (the
    /// caller then drops the TCP connection), unless `stopping` is true by then.
    pub(crate) fn close_handshake(
        mut self,
        timeout: Duration,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        self.handshake = Some(CloseHandshake {
            timeout,
            stopping,
            deadline: None,
        });
        self
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsBytes<S> {
    /// Queues the close frame 1009 (message too big, RFC 6455 7.4.1) and tries once to send it:
    /// a client that does not read cannot hold the connection open by not taking it.
    fn try_close_too_big(&mut self, cx: &mut Context<'_>) {
        if !self.close_queued {
            self.close_queued = true;
            if !matches!(Pin::new(&mut self.ws).poll_ready(cx), Poll::Ready(Ok(()))) {
                return;
            }
            let frame = CloseFrame {
                code: CloseCode::Size,
                reason: "message too big".into(),
            };
            if Pin::new(&mut self.ws)
                .start_send(Message::Close(Some(frame)))
                .is_err()
            {
                return;
            }
        }
        let _ = Pin::new(&mut self.ws).poll_flush(cx);
    }
}

/// A frame or message over the size the reader accepts: tungstenite's own limit, or
/// [`PreAuthLimit`]'s before authentication.
fn is_too_big(e: &tungstenite::Error) -> bool {
    match e {
        tungstenite::Error::Capacity(_) => true,
        tungstenite::Error::Io(io) => io.get_ref().is_some_and(|i| i.is::<TooBig>()),
        _ => false,
    }
}

/// tungstenite's error as an I/O error (its I/O errors as they were).
fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {other}")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(e) = self.too_big.take() {
                self.try_close_too_big(cx);
                return Poll::Ready(Err(e));
            }
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                let chunk = self.read.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => self.read = b,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "websocket text message (mqtt needs binary)",
                    )));
                }
                Some(Err(e)) if is_too_big(&e) => self.too_big = Some(to_io(e)),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let n = data.len().min(WRITE_CHUNK);
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    /// Sends a Close frame (1000, normal closure) and, with a [`CloseHandshake`], reads until
    /// the peer's Close frame, the end of the stream or the deadline, dropping the data that
    /// still comes. A connection the peer already closed completes at once.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            if let Err(e) = ready!(Pin::new(&mut this.ws).poll_ready(cx)) {
                return Poll::Ready(closed_or(e));
            }
            let normal = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if let Err(e) = Pin::new(&mut this.ws).start_send(Message::Close(Some(normal))) {
                return Poll::Ready(closed_or(e));
            }
            this.close_sent = true;
        }
        if let Err(e) = ready!(Pin::new(&mut this.ws).poll_flush(cx)) {
            return Poll::Ready(closed_or(e));
        }
        let Some(handshake) = &mut this.handshake else {
            return Poll::Ready(Ok(()));
        };
        if *handshake.stopping.borrow() {
            return Poll::Ready(Ok(()));
        }
        let timeout = handshake.timeout;
        let deadline = handshake
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        loop {
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(None | Some(Err(_) | Ok(Message::Close(_)))) => {
                    return Poll::Ready(Ok(()));
                }
                // Data after the hub's Close frame is not taken (its PUBLISHes get no PUBACK).
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Pending => break,
            }
        }
        ready!(deadline.as_mut().poll(cx));
        tracing::debug!("no websocket close frame from the client within {timeout:?}");
        Poll::Ready(Ok(()))
    }
}

/// The end of a shutdown that failed with `e`: done if the connection is already closed.
fn closed_or(e: tungstenite::Error) -> io::Result<()> {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => Ok(()),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SendAfterClosing
            | tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => Ok(()),
        other => Err(to_io(other)),
    }
}

/// A frame or message larger than an unauthenticated client may send, or more frames in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TooBig {
    size: u64,
    max: u64,
    /// All frames together, not one frame or message.
    total: bool,
}

impl std::fmt::Display for TooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.total {
            "websocket frames of"
        } else {
            "a websocket frame or message of"
        };
        write!(
            f,
            "{what} {} bytes before authentication (at most {})",
            self.size, self.max
        )
    }
}

impl std::error::Error for TooBig {}

/// The upgraded stream under tungstenite until the CONNECT is authenticated: every frame
/// header read is checked as it arrives, and a frame, or a fragmented message, whose payload
/// is over the pre-auth cap fails the read (the bytes are dropped, tungstenite never holds
/// them). [`PreAuthLimit::lift`] ends the scan.
pub(crate) struct PreAuthLimit<S> {
    inner: S,
    /// `None` once lifted.
    scan: Option<FrameScan>,
    peer: SocketAddr,
}

impl<S> PreAuthLimit<S> {
    pub(crate) fn new(inner: S, max: usize, peer: SocketAddr) -> Self {
        PreAuthLimit {
            inner,
            scan: Some(FrameScan::new(u64::try_from(max).unwrap_or(u64::MAX))),
            peer,
        }
    }

    /// The client is authenticated: no more scanning.
    fn lift(&mut self) {
        self.scan = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PreAuthLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(scan) = &mut this.scan
            && let Err(over) = scan.feed(&buf.filled()[before..])
        {
            buf.set_filled(before);
            tracing::info!(peer = %this.peer, bytes = over.size, limit = over.max, all_frames = over.total, "closed: websocket frame, message or frames larger than an unauthenticated client may send (1009)");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, over)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PreAuthLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Follows the frame boundaries of a client's byte stream (RFC 6455 5.2) and checks each
/// frame's payload length, and the sum over a fragmented message's frames, against `max` as
/// soon as the frame's header is in, and everything it has seen against twice `max`.
#[derive(Debug)]
struct FrameScan {
    max: u64,
    /// Bytes seen so far.
    total: u64,
    /// The header being gathered (at most 2 + 8 length + 4 mask bytes).
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// The payload of the current data message so far.
    message: u64,
}

impl FrameScan {
    fn new(max: u64) -> FrameScan {
        FrameScan {
            max,
            total: 0,
            head: [0; 14],
            have: 0,
            left: 0,
            message: 0,
        }
    }

    /// Takes the next bytes of the stream; the first frame or message over `max`, or all the
    /// frames over twice `max`.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), TooBig> {
        self.total = self.total.saturating_add(bytes.len() as u64);
        let budget = self.max.saturating_mul(2);
        if self.total > budget {
            return Err(TooBig {
                size: self.total,
                max: budget,
                total: true,
            });
        }
        while let Some((&first, rest)) = bytes.split_first() {
            if self.left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.head[self.have] = first;
            self.have += 1;
            bytes = rest;
            if self.have < 2 {
                continue;
            }
            let short = self.head[1] & 0x7F;
            let ext = match short {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + ext + mask {
                continue;
            }
            let h = &self.head;
            let len = match ext {
                0 => u64::from(short),
                2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                _ => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            };
            let size = match h[0] & 0x0F {
                // A continuation adds to its message; text and binary start one.
                0 => {
                    self.message = self.message.saturating_add(len);
                    self.message
                }
                1 | 2 => {
                    self.message = len;
                    len
                }
                // Control frames stand alone.
                _ => len,
            };
            if size > self.max {
                return Err(TooBig {
                    size,
                    max: self.max,
                    total: false,
                });
            }
            self.have = 0;
            self.left = len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame header (masked) for `opcode` with `fin` and a payload of `len`.
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xFFFF => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = header(fin, opcode, len as u64);
        f.resize(f.len() + len, 0xAB);
        f
    }

    #[test]
    fn frames_up_to_the_cap_pass_in_any_split_and_a_bigger_one_fails_at_its_header() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 1000, 65_535] {
            stream.extend(frame(true, 2, len));
        }
        stream.extend(frame(true, 2, 70_000 - stream.len() - 20));
        stream.extend(frame(true, 9, 4)); // a ping
        for step in [1, 3, 7, 4096, stream.len()] {
            let mut scan = FrameScan::new(70_000);
            for chunk in stream.chunks(step) {
                assert_eq!(scan.feed(chunk), Ok(()), "step {step}");
            }
            assert_eq!((scan.have, scan.left), (0, 0), "step {step}");
        }
        // 100 KiB announced: refused with the header alone, before any payload.
        for len in [70_001u64, 100 * 1024, 1 << 40] {
            let mut scan = FrameScan::new(70_000);
            let h = header(true, 2, len);
            let (last, first) = h.split_last().unwrap();
            assert_eq!(scan.feed(first), Ok(()));
            let over = TooBig {
                size: len,
                max: 70_000,
                total: false,
            };
            assert_eq!(scan.feed(&[*last]), Err(over));
        }
    }

    #[test]
    fn a_fragmented_message_counts_its_frames_together_and_control_frames_apart() {
        let mut scan = FrameScan::new(1000);
        assert_eq!(scan.feed(&frame(false, 2, 600)), Ok(()));
        assert_eq!(scan.feed(&frame(true, 9, 100)), Ok(())); // a ping between fragments
        assert_eq!(scan.feed(&frame(false, 0, 400)), Ok(()));
        let over = TooBig {
            size: 1001,
            max: 1000,
            total: false,
        };
        assert_eq!(scan.feed(&header(true, 0, 1)), Err(over));
        // A new message starts from zero.
        let mut scan = FrameScan::new(1000);
        assert_eq!(scan.feed(&frame(true, 2, 900)), Ok(()));
        assert_eq!(scan.feed(&frame(true, 2, 900)), Ok(()));
    }

    #[test]
    fn all_frames_together_may_carry_twice_the_cap() {
        let mut scan = FrameScan::new(1000);
        let ping = frame(true, 9, 125);
        for _ in 0..(2000 / ping.len()) {
            assert_eq!(scan.feed(&ping), Ok(()));
        }
        let over = scan.feed(&ping).unwrap_err();
        assert!(over.total && over.max == 2000 && over.size > 2000, "{over}");
    }

    #[tokio::test]
    async fn the_limit_drops_an_oversized_frame_s_bytes_and_lifting_it_lets_them_through() {
        let big = frame(true, 2, 5000);
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut limited = PreAuthLimit::new(server, 1000, peer);
        tokio::io::AsyncWriteExt::write_all(&mut client, &big[..100])
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let e = tokio::io::AsyncReadExt::read(&mut limited, &mut buf)
            .await
            .unwrap_err();
        assert!(e.get_ref().is_some_and(|i| i.is::<TooBig>()), "{e}");
        limited.lift();
        tokio::io::AsyncWriteExt::write_all(&mut client, &big[100..])
            .await
            .unwrap();
        let n = tokio::io::AsyncReadExt::read(&mut limited, &mut buf)
            .await
            .unwrap();
        assert!(n > 0);
    }
}
