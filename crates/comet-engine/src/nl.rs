//! The nonlinear steps of a llama block, assembled from the protocol layer's gates with the
//! ranges SmolLM2 needs (DESIGN.md §3): RMS normalisation (gain folded into the next weights),
//! causal softmax, SiLU.

use crate::error::{EngineError, Result};
use comet_protocols::{nonlinear, Party};

/// Value added to the scores of future positions (causal mask) before the softmax: far below
/// any real score (|score| ≤ 55 on SmolLM2), so its exponential is exactly 0.
pub const CAUSAL_MASK_OFFSET: f64 = -1024.0;

/// Shares of `x / √(mean(x²) + eps)` per row (`rows × d`, scale f in and out), without the
/// gain (folded into the following weights). Five rounds (see
/// `comet_protocols::nonlinear::norm`).
pub fn rms_normalize(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    eps: f64,
) -> Result<Vec<u64>> {
    if x.len() != rows * d || d == 0 {
        return Err(EngineError::InvalidRequest(format!(
            "RMSNorm of {} values as {rows}x{d}",
            x.len()
        )));
    }
    Ok(nonlinear::rms_norm(p, x, rows, d, None, eps)?)
}

/// Causal softmax of scores laid out `n_heads × m × t` (scale f), where query row `i` sits at
/// position `start + i` and sees keys `0..=start + i` (`t = start + m`). Returns probabilities
/// at scale f. ⌈log2 t⌉ + 6 rounds (see `comet_protocols::nonlinear::softmax`).
pub fn causal_softmax(
    p: &mut Party,
    scores: &[u64],
    n_heads: usize,
    m: usize,
    start: usize,
) -> Result<Vec<u64>> {
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
    // The protocol layer's causal mask counts rows globally; ours restart for every head,
    // so the mask is applied here as a public offset and the softmax runs unmasked.
    Ok(nonlinear::softmax_rows(p, &x, rows, t, None)?)
}

/// Signed width of the FFN gate values entering SiLU: |x| < 2^(24−2) ring units, i.e. |x| < 1024
/// at f = 12, twenty times SmolLM2's measured maximum (≈ 49, DESIGN.md §3); a narrower width
/// shrinks the comparison keys (~23% of SiLU's dealer material).
pub const SILU_INPUT_BITS: u32 = 24;

/// Shares of SiLU(x) (scale f), from the protocol layer's table (|x| < 16, ReLU beyond).
pub fn silu(p: &mut Party, x: &[u64]) -> Result<Vec<u64>> {
    Ok(nonlinear::silu_with_bits(p, x, SILU_INPUT_BITS)?)
}
