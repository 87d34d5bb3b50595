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

use super::lut::{gated_lookup, window_table, GatedTable};
use super::{encode_at, ACTIVATION_BITS};
use crate::{Party, ProtocolError};

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
    fn exp_neg_is_exactly_zero_below_domain() {
        let xs = [-32.0 - 1.0 / 4096.0, -33.0, -1000.0, -100000.0];
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, 12)).collect();
        let m = run_shared(&enc, 7, |p, x| exp_neg_scaled(p, x, 56));
        assert_eq!(m.out, vec![0; xs.len()]);
    }
}
