//! Oblivious shuffle (`ObliviousShuffle`): re-shares a shared vector in an order that
//! neither server knows.
//!
//! # The protocol
//!
//! The permutation is `π = π1 ∘ π0` (first π0, then π1), with `permute(π, v)[i] = v[π[i]]`.
//! The dealer gives P0 the permutation π0 and uniform vectors `m`, `d`; it gives P1 the
//! permutation π1, a uniform vector `a` and `Δ = π1(π0(a) − m) − d`
//! (`comet_dealer::kinds::shuffle`). Input shares: P0 holds `x0`, P1 holds `x1`,
//! `x = x0 + x1`.
//!
//! ```text
//! P1 → P0:  z = x1 − a
//! P0 → P1:  w = π0(x0 + z) + m   = π0(x) − π0(a) + m
//! P0 outputs y0 = d;  P1 outputs y1 = π1(w) + Δ = π1(π0(x)) − π1(π0(a) − m) + π1(π0(a) − m) − d
//!                                                = π(x) − d
//! ```
//!
//! so `y0 + y1 = π(x)`. Security (semi-honest, non-colluding): P0 sees `z`, uniform because
//! `a` is uniform and unknown to P0. P1 sees `w`, uniform because of `m`, and `Δ`, uniform and
//! independent of `w` because of `d`; neither learns anything about the other's permutation.
//! The output sharing is fresh: `y0 = d` is uniform and independent of the inputs.
//!
//! Costs: two one-way messages of `n` elements (P1 then P0: the latency of one round trip;
//! P1's meter counts one round), `bits` bits per element each. Offline: P0 three seeds,
//! P1 two seeds and `Δ` (`bits` bits per element). All arithmetic is mod `2^bits`, so a
//! 0/1 vector is shuffled with `bits = 1` at 1 bit per element.

use crate::arith::open_bits;
use crate::error::check_len;
use crate::{Party, ProtocolError};
use comet_core::{ring, PartyId};
use comet_dealer::kinds::shuffle::{permute, ShuffleMask, ShuffleParams};
use comet_net::codec::{Reader, Writer};

/// Most vectors one shuffle can move together.
pub const MAX_VECTORS: usize = 64;

/// Ideal functionality: fresh shares (over Z_2^64) of `π(x)` for a uniformly random
/// permutation `π` that neither server knows. Two one-way messages of 8 bytes per element.
pub fn shuffle(p: &mut Party, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    shuffle_many(p, &[x], 64)?
        .pop()
        .ok_or_else(|| ProtocolError::Shape("shuffle returned no output".into()))
}

/// Ideal functionality: fresh shares over Z_2^`bits` of `π(x_j)` for every vector `x_j` (all
/// of the same length), the same hidden permutation `π` for all of them. Outputs are reduced
/// mod `2^bits`.
pub fn shuffle_many(
    p: &mut Party,
    xs: &[&[u64]],
    bits: u32,
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    if !(1..=64).contains(&bits) {
        return Err(ProtocolError::Range(format!(
            "shuffle ring width {bits} bits (allowed 1..=64)"
        )));
    }
    if xs.is_empty() || xs.len() > MAX_VECTORS {
        return Err(ProtocolError::Shape(format!(
            "{} vectors in one shuffle (allowed 1..={MAX_VECTORS})",
            xs.len()
        )));
    }
    let len = xs[0].len();
    for x in xs {
        check_len("shuffled vector", x.len(), len)?;
    }
    if len == 0 {
        return Ok(vec![Vec::new(); xs.len()]);
    }
    let corr: ShuffleMask = p.correlation(&ShuffleParams {
        len,
        vectors: xs.len(),
        bits,
    })?;
    let mask = ring::mask_bits(bits);
    let reduce = |v: Vec<u64>| -> Vec<u64> { v.into_iter().map(|e| e & mask).collect() };
    match p.id {
        PartyId::P1 => {
            let mut msg = Writer::new();
            for (x, a) in xs.iter().zip(&corr.mask) {
                msg.ring(&ring::sub(x, a), bits);
            }
            p.chan.send(&msg.finish())?;
            p.chan.flush()?;
            let received = read_vectors(&p.chan.recv()?, xs.len(), len)?;
            Ok(received
                .iter()
                .zip(&corr.correction)
                .map(|(w, delta)| reduce(ring::add(&permute(&corr.perm, w), delta)))
                .collect())
        }
        PartyId::P0 => {
            let received = read_vectors(&p.chan.recv()?, xs.len(), len)?;
            let mut msg = Writer::new();
            for ((x, z), m) in xs.iter().zip(&received).zip(&corr.mask) {
                msg.ring(&ring::add(&permute(&corr.perm, &ring::add(x, z)), m), bits);
            }
            p.chan.send(&msg.finish())?;
            p.chan.flush()?;
            Ok(corr.correction.into_iter().map(reduce).collect())
        }
    }
}

