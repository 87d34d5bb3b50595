//! SiLU(x) = x·σ(x) as ReLU(x) minus a gated table of the even function ReLU − SiLU.
//!
//! * Range: table on [−16, 16) ([`SILU_RANGE`]); outside it the output is exactly ReLU(x)
//!   (0 below −16, x from 16 on; the ideal function differs by < 2^-18 there). Inputs must
//!   satisfy |x| < 2^(ACTIVATION_BITS − 2) ring units (2^18 in value at f = 12).
//! * Table index: 8 fractional bits (m = 13, 8192 entries) at f ≥ 8, so `x` is rounded to
//!   2^(f−8) ulps with a random carry; every entry is the midrange over its ±(2^(f−8) − 1)-ulp
//!   window. Error bound: 0.5·(2^(f−7) − 2)·2^-f·max|g'| + 2^-(f+1) ≈ 0.5·2^-7.9·0.5 + 2^-13
//!   ≈ 0.0019 ≤ 2^-9 at f = 12; measured max abs error vs f64 in the tests: see
//!   `silu_error_is_below_bound` (≈ 0.0019, f = 12).
//! * Cost: 2 rounds, 16 bytes per element each way; offline one DPF (13 bits), one DCF
//!   (31 bits, 2 words), one ReLU key per element.

use super::lut::{gated_lookup, window_table, GatedTable};
use super::{encode_at, silu_f64, ACTIVATION_BITS};
use crate::{Party, ProtocolError};
use comet_core::ring;

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

/// [`silu`] for inputs known to satisfy |x| < 2^(bits − 2) ring units: a smaller `bits`
/// shrinks the comparison keys (≈ 66 bytes per bit per element offline; at f = 12,
/// `bits = 24` still allows |x| < 1024, far above SmolLM2's gate values ≤ 49).
pub fn silu_with_bits(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let _scope = p.scope("silu");
    relu_minus_even_table(p, x, "silu", |v| v.max(0.0) - silu_f64(v), 4, bits)
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
