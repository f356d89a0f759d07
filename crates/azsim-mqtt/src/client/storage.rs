//! Where telemetry waits for a connection: [`Storage`], and the board's [`FixedQueue`].

use super::*;

/// A telemetry message the loop still owns: queued, in flight, or waiting to be sent again.
/// [`Storage`] keeps the queued ones; only the loop reads or changes them.
#[derive(Debug)]
pub struct Message<B> {
    pub(super) seq: u32,
    /// `$.mid`, an ASCII UUID.
    pub(super) id: [u8; 36],
    pub(super) body: B,
    /// The packet id it went out with (0: never on the wire). A redelivery reuses it with
    /// DUP=1, as MQTT 3.1.1 asks (4.4); the session's own id for it is `pkid`.
    pub(super) wire: u16,
    /// The session's packet id for the current attempt.
    pub(super) pkid: u16,
    /// Was in flight when the connection ended (or could not be sent): publish it again first.
    pub(super) resend: bool,
}

impl<B: AsRef<[u8]>> Message<B> {
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.body.as_ref()
    }

    /// `$.mid`.
    pub fn message_id(&self) -> &str {
        core::str::from_utf8(&self.id).unwrap_or_default()
    }
}

/// Where telemetry waits for a connection, and what its bodies are: a fixed [`FixedQueue`]
/// on the board, a heap queue on a laptop. Messages in flight stay in the loop (at most
/// [`MAX_IN_FLIGHT`]), in the same body type.
pub trait Storage {
    /// A telemetry body the loop keeps until its PUBACK.
    type Body: AsRef<[u8]>;

    /// A body holding `bytes`; `None` when it cannot (too long for a fixed body).
    fn body(&mut self, bytes: &[u8]) -> Option<Self::Body>;

    /// Messages queued now.
    fn queued(&self) -> usize;

    /// Most messages kept while offline, queued and unacknowledged ones together; beyond
    /// it the oldest is dropped.
    fn capacity(&self) -> usize;

    /// Queues `m` last; gives it back when full.
    ///
    /// # Errors
    /// `m` itself when there is no room.
    fn push(&mut self, m: Message<Self::Body>) -> Result<(), Message<Self::Body>>;

    /// Takes the oldest queued message.
    fn pop(&mut self) -> Option<Message<Self::Body>>;
}

/// A telemetry body of at most [`TELEMETRY_BUFFER_LEN`] bytes (the reference JSON fits).
pub type FixedBody = Vec<u8, TELEMETRY_BUFFER_LEN>;

/// The board's queue: `N` messages with fixed bodies, no heap.
#[derive(Debug)]
pub struct FixedQueue<const N: usize = QUEUE_LEN>(Deque<Message<FixedBody>, N>);

impl<const N: usize> FixedQueue<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        Self(Deque::new())
    }
}

impl<const N: usize> Default for FixedQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Storage for FixedQueue<N> {
    type Body = FixedBody;

    fn body(&mut self, bytes: &[u8]) -> Option<FixedBody> {
        Vec::from_slice(bytes).ok()
    }

    fn queued(&self) -> usize {
        self.0.len()
    }

    fn capacity(&self) -> usize {
        N
    }

    fn push(&mut self, m: Message<FixedBody>) -> Result<(), Message<FixedBody>> {
        self.0.push_back(m)
    }

    fn pop(&mut self) -> Option<Message<FixedBody>> {
        self.0.pop_front()
    }
}
