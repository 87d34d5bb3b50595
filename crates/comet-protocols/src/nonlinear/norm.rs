//! RMSNorm and LayerNorm with a public (or folded) gain.
//!
//! **RMSNorm** `y = x / √(mean(x²) + ε) · γ`:
//! 1. Squares with Beaver triples, exact at 2f fractional bits (1 round). In Z_2^64 at
//!    f = 12 the sum of squares of a row is `d·rms²·2^24`: 2^53 for the real model's largest
//!    row (rms ≈ 946, the massive activation 22,550 included) — far from overflow. The
//!    supported range is mean(x²) ∈ [2^-12, 2^24] ([`NORM_MEAN_SQUARE_RANGE`]).
//! 2. *Scaling before the nonlinear part*: the sum is truncated by `2f − 16` to 16 fractional
//!    bits (1 round), so the rsqrt grid needs no extra knots and keeps 14 significant bits.
//! 3. rsqrt spline of `1/√(S/d + ε)` (d and ε folded in) at 26 output bits (2 rounds):
//!    relative error ≤ 2^-10 (1/rms ≥ 2^-12 keeps 14 significant bits at 26 bits).
//! 4. Beaver product with x (1 round), then the public γ (encoded at up to 16 bits) locally,
//!    and one exact truncation back to f (1 round). **6 rounds.**
//!
//! Secret or model-owned γ: in the secure model the engine folds γ into the weights of the
//! next matmul (`W' = diag(γ)·W`, exact and free online); call with `gamma = None` then.
//!
//! **LayerNorm** subtracts the row mean first (sum × ⌊2^30/d⌉, exact truncation by 30:
//! 1 round), runs the RMSNorm pipeline on the centred row, and adds the public β:
//! **7 rounds**.

use super::rsqrt::rsqrt_spline;
use super::{add_public_vec, encode_at};
use crate::arith::mul;
use crate::error::check_len;
use crate::trunc::truncate;
use crate::{Party, ProtocolError};

/// Supported range of the mean of squares (per row): rms from 2^-6 = 0.0156 to 2^12 = 4096
/// (the real model's rms spans 0.083 to ~946).
pub const NORM_MEAN_SQUARE_RANGE: (f64, f64) = (1.0 / 4096.0, 16_777_216.0);

/// Fractional bits of the row sum of squares entering the rsqrt spline.
const SUM_FRAC: u32 = 16;

/// Fractional bits of 1/rms.
const RSQRT_FRAC: u32 = 26;

/// Shift of the exact mean computation in LayerNorm.
const MEAN_SHIFT: u32 = 30;

/// Options of the normalisations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormOptions {
    /// The ε added to the mean of squares (variance) under the square root.
    pub eps: f64,
}

/// Ideal functionality: shares of RMSNorm over each row of the row-major `rows × d` matrix
/// `x` (scale f in and out): `x_j / √(mean(x²) + eps) · γ_j` with `γ = gamma` (public, length
/// d) or 1. Relative error ≤ 2^-10 of the normaliser plus one output ulp, for mean(x²) in
/// [`NORM_MEAN_SQUARE_RANGE`] and |x| < 2^(31 − f). Six rounds.
pub fn rms_norm(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    gamma: Option<&[f64]>,
    eps: f64,
) -> Result<Vec<u64>, ProtocolError> {
    let total = rows
        .checked_mul(d)
        .ok_or_else(|| ProtocolError::Shape(format!("norm {rows} × {d}")))?;
    check_len("norm input", x.len(), total)?;
    if let Some(g) = gamma {
        check_len("norm gain", g.len(), d)?;
    }
    if d == 0 || rows == 0 {
        return Ok(Vec::new());
    }
    let _scope = p.scope("rms_norm");
    normalise(p, x, rows, d, gamma, eps)
}

