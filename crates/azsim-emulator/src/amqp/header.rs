//! The client's protocol header, read before the acceptor runs: AMQP 1.0 (section 2.2) lets a
//! client open with the SASL header (`AMQP 3 1 0 0`) or go straight to AMQP (`AMQP 0 1 0 0`)
//! when the transport (TLS here) is all the security it wants. The Azure services take both:
//! the Node SDKs (rhea, in azure-iothub and azure-iot-device-amqp) send no SASL header when they
//! authenticate with CBS afterwards. fe2o3-amqp's acceptor takes one or the other, so the hub
//! reads the 8 bytes, picks the acceptor, and hands it a stream that replays them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The length of an AMQP protocol header.
const LEN: usize = 8;

/// Which layer the client opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// `AMQP 3 1 0 0`: SASL first; also anything that is not AMQP 1.0's header, which the
    /// SASL acceptor answers with the SASL header and closes, as the spec asks.
    Sasl,
    /// `AMQP 0 1 0 0`: AMQP without SASL.
    Amqp,
}

/// A stream whose first bytes were read already and are read again.
#[derive(Debug)]
pub(crate) struct Replayed<S> {
    head: [u8; LEN],
    pos: usize,
    inner: S,
}

/// Reads the client's protocol header from `stream`.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    mut stream: S,
) -> io::Result<(Opening, Replayed<S>)> {
    let mut head = [0u8; LEN];
    stream.read_exact(&mut head).await?;
    let opening = if head == *b"AMQP\x00\x01\x00\x00" {
        Opening::Amqp
    } else {
        Opening::Sasl
    };
    Ok((
        opening,
        Replayed {
            head,
            pos: 0,
            inner: stream,
        },
    ))
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < LEN {
            let n = (LEN - self.pos).min(buf.remaining());
            let from = self.pos;
            buf.put_slice(&self.head[from..from + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_header_is_read_again_after_it_was_classified() {
        for (header, want) in [
            (*b"AMQP\x03\x01\x00\x00", Opening::Sasl),
            (*b"AMQP\x00\x01\x00\x00", Opening::Amqp),
            (*b"AMQP\x00\x00\x09\x01", Opening::Sasl),
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            client.write_all(&header).await.unwrap();
            client.write_all(b"rest").await.unwrap();
            drop(client);
            let (opening, mut replayed) = read(server).await.unwrap();
            assert_eq!(opening, want);
            let mut all = Vec::new();
            replayed.read_to_end(&mut all).await.unwrap();
            assert_eq!(&all[..LEN], &header);
            assert_eq!(&all[LEN..], b"rest");
        }
    }
}
