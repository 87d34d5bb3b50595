//! Nonlinear functions of a transformer on secret-shared fixed-point values (DESIGN.md §5):
//! SiLU, GeLU, exp, reciprocal, rsqrt, softmax, RMSNorm and LayerNorm.
//!
//! Every function has a documented input range, is tested against an f64 ideal functionality
//! over that range and at its edges, and states its measured maximal error. Two building
//! blocks carry all of them:
//!
//! * [`lut`]: a **gated lookup table** (2 rounds): opens `x̂ = x + r` once, looks up a table at
//!   the bits `s..s+m` of `x` with a DPF (fss-notes §4), multiplies by a gate
//!   `Σ_t w_t·1{x ≥ c_t}` obtained from one DCF key evaluated at several public thresholds,
//!   and optionally adds a one-round ReLU of `x`. Used by [`gelu()`], [`exp_neg`]; [`silu()`]
//!   runs a DCF-free variant with narrow openings (masked sign and gate bits, module `silu`).
//! * [`spline`]: a **hat-basis linear spline** (2 rounds): opens `x̂` once, evaluates
//!   `ReLU(x − c_k)` at every knot from one ReLU key, combines them into piecewise-linear hat
//!   functions with power-of-two widths (so every coefficient is an exact integer), and
//!   truncates each octave band by its own shift in a single round. Used by [`reciprocal()`],
//!   [`rsqrt()`], and inside [`softmax_rows`], [`rms_norm`], [`layer_norm`].
//!
//! [`exp_neg_wide`] (the exponential inside softmax) splits x exactly into a 10-bit high and
//! an (f − 3)-bit low table index and multiplies the two lookups with one Beaver pair in the
//! same second round, so it has no index rounding and sums 2^10 + 2^(f−3) entries instead of
//! [`exp_neg`]'s 2^16.
//!
//! | function | range | max error (f = 12, measured) | rounds |
//! |---|---|---|---|
//! | [`silu()`] | table on [−16, 16), exactly ReLU outside | abs 0.0019 (2^-9.1) | 2 |
//! | [`gelu()`] | table on [−8, 8), exactly ReLU outside | abs 0.0018 (2^-9.2) | 2 |
//! | [`exp_neg`] / [`exp_neg_scaled`] | [−32, 0], 0 below | rel 2^-9.8 at 56 output bits | 2 |
//! | [`exp_neg_wide`] | [−32, 0], 0 below | abs 2^-16.4 at 32 output bits | 2 |
//! | [`reciprocal()`] | caller's [lo, hi] | rel 2^-12.8 | 2 |
//! | [`rsqrt()`] | caller's [lo, hi] | rel 2^-12.2 | 2 |
//! | [`softmax_rows`] | \|x\| < 2^16 | abs 2^-12.2 | ⌈log2 cols⌉ + 6 |
//! | [`rms_norm`] | mean(x²) ∈ [2^-12, 2^22] | rel 2^-11.7 of the normaliser | 5 |
//! | [`layer_norm`] | var ∈ [2^-12, 2^22] | rel 2^-11.7 of the normaliser | 6 |
//!
//! `cargo run -p comet-protocols --release --example nonlinear_costs` prints time, bytes,
//! rounds and errors at the real model's sizes.

pub mod exp;
pub mod gelu;
pub mod lut;
pub mod norm;
pub mod reciprocal;
pub mod rsqrt;
pub mod silu;
pub mod softmax;
pub mod spline;

pub use exp::{
    exp_neg, exp_neg_scaled, exp_neg_wide, EXP_INDEX_FRAC_BITS, EXP_MIN_INPUT, EXP_WIDE_FRAC,
};
pub use gelu::{gelu, gelu_with_bits, GELU_RANGE};
pub use norm::{
    layer_norm, norm_z_width, rms_norm, rms_norm_fused, rms_norm_matmul, rms_norm_matmul_bits,
    NORM_MEAN_SQUARE_RANGE,
};
pub use reciprocal::reciprocal;
pub use rsqrt::rsqrt;
pub use silu::{silu, silu_2f, silu_mul_2f, silu_with_bits, SILU_RANGE};
pub use softmax::{softmax_rows, softmax_rows_masked, softmax_rows_with, SoftmaxOptions};
pub use spline::HatSpline;

