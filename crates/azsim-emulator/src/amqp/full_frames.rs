//! Performatives with every field on the wire, for the Python SDKs.
//!
//! AMQP 1.0 (section 1.4) lets a sender omit a performative's trailing fields that hold their
//! defaults, and fe2o3-amqp does (a `Detach` without an error is two fields, a `Close`
//! without one is an empty list). pyAMQP, the AMQP stack inside `azure-eventhub` (5.15.1, the
//! newest release; fixed upstream in Azure/azure-sdk-for-python#47660, not yet released) reads
//! performative fields by position and fails with `IndexError: list index out of range` on a
//! short list. The Azure services send every field, so this wrapper around the hub's side of
//! a connection does the same: each outgoing frame's performative list gets explicit nulls
//! (`0x40`, which means "the default" for every field) up to the performative's field count.
//! Frame header, descriptor and list encodings are as in sections 2.3.1 and 1.6.22 of the
//! spec; the frames themselves come from fe2o3-amqp's codec, and everything else (protocol
//! headers, empty frames, payloads, the read direction) passes through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The number of fields of a performative: AMQP frames (type 0) and SASL frames (type 1).
fn field_count(frame_type: u8, code: u64) -> Option<usize> {
    match (frame_type, code) {
        (0, 0x10) => Some(10), // open
        (0, 0x11) => Some(8),  // begin
        (0, 0x12) => Some(14), // attach
        (0, 0x13) => Some(11), // flow
        (0, 0x14) => Some(11), // transfer
        (0, 0x15) => Some(6),  // disposition
        (0, 0x16) => Some(3),  // detach
        (0, 0x17) => Some(1),  // end
        (0, 0x18) => Some(1),  // close
        (1, 0x40) => Some(1),  // sasl-mechanisms
        (1, 0x41) => Some(3),  // sasl-init
        (1, 0x42) => Some(1),  // sasl-challenge
        (1, 0x43) => Some(1),  // sasl-response
        (1, 0x44) => Some(2),  // sasl-outcome
        _ => None,
    }
}

/// Re-encode the list at the start of `buf` (`list0`, `list8` or `list32`) with explicit nulls
/// up to `full` elements; `inner` may rewrite its encoded elements first. Returns the new
/// encoding and how many bytes of `buf` the old one took; `None` for anything else.
fn pad_list(
    buf: &[u8],
    full: usize,
    inner: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> Option<(Vec<u8>, usize)> {
    // (count, the encoded elements, the encoding's length)
    let (count, elements, len) = match *buf.first()? {
        0x45 => (0, &[][..], 1),
        0xc0 => {
            let size = usize::from(*buf.get(1)?);
            let count = usize::from(*buf.get(2)?);
            (count, buf.get(3..2 + size)?, 2 + size)
        }
        0xd0 => {
            let size = usize::try_from(u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?)).ok()?;
            let count =
                usize::try_from(u32::from_be_bytes(buf.get(5..9)?.try_into().ok()?)).ok()?;
            (count, buf.get(9..5 + size)?, 5 + size)
        }
        _ => return None,
    };
    let rewritten = inner(elements);
    if count >= full && rewritten.is_none() {
        return None;
    }
    let elements = rewritten.as_deref().unwrap_or(elements);
    let nulls = full.saturating_sub(count);
    let count = count.max(full);
    let mut list = Vec::with_capacity(elements.len() + nulls + 9);
    if elements.len() + nulls < usize::from(u8::MAX) && count <= usize::from(u8::MAX) {
        list.push(0xc0);
        list.push(u8::try_from(elements.len() + nulls + 1).ok()?);
        list.push(u8::try_from(count).ok()?);
    } else {
        list.push(0xd0);
        list.extend_from_slice(
            &u32::try_from(elements.len() + nulls + 4)
                .ok()?
                .to_be_bytes(),
        );
        list.extend_from_slice(&u32::try_from(count).ok()?.to_be_bytes());
    }
    list.extend_from_slice(elements);
    list.resize(list.len() + nulls, 0x40);
    Some((list, len))
}

