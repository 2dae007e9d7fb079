//! A small, stable 64-bit hash (FNV-1a with a final avalanche). Stable across builds and Rust
//! versions, which consistent hashing needs: the same key must reach the same backend after a
//! restart or an upgrade. Not for untrusted-key hash tables (no seed): use std's maps there.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Incremental FNV-1a, so callers can hash several pieces without joining them first.
#[derive(Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl StableHasher {
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// The hash with a splitmix64 finalizer: FNV alone spreads short keys poorly over a ring.
    pub fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub fn stable_hash(bytes: &[u8]) -> u64 {
    StableHasher::default().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_and_spreads() {
        assert_eq!(stable_hash(b"abc"), stable_hash(b"abc"));
        assert_ne!(stable_hash(b"abc"), stable_hash(b"abd"));
        let mut pieces = StableHasher::default();
        pieces.write(b"ab").write(b"c");
        assert_eq!(pieces.finish(), stable_hash(b"abc"));
    }
}
