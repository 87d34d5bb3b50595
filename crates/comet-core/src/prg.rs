//! AES-128 in counter mode as a cryptographic pseudo-random generator.
//!
//! All masks, shares and dealer material in comet come from this PRG. A `Prg` is either
//! seeded explicitly (so a 16-byte seed can stand in for a whole share, DESIGN.md §4) or
//! seeded from the operating system's entropy source.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128;

/// A 128-bit PRG seed.
pub type Seed = [u8; 16];

/// Number of AES blocks produced per refill of the internal buffer.
const BLOCKS_PER_REFILL: usize = 64;

/// AES-128-CTR keystream generator. Not `Clone`: two copies would repeat the same stream.
pub struct Prg {
    cipher: Aes128,
    counter: u128,
    buffer: [u8; 16 * BLOCKS_PER_REFILL],
    used: usize,
}

impl std::fmt::Debug for Prg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prg")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Draws a fresh seed from the operating system's entropy source.
pub fn os_seed() -> Seed {
    let mut seed = [0u8; 16];
    getrandom::fill(&mut seed).expect("the operating system entropy source failed");
    seed
}

impl Prg {
    /// A generator whose whole output is determined by `seed`.
    pub fn from_seed(seed: Seed) -> Self {
        Self {
            cipher: Aes128::new(GenericArray::from_slice(&seed)),
            counter: 0,
            buffer: [0u8; 16 * BLOCKS_PER_REFILL],
            used: 16 * BLOCKS_PER_REFILL,
        }
    }

    /// A generator seeded from the operating system's entropy source.
    pub fn from_entropy() -> Self {
        Self::from_seed(os_seed())
    }

    fn refill(&mut self) {
        let mut blocks = [GenericArray::default(); BLOCKS_PER_REFILL];
        for block in blocks.iter_mut() {
            block.copy_from_slice(&self.counter.to_le_bytes());
            self.counter = self.counter.wrapping_add(1);
        }
        self.cipher.encrypt_blocks(&mut blocks);
        for (chunk, block) in self.buffer.chunks_exact_mut(16).zip(blocks.iter()) {
            chunk.copy_from_slice(block);
        }
        self.used = 0;
    }

    /// Fills `out` with pseudo-random bytes.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        let mut written = 0;
        while written < out.len() {
            if self.used == self.buffer.len() {
                self.refill();
            }
            let take = (self.buffer.len() - self.used).min(out.len() - written);
            out[written..written + take].copy_from_slice(&self.buffer[self.used..self.used + take]);
            self.used += take;
            written += take;
        }
    }

    /// The next pseudo-random 64-bit word.
    pub fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// The next pseudo-random 128-bit seed (to seed a child generator).
    pub fn next_seed(&mut self) -> Seed {
        let mut seed = [0u8; 16];
        self.fill_bytes(&mut seed);
        seed
    }

    /// Fills `out` with uniformly random ring elements.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        for x in out.iter_mut() {
            *x = self.next_u64();
        }
    }

    /// `n` uniformly random ring elements.
    pub fn gen_u64s(&mut self, n: usize) -> Vec<u64> {
        let mut v = vec![0u64; n];
        self.fill_u64(&mut v);
        v
    }

    /// `n` uniformly random elements of Z_2^bits (each reduced to its low `bits` bits).
    pub fn gen_bits(&mut self, n: usize, bits: u32) -> Vec<u64> {
        let mask = crate::ring::mask_bits(bits);
        let mut v = self.gen_u64s(n);
        for x in v.iter_mut() {
            *x &= mask;
        }
        v
    }

    /// A uniformly random index in `0..bound` (rejection sampling, no modulo bias).
    pub fn gen_index(&mut self, bound: usize) -> usize {
        assert!(bound > 0, "gen_index needs a positive bound");
        let bound = bound as u64;
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % bound) as usize;
            }
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn gen_permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.gen_index(i + 1);
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_chunking_does_not_matter() {
        let mut a = Prg::from_seed([7; 16]);
        let mut b = Prg::from_seed([7; 16]);
        let whole = a.gen_u64s(300);
        let mut parts = b.gen_u64s(17);
        parts.extend(b.gen_u64s(283));
        assert_eq!(whole, parts);
        let mut c = Prg::from_seed([8; 16]);
        assert_ne!(whole[..4], c.gen_u64s(4)[..]);
    }

    #[test]
    fn matches_aes_ctr_definition() {
        // First block = AES_k(0) with a little-endian 128-bit counter.
        let key = [1u8; 16];
        let mut block = GenericArray::clone_from_slice(&0u128.to_le_bytes());
        Aes128::new(GenericArray::from_slice(&key)).encrypt_block(&mut block);
        let mut prg = Prg::from_seed(key);
        let mut out = [0u8; 16];
        prg.fill_bytes(&mut out);
        assert_eq!(&out[..], &block[..]);
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut prg = Prg::from_seed([3; 16]);
        let mut p = prg.gen_permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn entropy_seeds_differ() {
        assert_ne!(os_seed(), os_seed());
    }
}
