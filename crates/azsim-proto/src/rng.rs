//! The device side's one pseudo-random source: xorshift64* over a splitmix64-scrambled seed.
//! The simulated sensor walks with it, and the client loop draws message ids and reconnect
//! jitter from it. Nothing secret comes from here: SAS keys and signatures never use it.

/// xorshift64* (Vigna, 2016): 8 bytes of state, fast on a 32-bit core, good enough for
/// simulated readings, message ids and jitter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator from `seed`. The seed goes through splitmix64 first, so seeds 0, 1, 2 do
    /// not start correlated, and the state is never 0 (which xorshift cannot leave).
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self {
            state: (z ^ (z >> 31)) | 1,
        }
    }

    /// The next 32 random bits (the high half of the multiplied state, its best bits).
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(4) {
            let bytes = self.next_u32().to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_nearby_seeds_do_not() {
        let mut a = XorShift64::new(1);
        let mut b = XorShift64::new(1);
        let mut c = XorShift64::new(2);
        let xs: [u32; 4] = core::array::from_fn(|_| a.next_u32());
        let ys: [u32; 4] = core::array::from_fn(|_| b.next_u32());
        let zs: [u32; 4] = core::array::from_fn(|_| c.next_u32());
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn a_zero_seed_still_moves() {
        let mut r = XorShift64::new(0);
        assert_ne!(r.next_u32(), r.next_u32());
    }

    #[test]
    fn fill_covers_every_byte_of_an_odd_length() {
        let mut r = XorShift64::new(7);
        let mut out = [0u8; 7];
        r.fill(&mut out);
        let mut again = XorShift64::new(7);
        let a = again.next_u32().to_le_bytes();
        let b = again.next_u32().to_le_bytes();
        assert_eq!(out[..4], a);
        assert_eq!(out[4..], b[..3]);
    }
}
