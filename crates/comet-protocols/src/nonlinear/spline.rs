//! Hat-basis linear splines on a geometric grid: the engine of [`super::reciprocal()`],
//! [`super::rsqrt()`] and the normalisations. Two rounds for any number of knots.
//!
//! # Construction
//!
//! The input `y` (a ring integer `Y = y·2^in_frac`) is covered by octaves
//! `[2^e, 2^(e+1))`, `e_lo ≤ e < e_hi`, each split into `2^K` intervals of the power-of-two
//! width `2^(e − K + in_frac)` ring units (or width 1 where the grid is finer than an ulp).
//! On the knots `C_0 < … < C_N` the interpolant is `Σ_i V_i·φ_i(Y)` with the hat functions
//!
//! ```text
//! φ_i = [ReLU(Y − C_{i−1}) − ReLU(Y − C_i)] / w_{i−1} − [ReLU(Y − C_i) − ReLU(Y − C_{i+1})] / w_i
//! ```
//!
//! (`φ_0` is 1 left of `C_0`, `φ_N` is 1 right of `C_N`: the output saturates outside the
//! grid). Basis functions are grouped into *bands* by the octave of their knot. Band `b`
//! scales its hats by `2^G_b` (`G_b` = log2 of its widest interval), so every coefficient
//! `V_i·2^G_b / w` is an exact integer, and uses an output scale `F_b ≤ out_frac` small
//! enough that `|Σ_{i∈b} V_i·2^G_b·φ_i| ≤ 2^60`. Then
//!
//! ```text
//! out = Σ_b 2^(out_frac − F_b) · ⌊P_b / 2^G_b⌋,    P_b = Σ_{i∈b} V_i·2^G_b·φ_i(Y)
//! ```
//!
//! with `P_b` a fixed integer combination of `ReLU(Y − C_k)` (mod 2^64 the intermediate
//! terms may wrap; the true `P_b` is small, so the exact truncation is exact).
//!
//! # Protocol
//!
//! Round 1 opens `Ŷ = Y + r`; one ReLU key for `r` evaluated at `Ŷ − C_k` gives shares of every
//! `ReLU(Y − C_k)` (`comet_dealer::kinds::nonlinear::MultiReluKeys`). Round 2 truncates all
//! bands, each by its own shift, in one exact truncation round (`trunc::truncate_many`).
//!
//! # Error
//!
//! Interpolation error of the grid (the knot values are lowered by half the local
//! interpolation error, so the error of convex functions is centred), plus the rounding of
//! `V_i` at `F_b` bits, plus the rounding (to nearest) of at most two bands (the others are exactly 0).
//! [`HatSpline::eval_plain`] reproduces the protocol's integer result bit for bit.

use crate::trunc::truncate_many;
use crate::{Party, ProtocolError};
use comet_core::ring;
use comet_dealer::kinds::nonlinear::{MultiReluKeys, MultiReluParams};
use comet_fss::relu_eval;
use rayon::prelude::*;

/// Where and how precisely a [`HatSpline`] approximates its function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplineConfig {
    /// Lower end of the input range (> 0); inputs below saturate at the value there.
    pub lo: f64,
    /// Upper end of the input range; inputs above saturate.
    pub hi: f64,
    /// Fractional bits of the input ring integers.
    pub in_frac: u32,
    /// Fractional bits of the output.
    pub out_frac: u32,
    /// log2 of the number of intervals per octave (the grid's relative spacing is 2^-K).
    pub knots_log2: u32,
    /// Significant bits every band must keep (octaves whose natural grid is too coarse for it
    /// get narrower intervals).
    pub precision_bits: u32,
}

/// Largest number of knots (log2) a spline may use: every knot costs one DCF evaluation per
/// element.
const MAX_KNOTS_LOG2: u32 = 16;

/// One band: basis functions of one octave, truncated together.
#[derive(Clone, Debug)]
struct Band {
    /// Truncation shift `G_b`.
    shift: u32,
    /// Output scale of the band before the final left shift.
    scale: u32,
    /// Constant term (from `φ_0`), added by P0.
    constant: i128,
    /// Coefficients of `ReLU(Y − C_k)`, by knot index.
    coefs: Vec<(usize, i128)>,
}

