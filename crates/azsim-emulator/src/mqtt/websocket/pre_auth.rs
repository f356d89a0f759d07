//! [`PreAuthLimit`]: the byte limits on an unauthenticated WebSocket client (MQTT until its
//! CONNECT is authenticated, AMQP until its first token), checked on the frame headers as they
//! arrive, before tungstenite buffers a frame.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a WebSocket message may carry before authentication beyond `pre_auth_max_bytes`: the
/// CONNECT's fixed header and a small packet a client sends right behind it.
pub(crate) const PRE_AUTH_SLACK: usize = 1024;

/// A frame or message larger than an unauthenticated client may send, or more frames in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooBig {
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
    pub(super) fn lift(&mut self) {
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
