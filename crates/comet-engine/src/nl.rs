//! The nonlinear steps of a llama block, assembled from the protocol layer's gates with the
//! ranges SmolLM2 needs (DESIGN.md §3): RMS normalisation fused with the next product (gain
//! folded into the weights), causal softmax, SiLU·up, and the ring widths each opening needs.

use crate::error::{EngineError, Result};
use comet_dealer::FixedWeight;
use comet_protocols::{nonlinear, trunc, Party};

/// Value added to the scores of future positions (causal mask) before the softmax: far below
/// any real score (|score| ≤ 55 on SmolLM2), so its exponential is exactly 0.
pub const CAUSAL_MASK_OFFSET: f64 = -1024.0;

/// Shares of `normalize(x)·W_j` (scale `2f`) for every weight `W_j` consuming the RMS-normalised
/// rows of `x` (`rows × d`, scale f; gains folded into the weights), correct modulo
/// `2^product_bits` (the consumers reduce to that width first; 64 = exact). Six rounds, three
/// openings of `d` per row (`comet_protocols::nonlinear::rms_norm_matmul_bits`).
pub fn norm_matmul(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    d: usize,
    eps: f64,
    weights: &[&FixedWeight],
    product_bits: u32,
) -> Result<Vec<Vec<u64>>> {
    if x.len() != rows * d || d == 0 {
        return Err(EngineError::InvalidRequest(format!(
            "RMSNorm of {} values as {rows}x{d}",
            x.len()
        )));
    }
    Ok(nonlinear::norm::rms_norm_matmul_bits(
        p,
        x,
        rows,
        d,
        eps,
        weights,
        product_bits,
    )?)
}

/// Causal softmax of score rows of `t` keys (scale f), where row `r` belongs to query row
/// `row_of[r]` of the step, at position `start + row_of[r]`, and sees keys
/// `0..=start + row_of[r]` (`t = start + m`). Returns probabilities at scale f.
/// ⌈log2 t⌉ + 6 rounds (see `comet_protocols::nonlinear::softmax`).
pub fn causal_softmax(
    p: &mut Party,
    scores: &[u64],
    row_of: &[usize],
    start: usize,
    t: usize,
) -> Result<Vec<u64>> {
    if scores.len() != row_of.len() * t || row_of.iter().any(|&i| start + i >= t) {
        return Err(EngineError::InvalidRequest(format!(
            "softmax of {} scores as {} rows × {t} keys from position {start}",
            scores.len(),
            row_of.len()
        )));
    }
    let mut x = scores.to_vec();
    if p.is_p0() {
        let offset = p.fp.encode(CAUSAL_MASK_OFFSET);
        for (row, &i) in x.chunks_exact_mut(t).zip(row_of) {
            for v in &mut row[start + i + 1..] {
                *v = v.wrapping_add(offset);
            }
        }
    }
    // The protocol layer's causal mask counts rows globally; ours are per query row, so the
    // mask is applied here as a public offset and the softmax runs unmasked.
    Ok(nonlinear::softmax_rows(p, &x, row_of.len(), t, None)?)
}

/// Ring width of the queries and keys after RoPE (scale `3f`): |x| < 2^(56−2−36) = 2^18 in
/// value, four orders of magnitude above SmolLM2's |q| ≤ 20 (DESIGN.md §3); the Q/K/V
/// product is opened at this width too.
pub const QK_BITS: u32 = 56;

/// Ring width of the values before their truncation (scale `2f`): |v| < 2^22.
pub const V_BITS: u32 = 48;

/// Ring width of the raw attention scores (scale `2f`): |s| < 2^14, SmolLM2's ≤ 55.
pub const SCORE_BITS: u32 = 40;

/// Ring width of the products added to the residual (`Wo`, down; scale `3f`): |y| < 2^18,
/// above the residual's largest value 22,550 ≈ 2^14.5. Their input openings and truncations
/// carry this many bits.
pub const RESIDUAL_BITS: u32 = 56;

/// Ring width of the FFN gate and up values entering SiLU·up and of their product's opening
/// (scale `2f`): |x| < 2^14, far above SmolLM2's up ≤ 75.
pub const GATE_UP_BITS: u32 = 40;

/// Signed width of the gate values inside SiLU (scale `2f`): |g| < 2^10 = 1024, twenty times
/// SmolLM2's gate ≤ 49; narrower than [`GATE_UP_BITS`] to shrink SiLU's comparison key.
pub const GATE_SILU_BITS: u32 = 36;

/// Faithful truncation by `shift` of a product added to the residual, at [`RESIDUAL_BITS`].
pub fn truncate_residual(p: &mut Party, x: &[u64], shift: u32) -> Result<Vec<u64>> {
    let mut out = trunc::truncate_many_narrow(p, &[(x, shift, RESIDUAL_BITS)])?;
    Ok(out.pop().expect("one part"))
}

/// Shares of `SiLU(g)·u` at scale `2f` from the untruncated gate and up products (scale `2f`)
/// in two rounds (`comet_protocols::nonlinear::silu_mul_2f`); empty in, empty out.
pub fn silu_mul(p: &mut Party, gate: &[u64], up: &[u64]) -> Result<Vec<u64>> {
    if gate.is_empty() {
        return Ok(Vec::new());
    }
    Ok(nonlinear::silu::silu_mul_2f(
        p,
        gate,
        up,
        GATE_SILU_BITS,
        GATE_UP_BITS,
    )?)
}