/// Signed width (bits) of activations entering the element-wise nonlinear gates: inputs must
/// satisfy |x| < 2^(ACTIVATION_BITS − 2) as ring integers (|x| < 2^18 = 262,144 in value at
/// f = 12), so that comparisons with public thresholds never overflow.
pub const ACTIVATION_BITS: u32 = 32;

/// The f64 error function (ideal functionality of GeLU): Taylor series for |x| < 3, Lentz
/// continued fraction for erfc beyond; absolute error below 1e-13.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let value = if a < 3.0 {
        // erf(a) = 2/√π · Σ (−1)^n a^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let a2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(−a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))) (modified Lentz).
        let tiny = 1e-300;
        let mut f = a;
        let mut c = a;
        let mut d = 0.0;
        for k in 1..200 {
            let an = k as f64 / 2.0;
            d = a + an * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = a + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    value.copysign(x)
}

/// Ideal SiLU: x·σ(x).
pub fn silu_f64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Ideal GeLU (exact, erf form): x·Φ(x).
pub fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// Rounds a real to the nearest ring integer at `frac` fractional bits (two's complement).
pub(crate) fn encode_at(v: f64, frac: u32) -> u64 {
    (v * (frac as f64).exp2()).round() as i64 as u64
}

/// Shares of `x + c` for public per-element constants `c` (only P0 adds them).
pub(crate) fn add_public_vec(is_p0: bool, x: &mut [u64], c: &[u64]) {
    if is_p0 {
        comet_core::ring::add_assign(x, c);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the nonlinear tests: run a function on shared inputs and decode.
    use crate::testing::{run_pair, share_for_test};
    use crate::{Party, ProtocolError};
    use comet_core::share::reconstruct;
    use comet_core::Prg;
    use comet_dealer::{Dealer, InProcessDealer};

    /// What a two-party run measured.
    #[derive(Debug, Clone)]
    pub struct Measured {
        /// Reconstructed outputs (ring).
        pub out: Vec<u64>,
        /// Online rounds of P0.
        pub rounds: u64,
        /// Online bytes sent by P0.
        pub online_bytes: u64,
        /// Offline bytes received by P0.
        pub offline_bytes: u64,
    }

    /// Shares `x`, runs `f` on both servers, reconstructs the result.
    pub fn run_shared(
        x: &[u64],
        seed: u8,
        f: impl Fn(&mut Party, &[u64]) -> Result<Vec<u64>, ProtocolError> + Sync,
    ) -> Measured {
        let mut prg = Prg::from_seed([seed; 16]);
        let xs = share_for_test(x, &mut prg);
        let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([seed ^ 0x5a; 16])));
        let (r0, r1) = run_pair(&dealer, |p| {
            let y = f(p, &xs[p.id.index()])?;
            let on = p.online_meter().total();
            let off = p.offline_meter().total();
            Ok((y, on.rounds, on.bytes_sent, off.bytes_received))
        });
        let (y0, rounds, online_bytes, offline_bytes) = r0.expect("P0 failed");
        let (y1, _, _, _) = r1.expect("P1 failed");
        Measured {
            out: reconstruct(&y0, &y1),
            rounds,
            online_bytes,
            offline_bytes,
        }
    }

    /// Decodes a ring value at `frac` fractional bits.
    pub fn dec(v: u64, frac: u32) -> f64 {
        v as i64 as f64 / (frac as f64).exp2()
    }

    #[test]
    fn erf_matches_known_values() {
        let known = [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.5, 0.999_593_047_982_555),
            (3.5, 0.999_999_256_901_627_7),
        ];
        for (x, e) in known {
            assert!((super::erf(x) - e).abs() < 1e-13, "erf({x})");
            assert!((super::erf(-x) + e).abs() < 1e-13);
        }
    }
}
