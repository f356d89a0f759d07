//! AMQP over WebSockets (the AMQP WebSocket Binding, subprotocol `AMQPWSB10`), as Azure serves
//! it on 443: `wss://{host}/$iothub/websocket` (the IoT Hub SDKs, service and device: Node
//! `AmqpWs`, C# `Amqp_WebSocket_Only`) and `wss://{host}/$servicebus/websocket` (the Event Hubs
//! SDKs with `AmqpOverWebsocket`; uamqp adds a trailing `/`, which is served too).
//! `mqtt/websocket.rs` checks the upgrade, takes a place among the unauthenticated WebSocket
//! connections and answers 101; this file runs the upgraded stream as an AMQP connection
//! through the same path as AMQPS on 5671 ([`super::serve_opening`]: the same protocol header,
//! SASL and CBS, links and deadline).
//!
//! Every binding message is binary and carries bytes of the AMQP stream: the protocol header,
//! SASL and AMQP frames, which may span messages, and a message may hold several (the binding,
//! section 2.3): [`WsBytes`] concatenates them. A text message ends the connection. The hub
//! writes one message per write of the connection's framing (a frame, or a few).
//!
//! Until the connection holds a token (a SASL PLAIN password or a CBS `put-token`) the
//! upgraded stream is read through the same [`PreAuthLimit`] as MQTT over WebSockets: a frame
//! or message over `pre_auth_max_bytes` + [`PRE_AUTH_SLACK`], or more than twice that in all
//! (pings included), closes it with 1009. [`AmqpWs`] lifts that scan at the first read after
//! the connection's first token; then tungstenite's own limits ([`MAX_MESSAGE`]) apply.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::cbs::Claims;
use crate::hub::{Hub, LiveGuard};
use crate::mqtt::websocket::{PRE_AUTH_SLACK, PreAuthLimit, WRITE_CHUNK, WsBytes};

/// The largest WebSocket frame or message the hub takes once the client is authenticated: a
/// client may put many AMQP frames (each at most [`super::MAX_FRAME_SIZE`]) in one message.
pub(crate) const MAX_MESSAGE: usize = 16 * super::MAX_FRAME_SIZE as usize;

/// Runs the AMQP connection of an upgrade answered with 101 in a task of its own; `permit` is
/// its place among the unauthenticated WebSocket connections, given back once it holds a token;
/// `certs`, the HTTPS connection's client certificate chain, authenticates an X.509 device's links
/// as on AMQPS.
pub(crate) fn spawn(
    hub: Arc<Hub>,
    permit: OwnedSemaphorePermit,
    on_upgrade: OnUpgrade,
    peer: SocketAddr,
    certs: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
) {
    let Some(eh) = hub.amqp_eventhub.get().cloned() else {
        // mqtt/websocket.rs answers 404 before the upgrade when AMQP is off.
        return;
    };
    tokio::spawn(async move {
        let _live = LiveGuard::new(hub.clone());
        let deadline = tokio::time::Instant::now() + hub.cfg.limits.connect_deadline;
        let claims = Arc::new(Claims::default());
        if let Some(certs) = &certs {
            claims.set_client_certs(certs);
        }
        let opening = {
            let (hub, claims) = (hub.clone(), claims.clone());
            async move {
                let upgraded = on_upgrade
                    .await
                    .map_err(|e| format!("websocket upgrade failed: {e}"))?;
                let stream = AmqpWs::new(
                    upgraded_stream(&hub, TokioIo::new(upgraded), peer).await,
                    claims.clone(),
                );
                super::open(&hub, &claims, stream).await
            }
        };
        super::serve_opening(hub, eh, claims, peer, permit, deadline, opening).await;
    });
}

/// The WebSocket server side of an upgraded connection, its reads scanned until lifted.
async fn upgraded_stream<S>(hub: &Hub, io: S, peer: SocketAddr) -> WsBytes<PreAuthLimit<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * WRITE_CHUNK)
        .max_frame_size(Some(MAX_MESSAGE))
        .max_message_size(Some(MAX_MESSAGE));
    let max = hub
        .cfg
        .limits
        .pre_auth_max_bytes
        .saturating_add(PRE_AUTH_SLACK);
    let ws = WebSocketStream::from_raw_socket(
        PreAuthLimit::new(io, max, peer),
        Role::Server,
        Some(config),
    )
    .await;
    WsBytes::new(ws)
}

/// The AMQP byte stream of a WebSocket connection: [`WsBytes`] (binary messages in and out),
/// whose pre-auth scan ends at the first read after the connection has a token.
pub(crate) struct AmqpWs<S> {
    inner: WsBytes<PreAuthLimit<S>>,
    claims: Arc<Claims>,
    lifted: bool,
}

impl<S> std::fmt::Debug for AmqpWs<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpWs")
            .field("inner", &self.inner)
            .field("lifted", &self.lifted)
            .finish_non_exhaustive()
    }
}

impl<S> AmqpWs<S> {
    fn new(inner: WsBytes<PreAuthLimit<S>>, claims: Arc<Claims>) -> Self {
        AmqpWs {
            inner,
            claims,
            lifted: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AmqpWs<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.lifted && self.claims.any() {
            self.lifted = true;
            self.inner.lift_pre_auth();
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AmqpWs<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