/// A public piecewise-linear approximation of `f` on `[lo, hi]`, evaluated on secret inputs.
#[derive(Clone, Debug)]
pub struct HatSpline {
    in_frac: u32,
    out_frac: u32,
    knots: Vec<u64>,
    bands: Vec<Band>,
    relu_bits: u32,
}

fn log2_exact(v: u64) -> u32 {
    63 - v.leading_zeros()
}

impl HatSpline {
    /// Builds the spline of `f` described by `cfg`. Fails when the grid does not fit the ring
    /// (lo below one input ulp, hi above 2^(61 − in_frac)) or when some band cannot keep
    /// `cfg.precision_bits` significant bits.
    pub fn new(f: impl Fn(f64) -> f64, cfg: &SplineConfig) -> Result<Self, ProtocolError> {
        let SplineConfig {
            lo,
            hi,
            in_frac,
            out_frac,
            knots_log2,
            precision_bits,
        } = *cfg;
        if !(lo > 0.0 && hi > lo && hi.is_finite())
            || knots_log2 > 12
            || out_frac > 60
            || precision_bits > 40
        {
            return Err(ProtocolError::Range(format!(
                "invalid spline configuration {cfg:?}"
            )));
        }
        let e_lo = lo.log2().floor() as i64;
        let mut e_hi = hi.log2().ceil() as i64;
        if e_hi <= e_lo {
            e_hi = e_lo + 1;
        }
        let fi = in_frac as i64;
        if e_lo + fi < 0 || e_hi + fi > 61 {
            return Err(ProtocolError::Range(format!(
                "spline range [2^{e_lo}, 2^{e_hi}] does not fit inputs at {in_frac} fractional bits"
            )));
        }
        let mut knots = Vec::new();
        for e in e_lo..e_hi {
            // Widest interval that still leaves `precision_bits` significant output bits in a
            // band of this octave (see the module docs): G ≤ 60 − P + ⌊log2 min f⌋ − ⌈log2 max f⌉.
            let samples: Vec<f64> = (0..=8)
                .map(|t| f((e as f64 + t as f64 / 8.0).exp2()).abs())
                .collect();
            let f_max = samples.iter().copied().fold(0.0f64, f64::max);
            let f_min = samples.iter().copied().fold(f64::INFINITY, f64::min);
            if !(f_min > 0.0 && f_max.is_finite()) {
                return Err(ProtocolError::Range(format!(
                    "spline function is zero or not finite on octave 2^{e}"
                )));
            }
            let cap = 60 - precision_bits as i64 + f_min.log2().floor() as i64
                - f_max.log2().ceil() as i64
                - 1;
            let natural = (e - knots_log2 as i64 + fi).max(0);
            if cap < 0 {
                return Err(ProtocolError::Range(format!(
                    "spline octave 2^{e} cannot keep {precision_bits} significant bits"
                )));
            }
            let width_log2 = natural.min(cap) as u32;
            let start = 1u64 << (e + fi);
            let count_log2 = (e + fi) as u32 - width_log2;
            if count_log2 > MAX_KNOTS_LOG2
                || knots.len() + (1usize << count_log2) > 1 << MAX_KNOTS_LOG2
            {
                return Err(ProtocolError::Range(format!(
                    "spline needs more than 2^{MAX_KNOTS_LOG2} knots (octave 2^{e}, {cfg:?})"
                )));
            }
            let count = 1u64 << count_log2;
            for t in 0..count {
                knots.push(start + (t << width_log2));
            }
        }
        knots.push(1u64 << (e_hi + fi));
        let n = knots.len() - 1;
        let scale_in = (in_frac as f64).exp2();
        let ys: Vec<f64> = knots.iter().map(|&c| c as f64 / scale_in).collect();
        let fv: Vec<f64> = ys.iter().map(|&y| f(y)).collect();
        let width_log2: Vec<u32> = knots.windows(2).map(|w| log2_exact(w[1] - w[0])).collect();
        // Midpoint interpolation error of each interval; knots are lowered by half of it.
        let interp_err: Vec<f64> = (0..n)
            .map(|k| (fv[k] + fv[k + 1]) / 2.0 - f((ys[k] + ys[k + 1]) / 2.0))
            .collect();
        let corr = |i: usize| -> f64 {
            match (
                i.checked_sub(1).map(|k| interp_err[k]),
                interp_err.get(i).copied(),
            ) {
                (Some(a), Some(b)) => (a + b) / 4.0,
                (Some(a), None) => a / 2.0,
                (None, Some(b)) => b / 2.0,
                (None, None) => 0.0,
            }
        };
        let band_of = |i: usize| -> usize { (log2_exact(knots[i]) as i64 - fi - e_lo) as usize };
        let band_count = (e_hi - e_lo + 1) as usize;
        let mut bands = Vec::with_capacity(band_count);
        for b in 0..band_count {
            let members: Vec<usize> = (0..=n).filter(|&i| band_of(i) == b).collect();
            if members.is_empty() {
                continue;
            }
            let shift = members
                .iter()
                .flat_map(|&i| {
                    [
                        i.checked_sub(1).map(|k| width_log2[k]),
                        width_log2.get(i).copied(),
                    ]
                })
                .flatten()
                .max()
                .unwrap_or(0);
            let max_abs = members.iter().map(|&i| fv[i].abs()).fold(0.0f64, f64::max);
            let headroom = 60 - shift as i64 - max_abs.log2().ceil() as i64;
            if headroom < 0 {
                return Err(ProtocolError::Range(format!(
                    "spline band {b} needs more than 64 bits (shift {shift}, values up to {max_abs})"
                )));
            }
            let scale = (out_frac as i64).min(headroom) as u32;
            let mut constant = 0i128;
            let mut coefs: Vec<(usize, i128)> = Vec::new();
            let mut add = |k: usize, c: i128| match coefs.iter_mut().find(|(j, _)| *j == k) {
                Some(e) => e.1 += c,
                None => coefs.push((k, c)),
            };
            for &i in &members {
                let v = ((fv[i] - corr(i)) * (scale as f64).exp2()).round() as i128;
                if i > 0 {
                    let a = v << (shift - width_log2[i - 1]);
                    add(i - 1, a);
                    add(i, -a);
                }
                if i < n {
                    let a = v << (shift - width_log2[i]);
                    add(i, -a);
                    add(i + 1, a);
                }
                if i == 0 {
                    constant += v << shift;
                }
            }
            // Round to nearest instead of down: half a unit before the floor.
            if shift > 0 {
                constant += 1i128 << (shift - 1);
            }
            bands.push(Band {
                shift,
                scale,
                constant,
                coefs,
            });
        }
        let relu_bits = (64 - knots[n].leading_zeros() + 2).min(64);
        Ok(Self {
            in_frac,
            out_frac,
            knots,
            bands,
            relu_bits,
        })
    }

