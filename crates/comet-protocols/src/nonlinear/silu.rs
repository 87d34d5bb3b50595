//! SiLU(x) = x·σ(x) as ReLU(x) minus a gated table of the even function ReLU − SiLU.
//!
//! * Range: table on [−16, 16) ([`SILU_RANGE`]); outside it the output is exactly ReLU(x)
//!   (0 below −16, x from 16 on; the ideal function differs by < 2^-18 there). Inputs must
//!   satisfy |x| < 2^(bits − 2) ring units (`bits` = [`ACTIVATION_BITS`] = 32 for [`silu()`]:
//!   2^18 in value at f = 12).
//! * Table index: 8 fractional bits (m = 13, 8192 entries), so `x` is rounded to 2^-8 with a
//!   random carry; every entry is the midrange over its window. Error bound:
//!   0.5·(2^-7 − 2^-f)·max|g'| + 2^-(f+1) ≈ 0.0019 ≤ 2^-9 at f = 12 (one more ulp, 2^-12,
//!   when the input arrives at 2f and the ReLU part is truncated faithfully); measured in
//!   `silu_error_is_below_bound`.
//!
//! # Protocol (narrow openings, `comet_dealer::kinds::silu`)
//!
//! Round 1 opens `x̂ = x + r mod 2^bits` (`bits` bits, not 64). Locally: one SIGMA comparison
//! key (1-bit DPF on `bits − 1` bits) evaluated at `x̂`, `x̂ + 16` and `x̂ − 16` gives XOR
//! shares of `d = 1{x ≥ 0}` and of the gate `g = 1{−16 ≤ x < 16}`; a 1-bit DPF over the
//! table gives `v = s·T[j]` (`s = ±1` unknown). Round 2 opens `ê = d ⊕ m`, `ĝ = g ⊕ γ` (one
//! bit each, dealer masks `m`, `γ`) and `v̂ = v + 2^(K−2) + ρ mod 2^K` (K = 13 bits: the
//! table entries are below 2^11). Then, with `q = msb(r)`, `R = (r mod 2^bits) >> σ`:
//!
//! ```text
//! t = x̂' >> σ − 2^(bits−2−σ) − R + 2^(bits−σ)·(1 − msb(x̂'))·q      x̂' = x̂ + 2^(bits−2)
//! d = ê + (1 − 2ê)·m,   g = ĝ + (1 − 2ĝ)·γ
//! T = s·v = (v̂ − 2^(K−2))·s − s·ρ_K + 2^K·(1 − msb(v̂))·s·msb(ρ_K)
//! SiLU = d·t − g·T
//! ```
//!
//! `t` is `x` (σ = 0) or its faithful truncation by σ = f (input at 2f, [`silu_2f`]), by the
//! narrow-truncation identity of `crate::trunc`. Every product above is a public coefficient
//! times a dealer monomial (`m·R`, `γ·s·ρ_K`, …), so the result is local after round 2.
//! [`silu_mul_2f`] multiplies by a second factor `u` opened in round 1 the same way
//! (`t_u = ⌊u / 2^f⌋` faithfully), which only multiplies the monomial set by `(1, R_u, q_u)`.
//!
//! * Cost: 2 rounds; per element each way `⌈bits/8⌉` bytes + 2 bytes + 2 bits (24 bits: 5.25
//!   bytes, against 16 for the DCF-based gated lookup of [`super::lut`]); with the second
//!   factor `⌈bits_u/8⌉` more bytes. Offline: two DPF keys (no DCF) and 11 (or 35) words.

use super::lut::{gated_lookup, reverse_table, table_sum, window_table, GatedTable};
use super::{encode_at, silu_f64, ACTIVATION_BITS};
use crate::arith::open_many;
use crate::{Party, ProtocolError};
use comet_core::ring;
use comet_dealer::kinds::silu::{SecondFactor, SiluKeys, SiluParams};
use comet_fss::dpf_lt_batch;
use rayon::prelude::*;

/// The table covers |x| < SILU_RANGE; beyond it SiLU is replaced by ReLU exactly.
pub const SILU_RANGE: f64 = 16.0;

/// Fractional bits of the table index.
const INDEX_FRAC_BITS: u32 = 8;

