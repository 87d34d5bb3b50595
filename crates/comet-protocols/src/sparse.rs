//! The self-gate of the sparse FFN (DESIGN.md §7.3): which neurons of a token to compute,
//! decided from the layer's own gate and up pre-activations at a few bits, revealed as one bit
//! per (token, neuron) in the session's secret neuron order.
//!
//! 1. Local: each server maps its share `v_b` (scale 2f) to `((v_b·mult) mod 2^64) >> shift`
//!    and keeps `k` bits; P0 adds one. With `y = v·mult/2^shift` the two results add up to
//!    `⌊y⌋ + 1 − e` mod 2^k, where the carry `e` of the shares' discarded fractions is 1 with
//!    probability `1 − frac(y)` over the random shares: stochastic rounding of `y`, unbiased.
//!    The wrap-around of the shares is a multiple of `2^(64−shift)`, which vanishes mod 2^k
//!    because `shift + k ≤ 64`. So the reduction is free and never fails; its rounding (up
//!    or down, where the plaintext gate rounds to nearest) is the only difference from the
//!    plaintext gate.
//! 2. Round 1: open `ĝ = g̃ + r_g` and `û = ũ + r_u` (k bits each way per value).
//! 3. Local: one full-domain DPF evaluation on `2k` bits at `(r_g, r_u)` gives an XOR share of
//!    `T[ĝ − r_g, û − r_u] = T[g̃, ũ]` for the public decision table `T`.
//! 4. Round 2: open the bits.
//!
//! Online: `2k` bits plus 1 bit per element each way, two rounds. Offline: one `2k`-bit DPF
//! key per element (a truth table up to 2k = 7, ≈ 16·(2k − 5) bytes above) plus two seeds.
//! Local work per element: a full-domain evaluation of the 2k-bit DPF (2^(2k−6) − 2 AES
//! calls, 1,022 at k = 8) and 2^k row rotations of 2^k bits.

use crate::arith::{open_bits, open_many};
use crate::error::check_len;
use crate::{Party, ProtocolError};
use comet_core::ring::mask_bits;
use comet_dealer::kinds::sparse::{SelfGateKeys, SelfGateParams, MAX_GATE_BITS};
use comet_fss::dpf_eval_all;
use rayon::prelude::*;

/// A layer's public self-gate: the two quantizers and the decision table.
#[derive(Clone, Debug, PartialEq)]
pub struct SelfGateTable {
    /// Code width k of g̃ and ũ (1..=8).
    pub bits: u32,
    /// Gate quantizer: `g̃ = ⌊g·gate_mult / 2^gate_shift⌋ mod 2^k` for g at 2f.
    pub gate_mult: u64,
    /// Gate quantizer shift.
    pub gate_shift: u32,
    /// Up quantizer multiplier.
    pub up_mult: u64,
    /// Up quantizer shift.
    pub up_shift: u32,
    /// `2^k` rows of `max(1, 2^k/64)` words: bit `ũ` of row `g̃` is set when the neuron is kept.
    pub rows: Vec<u64>,
}

impl SelfGateTable {
    fn check(&self) -> Result<(), ProtocolError> {
        let k = self.bits;
        if !(1..=MAX_GATE_BITS).contains(&k) {
            return Err(ProtocolError::Range(format!(
                "self-gate code width {k}: supported 1..={MAX_GATE_BITS}"
            )));
        }
        if self.gate_shift + k > 64 || self.up_shift + k > 64 {
            return Err(ProtocolError::Range(format!(
                "self-gate shifts {} / {} leave fewer than {k} bits",
                self.gate_shift, self.up_shift
            )));
        }
        check_len(
            "self-gate table",
            self.rows.len(),
            (1 << k) * self.row_words(),
        )
    }

    fn row_words(&self) -> usize {
        ((1usize << self.bits) / 64).max(1)
    }

    /// Row `a` as a `2^k`-bit vector.
    fn row(&self, a: usize) -> Row {
        let w = self.row_words();
        bits_from_words(&self.rows[a * w..(a + 1) * w], 0, 1 << self.bits)
    }

    /// This server's code share of a value at 2f (P0's carries the +1 of the rounding).
    fn code(is_p0: bool, share: u64, mult: u64, shift: u32, bits: u32) -> u64 {
        ((share.wrapping_mul(mult) >> shift) + is_p0 as u64) & mask_bits(bits)
    }

