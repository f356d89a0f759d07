//! The packet buffers: a fixed slice on the board, or one that grows on demand (a fleet device
//! on a laptop, which rarely needs more than a kilobyte but must take a 256 KB message).

/// A packet buffer: [`Client::run`](super::Client::run) reads the stream into the receive
/// buffer and encodes packets into the transmit one. A `[u8]` is one of fixed size; a host
/// may implement a growing one (see [`Client::with_buffers`](super::Client::with_buffers)).
pub trait Buffer {
    /// Whether [`Buffer::reserve`] may make the buffer longer (the loop only asks if so).
    const GROWS: bool = false;

    /// The buffer's bytes, as long as it is now.
    fn slice(&mut self) -> &mut [u8];

    /// Makes the buffer at least `len` bytes long, keeping its contents, if it can (up to a
    /// limit of its own); the loop asks before it encodes a packet of `len` bytes or reads the
    /// rest of one, and finds out whether it fits by the length of [`Buffer::slice`]. The
    /// default does nothing: a fixed buffer.
    fn reserve(&mut self, len: usize) {
        let _ = len;
    }

    /// The loop holds nothing in the buffer any more: a growing buffer may go back to its
    /// resting size. The default does nothing.
    fn relax(&mut self) {}
}

impl Buffer for [u8] {
    fn slice(&mut self) -> &mut [u8] {
        self
    }
}
