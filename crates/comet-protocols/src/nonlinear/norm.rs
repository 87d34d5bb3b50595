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
//! **Fused RMSNorm + fixed-weight product** ([`rms_norm_matmul`]): the normalised row only
//! feeds products with fixed weights (the gain folded into them), so the squares and the
//! product with 1/rms reuse one masked opening of the input:
//! 1. Open `X̂ = X − A` (dealer mask `A`, `comet_dealer::kinds::norm`); row sums of squares
//!    `Σ X² = Σ X̂² + 2·Σ X̂·A + Σ A²` are local and exact at 2f (1 round).
//! 2. The same rsqrt spline → `inv` per row at 26 fractional bits (2 rounds).
//! 3. Open `înv = inv − v` (one word per row); `z = X·inv = X̂·inv + A·înv + A ⊙ v` is local,
//!    at scale f + 26 (1 round).
//! 4. Faithful truncation of `z` by 26 in a narrow ring: `|z| ≤ √d·(1 + 2^-10)` in value
//!    because `x_j² ≤ Σ x²` ([`norm_z_width`] bits, 48 for d = 576) (1 round).
//! 5. The fixed-weight product's own opening of `z − A'` (1 round), optionally narrow
//!    ([`rms_norm_matmul_bits`]).
//!
//! **6 rounds** as [`rms_norm`] (5) + `arith::matmul_fixed` (1), but three openings of d
//! elements per row (64 + 48 + 64 bits at d = 576) instead of six of 64 bits.
//!
//! **LayerNorm** subtracts the row mean first (sum × ⌊2^30/d⌉, exact truncation by 30:
//! 1 round), runs the RMSNorm pipeline on the centred row, and adds the public β:
//! **6 rounds**.

use super::rsqrt::rsqrt_spline;
use super::spline::HatSpline;
use super::{add_public_vec, encode_at};
use crate::arith::{matmul_fixed_bits, mul, open};
use crate::error::check_len;
use crate::trunc::{truncate, truncate_many_narrow};
use crate::{Party, ProtocolError};
use comet_core::ring;
use comet_dealer::kinds::norm::{NormMask, NormParams};
use comet_dealer::FixedWeight;

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

/// The rsqrt spline of the norms: `1/√(S/d + eps)` for a row sum of squares `S` at 2f bits,
/// output at [`RSQRT_FRAC`] bits, over [`NORM_MEAN_SQUARE_RANGE`].
fn norm_spline(f: u32, d: usize, eps: f64) -> Result<HatSpline, ProtocolError> {
    let (lo, hi) = NORM_MEAN_SQUARE_RANGE;
    rsqrt_spline(
        2 * f,
        lo * d as f64,
        hi * d as f64,
        RSQRT_FRAC,
        d as f64,
        eps,
        RSQRT_PRECISION_BITS,
    )
}

/// Ring width of the narrow truncation of `z = x·inv` (scale `f + 26`) in the fused norm:
/// `|x_j|/rms ≤ √d`, times the spline's relative error ≤ 2^-10, must stay below `2^(L−2)`;
/// rounded up to whole bytes (the wire packs bytes). 48 for d = 576 at f = 12.
pub fn norm_z_width(d: usize, frac_bits: u32) -> u32 {
    let magnitude = ((d.max(1) as f64).sqrt() * (1.0 + 2f64.powi(-10)))
        .log2()
        .ceil() as u32;
    (frac_bits + RSQRT_FRAC + magnitude + 2)
        .div_ceil(8)
        .saturating_mul(8)
        .min(64)
}

/// Ideal functionality: shares of `normalize(x)·W_j` for every fixed weight `W_j` (`d × n_j`,
/// gain folded in), where `normalize(x) = x / √(mean(x²) + eps)` per row of the `rows × d`
/// input at scale f (result at scale 2f), exactly like [`rms_norm`] (`gamma = None`) then
/// `arith::matmul_fixed`. Error: relative ≤ 2^-10 of the normaliser and ±1 ulp (2^-f) per
/// normalised element before the product; same ranges as [`rms_norm`]. Six rounds, three
/// openings of `d` elements per row (see the module docs).
pub fn rms_norm_matmul(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    eps: f64,
    weights: &[&FixedWeight],
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    rms_norm_matmul_bits(p, x, rows, d, eps, weights, 64)
}