    /// The decision for codes `(g̃, ũ)` (unsigned, mod 2^k).
    pub fn keeps(&self, g_code: u64, u_code: u64) -> bool {
        bit(&self.row(g_code as usize), u_code as usize)
    }
}

/// A bit vector of up to 256 bits (one table or DPF row), bit `c` in word `c / 128`.
type Row = [u128; 2];

fn bit(x: &Row, c: usize) -> bool {
    x[c / 128] >> (c % 128) & 1 == 1
}

fn width_mask(width: u32) -> u128 {
    if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// Bits `start .. start + width` of a little-endian word array (`width` a power of two; rows
/// of 64 bits or more start on a word boundary).
fn bits_from_words(words: &[u64], start: usize, width: u32) -> Row {
    if width < 64 {
        let w = (words[start / 64] >> (start % 64)) as u128;
        return [w & width_mask(width), 0];
    }
    let mut out = [0u128; 2];
    for (i, word) in words[start / 64..start / 64 + width as usize / 64]
        .iter()
        .enumerate()
    {
        out[i / 2] |= (*word as u128) << (64 * (i % 2));
    }
    out
}

/// Rotates a `width`-bit vector right by `r < width` (bit `c + r` moves to `c`).
fn rotate_right(x: Row, r: u32, width: u32) -> Row {
    if r == 0 {
        return x;
    }
    if width == 256 {
        let (lo, hi, r) = if r >= 128 {
            (x[1], x[0], r - 128)
        } else {
            (x[0], x[1], r)
        };
        if r == 0 {
            return [lo, hi];
        }
        return [(lo >> r) | (hi << (128 - r)), (hi >> r) | (lo << (128 - r))];
    }
    let v = x[0];
    let rotated = if width == 128 {
        v.rotate_right(r)
    } else {
        ((v >> r) | (v << (width - r))) & width_mask(width)
    };
    [rotated, 0]
}

/// Ideal functionality: for shares of `g` and `u` (scale 2f, same length), the public bits
/// `T[g̃_i, ũ_i]` where `g̃ = g·mult/2^shift` rounded up or down (stochastically, by the
/// shares) mod 2^k, and likewise ũ. Two rounds.
pub fn self_gate(
    p: &mut Party,
    g: &[u64],
    u: &[u64],
    table: &SelfGateTable,
) -> Result<Vec<bool>, ProtocolError> {
    check_len("self-gate up values", u.len(), g.len())?;
    table.check()?;
    if g.is_empty() {
        return Ok(Vec::new());
    }
    let _scope = p.scope("self_gate");
    let k = table.bits;
    let keys: SelfGateKeys = p.correlation(&SelfGateParams {
        n: g.len(),
        bits: k,
    })?;
    let m = mask_bits(k);
    let is_p0 = p.is_p0();
    let masked = |x: &[u64], mult, shift, r: &[u64]| -> Vec<u64> {
        x.iter()
            .zip(r)
            .map(|(v, r)| SelfGateTable::code(is_p0, *v, mult, shift, k).wrapping_add(*r) & m)
            .collect()
    };
    let g_hat = masked(g, table.gate_mult, table.gate_shift, &keys.gate_mask);
    let u_hat = masked(u, table.up_mult, table.up_shift, &keys.up_mask);
    let opened = open_many(p, &[(&g_hat, k), (&u_hat, k)])?;
    let size = 1usize << k;
    let width = size as u32;
    // Column-reversed rows: reversed[a] bit c = T[a][−c mod 2^k].
    let reversed: Vec<Row> = (0..size)
        .map(|a| {
            let row = table.row(a);
            let mut out = [0u128; 2];
            for c in (0..size).filter(|&c| bit(&row, (size - c) % size)) {
                out[c / 128] |= 1 << (c % 128);
            }
            out
        })
        .collect();
    let party = p.id;
    let shares: Vec<u64> = (0..g.len())
        .into_par_iter()
        .map(|i| {
            let (gh, uh) = (opened[0][i] as usize, opened[1][i] as u32);
            let points = dpf_eval_all(party, &keys.dpf[i]);
            let mut acc = [0u128; 2];
            for jg in 0..size {
                let d_row = bits_from_words(&points, jg * size, width);
                // Σ_ju T[ĝ − jg][û − ju]·D[jg][ju] = parity(reversed[ĝ − jg] & D_row ⋙ û).
                let rev = &reversed[(gh + size - jg) % size];
                let rot = rotate_right(d_row, uh, width);
                acc[0] ^= rev[0] & rot[0];
                acc[1] ^= rev[1] & rot[1];
            }
            ((acc[0].count_ones() + acc[1].count_ones()) & 1) as u64
        })
        .collect();
    let bits = open_bits(p, &shares, 1)?;
    Ok(bits.into_iter().map(|b| b == 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run_pair, share_for_test};
    use comet_core::Prg;
    use comet_dealer::{Dealer, InProcessDealer};

    fn random_table(bits: u32, prg: &mut Prg) -> Vec<u64> {
        let words = ((1usize << bits) / 64).max(1);
        let used = mask_bits((1u32 << bits).min(64));
        (0..(1usize << bits) * words)
            .map(|_| prg.next_u64() & used)
            .collect()
    }

    #[test]
    fn self_gate_matches_the_table_at_the_local_codes() {
        let mut prg = Prg::from_seed([8; 16]);
        for bits in 1..=MAX_GATE_BITS {
            let n = 300;
            let table = SelfGateTable {
                bits,
                gate_mult: 40_000 + bits as u64,
                gate_shift: 36,
                up_mult: 51_234,
                up_shift: 35,
                rows: random_table(bits, &mut prg),
            };
            // Values at 2f = 24 bits up to ±60, a few at the code range's edge.
            let vals = |prg: &mut Prg| -> Vec<u64> {
                (0..n)
                    .map(|_| ((prg.next_u64() % (120 << 24)) as i64 - (60 << 24)) as u64)
                    .collect()
            };
            let (g, u) = (vals(&mut prg), vals(&mut prg));
            let (gs, us) = (share_for_test(&g, &mut prg), share_for_test(&u, &mut prg));
            let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([9; 16])));
            let (r0, r1) = run_pair(&dealer, |p| {
                let i = p.id.index();
                let out = self_gate(p, &gs[i], &us[i], &table)?;
                Ok((out, p.online_meter().total()))
            });
            let ((b0, cost), (b1, _)) = (r0.unwrap(), r1.unwrap());
            assert_eq!(b0, b1);
            assert_eq!(cost.rounds, 2);
            let code = |s: &[Vec<u64>; 2], i: usize, mult, shift| {
                (SelfGateTable::code(true, s[0][i], mult, shift, bits)
                    + SelfGateTable::code(false, s[1][i], mult, shift, bits))
                    & mask_bits(bits)
            };
            for i in 0..n {
                let cg = code(&gs, i, table.gate_mult, table.gate_shift);
                let cu = code(&us, i, table.up_mult, table.up_shift);
                assert_eq!(b0[i], table.keeps(cg, cu), "bits {bits}, element {i}");
                // The local codes are the floor or the floor plus one.
                let exact = |v: u64, mult: u64, shift: u32| {
                    (((v as i64 as i128 * mult as i128) >> shift) as u64) & mask_bits(bits)
                };
                let (eg, eu) = (
                    exact(g[i], table.gate_mult, table.gate_shift),
                    exact(u[i], table.up_mult, table.up_shift),
                );
                for (c, e) in [(cg, eg), (cu, eu)] {
                    assert!(c == e || c == (e + 1) & mask_bits(bits));
                }
            }
        }
    }

    #[test]
    fn self_gate_rejects_bad_tables() {
        let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([1; 16])));
        let mut table = SelfGateTable {
            bits: MAX_GATE_BITS + 1,
            gate_mult: 1,
            gate_shift: 10,
            up_mult: 1,
            up_shift: 10,
            rows: vec![0; 512 * 8],
        };
        let (r0, _) = run_pair(&dealer, |p| self_gate(p, &[1], &[2], &table));
        assert!(r0.unwrap_err().to_string().contains("code width"));
        table.bits = 3;
        let (r0, _) = run_pair(&dealer, |p| self_gate(p, &[1], &[2], &table));
        assert!(r0.unwrap_err().to_string().contains("table"));
    }
}
