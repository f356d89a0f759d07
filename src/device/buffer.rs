//! Packet buffers that grow on demand: a device on a laptop (`azsim run`, each device of a
//! fleet) rests at a kilobyte each way, which every packet it usually sees fits (CONNECT, the
//! twin, telemetry of the reference JSON), and grows for the rare large one (a 256 KB message,
//! a big twin document) up to its limit, then shrinks back once the loop holds nothing in it.
//! The board keeps fixed buffers (`[u8]`).

use azsim_mqtt::Buffer;

/// The resting size of a [`GrowingBuffer`]: the `azsim_mqtt::Client`'s minimum is 512 bytes.
pub const RESTING: usize = 1024;

/// A heap packet buffer of [`RESTING`] bytes that grows up to `max` when the loop asks.
#[derive(Debug)]
pub struct GrowingBuffer {
    bytes: Vec<u8>,
    resting: usize,
    max: usize,
}

impl GrowingBuffer {
    /// A buffer of `resting` bytes (at least 512, as the loop needs) that grows up to `max`.
    pub fn new(resting: usize, max: usize) -> Self {
        let resting = resting.max(512);
        Self {
            bytes: vec![0; resting],
            resting,
            max: max.max(resting),
        }
    }

    /// The length now.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the buffer is empty (never: it is at least 512 bytes).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Buffer for GrowingBuffer {
    const GROWS: bool = true;

    fn slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    fn reserve(&mut self, len: usize) {
        let len = len.min(self.max);
        if len > self.bytes.len() {
            // Exactly what is asked: a 256 KB message should not leave 512 KiB behind.
            self.bytes.reserve_exact(len - self.bytes.len());
            self.bytes.resize(len, 0);
        }
    }

    fn relax(&mut self) {
        if self.bytes.len() > self.resting {
            // What the loop sent is wiped already (the token of a CONNECT); what it read is
            // the hub's. Wiping the rest too costs nothing next to the allocation.
            self.bytes.fill(0);
            self.bytes.truncate(self.resting);
            self.bytes.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_grows_to_what_is_asked_up_to_its_limit_and_relaxes_to_its_resting_size() {
        let mut b = GrowingBuffer::new(1024, 4096);
        assert_eq!(b.slice().len(), 1024);
        b.reserve(100);
        assert_eq!(b.len(), 1024);
        b.slice()[..3].copy_from_slice(b"abc");
        b.reserve(3000);
        assert_eq!(b.len(), 3000);
        assert_eq!(&b.slice()[..3], b"abc", "the contents stay");
        b.reserve(1 << 20);
        assert_eq!(b.len(), 4096);
        b.relax();
        assert_eq!(b.len(), 1024);
        assert_eq!(&b.slice()[..3], &[0, 0, 0]);
        assert_eq!(GrowingBuffer::new(10, 10).len(), 512);
    }
}