/// [`rms_norm_matmul`] whose product opening carries only `product_bits` bits per element:
/// the outputs are then correct **modulo 2^product_bits only** (the high bits of the shares
/// are garbage). Use it when every consumer reduces mod `2^product_bits` first, e.g. a
/// `trunc::truncate_many_narrow` of width ≤ `product_bits` (after public linear maps such as
/// RoPE, which commute with the reduction). `product_bits = 64` is [`rms_norm_matmul`].
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_matmul_bits(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    eps: f64,
    weights: &[&FixedWeight],
    product_bits: u32,
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    if weights.is_empty() {
        return Err(ProtocolError::Shape(
            "fused norm product needs at least one weight".into(),
        ));
    }
    if let Some(w) = weights.iter().find(|w| w.k != d) {
        return Err(ProtocolError::Shape(format!(
            "weight {} has {} input rows, the norm width is {d}",
            w.id.0, w.k
        )));
    }
    if !(1..=64).contains(&product_bits) {
        return Err(ProtocolError::Range(format!(
            "product opening of {product_bits} bits (allowed 1..=64)"
        )));
    }
    let normed = fused_normalise(p, x, rows, d, eps)?;
    if rows == 0 {
        return Ok(weights.iter().map(|_| Vec::new()).collect());
    }
    let _scope = p.scope("norm_matmul.product");
    matmul_fixed_bits(p, &normed, rows, weights, product_bits)
}

/// Ideal functionality: shares of `x / √(mean(x²) + eps)` per row (scale f in and out), by
/// steps 1–4 of the fused norm (module docs): five rounds like [`rms_norm`] without a gain,
/// but two openings of `d` elements per row (64 + 48 bits at d = 576) instead of five, and
/// a faithful (±1 ulp) final truncation.
pub fn rms_norm_fused(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    eps: f64,
) -> Result<Vec<u64>, ProtocolError> {
    fused_normalise(p, x, rows, d, eps)
}

