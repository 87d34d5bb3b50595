//! e^x for x ≤ 0 from one gated table on 10 fractional index bits.
//!
//! * Domain: x ∈ [−32, 0] ([`EXP_MIN_INPUT`]); below −32 the output is exactly 0; for
//!   0 < x < 32 it saturates at 1 (the table holds e^min(x,0)); x ≥ 32 is outside the domain
//!   (the index wraps). Inputs at the party's scale f (f ≥ 10 uses the full 10-bit index).
//! * Index: x rounded to 2^(f−10) ulps with a random carry; each entry is the midrange of
//!   e^x over its ±(2^(f−10) − 1)-ulp window, so the relative error is at most
//!   tanh((2^(f−10) − 1)·2^-f) = 2^-10.4 at f = 12, plus half an output ulp.
//! * **Guarantee** (f = 12): |out − e^x| ≤ 2^-10.4·e^x + 2^-(out_frac+1) on [−32, 0]. With
//!   `out_frac = 56` this is a relative error ≤ 2^-9 on the whole domain (e^-32·2^56 ≈ 2^9.8);
//!   with `out_frac = f = 12` (the default [`exp_neg`]) it is relative ≤ 2^-9 where
//!   e^x ≥ 2^-3.3 and absolute ≤ 2^-10.4 everywhere. Measured in `exp_neg_error_is_below_bound`.
//! * Cost: 2 rounds, 16 bytes per element each way; offline one 16-bit DPF, one 31-bit DCF.

use super::lut::{drelu_times, gated_lookup, reverse_table, table_sum, window_table, GatedTable};
use super::{encode_at, ACTIVATION_BITS};
use crate::arith::open_many;
use crate::{Party, ProtocolError};
use comet_core::ring;
use comet_dealer::kinds::nonlinear::{ExpPairKeys, ExpPairParams};
use rayon::prelude::*;
use std::sync::{Arc, Mutex, OnceLock};

/// Fractional bits of [`exp_neg_wide`]'s output (both tables at 16 bits).
pub const EXP_WIDE_FRAC: u32 = 32;

/// Fractional bits of each table of [`exp_neg_wide`].
const WIDE_TABLE_FRAC: u32 = 16;

/// The high table's steps are 2^-4 (16 per unit), so it has 6 + 4 = 10 index bits.
const WIDE_HIGH_STEP_LOG2: u32 = 4;

/// Smallest input with a non-zero output; below it exp_neg returns exactly 0.
pub const EXP_MIN_INPUT: f64 = -32.0;

/// Fractional bits of the table index (2^-10 steps).
pub const EXP_INDEX_FRAC_BITS: u32 = 10;

/// Largest supported output scale (e^0 must stay far below 2^62).
const MAX_OUT_FRAC: u32 = 56;

/// Ideal functionality: shares of e^x at the party's scale f for x ∈ [−32, 0] (0 below).
/// Two rounds. See the module docs for the error guarantee.
pub fn exp_neg(p: &mut Party, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    let f = p.fp.frac_bits;
    exp_neg_scaled(p, x, f)
}

/// Like [`exp_neg`] with the output at `out_frac` fractional bits (≤ 56): the table simply
/// stores e^x at that scale, so extra output precision costs nothing online.
pub fn exp_neg_scaled(p: &mut Party, x: &[u64], out_frac: u32) -> Result<Vec<u64>, ProtocolError> {
    if out_frac > MAX_OUT_FRAC {
        return Err(ProtocolError::Range(format!(
            "exp output scale {out_frac} above {MAX_OUT_FRAC} bits"
        )));
    }
    let _scope = p.scope("exp");
    let f = p.fp.frac_bits;
    let shift = f.saturating_sub(EXP_INDEX_FRAC_BITS);
    let index_frac = f - shift;
    // Signed index over [−32, 32): 6 integer bits.
    let index_bits = 6 + index_frac;
    let table = window_table(
        "exp",
        |v: f64| v.min(0.0).exp(),
        f,
        shift,
        index_bits,
        out_frac,
    );
    let spec = GatedTable {
        index_shift: shift,
        index_bits,
        gate: vec![(encode_at(EXP_MIN_INPUT, f), 1)],
        table,
        cmp_bits: ACTIVATION_BITS,
    };
    Ok(gated_lookup(p, x, &spec, false)?.gated)
}

/// The (reversed) high and low tables of [`exp_neg_wide`].
type WideTables = (Vec<u64>, Vec<u64>);

/// Cache of [`WideTables`] per input scale.
type WideCache = Mutex<Vec<(u32, Arc<WideTables>)>>;