/// Ideal functionality: shares of LayerNorm `(x − μ)/√(var + eps)·γ + β` per row (scale f),
/// with public `gamma`/`beta` (length d) or none. Same ranges as [`rms_norm`] for the
/// variance. Seven rounds.
pub fn layer_norm(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    eps: f64,
) -> Result<Vec<u64>, ProtocolError> {
    let total = rows
        .checked_mul(d)
        .ok_or_else(|| ProtocolError::Shape(format!("norm {rows} × {d}")))?;
    check_len("norm input", x.len(), total)?;
    for v in [gamma, beta].into_iter().flatten() {
        check_len("norm gain/bias", v.len(), d)?;
    }
    if d == 0 || rows == 0 {
        return Ok(Vec::new());
    }
    let _scope = p.scope("layer_norm");
    let f = p.fp.frac_bits;
    let factor = ((MEAN_SHIFT as f64).exp2() / d as f64).round() as u64;
    // Round to nearest: P0 adds half of the truncated unit before the floor.
    let half = if p.is_p0() {
        1u64 << (MEAN_SHIFT - 1)
    } else {
        0
    };
    let scaled: Vec<u64> = x
        .chunks_exact(d)
        .map(|row| {
            row.iter()
                .fold(0u64, |a, v| a.wrapping_add(*v))
                .wrapping_mul(factor)
                .wrapping_add(half)
        })
        .collect();
    let mean = truncate(p, &scaled, MEAN_SHIFT)?;
    let centred: Vec<u64> = x
        .iter()
        .enumerate()
        .map(|(k, v)| v.wrapping_sub(mean[k / d]))
        .collect();
    let mut out = normalise(p, &centred, rows, d, gamma, eps)?;
    if let Some(b) = beta {
        let enc: Vec<u64> = (0..total).map(|k| encode_at(b[k % d], f)).collect();
        add_public_vec(p.is_p0(), &mut out, &enc);
    }
    Ok(out)
}