    /// Number of knots (ReLU evaluations per element).
    pub fn knot_count(&self) -> usize {
        self.knots.len()
    }

    /// Inputs must satisfy |Y| < 2^(relu_bits − 2) ring units (they saturate beyond the grid).
    pub fn relu_bits(&self) -> u32 {
        self.relu_bits
    }

    /// Fractional bits of the input.
    pub fn in_frac(&self) -> u32 {
        self.in_frac
    }

    /// Fractional bits of the output.
    pub fn out_frac(&self) -> u32 {
        self.out_frac
    }

    /// The protocol's exact integer output for a plaintext input `y` (ring integer).
    pub fn eval_plain(&self, y: i64) -> i64 {
        let relu: Vec<i128> = self
            .knots
            .iter()
            .map(|&c| (y as i128 - c as i128).max(0))
            .collect();
        let mut out = 0i128;
        for band in &self.bands {
            let total: i128 =
                band.constant + band.coefs.iter().map(|&(k, c)| c * relu[k]).sum::<i128>();
            out += (total >> band.shift) << (self.out_frac - band.scale);
        }
        out as i64
    }

    /// Ideal functionality: shares of `eval_plain(y)` (≈ f(y) at `out_frac` bits) for shares of
    /// `y` at `in_frac` bits. Two rounds: one opening (8 bytes per element each way) and one
    /// exact truncation of all bands.
    pub fn eval(&self, p: &mut Party, y: &[u64]) -> Result<Vec<u64>, ProtocolError> {
        if y.is_empty() {
            return Ok(Vec::new());
        }
        let keys: MultiReluKeys = p.correlation(&MultiReluParams {
            n: y.len(),
            bits: self.relu_bits,
        })?;
        let masked = ring::add(y, &keys.r);
        let theirs = p.exchange(&masked, 64)?;
        let y_hat = ring::add(&masked, &theirs);
        let party = p.id;
        let knots = &self.knots;
        // relus[e][k] = share of ReLU(Y_e − C_k).
        let relus: Vec<Vec<u64>> = (0..y.len())
            .map(|e| {
                knots
                    .par_iter()
                    .with_min_len(16)
                    .map(|&c| relu_eval(party, &keys.relu[e], y_hat[e].wrapping_sub(c)).1)
                    .collect()
            })
            .collect();
        let is_p0 = p.is_p0();
        let band_sums: Vec<Vec<u64>> = self
            .bands
            .iter()
            .map(|band| {
                relus
                    .iter()
                    .map(|r| {
                        let mut acc = if is_p0 { band.constant as u64 } else { 0 };
                        for &(k, c) in &band.coefs {
                            acc = acc.wrapping_add((c as u64).wrapping_mul(r[k]));
                        }
                        acc
                    })
                    .collect()
            })
            .collect();
        let parts: Vec<(&[u64], u32)> = self
            .bands
            .iter()
            .zip(&band_sums)
            .filter(|(b, _)| b.shift > 0)
            .map(|(b, s)| (s.as_slice(), b.shift))
            .collect();
        let mut truncated = truncate_many(p, &parts)?.into_iter();
        let mut out = vec![0u64; y.len()];
        for (band, sums) in self.bands.iter().zip(&band_sums) {
            let part = if band.shift > 0 {
                truncated
                    .next()
                    .ok_or_else(|| ProtocolError::Shape("missing truncated band".into()))?
            } else {
                sums.clone()
            };
            let up = self.out_frac - band.scale;
            for (o, v) in out.iter_mut().zip(&part) {
                *o = o.wrapping_add(v << up);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nonlinear::test_support::run_shared;

    #[test]
    fn protocol_matches_plain_model_bit_for_bit() {
        let cfg = SplineConfig {
            lo: 0.5,
            hi: 40.0,
            in_frac: 12,
            out_frac: 30,
            knots_log2: 4,
            precision_bits: 14,
        };
        let s = HatSpline::new(|y| 1.0 / y, &cfg).unwrap();
        let ys: Vec<i64> = vec![
            0,
            -5,
            1,
            2047,
            2048,
            4096,
            5000,
            40 * 4096,
            64 * 4096,
            1 << 20,
            123_457,
        ];
        let enc: Vec<u64> = ys.iter().map(|&v| v as u64).collect();
        let m = run_shared(&enc, 11, |p, x| s.eval(p, x));
        for (i, &y) in ys.iter().enumerate() {
            assert_eq!(m.out[i] as i64, s.eval_plain(y), "input {y}");
        }
        assert_eq!(m.rounds, 2);
    }

    #[test]
    fn saturates_outside_the_grid_and_rejects_bad_ranges() {
        let cfg = SplineConfig {
            lo: 1.0,
            hi: 8.0,
            in_frac: 12,
            out_frac: 20,
            knots_log2: 3,
            precision_bits: 14,
        };
        let s = HatSpline::new(|y| 1.0 / y, &cfg).unwrap();
        assert_eq!(s.eval_plain(-100), s.eval_plain(0));
        assert_eq!(s.eval_plain(1 << 20), s.eval_plain(1 << 25));
        assert!(HatSpline::new(|y| y, &SplineConfig { lo: 0.0, ..cfg }).is_err());
        assert!(HatSpline::new(
            |y| y,
            &SplineConfig {
                lo: 2f64.powi(-20),
                ..cfg
            }
        )
        .is_err());
        assert!(HatSpline::new(
            |y| y,
            &SplineConfig {
                hi: 2f64.powi(55),
                ..cfg
            }
        )
        .is_err());
    }
}