/// The two exact tables of [`exp_neg_wide`] at input scale `f`: `(high, low)` with
/// `high[j] = e^min(j/16, 0)` (signed 10-bit j) and `low[u] = e^(u/2^f)` (signed u, |u| < 2^L,
/// L = f − 4), both at 16 fractional bits; reversed for `table_sum`.
fn wide_tables(f: u32) -> Arc<WideTables> {
    static CACHE: OnceLock<WideCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = guard.iter().find(|(k, _)| *k == f) {
        return t.clone();
    }
    let low_bits = f - WIDE_HIGH_STEP_LOG2;
    let high_bits = 6 + WIDE_HIGH_STEP_LOG2;
    let signed = |i: usize, bits: u32| ((i as i64) << (64 - bits)) >> (64 - bits);
    let step = (WIDE_HIGH_STEP_LOG2 as f64).exp2();
    let high: Vec<u64> = (0..1usize << high_bits)
        .map(|i| {
            encode_at(
                (signed(i, high_bits) as f64 / step).min(0.0).exp(),
                WIDE_TABLE_FRAC,
            )
        })
        .collect();
    let low: Vec<u64> = (0..1usize << (low_bits + 1))
        .map(|i| {
            encode_at(
                (signed(i, low_bits + 1) as f64 / (f as f64).exp2()).exp(),
                WIDE_TABLE_FRAC,
            )
        })
        .collect();
    let t = Arc::new((reverse_table(&high), reverse_table(&low)));
    guard.push((f, t.clone()));
    t
}