/// Shares of ReLU(x) − G(x) where G is the table of `g = ReLU − h` on |x| < 2^range_log2.
pub(crate) fn relu_minus_even_table(
    p: &mut Party,
    x: &[u64],
    name: &'static str,
    g: impl Fn(f64) -> f64 + Sync,
    range_log2: u32,
    bits: u32,
) -> Result<Vec<u64>, ProtocolError> {
    let f = p.fp.frac_bits;
    if bits > 64 || bits < range_log2 + f + 3 {
        return Err(ProtocolError::Range(format!(
            "{name}: signed width {bits} cannot hold ±2^{range_log2} at {f} fractional bits"
        )));
    }
    let shift = f.saturating_sub(INDEX_FRAC_BITS);
    let index_frac = f - shift;
    let index_bits = range_log2 + 1 + index_frac;
    let table = window_table(name, g, f, shift, index_bits, f);
    let bound = encode_at((range_log2 as f64).exp2(), f);
    let spec = GatedTable {
        index_shift: shift,
        index_bits,
        gate: vec![(bound.wrapping_neg(), 1), (bound, u64::MAX)],
        table,
        cmp_bits: bits,
    };
    let out = gated_lookup(p, x, &spec, true)?;
    let relu = out
        .relu
        .ok_or_else(|| ProtocolError::Shape("gated lookup returned no ReLU".into()))?;
    Ok(ring::sub(&relu, &out.gated))
}

/// Ideal functionality: shares of SiLU(x) = x/(1 + e^−x) at the party's scale f, with max abs
/// error ≤ 2^-9 on [−16, 16) and exactly ReLU(x) outside. Two rounds.
pub fn silu(p: &mut Party, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    silu_with_bits(p, x, ACTIVATION_BITS)
}

/// [`silu`] for inputs known to satisfy |x| < 2^(bits − 2) ring units (`bits ≥ f + 7`):
/// `bits` is the width of the first opening and of the comparison key (at f = 12,
/// `bits = 24` allows |x| < 1024, far above SmolLM2's gate values ≤ 49: 3 bytes per element
/// instead of 8). Two rounds.
pub fn silu_with_bits(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let _scope = p.scope("silu");
    narrow_silu(p, x, None, bits, 0)
}

/// Ideal functionality: shares of SiLU(x/2^f) at scale f for shares of `x` at scale **2f**
/// (an untruncated product, |x| < 2^(bits − 2), `bits ≥ 2f + 7`): the truncation by f is
/// folded into the ReLU part (faithful, +0/+1 ulp) and the table reads the 2f input
/// directly, so no separate truncation round is needed. Error ≤ 2^-9 + 2^-12 on [−16, 16),
/// ReLU within one ulp outside. Two rounds, `⌈bits/8⌉ + 2.25` bytes per element each way.
pub fn silu_2f(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let _scope = p.scope("silu");
    let f = p.fp.frac_bits;
    narrow_silu(p, x, None, bits, f)
}

/// Ideal functionality: shares of `SiLU(x/2^f)·⌊u/2^f⌋` at scale 2f for shares of `x` and `u`
/// at scale 2f (|x| < 2^(x_bits − 2), |u| < 2^(u_bits − 2)): the SwiGLU hidden value from
/// the untruncated gate and up projections, replacing their truncation, [`silu_2f`] and the
/// Beaver product (4 rounds, ≈ 48 bytes per element each way) by 2 rounds and
/// `⌈x_bits/8⌉ + ⌈u_bits/8⌉ + 2.25` bytes. `u` is truncated faithfully (+0/+1 ulp).
pub fn silu_mul_2f(
    p: &mut Party,
    x: &[u64],
    u: &[u64],
    x_bits: u32,
    u_bits: u32,
) -> Result<Vec<u64>, ProtocolError> {
    crate::error::check_len("second SiLU factor", u.len(), x.len())?;
    let _scope = p.scope("silu_mul");
    let f = p.fp.frac_bits;
    if !(f + 2..=64).contains(&u_bits) {
        return Err(ProtocolError::Range(format!(
            "second factor width {u_bits} (needs {}..=64)",
            f + 2
        )));
    }
    narrow_silu(
        p,
        x,
        Some((
            u,
            SecondFactor {
                bits: u_bits,
                shift: f,
            },
        )),
        x_bits,
        f,
    )
}