/// Parses the other server's message: `count` ring vectors of `len` elements each.
fn read_vectors(bytes: &[u8], count: usize, len: usize) -> Result<Vec<Vec<u64>>, ProtocolError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let v = r.ring()?;
        check_len("peer's shuffle message", v.len(), len)?;
        out.push(v);
    }
    r.finish()?;
    Ok(out)
}

/// Shuffles a shared 0/1 vector and opens it: both servers learn the bits in a random order
/// that neither knows, i.e. only how many ones there are (DESIGN.md §7). Each input must
/// share 0 or 1 (only the low bit is used). Costs three one-way messages of `n` bits.
pub fn open_shuffled_bits(p: &mut Party, bits_shares: &[u64]) -> Result<Vec<u8>, ProtocolError> {
    let shuffled = shuffle_many(p, &[bits_shares], 1)?;
    let opened = open_bits(p, &shuffled[0], 1)?;
    Ok(opened.into_iter().map(|b| b as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::open;
    use crate::testing::{run_pair, share_for_test};
    use comet_core::share::reconstruct;
    use comet_core::Prg;
    use comet_dealer::{Dealer, InProcessDealer};
    use proptest::prelude::*;

    fn dealer(seed: u8) -> InProcessDealer {
        InProcessDealer::new(Dealer::with_prg(Prg::from_seed([seed; 16])))
    }

    /// Shuffles `x` together with the index vector `0..n` and opens both: returns the
    /// shuffled values and the permutation `π` that was applied (`out[i] = x[π[i]]`).
    fn shuffle_with_indices(
        x: &[u64],
        bits: u32,
        seed: u8,
    ) -> (Vec<u64>, Vec<u64>, [Vec<Vec<u64>>; 2]) {
        let mut prg = Prg::from_seed([seed.wrapping_add(50); 16]);
        let idx: Vec<u64> = (0..x.len() as u64).collect();
        let (xs, is) = (share_for_test(x, &mut prg), share_for_test(&idx, &mut prg));
        let d = dealer(seed);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            let out = shuffle_many(p, &[&xs[i], &is[i]], bits)?;
            let values = open(p, &out[0])?;
            let perm = open(p, &out[1])?;
            Ok((values, perm, out))
        });
        let (v0, perm0, out0) = r0.unwrap();
        let (v1, perm1, out1) = r1.unwrap();
        assert_eq!(v0, v1);
        assert_eq!(perm0, perm1);
        let mask = ring::mask_bits(bits);
        (
            v0.iter().map(|v| v & mask).collect(),
            perm0.iter().map(|v| v & mask).collect(),
            [out0, out1],
        )
    }

    fn assert_is_permutation(perm: &[u64]) {
        let mut sorted = perm.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..perm.len() as u64).collect::<Vec<_>>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn shuffle_applies_one_hidden_permutation(x in proptest::collection::vec(any::<u64>(), 1..200), seed in any::<u8>()) {
            let (values, perm, _) = shuffle_with_indices(&x, 64, seed);
            assert_is_permutation(&perm);
            for (v, j) in values.iter().zip(&perm) {
                prop_assert_eq!(*v, x[*j as usize]);
            }
        }
    }

    #[test]
    fn shuffle_in_a_small_ring() {
        let mut prg = Prg::from_seed([1; 16]);
        let x = prg.gen_u64s(300);
        let (values, perm, _) = shuffle_with_indices(&x, 16, 1);
        assert_is_permutation(&perm);
        for (v, j) in values.iter().zip(&perm) {
            assert_eq!(*v, x[*j as usize] & 0xffff);
        }
    }

    #[test]
    fn permutations_are_random_and_outputs_are_fresh_shares() {
        let x: Vec<u64> = (0..64).collect();
        let (_, perm_a, shares_a) = shuffle_with_indices(&x, 64, 2);
        let (_, perm_b, _) = shuffle_with_indices(&x, 64, 3);
        // Identity or equal permutations have probability 1/64! each.
        assert_ne!(perm_a, x);
        assert_ne!(perm_a, perm_b);
        // Neither server's output share equals the value or its input share reordered.
        let value_share = &shares_a[0][0];
        let output = reconstruct(value_share, &shares_a[1][0]);
        assert_eq!(output, perm_a);
        assert!(
            value_share
                .iter()
                .zip(&output)
                .filter(|(s, v)| s == v)
                .count()
                < 3
        );
    }

    #[test]
    fn single_vector_shuffle_keeps_the_multiset_and_costs_two_messages() {
        let mut prg = Prg::from_seed([4; 16]);
        let x = prg.gen_u64s(500);
        let xs = share_for_test(&x, &mut prg);
        let d = dealer(4);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            let out = shuffle(p, &xs[i])?;
            Ok((out, p.online_meter().total()))
        });
        let (y0, c0) = r0.unwrap();
        let (y1, c1) = r1.unwrap();
        let mut got = reconstruct(&y0, &y1);
        let mut want = x.clone();
        assert_ne!(got, want);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        // One message each way: 8 bytes per element, a 5-byte vector header, a frame header.
        assert_eq!(c0.bytes_sent, c1.bytes_sent);
        assert_eq!(c0.bytes_sent as usize, 5 + 5 + 8 * x.len());
        assert_eq!(c1.rounds, 1);
    }

    #[test]
    fn opening_shuffled_bits_reveals_the_count_only() {
        let mut prg = Prg::from_seed([5; 16]);
        let bits: Vec<u64> = (0..1000).map(|i| u64::from(i % 7 == 0)).collect();
        let xs = share_for_test(&bits, &mut prg);
        let d = dealer(5);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            let first = open_shuffled_bits(p, &xs[i])?;
            let second = open_shuffled_bits(p, &xs[i])?;
            Ok((first, second, p.online_meter().total()))
        });
        let (a0, b0, costs) = r0.unwrap();
        let (a1, b1, _) = r1.unwrap();
        assert_eq!(a0, a1);
        assert_eq!(b0, b1);
        let ones = bits.iter().filter(|&&b| b == 1).count();
        for opened in [&a0, &b0] {
            assert_eq!(opened.len(), bits.len());
            assert!(opened.iter().all(|&b| b <= 1));
            assert_eq!(opened.iter().filter(|&&b| b == 1).count(), ones);
        }
        // Two independent shuffles of the same vector give different orders, and neither
        // keeps the input order.
        assert_ne!(a0, b0);
        let input: Vec<u8> = bits.iter().map(|&b| b as u8).collect();
        assert_ne!(a0, input);
        // 1 bit per element in each of the three messages: 125 bytes plus headers.
        assert_eq!(costs.bytes_sent as usize, 2 * ((5 + 5 + 125) + (5 + 125)));
    }

    #[test]
    fn bad_inputs_are_clear_errors_on_both_servers() {
        let d = dealer(6);
        let (r0, r1) = run_pair(&d, |p| shuffle_many(p, &[&[1, 2, 3], &[4, 5]], 64));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        assert!(matches!(r1, Err(ProtocolError::Shape(_))));
        let (r0, r1) = run_pair(&d, |p| shuffle_many(p, &[&[1, 2, 3]], 0));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        assert!(matches!(r1, Err(ProtocolError::Range(_))));
        let (r0, r1) = run_pair(&d, |p| shuffle_many(p, &[], 64));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        assert!(matches!(r1, Err(ProtocolError::Shape(_))));
        let (r0, r1) = run_pair(&d, |p| shuffle(p, &[]));
        assert_eq!(r0.unwrap(), Vec::<u64>::new());
        assert_eq!(r1.unwrap(), Vec::<u64>::new());
    }
}
