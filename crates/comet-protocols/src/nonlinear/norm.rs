//! RMSNorm and LayerNorm with a public (or folded) gain.
//!
//! **RMSNorm** `y = x / √(mean(x²) + ε) · γ`:
//! 1. Squares with Beaver triples, exact at 2f fractional bits (1 round). In Z_2^64 at
//!    f = 12 the sum of squares of a row is `d·rms²·2^24`: 2^53 for the real model's largest
//!    row (rms ≈ 946, the massive activation 22,550 included), ≤ 2^55.2 over the supported
//!    range mean(x²) ∈ [2^-12, 2^22] ([`NORM_MEAN_SQUARE_RANGE`], rms 0.0156 to 2048): no
//!    overflow, and no precision lost to a pre-scaling at the small end (rms 0.083 keeps all
//!    its bits). The *scaling* happens inside the rsqrt spline instead: it takes the exact
//!    sum at 2f bits, and its top octaves use narrower intervals so that every band keeps 11
//!    significant bits below 2^60 (1313 knots for d = 576; see `spline::SplineConfig`).
//! 2. rsqrt spline of `1/√(S/d + ε)` (d and ε folded in) at 26 output bits (2 rounds):
//!    relative error ≤ 2^-11.7 (measured over the whole range for d = 576).
//! 3. Beaver product with x (1 round), then the public γ (encoded at up to 16 bits) locally,
//!    and one exact truncation back to f, rounding to nearest (1 round). **5 rounds.**
//!
//! Secret or model-owned γ: in the secure model the engine folds γ into the weights of the
//! next matmul (`W' = diag(γ)·W`, exact and free online); call with `gamma = None` then.
//!
//! **LayerNorm** subtracts the row mean first (sum × ⌊2^30/d⌉, exact truncation by 30:
//! 1 round), runs the RMSNorm pipeline on the centred row, and adds the public β:
//! **6 rounds**.

use super::rsqrt::rsqrt_spline;
use super::{add_public_vec, encode_at};
use crate::arith::mul;
use crate::error::check_len;
use crate::trunc::truncate;
use crate::{Party, ProtocolError};

/// Supported range of the mean of squares (per row): rms from 2^-6 = 0.0156 to 2^11 = 2048
/// (the real model's rms spans 0.083 to ~946); outside it 1/rms saturates.
pub const NORM_MEAN_SQUARE_RANGE: (f64, f64) = (1.0 / 4096.0, 4_194_304.0);

/// Significant bits kept by every band of the rsqrt spline.
const RSQRT_PRECISION_BITS: u32 = 11;

/// Fractional bits of 1/rms.
const RSQRT_FRAC: u32 = 26;

/// Shift of the exact mean computation in LayerNorm.
const MEAN_SHIFT: u32 = 30;

/// Ideal functionality: shares of RMSNorm over each row of the row-major `rows × d` matrix
/// `x` (scale f in and out): `x_j / √(mean(x²) + eps) · γ_j` with `γ = gamma` (public, length
/// d) or 1. Relative error ≤ 2^-10 of the normaliser plus one output ulp, for mean(x²) in
/// [`NORM_MEAN_SQUARE_RANGE`] and |x| < 2^(31 − f). Five rounds.
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
/// variance. Six rounds.
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
    let squares = mul(p, x, x)?;
    let sums: Vec<u64> = squares
        .chunks_exact(d)
        .map(|r| r.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
        .collect();
    let (lo, hi) = NORM_MEAN_SQUARE_RANGE;
    let spline = rsqrt_spline(
        2 * f,
        lo * d as f64,
        hi * d as f64,
        RSQRT_FRAC,
        d as f64,
        eps,
        RSQRT_PRECISION_BITS,
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
    fn test_rows(d: usize, massive: f64) -> Vec<f64> {
        let mut prg = Prg::from_seed([31; 16]);
        let mut uni = |a: f64| ((prg.next_u64() % 2_000_001) as f64 / 1_000_000.0 - 1.0) * a;
        let mut x = Vec::new();
        x.extend((0..d).map(|_| uni(2.0)));
        x.extend((0..d).map(|_| uni(300.0)));
        x.extend((0..d).map(|j| if j == 7 { massive } else { uni(5.0) }));
        x.extend((0..d).map(|_| uni(0.03)));
        x.extend((0..d).map(|_| 0.5));
        x
    }

    /// Max abs error, after checking every element against the bound
    /// |err| ≤ 2^-10·|ideal| + 2^-10 (normaliser relative error, γ encoding and rounding).
    fn checked_error(got: &[u64], want: &[f64], f: u32) -> f64 {
        let mut worst = 0.0f64;
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (dec(*g, f) - w).abs();
            assert!(
                err <= 2f64.powi(-10) * w.abs() + 2f64.powi(-10),
                "element {k}: {} vs {w}",
                dec(*g, f)
            );
            worst = worst.max(err);
        }
        worst
    }

    #[test]
    fn rms_norm_matches_f64() {
        // The real model's width with its massive activation.
        let d = 576;
        let x = test_rows(d, 22_550.0);
        let rows = x.len() / d;
        let gamma: Vec<f64> = (0..d).map(|j| 0.5 + 2.0 * j as f64 / d as f64).collect();
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        let m = run_shared(&enc, 32, |p, v| rms_norm(p, v, rows, d, Some(&gamma), 1e-5));
        let want = rows_f64(&xq, d, Some(&gamma), None, 1e-5, false);
        let err = checked_error(&m.out, &want, 12);
        // Normalised values reach √d·γ = 24·2.5 = 60; 2^-10 relative of that plus rounding.
        let bound = 60.0 * 2f64.powi(-10) + 2f64.powi(-11);
        assert!(err <= bound, "RMSNorm error {err}");
        assert_eq!(m.rounds, 5);
        let plain = run_shared(&enc, 33, |p, v| rms_norm(p, v, rows, d, None, 1e-5));
        let want = rows_f64(&xq, d, None, None, 1e-5, false);
        let err_plain = checked_error(&plain.out, &want, 12);
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
        let x = test_rows(d, 9_000.0);
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
        let err = checked_error(&m.out, &want, 12);
        assert!(
            err <= 7.0 * 2f64.powi(-10) + 2f64.powi(-10),
            "LayerNorm error {err}"
        );
        assert_eq!(m.rounds, 6);
        println!("layer_norm d={d}: max abs error {err:.3e}");
    }
}
