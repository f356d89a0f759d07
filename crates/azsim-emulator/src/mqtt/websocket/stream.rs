//! [`WsBytes`]: a WebSocket connection as the byte stream MQTT (and AMQP) runs over, and its
//! closing handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::pre_auth::{PreAuthLimit, TooBig};

/// The most bytes [`WsBytes`] sends as one WebSocket message: more than any one MQTT packet the
/// hub sends (so none is split), less than what a write of several packets may hold.
pub const WRITE_CHUNK: usize = 512 * 1024;

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