/// Fractional bits of the table index of the narrow SiLU.
const NARROW_INDEX_FRAC: u32 = 8;

/// log2 of [`SILU_RANGE`].
const RANGE_LOG2: u32 = 4;

/// The narrow SiLU of the module docs: input `x` at `f + in_shift` fractional bits, optional
/// second factor.
fn narrow_silu(
    p: &mut Party,
    x: &[u64],
    up: Option<(&[u64], SecondFactor)>,
    bits: u32,
    in_shift: u32,
) -> Result<Vec<u64>, ProtocolError> {
    let f = p.fp.frac_bits;
    let in_frac = f + in_shift;
    if in_frac < NARROW_INDEX_FRAC || bits > 64 || bits < RANGE_LOG2 + in_frac + 3 {
        return Err(ProtocolError::Range(format!(
            "silu: signed width {bits} cannot hold ±2^{RANGE_LOG2} at {in_frac} fractional bits"
        )));
    }
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let index_shift = in_frac - NARROW_INDEX_FRAC;
    let index_bits = RANGE_LOG2 + 1 + NARROW_INDEX_FRAC;
    let table = window_table(
        "silu",
        |v| v.max(0.0) - silu_f64(v),
        in_frac,
        index_shift,
        index_bits,
        f,
    );
    let largest = table
        .iter()
        .map(|v| (*v as i64).unsigned_abs())
        .max()
        .unwrap_or(0);
    let value_bits = (64 - largest.leading_zeros() + 2).max(3);
    let bound = encode_at(SILU_RANGE, in_frac);
    let (lo, hi) = (bound.wrapping_neg(), bound);
    let keys: SiluKeys = p.correlation(&SiluParams {
        n: x.len(),
        bits,
        in_shift,
        index_shift,
        index_bits,
        value_bits,
        up: up.map(|(_, factor)| factor),
    })?;
    let party = p.id;
    let is_p0 = p.is_p0();
    let wide = ring::mask_bits(bits);

    // Round 1: x̂ = x + r mod 2^bits (and û = u + u_mask mod 2^bits_u).
    let masked_x: Vec<u64> = x
        .iter()
        .zip(&keys.r)
        .map(|(v, r)| v.wrapping_add(*r) & wide)
        .collect();
    let masked_u: Vec<u64> = match up {
        Some((u, factor)) => u
            .iter()
            .zip(&keys.u)
            .map(|(v, m)| v.wrapping_add(*m) & ring::mask_bits(factor.bits))
            .collect(),
        None => Vec::new(),
    };
    let mut parts = vec![(&masked_x[..], bits)];
    if let Some((_, factor)) = up {
        parts.push((&masked_u[..], factor.bits));
    }
    let opened = open_many(p, &parts)?;
    let x_hat = &opened[0];

    // Local: XOR shares of d ⊕ m and g ⊕ γ; the masked table value.
    let low = ring::mask_bits(bits - 1);
    let sign_test = |c: u64| -> (Vec<u8>, Vec<u8>) {
        let points: Vec<u64> = x_hat.iter().map(|v| v.wrapping_sub(c) & wide).collect();
        let lows: Vec<u64> = points.iter().map(|v| v & low).collect();
        let above: Vec<u8> = points.iter().map(|v| 1 ^ (v >> (bits - 1)) as u8).collect();
        (above, dpf_lt_batch(party, &keys.cmp, &lows))
    };
    let (p_zero, lt_zero) = sign_test(0);
    let (p_lo, lt_lo) = sign_test(lo);
    let (p_hi, lt_hi) = sign_test(hi);
    let public = |b: u8| if is_p0 { b } else { 0 };
    let e_share: Vec<u64> = (0..x.len())
        .map(|i| (public(p_zero[i]) ^ lt_zero[i] ^ (keys.bits[i] & 1)) as u64)
        .collect();
    let g_share: Vec<u64> = (0..x.len())
        .map(|i| {
            (public(p_lo[i] ^ p_hi[i]) ^ lt_lo[i] ^ lt_hi[i] ^ ((keys.bits[i] >> 1) & 1)) as u64
        })
        .collect();
    let reversed = reverse_table(&table);
    let index_mask = ring::mask_bits(index_bits);
    let value_mask = ring::mask_bits(value_bits);
    let offset = if is_p0 { 1u64 << (value_bits - 2) } else { 0 };
    let v_share: Vec<u64> = (0..x.len())
        .into_par_iter()
        .map(|i| {
            let v = table_sum(
                party,
                &keys.table[i],
                (x_hat[i] >> index_shift) & index_mask,
                &reversed,
            );
            v.wrapping_add(keys.rho[i]).wrapping_add(offset) & value_mask
        })
        .collect();

    // Round 2: ê, ĝ (one bit each) and v̂ (value_bits).
    let theirs = p.exchange_many(&[(&e_share, 1), (&g_share, 1), (&v_share, value_bits)])?;
    let words = keys.monomials.len() / x.len();
    let out = (0..x.len())
        .map(|i| {
            let e = (e_share[i] ^ theirs[0][i]) & 1;
            let g = (g_share[i] ^ theirs[1][i]) & 1;
            let v_hat = v_share[i].wrapping_add(theirs[2][i]) & value_mask;
            let (a_g, k_g) = truncation_terms(x_hat[i], bits, in_shift);
            let (e1, g1) = (1u64.wrapping_sub(2 * e), 1u64.wrapping_sub(2 * g));
            let v0 = v_hat.wrapping_sub(1 << (value_bits - 2));
            let k_v = if v_hat >> (value_bits - 1) == 0 {
                1u64 << value_bits
            } else {
                0
            };
            let neg = |v: u64| v.wrapping_neg();
            // Coefficients of [1, R, q, m, m·R, m·q, s, s·ρ_K, s·m_ρ, γs, γs·ρ_K, γs·m_ρ].
            let base = [
                e.wrapping_mul(a_g),
                neg(e),
                e.wrapping_mul(k_g),
                e1.wrapping_mul(a_g),
                neg(e1),
                e1.wrapping_mul(k_g),
                neg(g.wrapping_mul(v0)),
                g,
                neg(g.wrapping_mul(k_v)),
                neg(g1.wrapping_mul(v0)),
                g1,
                neg(g1.wrapping_mul(k_v)),
            ];
            let factors = match up {
                Some((_, factor)) => {
                    let (a_u, k_u) = truncation_terms(opened[1][i], factor.bits, factor.shift);
                    vec![a_u, u64::MAX, k_u]
                }
                None => vec![1],
            };
            let mono = &keys.monomials[i * words..(i + 1) * words];
            let mut acc = 0u64;
            for (fu, factor) in factors.iter().enumerate() {
                for (b, coef) in base.iter().enumerate() {
                    let c = factor.wrapping_mul(*coef);
                    let k = fu * 12 + b;
                    if k == 0 {
                        if is_p0 {
                            acc = acc.wrapping_add(c);
                        }
                    } else {
                        acc = acc.wrapping_add(c.wrapping_mul(mono[k - 1]));
                    }
                }
            }
            acc
        })
        .collect();
    Ok(out)
}

