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
//! One difference: a WebSocket frame is read whole before its bytes reach the MQTT reader, so
//! an unauthenticated client may make the hub hold one frame of up to the largest packet
//! (`d2c_max_bytes` + 64 KiB) rather than `pre_auth_max_bytes`.
//!
//! Framing is tungstenite's; [`WsBytes`] turns the binary messages into the byte stream MQTT
//! runs over (the same adapter serves `azsim run --websockets` on the device side). MQTT
//! packets may span frames and frames may hold several packets (MQTT 3.1.1, 6.0), so the
//! bytes are simply concatenated.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Sink, Stream};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::hub::{Hub, LiveGuard};

/// The path devices open (IoT Hub's).
pub(crate) const PATH: &str = "/$iothub/websocket";
/// The subprotocol a client must offer.
pub const SUBPROTOCOL: &str = "mqtt";

/// The handler of [`PATH`], with its own cap on unauthenticated WebSocket connections.
pub(crate) fn route(hub: &Hub) -> axum::routing::MethodRouter<Arc<Hub>> {
    let pre_auth = Arc::new(Semaphore::new(
        hub.cfg
            .limits
            .max_pre_auth_connections
            .min(Semaphore::MAX_PERMITS),
    ));
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
    let key = match check_upgrade(req.headers()) {
        Ok(key) => key,
        Err(why) => {
            tracing::info!(%peer, reason = why, "websocket upgrade refused: 400");
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let Ok(permit) = pre_auth.try_acquire_owned() else {
        tracing::warn!(%peer, "too many unauthenticated websocket connections: 503");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let certs = req
        .extensions()
        .get::<crate::x509::PeerCerts>()
        .and_then(crate::x509::PeerCerts::to_vec);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
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
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            super::open_stream_with_certs(&hub, WsBytes::new(ws), peer, certs).await
        })
        .await;
        match opened {
            Ok(Some(opened)) => {
                drop(permit);
                super::connection(hub, opened, peer).await;
            }
            Ok(None) => {}
            Err(_) => {
                tracing::info!(%peer, "closed: websocket not authenticated within the connect deadline")
            }
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Ok(accept) = HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r
}

/// The `Sec-WebSocket-Key` of a valid WebSocket upgrade (RFC 6455, 4.2.1) offering the `mqtt`
/// subprotocol; otherwise why not.
fn check_upgrade(h: &HeaderMap) -> Result<Vec<u8>, &'static str> {
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
    if !tokens(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .any(|t| t == SUBPROTOCOL)
    {
        return Err("the websocket subprotocol must be mqtt");
    }
    Ok(key.as_bytes().to_vec())
}

/// A WebSocket connection as a byte stream: binary messages in, one binary message per write
/// out. A text message is an error (MQTT over WebSockets is binary, MQTT 3.1.1 6.0); pings are
/// answered by tungstenite; a close, or the end of the stream, reads as the end of the stream.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary message.
    read: Bytes,
}

impl<S> std::fmt::Debug for WsBytes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsBytes")
            .field("buffered", &self.read.len())
            .finish_non_exhaustive()
    }
}

impl<S> WsBytes<S> {
    /// Wraps a WebSocket connection whose handshake is done.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            read: Bytes::new(),
        }
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
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(to_io)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}