/// The elements of a `close` or `end` with their error (`amqp:error:list`, the first and only
/// field) padded to its 3 fields (pyAMQP reads the error's `info` by position there too).
fn pad_error(elements: &[u8]) -> Option<Vec<u8>> {
    let list = elements.strip_prefix(&[0x00, 0x53, 0x1d])?;
    let (padded, len) = pad_list(list, 3, |_| None)?;
    let mut out = vec![0x00, 0x53, 0x1d];
    out.extend_from_slice(&padded);
    out.extend_from_slice(list.get(len..)?);
    Some(out)
}

/// `frame` (one whole frame, header included) with its performative list padded to the full
/// field count; `None` when it needs nothing (or is not a frame this understands).
fn pad(frame: &[u8]) -> Option<Vec<u8>> {
    let doff = usize::from(*frame.get(4)?) * 4;
    let frame_type = *frame.get(5)?;
    let body = frame.get(doff..).filter(|b| !b.is_empty())?;
    if body[0] != 0x00 {
        return None;
    }
    let (code, list_at) = match body.get(1)? {
        0x53 => (u64::from(*body.get(2)?), 3),
        0x80 => (u64::from_be_bytes(body.get(2..10)?.try_into().ok()?), 10),
        _ => return None,
    };
    let full = field_count(frame_type, code)?;
    let with_error = frame_type == 0 && (code == 0x17 || code == 0x18);
    let (list, len) = pad_list(body.get(list_at..)?, full, |elements| {
        if with_error {
            pad_error(elements)
        } else {
            None
        }
    })?;
    let mut out = Vec::with_capacity(frame.len() + list.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&frame[4..doff]);
    out.extend_from_slice(&body[..list_at]);
    out.extend_from_slice(&list);
    out.extend_from_slice(body.get(list_at + len..)?);
    let size = u32::try_from(out.len()).ok()?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// The hub's side of an AMQP connection, writing whole performatives (see the module doc).
#[derive(Debug)]
pub(crate) struct FullFrames<S> {
    inner: S,
    /// What fe2o3 wrote that is not a whole frame yet.
    pending: Vec<u8>,
    /// Frames ready for `inner`, from `sent` on.
    out: Vec<u8>,
    sent: usize,
}

impl<S> FullFrames<S> {
    pub fn new(inner: S) -> FullFrames<S> {
        FullFrames {
            inner,
            pending: Vec::new(),
            out: Vec::new(),
            sent: 0,
        }
    }

    /// Move every whole protocol header and frame from `pending` to `out`, padded.
    fn process(&mut self) {
        let mut at = 0;
        while self.pending.len() - at >= 8 {
            let rest = &self.pending[at..];
            if rest.starts_with(b"AMQP") {
                self.out.extend_from_slice(&rest[..8]);
                at += 8;
                continue;
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if size < 8 {
                // Not a frame fe2o3 would write: pass everything on as it is.
                self.out.extend_from_slice(rest);
                at = self.pending.len();
                break;
            }
            if rest.len() < size {
                break;
            }
            match pad(&rest[..size]) {
                Some(padded) => self.out.extend_from_slice(&padded),
                None => self.out.extend_from_slice(&rest[..size]),
            }
            at += size;
        }
        self.pending.drain(..at);
    }
}

impl<S: AsyncWrite + Unpin> FullFrames<S> {
    /// Write `out` to `inner` until it is all written or `inner` is not ready.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FullFrames<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FullFrames<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Back-pressure: take nothing new while earlier frames wait for `inner`.
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map(|r| r.map(|()| 0)),
        }
        this.pending.extend_from_slice(buf);
        this.process();
        // Whatever `inner` does not take now goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: header (doff 2, `frame_type`, channel 0) and `body`.
    fn frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut f = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&[2, frame_type, 0, 0]);
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn short_performatives_get_explicit_nulls_up_to_their_field_count() {
        // detach: handle 0 (uint0), closed true; no error.
        let detach = frame(0, &[0x00, 0x53, 0x16, 0xc0, 0x03, 0x02, 0x43, 0x41]);
        let want = frame(0, &[0x00, 0x53, 0x16, 0xc0, 0x04, 0x03, 0x43, 0x41, 0x40]);
        assert_eq!(pad(&detach), Some(want));
        // close: the empty list.
        let close = frame(0, &[0x00, 0x53, 0x18, 0x45]);
        assert_eq!(
            pad(&close),
            Some(frame(0, &[0x00, 0x53, 0x18, 0xc0, 0x02, 0x01, 0x40]))
        );
        // sasl-outcome: code ok only.
        let outcome = frame(1, &[0x00, 0x53, 0x44, 0xc0, 0x03, 0x01, 0x50, 0x00]);
        assert_eq!(
            pad(&outcome),
            Some(frame(
                1,
                &[0x00, 0x53, 0x44, 0xc0, 0x04, 0x02, 0x50, 0x00, 0x40]
            ))
        );
    }

    #[test]
    fn the_error_of_a_close_gets_its_three_fields() {
        // close with an error holding only its condition (sym8 "x").
        let close = frame(
            0,
            &[
                0x00, 0x53, 0x18, 0xc0, 0x0a, 0x01, 0x00, 0x53, 0x1d, 0xc0, 0x04, 0x01, 0xa3, 0x01,
                b'x',
            ],
        );
        // The error's list [sym "x"] becomes [sym "x", null, null].
        let want = frame(
            0,
            &[
                0x00, 0x53, 0x18, 0xc0, 0x0c, 0x01, 0x00, 0x53, 0x1d, 0xc0, 0x06, 0x03, 0xa3, 0x01,
                b'x', 0x40, 0x40,
            ],
        );
        assert_eq!(pad(&close), Some(want));
    }

    #[test]
    fn a_transfer_keeps_its_payload_after_the_padded_list() {
        // transfer: handle 0 only, then a payload.
        let mut body = vec![0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0x43];
        body.extend_from_slice(b"payload");
        let mut want = vec![0x00, 0x53, 0x14, 0xc0, 0x0c, 0x0b, 0x43];
        want.extend_from_slice(&[0x40; 10]);
        want.extend_from_slice(b"payload");
        assert_eq!(pad(&frame(0, &body)), Some(frame(0, &want)));
    }

    #[test]
    fn full_lists_empty_frames_and_unknown_codes_pass_unchanged() {
        let full = frame(0, &[0x00, 0x53, 0x17, 0xc0, 0x02, 0x01, 0x40]);
        assert_eq!(pad(&full), None);
        assert_eq!(pad(&frame(0, &[])), None, "an empty (heartbeat) frame");
        assert_eq!(pad(&frame(0, &[0x00, 0x53, 0x70, 0x45])), None);
    }

    #[test]
    fn a_long_list_is_written_as_list32() {
        // attach with one 260-byte string field: list32 stays list32, padded to 14 fields.
        let mut elements = vec![0xb1];
        elements.extend_from_slice(&260u32.to_be_bytes());
        elements.extend_from_slice(&[b'a'; 260]);
        let mut body = vec![0x00, 0x53, 0x12, 0xd0];
        body.extend_from_slice(&((elements.len() + 4) as u32).to_be_bytes());
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(&elements);
        let got = pad(&frame(0, &body)).unwrap();
        let list = &got[8 + 3..];
        assert_eq!(list[0], 0xd0);
        assert_eq!(u32::from_be_bytes(list[5..9].try_into().unwrap()), 14);
        assert_eq!(&list[list.len() - 13..], &[0x40; 13]);
    }

    #[tokio::test]
    async fn frames_written_in_pieces_come_out_whole_and_padded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = FullFrames::new(a);
        let detach = frame(0, &[0x00, 0x53, 0x16, 0xc0, 0x03, 0x02, 0x43, 0x41]);
        let mut bytes = b"AMQP\x00\x01\x00\x00".to_vec();
        bytes.extend_from_slice(&detach);
        for chunk in bytes.chunks(3) {
            w.write_all(chunk).await.unwrap();
        }
        w.flush().await.unwrap();
        drop(w);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let mut want = b"AMQP\x00\x01\x00\x00".to_vec();
        want.extend_from_slice(&pad(&detach).unwrap());
        assert_eq!(got, want);
    }
}