/// The public part `A` and the carry coefficient `κ` of a faithful narrow truncation by
/// `shift` from the opening `x̂ = x + r mod 2^bits`: `⌊x / 2^shift⌋ (+1) = A − R + κ·q` with
/// `R = (r mod 2^bits) >> shift` and `q = msb_bits(r)` (see `crate::trunc`; exact for
/// `shift = 0`).
fn truncation_terms(x_hat: u64, bits: u32, shift: u32) -> (u64, u64) {
    let shifted = x_hat.wrapping_add(1 << (bits - 2)) & ring::mask_bits(bits);
    let public = (shifted >> shift).wrapping_sub(1 << (bits - 2 - shift));
    let carry = if shifted >> (bits - 1) == 0 {
        1u64.checked_shl(bits - shift).unwrap_or(0)
    } else {
        0
    };
    (public, carry)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nonlinear::test_support::{dec, run_shared};
    use comet_core::Prg;

    /// Every ring input in a grid plus random points and the edges; returns the max error.
    pub(crate) fn check_activation(
        name: &str,
        ideal: impl Fn(f64) -> f64,
        f: impl Fn(&mut Party, &[u64]) -> Result<Vec<u64>, ProtocolError> + Sync,
        range: f64,
        bound: f64,
    ) -> f64 {
        let fp = 12u32;
        let mut xs: Vec<f64> = vec![
            0.0,
            -range,
            range,
            -range - 1.0 / 4096.0,
            range - 1.0 / 4096.0,
            -range + 1.0 / 4096.0,
            1e-3,
            -1e-3,
            100.0,
            -100.0,
            5000.0,
            -5000.0,
            60000.0,
        ];
        let mut prg = Prg::from_seed([9; 16]);
        for _ in 0..1500 {
            xs.push((prg.next_u64() % (2 * 20 * 4096)) as f64 / 4096.0 - 20.0);
        }
        // A dense sweep around 0, where the correction has its kink.
        for u in -300..300 {
            xs.push(u as f64 / 4096.0);
        }
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, fp)).collect();
        let m = run_shared(&enc, 3, f);
        let mut worst = 0.0f64;
        for (i, x) in xs.iter().enumerate() {
            let xq = dec(enc[i], fp);
            let got = dec(m.out[i], fp);
            let err = (got - ideal(xq)).abs();
            if xq.abs() >= range {
                // Exact asymptotes outside the range.
                assert_eq!(
                    m.out[i],
                    if xq >= 0.0 { enc[i] } else { 0 },
                    "{name}({x}) must be exactly ReLU outside"
                );
            }
            worst = worst.max(err);
        }
        assert!(
            worst <= bound,
            "{name}: max abs error {worst} above {bound}"
        );
        assert_eq!(m.rounds, 2, "{name} takes two rounds");
        println!(
            "{name}: {} elements, max abs error {worst:.6} (2^{:.2}), rounds {}, online {} B/elem, offline {} B/elem",
            xs.len(),
            worst.log2(),
            m.rounds,
            m.online_bytes / xs.len() as u64,
            m.offline_bytes / xs.len() as u64
        );
        worst
    }

    #[test]
    fn silu_error_is_below_bound() {
        check_activation("silu", silu_f64, silu, SILU_RANGE, 2f64.powi(-9));
    }

    #[test]
    fn narrow_silu_sends_few_bytes_per_element() {
        let xs: Vec<u64> = (0..1000)
            .map(|i| encode_at(i as f64 / 20.0 - 25.0, 12))
            .collect();
        let m = run_shared(&xs, 42, |p, x| silu_with_bits(p, x, 24));
        // Round 1: 3 bytes; round 2: 2 bits + 2 bytes (13-bit values); frame and ring headers.
        let round1 = 5 + 5 + 3 * 1000;
        let round2 = 5 + 3 * 5 + 2 * 125 + 2 * 1000;
        assert_eq!(m.online_bytes as usize, round1 + round2);
        assert_eq!(m.rounds, 2);
        println!(
            "silu_with_bits 24: {:.2} bytes per element each way (64-bit gated lookup: 16), {} offline bytes per element",
            m.online_bytes as f64 / 1000.0,
            m.offline_bytes / 1000
        );
    }

    /// Inputs at 2f over [−20, 20] plus the edges and large values; checks the error bound and
    /// the ReLU asymptotes within one ulp. Returns the max error.
    fn check_silu_2f(bits: u32) -> f64 {
        let mut prg = Prg::from_seed([43; 16]);
        let mut xs: Vec<f64> = vec![
            0.0, -16.0, 16.0, 15.9999, -16.0001, 300.0, -300.0, 1000.0, -1000.0,
        ];
        for _ in 0..1500 {
            xs.push((prg.next_u64() % (40 << 24)) as f64 / 16_777_216.0 - 20.0);
        }
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, 24)).collect();
        let m = run_shared(&enc, 44, |p, x| silu_2f(p, x, bits));
        let mut worst = 0.0f64;
        for (i, &e) in enc.iter().enumerate() {
            let xq = dec(e, 24);
            let got = dec(m.out[i], 12);
            let err = (got - silu_f64(xq)).abs();
            if xq.abs() >= SILU_RANGE {
                let relu = if xq > 0.0 { (e as i64 >> 12) as u64 } else { 0 };
                assert!(
                    m.out[i].wrapping_sub(relu) <= 1,
                    "silu_2f({xq}) must be ReLU within one ulp"
                );
            }
            worst = worst.max(err);
        }
        assert!(
            worst <= 2f64.powi(-9) + 2f64.powi(-12),
            "silu_2f max abs error {worst}"
        );
        assert_eq!(m.rounds, 2);
        println!(
            "silu_2f bits {bits}: max abs error {worst:.6} (2^{:.2}), {:.2} bytes per element each way",
            worst.log2(),
            m.online_bytes as f64 / xs.len() as f64
        );
        worst
    }

    #[test]
    fn silu_of_an_untruncated_input_is_within_the_bound() {
        check_silu_2f(36);
        check_silu_2f(64);
    }

    #[test]
    fn silu_times_a_second_factor_matches_f64() {
        let mut prg = Prg::from_seed([45; 16]);
        let n = 1200;
        let mut gate: Vec<f64> = vec![0.0, -16.0, 16.0, 49.0, -49.0, 1000.0, -1000.0];
        let mut up: Vec<f64> = vec![75.0, -75.0, 3.5, -0.001, 75.0, 1.0, 1.0];
        while gate.len() < n {
            gate.push((prg.next_u64() % (100 << 24)) as f64 / 16_777_216.0 - 50.0);
            up.push((prg.next_u64() % (150 << 24)) as f64 / 16_777_216.0 - 75.0);
        }
        let g_enc: Vec<u64> = gate.iter().map(|v| encode_at(*v, 24)).collect();
        let u_enc: Vec<u64> = up.iter().map(|v| encode_at(*v, 24)).collect();
        let mut share_prg = Prg::from_seed([46; 16]);
        let us = crate::testing::share_for_test(&u_enc, &mut share_prg);
        let m = run_shared(&g_enc, 47, |p, x| {
            silu_mul_2f(p, x, &us[p.id.index()], 36, 40)
        });
        let mut worst = 0.0f64;
        for i in 0..n {
            let (gq, uq) = (dec(g_enc[i], 24), dec(u_enc[i], 24));
            let got = dec(m.out[i], 24);
            let want = silu_f64(gq) * uq;
            // SiLU error (2^-9 + 2^-12) times |u|, plus |SiLU|·(one ulp of u's truncation).
            let bound = (2f64.powi(-9) + 2f64.powi(-12)) * (uq.abs() + 2f64.powi(-12))
                + (gq.abs() + 1.0) * 2f64.powi(-12);
            assert!(
                (got - want).abs() <= bound,
                "SiLU({gq})·{uq} = {got}, want {want}"
            );
            worst = worst.max((got - want).abs());
        }
        assert_eq!(
            m.rounds, 2,
            "one opening of both inputs, one of the masked bits and values"
        );
        println!(
            "silu_mul_2f (36/40 bits): max abs error {worst:.5}, {:.2} bytes per element each way, {} offline bytes per element",
            m.online_bytes as f64 / n as f64,
            m.offline_bytes / n as u64
        );
        let bad = crate::testing::run_pair(
            &comet_dealer::InProcessDealer::new(comet_dealer::Dealer::new()),
            |p| silu_mul_2f(p, &[0, 1], &[0], 36, 40),
        );
        assert!(matches!(bad.0, Err(ProtocolError::Shape(_))));
        let bad = crate::testing::run_pair(
            &comet_dealer::InProcessDealer::new(comet_dealer::Dealer::new()),
            |p| silu_2f(p, &[0], 30),
        );
        assert!(matches!(bad.0, Err(ProtocolError::Range(_))));
    }

    #[test]
    fn narrow_keys_give_the_same_function() {
        let xs: Vec<u64> = [-1000.0, -16.0, -3.3, 0.0, 0.7, 15.9, 16.0, 1000.0]
            .iter()
            .map(|v| encode_at(*v, 12))
            .collect();
        let wide = run_shared(&xs, 41, silu);
        let narrow = run_shared(&xs, 41, |p, x| silu_with_bits(p, x, 24));
        for (a, b) in wide.out.iter().zip(&narrow.out) {
            assert!((*a as i64 - *b as i64).abs() <= 16, "{a} vs {b}");
        }
        assert!(narrow.offline_bytes < wide.offline_bytes);
        let bad = crate::testing::run_pair(
            &comet_dealer::InProcessDealer::new(comet_dealer::Dealer::new()),
            |p| silu_with_bits(p, &[0], 18),
        );
        assert!(matches!(bad.0, Err(ProtocolError::Range(_))));
    }
}