/// Steps 1–4 of the module docs on (already centred) rows.
fn normalise(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    gamma: Option<&[f64]>,
    eps: f64,
) -> Result<Vec<u64>, ProtocolError> {
    let f = p.fp.frac_bits;
    if 2 * f < SUM_FRAC {
        return Err(ProtocolError::Range(format!(
            "norms need f ≥ {} (got {f})",
            SUM_FRAC / 2
        )));
    }
    let squares = mul(p, x, x)?;
    let sums: Vec<u64> = squares
        .chunks_exact(d)
        .map(|r| r.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
        .collect();
    let sums = if 2 * f > SUM_FRAC {
        truncate(p, &sums, 2 * f - SUM_FRAC)?
    } else {
        sums
    };
    let (lo, hi) = NORM_MEAN_SQUARE_RANGE;
    let spline = rsqrt_spline(
        SUM_FRAC,
        lo * d as f64,
        hi * d as f64,
        RSQRT_FRAC,
        d as f64,
        eps,
    )?;
    let inv = spline.eval(p, &sums)?;
    let spread: Vec<u64> = (0..rows * d).map(|k| inv[k / d]).collect();
    let normed = mul(p, x, &spread)?;
    let (scaled, shift) = match gamma {
        None => (normed, RSQRT_FRAC),
        Some(g) => {
            // |x·inv| ≤ √d·2^(f+26); keep |x·inv·γ| ≤ 2^61.
            let g_max = g.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-30);
            let room = 61.0 - (f + RSQRT_FRAC) as f64 - ((d as f64).sqrt() * g_max).log2();
            let g_frac = room.floor().min(16.0);
            if g_frac < 8.0 {
                return Err(ProtocolError::Range(format!(
                    "norm gain up to {g_max} leaves {g_frac} bits"
                )));
            }
            let g_frac = g_frac as u32;
            let enc: Vec<u64> = g.iter().map(|v| encode_at(*v, g_frac)).collect();
            (
                normed
                    .iter()
                    .enumerate()
                    .map(|(k, v)| v.wrapping_mul(enc[k % d]))
                    .collect(),
                RSQRT_FRAC + g_frac,
            )
        }
    };
    // Round to nearest: P0 adds half of the last kept unit before the exact floor.
    let mut scaled = scaled;
    if p.is_p0() {
        scaled
            .iter_mut()
            .for_each(|v| *v = v.wrapping_add(1 << (shift - 1)));
    }
    truncate(p, &scaled, shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nonlinear::test_support::{dec, run_shared};
    use comet_core::Prg;

    fn rows_f64(
        x: &[f64],
        d: usize,
        gamma: Option<&[f64]>,
        beta: Option<&[f64]>,
        eps: f64,
        centre: bool,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(d) {
            let mu = if centre {
                row.iter().sum::<f64>() / d as f64
            } else {
                0.0
            };
            let ms = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for (j, v) in row.iter().enumerate() {
                out.push((v - mu) * inv * gamma.map_or(1.0, |g| g[j]) + beta.map_or(0.0, |b| b[j]));
            }
        }
        out
    }

    /// Test rows: random small, random large, one massive activation, tiny values, constant.
    fn test_rows(d: usize) -> Vec<f64> {
        let mut prg = Prg::from_seed([31; 16]);
        let mut uni = |a: f64| ((prg.next_u64() % 2_000_001) as f64 / 1_000_000.0 - 1.0) * a;
        let mut x = Vec::new();
        x.extend((0..d).map(|_| uni(2.0)));
        x.extend((0..d).map(|_| uni(300.0)));
        x.extend((0..d).map(|j| if j == 7 { 22_550.0 } else { uni(5.0) }));
        x.extend((0..d).map(|_| uni(0.03)));
        x.extend((0..d).map(|_| 0.5));
        x
    }

    fn worst_rel(got: &[u64], want: &[f64], x: &[f64], d: usize, f: u32) -> f64 {
        // Error relative to the row's scale (|y| ≤ √d·|γ|): abs error / (1 + |want|)... we report
        // the absolute error in units of the normalised value.
        let _ = (x, d);
        got.iter()
            .zip(want)
            .map(|(g, w)| (dec(*g, f) - w).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn rms_norm_matches_f64() {
        let d = 64;
        let x = test_rows(d);
        let rows = x.len() / d;
        let gamma: Vec<f64> = (0..d).map(|j| 0.5 + j as f64 / 32.0).collect();
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        let m = run_shared(&enc, 32, |p, v| rms_norm(p, v, rows, d, Some(&gamma), 1e-5));
        let want = rows_f64(&xq, d, Some(&gamma), None, 1e-5, false);
        let err = worst_rel(&m.out, &want, &xq, d, 12);
        // Normalised values reach √d·γ = 20; 2^-10 relative of that plus rounding.
        let bound = 20.0 * 2f64.powi(-10) + 2f64.powi(-11);
        assert!(err <= bound, "RMSNorm error {err}");
        assert_eq!(m.rounds, 6);
        let plain = run_shared(&enc, 33, |p, v| rms_norm(p, v, rows, d, None, 1e-5));
        let want = rows_f64(&xq, d, None, None, 1e-5, false);
        let err_plain = worst_rel(&plain.out, &want, &xq, d, 12);
        assert!(
            err_plain <= 8.0 * 2f64.powi(-10) + 2f64.powi(-11),
            "RMSNorm (no gain) error {err_plain}"
        );
        println!(
            "rms_norm d={d}: max abs error {err:.3e} (gain up to 2.5), {err_plain:.3e} (no gain)"
        );
    }

    #[test]
    fn layer_norm_matches_f64() {
        let d = 48;
        let x = test_rows(d);
        let rows = x.len() / d;
        let gamma: Vec<f64> = (0..d).map(|j| 1.0 - j as f64 / 96.0).collect();
        let beta: Vec<f64> = (0..d).map(|j| j as f64 / 10.0 - 2.0).collect();
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        // The constant row has zero variance: ε = 1e-3 keeps it inside the supported range.
        let m = run_shared(&enc, 34, |p, v| {
            layer_norm(p, v, rows, d, Some(&gamma), Some(&beta), 1e-3)
        });
        let want = rows_f64(&xq, d, Some(&gamma), Some(&beta), 1e-3, true);
        let err = worst_rel(&m.out, &want, &xq, d, 12);
        assert!(
            err <= 7.0 * 2f64.powi(-10) + 2f64.powi(-10),
            "LayerNorm error {err}"
        );
        assert_eq!(m.rounds, 7);
        println!("layer_norm d={d}: max abs error {err:.3e}");
    }
}
