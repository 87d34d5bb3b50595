//! 1/√x with extra output precision, by a hat-basis spline ([`super::spline`]).
//!
//! * Input: shares of x at an explicit scale `in_frac` (RMSNorm feeds the exact sum of
//!   squares at 2f bits, so no precision is lost before the spline), range `[lo, hi]`
//!   (0 < lo, hi ≤ 2^(61 − in_frac)); saturation outside.
//! * Grid: 16 intervals per octave (interpolation error 3δ²/32 ≤ 2^-11.4 relative, centred to
//!   ±2^-12.4), narrower in octaves where the band needs it to keep 14 significant bits.
//!   **Guarantee**: relative error ≤ 2^-10 on `[lo, hi]` whenever 2^out_frac/√hi ≥ 2^13;
//!   measured in `rsqrt_relative_error_is_below_bound` over [2^-10, 2^22] at 24 bits in.
//! * Cost: 2 rounds; per element one ReLU key evaluated at every knot (≈ 16 per octave).

use super::spline::{HatSpline, SplineConfig};
use crate::{Party, ProtocolError};

/// Intervals per octave (log2).
const KNOTS_LOG2: u32 = 4;

/// Spline of `1/√(y/div + eps)` (RMSNorm folds the division by d and ε into it), keeping
/// `precision_bits` significant bits per band (14 for [`rsqrt()`]).
pub fn rsqrt_spline(
    in_frac: u32,
    lo: f64,
    hi: f64,
    out_frac: u32,
    div: f64,
    eps: f64,
    precision_bits: u32,
) -> Result<HatSpline, ProtocolError> {
    if !(div > 0.0 && eps >= 0.0) {
        return Err(ProtocolError::Range(format!(
            "rsqrt with divisor {div} and epsilon {eps}"
        )));
    }
    HatSpline::new(
        |y| 1.0 / (y / div + eps).sqrt(),
        &SplineConfig {
            lo,
            hi,
            in_frac,
            out_frac,
            knots_log2: KNOTS_LOG2,
            precision_bits,
        },
    )
}

/// Ideal functionality: shares of 1/√x at `out_frac` bits for shares of x at `in_frac` bits,
/// x ∈ `[lo, hi]`; relative error ≤ 2^-10 when 2^out_frac/√hi ≥ 2^13. Two rounds.
pub fn rsqrt(
    p: &mut Party,
    x: &[u64],
    in_frac: u32,
    lo: f64,
    hi: f64,
    out_frac: u32,
) -> Result<Vec<u64>, ProtocolError> {
    let _scope = p.scope("rsqrt");
    rsqrt_spline(in_frac, lo, hi, out_frac, 1.0, 0.0, 14)?.eval(p, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nonlinear::encode_at;
    use crate::nonlinear::reciprocal::tests::sweep_relative;
    use crate::nonlinear::test_support::{dec, run_shared};

    #[test]
    fn rsqrt_relative_error_is_below_bound() {
        let (lo, hi) = (2f64.powi(-10), 2f64.powi(22));
        let s = rsqrt_spline(24, lo, hi, 30, 1.0, 0.0, 14).unwrap();
        let worst = sweep_relative(&s, |y| 1.0 / y.sqrt(), lo, hi, 200_000);
        assert!(worst <= 2f64.powi(-10), "rsqrt relative error {worst}");
        println!("rsqrt on [2^-10, 2^22] (in 24, out 30 bits): {} knots, max rel error {worst:.3e} (2^{:.2})", s.knot_count(), worst.log2());
        // Tiny and huge inputs through the protocol, including saturation below the range.
        let xs = [lo, hi, 1.0, 0.0069, 894_916.0, 3.0, 0.0];
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, 24)).collect();
        let m = run_shared(&enc, 13, |p, x| rsqrt(p, x, 24, lo, hi, 30));
        for (i, &x) in xs.iter().enumerate() {
            let ideal = 1.0 / x.max(lo).sqrt();
            let got = dec(m.out[i], 30);
            assert!(
                (got - ideal).abs() / ideal <= 2f64.powi(-10),
                "rsqrt({x}) = {got}, ideal {ideal}"
            );
        }
        assert_eq!(m.rounds, 2);
    }
}