/// Ideal functionality: shares of e^x at [`EXP_WIDE_FRAC`] = 32 fractional bits for x ≤ 0 at
/// the party's scale f (5 ≤ f ≤ 20), exactly 0 below −32. Two rounds; 8 + 16 bytes per
/// element each way; per element only 2^10 + 2^(f−3) table entries are summed (vs 2^16 for
/// [`exp_neg`]), so this is the variant for softmax.
///
/// x = j·2^L + u *exactly* (L = f − 4; j = ⌊(x + (r mod 2^L))/2^L⌋ from the high bits of x̂, and
/// u = (x̂ mod 2^L) − (r mod 2^L) ∈ (−2^L, 2^L) from a DPF on L + 1 bits), so
/// e^x = e^(j/16)·e^(u/2^f) with no index rounding at all: the only errors are the two table
/// roundings at 16 bits: |out − e^x| ≤ 2^-17·(1.07 + e^x) + 2^-33 (measured in the tests).
/// The tables are multiplied with one Beaver pair whose sign fix and gate ride on DCF payloads
/// (`comet_dealer::kinds::nonlinear::ExpPairKeys`).
pub fn exp_neg_wide(p: &mut Party, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    let f = p.fp.frac_bits;
    if !(5..=20).contains(&f) {
        return Err(ProtocolError::Range(format!(
            "exp_neg_wide needs 5 ≤ f ≤ 20, got {f}"
        )));
    }
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let _scope = p.scope("exp");
    let low_bits = f - WIDE_HIGH_STEP_LOG2;
    let high_bits = 6 + WIDE_HIGH_STEP_LOG2;
    let keys: ExpPairKeys = p.correlation(&ExpPairParams {
        n: x.len(),
        cmp_bits: ACTIVATION_BITS,
        low_bits,
        high_bits,
    })?;
    let tables = wide_tables(f);
    let masked = ring::add(x, &keys.r);
    let theirs = p.exchange(&masked, 64)?;
    let x_hat = ring::add(&masked, &theirs);
    let party = p.id;
    let gate = encode_at(EXP_MIN_INPUT, f);
    let local: Vec<(u64, u64, [u64; 4])> = (0..x.len())
        .into_par_iter()
        .map(|i| {
            let v1 = table_sum(
                party,
                &keys.dpf_high[i],
                (x_hat[i] >> low_bits) & ring::mask_bits(high_bits),
                &tables.0,
            );
            let v2 = table_sum(
                party,
                &keys.dpf_low[i],
                x_hat[i] & ring::mask_bits(low_bits),
                &tables.1,
            );
            let shifted = x_hat[i].wrapping_sub(gate);
            let (w, qw) = (keys.w[i], keys.qw[i]);
            let ga = drelu_times(
                party,
                &keys.cmp_a[i],
                [w[0], w[1]],
                [qw[0], qw[1]],
                shifted,
                ACTIVATION_BITS,
            );
            let gb = drelu_times(
                party,
                &keys.cmp_b[i],
                [w[2], w[3]],
                [qw[2], qw[3]],
                shifted,
                ACTIVATION_BITS,
            );
            (
                v1.wrapping_sub(keys.a[i]),
                v2.wrapping_sub(keys.b[i]),
                [ga[0], ga[1], gb[0], gb[1]],
            )
        })
        .collect();
    let e1: Vec<u64> = local.iter().map(|t| t.0).collect();
    let e2: Vec<u64> = local.iter().map(|t| t.1).collect();
    let opened = open_many(p, &[(&e1, 64), (&e2, 64)])?;
    Ok(local
        .iter()
        .zip(opened[0].iter().zip(&opened[1]))
        .map(|((_, _, g), (&a, &b))| {
            a.wrapping_mul(b)
                .wrapping_mul(g[0])
                .wrapping_add(a.wrapping_mul(g[1]))
                .wrapping_add(b.wrapping_mul(g[2]))
                .wrapping_add(g[3])
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nonlinear::test_support::{dec, run_shared};
    use comet_core::Prg;

    fn inputs() -> Vec<f64> {
        let mut xs = vec![
            0.0,
            -1.0 / 4096.0,
            -32.0,
            -32.0 + 1.0 / 4096.0,
            -31.999,
            -16.0,
            -1.0,
        ];
        let mut prg = Prg::from_seed([4; 16]);
        for _ in 0..1200 {
            xs.push(-((prg.next_u64() % (32 * 4096)) as f64) / 4096.0);
        }
        xs
    }

    #[test]
    fn exp_neg_error_is_below_bound() {
        let f = 12;
        // Relative error over the whole domain with extra output precision.
        let xs = inputs();
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, f)).collect();
        let m = run_shared(&enc, 5, |p, x| exp_neg_scaled(p, x, 56));
        let mut worst_rel = 0.0f64;
        for (i, &x) in xs.iter().enumerate() {
            let got = dec(m.out[i], 56);
            worst_rel = worst_rel.max((got - x.exp()).abs() / x.exp());
        }
        assert!(worst_rel <= 2f64.powi(-9), "relative error {worst_rel}");
        assert_eq!(m.rounds, 2);
        // Default scale: absolute error bound and the relative bound where e^x ≥ 2^-3.3.
        let m = run_shared(&enc, 6, exp_neg);
        let mut worst_abs = 0.0f64;
        let mut worst_rel_big = 0.0f64;
        for (i, &x) in xs.iter().enumerate() {
            let err = (dec(m.out[i], f) - x.exp()).abs();
            worst_abs = worst_abs.max(err);
            if x.exp() >= 2f64.powf(-3.3) {
                worst_rel_big = worst_rel_big.max(err / x.exp());
            }
        }
        assert!(
            worst_abs <= 2f64.powf(-10.4) + 2f64.powi(-13),
            "absolute error {worst_abs}"
        );
        assert!(
            worst_rel_big <= 2f64.powi(-9),
            "relative error {worst_rel_big}"
        );
        println!(
            "exp_neg: {} elements, max rel error (out 56 bits) {worst_rel:.3e} (2^{:.2}); at f=12 max abs {worst_abs:.3e} (2^{:.2}); rounds {}, online {} B/elem, offline {} B/elem",
            xs.len(),
            worst_rel.log2(),
            worst_abs.log2(),
            m.rounds,
            m.online_bytes / xs.len() as u64,
            m.offline_bytes / xs.len() as u64
        );
    }

    #[test]
    fn exp_neg_wide_error_is_below_bound() {
        let mut xs = inputs();
        xs.extend([-32.0 - 1.0 / 4096.0, -40.0, -5000.0, -0.5 / 4096.0]);
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, 12)).collect();
        let m = run_shared(&enc, 8, exp_neg_wide);
        let mut worst = 0.0f64;
        for (i, &e) in enc.iter().enumerate() {
            let x = dec(e, 12);
            let got = dec(m.out[i], EXP_WIDE_FRAC);
            if x < EXP_MIN_INPUT {
                assert_eq!(m.out[i], 0, "exp({x}) must be exactly 0");
            }
            let ideal = if x < EXP_MIN_INPUT { 0.0 } else { x.exp() };
            let err = (got - ideal).abs();
            assert!(
                err <= 2f64.powi(-17) * (1.07 + ideal) + 2f64.powi(-33),
                "exp({x}): {got} vs {ideal}"
            );
            worst = worst.max(err);
        }
        assert_eq!(m.rounds, 2);
        println!("exp_neg_wide: {} elements, max abs error {worst:.3e} (2^{:.2}), rounds {}, online {} B/elem, offline {} B/elem", xs.len(), worst.log2(), m.rounds, m.online_bytes / xs.len() as u64, m.offline_bytes / xs.len() as u64);
    }

    #[test]
    fn exp_neg_is_exactly_zero_below_domain() {
        let xs = [-32.0 - 1.0 / 4096.0, -33.0, -1000.0, -100000.0];
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, 12)).collect();
        let m = run_shared(&enc, 7, |p, x| exp_neg_scaled(p, x, 56));
        assert_eq!(m.out, vec![0; xs.len()]);
    }
}
