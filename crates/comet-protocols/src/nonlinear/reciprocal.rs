//! 1/x on a documented positive range, by a hat-basis spline ([`super::spline`]).
//!
//! * Range: `[lo, hi]` chosen by the caller (0 < lo, hi ≤ 2^(61 − f)); the grid covers the
//!   enclosing octaves `[2^⌊log2 lo⌋, 2^⌈log2 hi⌉]` and saturates outside (x below the grid,
//!   including 0 and negative values, gives the value at its lower end).
//! * Grid: 32 intervals per octave (relative spacing ≤ 2^-5), so the linear interpolation
//!   error of 1/x is ≤ δ²/4 = 2^-12 relative, centred to ±2^-13; plus output rounding.
//!   **Guarantee**: relative error ≤ 2^-10 on `[lo, hi]` whenever
//!   `2^out_frac / hi ≥ 2^13` (measured in `reciprocal_relative_error_is_below_bound`).
//! * Cost: 2 rounds (open, one truncation round for all bands); per element
//!   32·log2(hi/lo) ReLU evaluations (one key), 16 bytes each way.

use super::spline::{HatSpline, SplineConfig};
use crate::{Party, ProtocolError};

/// Intervals per octave (log2).
const KNOTS_LOG2: u32 = 5;

/// The spline used by [`reciprocal`] for inputs at `in_frac` bits.
pub fn reciprocal_spline(
    in_frac: u32,
    lo: f64,
    hi: f64,
    out_frac: u32,
) -> Result<HatSpline, ProtocolError> {
    HatSpline::new(
        |y| 1.0 / y,
        &SplineConfig {
            lo,
            hi,
            in_frac,
            out_frac,
            knots_log2: KNOTS_LOG2,
            precision_bits: 14,
        },
    )
}

/// Ideal functionality: shares of 1/x at `out_frac` fractional bits for x (at the party's
/// scale f) in `[lo, hi]`; relative error ≤ 2^-10 when 2^out_frac/hi ≥ 2^13. Two rounds.
pub fn reciprocal(
    p: &mut Party,
    x: &[u64],
    lo: f64,
    hi: f64,
    out_frac: u32,
) -> Result<Vec<u64>, ProtocolError> {
    let _scope = p.scope("reciprocal");
    let spline = reciprocal_spline(p.fp.frac_bits, lo, hi, out_frac)?;
    spline.eval(p, x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nonlinear::encode_at;
    use crate::nonlinear::test_support::{dec, run_shared};
    use comet_core::Prg;

    /// Max relative error of the exact integer model over a dense sweep of [lo, hi].
    pub(crate) fn sweep_relative(
        s: &HatSpline,
        f: impl Fn(f64) -> f64,
        lo: f64,
        hi: f64,
        points: usize,
    ) -> f64 {
        let fi = (s.in_frac() as f64).exp2();
        let (a, b) = ((lo * fi).ceil() as i64, (hi * fi).floor() as i64);
        let mut worst = 0.0f64;
        for t in 0..=points {
            // Geometric sweep so that every octave is sampled evenly, plus both ends.
            let y = ((a as f64) * ((b as f64) / (a as f64)).powf(t as f64 / points as f64)).round()
                as i64;
            let y = y.clamp(a, b);
            let ideal = f(y as f64 / fi);
            let got = s.eval_plain(y) as f64 / (s.out_frac() as f64).exp2();
            worst = worst.max((got - ideal).abs() / ideal);
        }
        worst
    }

    #[test]
    fn reciprocal_relative_error_is_below_bound() {
        // Softmax sums (1 ≤ y ≤ 256 at 16 fractional bits) and a wide general range at f = 12.
        for (in_frac, lo, hi, out) in [(16, 1.0, 256.0, 30), (12, 0.01, 5000.0, 30)] {
            let s = reciprocal_spline(in_frac, lo, hi, out).unwrap();
            let worst = sweep_relative(&s, |y| 1.0 / y, lo, hi, 200_000);
            assert!(
                worst <= 2f64.powi(-10),
                "1/x on [{lo}, {hi}]: relative error {worst}"
            );
            println!("reciprocal on [{lo}, {hi}] (in {in_frac}, out {out} bits): {} knots, max rel error {worst:.3e} (2^{:.2})", s.knot_count(), worst.log2());
        }
        // The protocol on random inputs and the edges (bit-exact with the model).
        let mut prg = Prg::from_seed([8; 16]);
        let mut xs = vec![0.01, 5000.0, 1.0, 0.0100001, 4999.99];
        for _ in 0..20 {
            xs.push(0.01 * (500_000f64).powf((prg.next_u64() % 10_000) as f64 / 10_000.0));
        }
        let enc: Vec<u64> = xs.iter().map(|v| encode_at(*v, 12)).collect();
        let m = run_shared(&enc, 12, |p, x| reciprocal(p, x, 0.01, 5000.0, 30));
        for (i, &e) in enc.iter().enumerate() {
            let ideal = 1.0 / dec(e, 12);
            let got = dec(m.out[i], 30);
            assert!(
                (got - ideal).abs() / ideal <= 2f64.powi(-10),
                "1/{}: got {got}",
                xs[i]
            );
        }
        assert_eq!(m.rounds, 2);
    }
}
