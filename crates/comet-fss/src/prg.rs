//! Fixed-key AES length-doubling PRG in Matyas–Meyer–Oseas / Davies–Meyer style.
//!
//! A tree node is a 128-bit block whose least significant bit is the control bit `t` and whose
//! other 127 bits are the seed `s` (λ = 127). Expanding a seed towards child `dir ∈ {0, 1}`
//! costs exactly one AES call:
//!
//! ```text
//! child(s, dir) = AES_K1(s ⊕ dir) ⊕ (s ⊕ dir)     (new seed = high 127 bits, new t = low bit)
//! value(s, dir) = AES_K2(s ⊕ dir) ⊕ (s ⊕ dir)     (128 pseudo-random payload bits, DCF only)
//! ```
//!
//! Seeds always have their low bit cleared, so the inputs `s ⊕ 0` and `s ⊕ 1` of different
//! seeds never collide and each (key, input) pair is queried once per tree. `K1`, `K2` are
//! fixed public constants: the key schedule runs once per process, never per node (unlike the
//! seed-as-key PRG of EzPC, fss-notes §1). The `aes` crate picks AES-NI at run time.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use std::sync::OnceLock;

/// Public fixed AES key for seed/control-bit expansion.
const SEED_KEY: [u8; 16] = *b"comet-fss/seed-1";
/// Public fixed AES key for DCF payload expansion.
const VALUE_KEY: [u8; 16] = *b"comet-fss/value1";

/// Mask that clears the control bit of a node block, leaving the 127-bit seed.
pub const SEED_MASK: u128 = !1u128;

/// Number of blocks converted per AES batch call (keeps the scratch buffer on the stack).
const BATCH: usize = 64;

/// The fixed-key AES PRG shared by every DCF and DPF in the process.
pub struct TreePrg {
    seed_cipher: Aes128,
    value_cipher: Aes128,
}

impl std::fmt::Debug for TreePrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreePrg(fixed-key AES-128 MMO)")
    }
}

#[inline]
fn to_block(x: u128) -> Block {
    GenericArray::from(x.to_le_bytes())
}

#[inline]
fn from_block(b: &Block) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    u128::from_le_bytes(a)
}

/// Applies `x ↦ AES_k(x) ⊕ x` to every element of `xs` in place, batching AES calls so the
/// hardware pipelines several blocks at once.
fn mmo_in_place(cipher: &Aes128, xs: &mut [u128]) {
    let mut scratch = [Block::default(); BATCH];
    for chunk in xs.chunks_mut(BATCH) {
        let blocks = &mut scratch[..chunk.len()];
        for (b, &x) in blocks.iter_mut().zip(chunk.iter()) {
            *b = to_block(x);
        }
        cipher.encrypt_blocks(blocks);
        for (x, b) in chunk.iter_mut().zip(blocks.iter()) {
            *x ^= from_block(b);
        }
    }
}

impl TreePrg {
    /// The process-wide instance (key schedules computed once).
    pub fn global() -> &'static TreePrg {
        static INSTANCE: OnceLock<TreePrg> = OnceLock::new();
        INSTANCE.get_or_init(|| TreePrg {
            seed_cipher: Aes128::new(&GenericArray::from(SEED_KEY)),
            value_cipher: Aes128::new(&GenericArray::from(VALUE_KEY)),
        })
    }

    /// Raw child block of `seed` in direction `dir` (0 = left, 1 = right): one AES call.
    /// The low bit of the result is the child's control bit, the rest its seed.
    #[inline]
    pub fn child(&self, seed: u128, dir: u64) -> u128 {
        let x = (seed & SEED_MASK) ^ (dir as u128 & 1);
        let mut b = to_block(x);
        self.seed_cipher.encrypt_block(&mut b);
        from_block(&b) ^ x
    }

    /// Both raw child blocks of `seed` (two AES calls, pipelined).
    #[inline]
    pub fn children(&self, seed: u128) -> [u128; 2] {
        let s = seed & SEED_MASK;
        let mut xs = [s, s ^ 1];
        mmo_in_place(&self.seed_cipher, &mut xs);
        xs
    }

    /// 128 pseudo-random payload bits for child `dir` of `seed`: one AES call.
    #[inline]
    pub fn value(&self, seed: u128, dir: u64) -> u128 {
        let x = (seed & SEED_MASK) ^ (dir as u128 & 1);
        let mut b = to_block(x);
        self.value_cipher.encrypt_block(&mut b);
        from_block(&b) ^ x
    }

    /// Payload blocks of both children of `seed`.
    #[inline]
    pub fn values(&self, seed: u128) -> [u128; 2] {
        let s = seed & SEED_MASK;
        let mut xs = [s, s ^ 1];
        mmo_in_place(&self.value_cipher, &mut xs);
        xs
    }

    /// Batched [`TreePrg::child`]: each input is `seed ⊕ dir` (seed with its low bit replaced
    /// by the direction); it is replaced in place by the raw child block.
    pub fn child_batch(&self, inputs: &mut [u128]) {
        mmo_in_place(&self.seed_cipher, inputs);
    }

    /// Batched [`TreePrg::value`], inputs as in [`TreePrg::child_batch`].
    pub fn value_batch(&self, inputs: &mut [u128]) {
        mmo_in_place(&self.value_cipher, inputs);
    }
}

/// Splits a raw node block into (seed with low bit cleared, control bit).
#[inline]
pub fn split_node(block: u128) -> (u128, bool) {
    (block & SEED_MASK, block & 1 == 1)
}

/// All-ones if `bit`, else zero (branch-free selection of correction words).
#[inline]
pub(crate) fn mask_u128(bit: bool) -> u128 {
    (bit as u128).wrapping_neg()
}

/// All-ones if `bit`, else zero.
#[inline]
pub(crate) fn mask_u64(bit: bool) -> u64 {
    (bit as u64).wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_is_mmo_of_fixed_key_aes() {
        let prg = TreePrg::global();
        let seed = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        for dir in 0..2u64 {
            let x = seed ^ dir as u128;
            let mut b = to_block(x);
            Aes128::new(&GenericArray::from(SEED_KEY)).encrypt_block(&mut b);
            assert_eq!(prg.child(seed, dir), from_block(&b) ^ x);
            let mut b = to_block(x);
            Aes128::new(&GenericArray::from(VALUE_KEY)).encrypt_block(&mut b);
            assert_eq!(prg.value(seed, dir), from_block(&b) ^ x);
        }
        // The control bit of the seed argument is ignored.
        assert_eq!(prg.child(seed | 1, 1), prg.child(seed, 1));
    }

    #[test]
    fn batch_matches_single_calls() {
        let prg = TreePrg::global();
        let seeds: Vec<u128> = (0..200u128)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)) & SEED_MASK)
            .collect();
        let mut inputs: Vec<u128> = seeds
            .iter()
            .enumerate()
            .map(|(i, s)| s ^ (i as u128 & 1))
            .collect();
        let mut values = inputs.clone();
        prg.child_batch(&mut inputs);
        prg.value_batch(&mut values);
        for (i, s) in seeds.iter().enumerate() {
            assert_eq!(inputs[i], prg.child(*s, i as u64 & 1));
            assert_eq!(values[i], prg.value(*s, i as u64 & 1));
        }
        assert_eq!(
            prg.children(seeds[3]),
            [prg.child(seeds[3], 0), prg.child(seeds[3], 1)]
        );
        assert_eq!(
            prg.values(seeds[3]),
            [prg.value(seeds[3], 0), prg.value(seeds[3], 1)]
        );
        assert_ne!(prg.child(seeds[3], 0), prg.value(seeds[3], 0));
    }
}