/// Steps 1–4 of the fused norm.
fn fused_normalise(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    eps: f64,
) -> Result<Vec<u64>, ProtocolError> {
    let total = rows
        .checked_mul(d)
        .ok_or_else(|| ProtocolError::Shape(format!("norm {rows} × {d}")))?;
    check_len("norm input", x.len(), total)?;
    if d == 0 || rows == 0 {
        return Ok(Vec::new());
    }
    let _scope = p.scope("rms_norm_fused");
    let f = p.fp.frac_bits;
    let spline = norm_spline(f, d, eps)?;
    let mask: NormMask = p.correlation(&NormParams { rows, d })?;
    let is_p0 = p.is_p0();

    // 1. X̂ = X − A; Σ X² = Σ X̂² + 2·Σ X̂·A + Σ A² per row.
    let x_hat = open(p, &ring::sub(x, &mask.a))?;
    let sums: Vec<u64> = (0..rows)
        .map(|i| {
            let row = i * d..(i + 1) * d;
            let mut cross = 0u64;
            let mut public = 0u64;
            for (e, a) in x_hat[row.clone()].iter().zip(&mask.a[row]) {
                cross = cross.wrapping_add(e.wrapping_mul(*a));
                public = public.wrapping_add(e.wrapping_mul(*e));
            }
            let mut s = mask.a_sq[i].wrapping_add(cross.wrapping_mul(2));
            if is_p0 {
                s = s.wrapping_add(public);
            }
            s
        })
        .collect();

    // 2. inv = 1/√(S/d + eps) at RSQRT_FRAC bits.
    let inv = spline.eval(p, &sums)?;

    // 3. înv = inv − v; z = X̂·inv + A·înv + A ⊙ v at f + RSQRT_FRAC bits.
    let inv_hat = open(p, &ring::sub(&inv, &mask.v))?;
    let z: Vec<u64> = (0..total)
        .map(|k| {
            let i = k / d;
            x_hat[k]
                .wrapping_mul(inv[i])
                .wrapping_add(mask.a[k].wrapping_mul(inv_hat[i]))
                .wrapping_add(mask.av[k])
        })
        .collect();

    // 4. Faithful truncation by RSQRT_FRAC in a ring just wide enough for |z| ≤ √d.
    let width = norm_z_width(d, f);
    let mut out = truncate_many_narrow(p, &[(&z, RSQRT_FRAC, width)])?;
    out.pop()
        .ok_or_else(|| ProtocolError::Shape("truncation returned no output".into()))
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
    let inv = norm_spline(f, d, eps)?.eval(p, &sums)?;
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

    /// Two fixed weights (576 × 40 and 576 × 24, entries in ±0.25 at f = 12) registered with
    /// a fresh dealer, with their ring and decoded values.
    struct FusedCase {
        dealer: comet_dealer::InProcessDealer,
        views: Vec<[FixedWeight; 2]>,
        plain: Vec<Vec<f64>>,
        widths: Vec<usize>,
    }

    fn fused_case(d: usize, seed: u8) -> FusedCase {
        let mut prg = Prg::from_seed([seed; 16]);
        let dealer = comet_dealer::InProcessDealer::new(comet_dealer::Dealer::with_prg(
            Prg::from_seed([seed ^ 0x33; 16]),
        ));
        let widths = vec![40, 24];
        let mut views = Vec::new();
        let mut plain = Vec::new();
        for &n in &widths {
            let w: Vec<u64> = (0..d * n)
                .map(|_| encode_at(((prg.next_u64() % 4097) as f64 / 4096.0 - 0.5) * 0.5, 12))
                .collect();
            plain.push(w.iter().map(|&v| dec(v, 12)).collect());
            views.push(dealer.with(|dl| dl.register_weight(&w, d, n)));
        }
        FusedCase {
            dealer,
            views,
            plain,
            widths,
        }
    }

    /// Runs `rms_norm_matmul_bits` and the unfused `rms_norm` + `matmul_fixed` on the same
    /// shared rows; returns the reconstructed products and each pipeline's P0 online costs.
    fn run_fused(
        case: &FusedCase,
        x: &[u64],
        rows: usize,
        d: usize,
        bits: u32,
    ) -> (Vec<Vec<u64>>, comet_net::Costs, comet_net::Costs) {
        let mut prg = Prg::from_seed([77; 16]);
        let xs = crate::testing::share_for_test(x, &mut prg);
        let (r0, r1) = crate::testing::run_pair(&case.dealer, |p| {
            let i = p.id.index();
            let w: Vec<&FixedWeight> = case.views.iter().map(|v| &v[i]).collect();
            let before = p.online_meter().total();
            let fused = rms_norm_matmul_bits(p, &xs[i], rows, d, 1e-5, &w, bits)?;
            let mid = p.online_meter().total();
            let normed = rms_norm(p, &xs[i], rows, d, None, 1e-5)?;
            crate::arith::matmul_fixed(p, &normed, rows, &w)?;
            let after = p.online_meter().total();
            Ok((fused, mid.since(&before), after.since(&mid)))
        });
        let (y0, fused, unfused) = r0.unwrap();
        let (y1, _, _) = r1.unwrap();
        let out = y0
            .iter()
            .zip(&y1)
            .map(|(a, b)| comet_core::share::reconstruct(a, b))
            .collect();
        (out, fused, unfused)
    }

    /// Checks every output against f64 `normalize(x)·W`: |err| ≤ Σ_j |W_jc|·(2^-10·|n_j| +
    /// 2^-12) + 2^-20 (normaliser relative error, ±1 ulp of the normalised element).
    fn check_products(case: &FusedCase, got: &[Vec<u64>], xq: &[f64], d: usize, bits: u32) -> f64 {
        let want_norm = rows_f64(xq, d, None, None, 1e-5, false);
        let rows = xq.len() / d;
        let mut worst = 0.0f64;
        for ((y, w), &n) in got.iter().zip(&case.plain).zip(&case.widths) {
            for i in 0..rows {
                for c in 0..n {
                    let (mut want, mut bound) = (0.0, 2f64.powi(-20));
                    for j in 0..d {
                        let (nj, wj) = (want_norm[i * d + j], w[j * n + c]);
                        want += nj * wj;
                        bound += wj.abs() * (2f64.powi(-10) * nj.abs() + 2f64.powi(-12));
                    }
                    let raw = comet_core::ring::sign_extend(
                        y[i * n + c] & comet_core::ring::mask_bits(bits),
                        bits,
                    );
                    let err = (dec(raw, 24) - want).abs();
                    assert!(
                        err <= bound,
                        "row {i} col {c}: {} vs {want} (bound {bound})",
                        dec(raw, 24)
                    );
                    worst = worst.max(err);
                }
            }
        }
        worst
    }

    #[test]
    fn fused_norm_matmul_matches_f64_with_half_the_openings() {
        let d = 576;
        let x = test_rows(d, 22_550.0);
        let rows = x.len() / d;
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        let case = fused_case(d, 61);
        let (got, fused, unfused) = run_fused(&case, &enc, rows, d, 64);
        let worst = check_products(&case, &got, &xq, d, 64);
        assert_eq!(fused.rounds, 6, "fused norm + product");
        assert_eq!(unfused.rounds, 6, "rms_norm (5) + matmul_fixed (1)");
        // Three openings of d per row (64 + 48 + 64 bits) against six of 64 bits.
        let per_row = |c: &comet_net::Costs| c.bytes_sent as f64 / rows as f64;
        assert!(
            fused.bytes_sent * 100 < unfused.bytes_sent * 47,
            "fused {} B vs unfused {} B",
            fused.bytes_sent,
            unfused.bytes_sent
        );
        println!(
            "rms_norm_matmul d={d}: max abs error {worst:.3e}; per row P0 sends {:.0} B fused vs {:.0} B unfused; rounds {} vs {}",
            per_row(&fused),
            per_row(&unfused),
            fused.rounds,
            unfused.rounds
        );
        assert_eq!(norm_z_width(576, 12), 48);
    }

    #[test]
    fn fused_norm_matmul_with_a_narrow_product_opening_is_right_mod_2_to_the_bits() {
        let d = 576;
        let x = test_rows(d, 9_000.0);
        let rows = x.len() / d;
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        let case = fused_case(d, 62);
        let (got, narrow, _) = run_fused(&case, &enc, rows, d, 40);
        check_products(&case, &got, &xq, d, 40);
        let (_, wide, _) = run_fused(&case, &enc, rows, d, 64);
        assert_eq!(
            wide.bytes_sent - narrow.bytes_sent,
            3 * (rows * d) as u64,
            "5 bytes instead of 8 per product input"
        );
    }

    #[test]
    fn fused_norm_alone_matches_f64_and_bad_shapes_are_errors() {
        let d = 48;
        let x = test_rows(d, 9_000.0);
        let rows = x.len() / d;
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        let m = run_shared(&enc, 35, |p, v| rms_norm_fused(p, v, rows, d, 1e-5));
        let want = rows_f64(&xq, d, None, None, 1e-5, false);
        let err = checked_error(&m.out, &want, 12);
        assert!(
            err <= 7.0 * 2f64.powi(-10) + 2f64.powi(-12),
            "fused RMSNorm error {err}"
        );
        assert_eq!(m.rounds, 5);
        let case = fused_case(d + 1, 63);
        let (r0, _) = crate::testing::run_pair(&case.dealer, |p| {
            let i = p.id.index();
            let w: Vec<&FixedWeight> = case.views.iter().map(|v| &v[i]).collect();
            rms_norm_matmul(p, &enc, rows, d, 1e-5, &w)
        });
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        let (r0, _) = crate::testing::run_pair(&case.dealer, |p| {
            rms_norm_fused(p, &enc[1..], rows, d, 1e-5)
        });
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
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
