//! The nonlinear steps of a llama block, assembled from the protocol layer's gates with the
//! ranges SmolLM2 needs (DESIGN.md §3): RMS normalisation (gain folded into the next weights),
//! causal softmax, SiLU.

use crate::error::{EngineError, Result};
use comet_protocols::nonlinear::{exp_neg, rsqrt::rsqrt_spline};
use comet_protocols::{arith, compare, nonlinear, trunc, Party};

/// Range of the mean square `Σx²/d` the normalisation covers: RMS from 2^-5 to 2^11
/// (SmolLM2-135M measures 0.083 to ~946); outside, 1/RMS saturates.
pub const RMS_SQUARE_RANGE: (f64, f64) = (1.0 / 1024.0, 4_194_304.0);

/// Output fractional bits of 1/RMS before it multiplies the row.
const RSQRT_FRAC: u32 = 26;

/// Value added to the scores of future positions (causal mask) before the softmax: far below
/// any real score (|score| ≤ 55 on SmolLM2), so its exponential is exactly 0.
pub const CAUSAL_MASK_OFFSET: f64 = -1024.0;

/// Signed width of the scores entering the softmax's maximum: |score + mask| < 2^22 ulps at
/// f = 12 with room to spare.
const SCORE_BITS: u32 = 26;

/// Shares of `x / √(mean(x²) + eps)` per row (`rows × d`, scale f in and out), without the
/// gain (folded into the following weights). Five rounds: squares, 1/RMS by a spline (2),
/// product, truncation.
pub fn rms_normalize(p: &mut Party, x: &[u64], rows: usize, d: usize, eps: f64) -> Result<Vec<u64>> {
    if x.len() != rows * d || d == 0 {
        return Err(EngineError::InvalidRequest(format!("RMSNorm of {} values as {rows}x{d}", x.len())));
    }
    let f = p.fp.frac_bits;
    // Σx² at 2f: |x| ≤ 2^15 and d ≤ 2^12 keep it below 2^55, so no pre-scaling is needed.
    let squares = arith::mul(p, x, x)?;
    let sums = row_sums(&squares, d);
    let (lo, hi) = RMS_SQUARE_RANGE;
    let spline = rsqrt_spline(2 * f, lo * d as f64, hi * d as f64, RSQRT_FRAC, d as f64, eps)?;
    let inv_rms = spline.eval(p, &sums)?;
    let broadcast: Vec<u64> = inv_rms.iter().flat_map(|r| std::iter::repeat_n(*r, d)).collect();
    let scaled = arith::mul(p, x, &broadcast)?;
    Ok(trunc::truncate(p, &scaled, RSQRT_FRAC)?)
}

/// Causal softmax of scores laid out `n_heads × m × t` (scale f), where query row `i` sits at
/// position `start + i` and sees keys `0..=start + i` (`t = start + m`). Returns probabilities
/// at scale f. Rounds: ⌈log2 t⌉ (maximum) + 2 (exp) + 2 (reciprocal) + 2 (product, truncation).
pub fn causal_softmax(p: &mut Party, scores: &[u64], n_heads: usize, m: usize, start: usize) -> Result<Vec<u64>> {
    let t = start + m;
    if scores.len() != n_heads * m * t {
        return Err(EngineError::InvalidRequest(format!(
            "softmax of {} scores as {n_heads} heads × {m} rows × {t} keys",
            scores.len()
        )));
    }
    let rows = n_heads * m;
    let mut x = scores.to_vec();
    if p.is_p0() && m > 1 {
        let offset = p.fp.encode(CAUSAL_MASK_OFFSET);
        for h in 0..n_heads {
            for i in 0..m {
                let row = &mut x[(h * m + i) * t..(h * m + i + 1) * t];
                for v in &mut row[start + i + 1..] {
                    *v = v.wrapping_add(offset);
                }
            }
        }
    }
    let max = if t > 1 { compare::max_rows(p, &x, rows, t, SCORE_BITS)? } else { x.clone() };
    let shifted: Vec<u64> = x.iter().enumerate().map(|(k, v)| v.wrapping_sub(max[k / t])).collect();
    let exps = exp_neg(p, &shifted)?;
    let sums = row_sums(&exps, t);
    // The row maximum contributes e^0 = 1, so every sum lies in [1, t].
    let recip_frac = 14 + usize::BITS - t.leading_zeros();
    let inv = nonlinear::reciprocal(p, &sums, 1.0, (t as f64).max(2.0), recip_frac)?;
    let broadcast: Vec<u64> = inv.iter().flat_map(|r| std::iter::repeat_n(*r, t)).collect();
    let probs = arith::mul(p, &exps, &broadcast)?;
    Ok(trunc::truncate(p, &probs, recip_frac)?)
}

/// Shares of SiLU(x) (scale f), from the protocol layer's table (|x| < 16, ReLU beyond).
pub fn silu(p: &mut Party, x: &[u64]) -> Result<Vec<u64>> {
    Ok(nonlinear::silu(p, x)?)
}

/// Row sums of a `rows × cols` share matrix (local).
fn row_sums(x: &[u64], cols: usize) -> Vec<u64> {
    x.chunks_exact(cols).map(|row| row.iter().fold(0u64, |a, v| a.wrapping_add(*v))).collect()
}
