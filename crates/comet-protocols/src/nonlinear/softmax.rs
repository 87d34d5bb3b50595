//! Row softmax with an optional causal mask: max (tree), x − max, e^x, row sum, reciprocal,
//! product, truncation.
//!
//! * Inputs: `rows × cols` scores at the party's scale f with |x| < 2^(ACTIVATION_BITS − 4)
//!   ring units (2^16 = 65,536 in value at f = 12; attention scores reach ~55).
//! * Causal mask `Some(offset)`: row `i` sees the columns `j ≤ offset + i` (decode: one row,
//!   offset = context − 1; prefill: offset = 0). Masking is by public positions: masked
//!   entries are replaced by a public very negative constant for the max, skipped by exp
//!   and by the product, and are exactly 0 in the output. Every row sees column 0.
//! * Steps and rounds: `compare::max_rows` (⌈log2 cols⌉ rounds), [`exp_neg_wide`] at 32 bits
//!   (2, no index rounding: table roundings only), reciprocal spline of the row sum on
//!   [1/2, cols] at 26 bits (2), Beaver product (1), exact truncation to f, rounding to nearest (1):
//!   **⌈log2 cols⌉ + 6 rounds**.
//! * Error: e^x absolute ≤ 2^-16, 1/sum relative ≤ 2^-12.7, final rounding to nearest
//!   ≤ 2^-(f+1): |out − softmax| ≤ 2^-12.7·p + 2^-13 + 2^-15 (measured ≤ 2^-13.5 at f = 12).

use super::exp::{exp_neg_wide, EXP_WIDE_FRAC};
use super::reciprocal::reciprocal_spline;
use super::ACTIVATION_BITS;
use crate::arith::mul;
use crate::compare::max_rows;
use crate::error::check_len;
use crate::trunc::truncate;
use crate::{Party, ProtocolError};

/// Scales used inside the softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftmaxOptions {
    /// Fractional bits of the reciprocal of the row sum (the exponentials have 32, and their
    /// product must stay below 2^62: at most 29).
    pub recip_frac: u32,
}

impl Default for SoftmaxOptions {
    fn default() -> Self {
        Self { recip_frac: 26 }
    }
}

/// Ideal functionality: shares of softmax over each row of the row-major `rows × cols`
/// matrix `x` (scale f in and out), restricted to the visible columns `j ≤ offset + i` when
/// `causal = Some(offset)`; masked outputs are exactly 0. ⌈log2 cols⌉ + 6 rounds.
pub fn softmax_rows(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    cols: usize,
    causal: Option<usize>,
) -> Result<Vec<u64>, ProtocolError> {
    softmax_rows_with(p, x, rows, cols, causal, SoftmaxOptions::default())
}

/// [`softmax_rows`] with explicit internal scales.
pub fn softmax_rows_with(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    cols: usize,
    causal: Option<usize>,
    opts: SoftmaxOptions,
) -> Result<Vec<u64>, ProtocolError> {
    softmax_rows_masked(
        p,
        x,
        rows,
        cols,
        &|i, j| causal.is_none_or(|o| j <= o + i),
        opts,
    )
}

/// Softmax of each row over the columns a **public** predicate `visible(row, col)` admits
/// (for example a causal mask that restarts for every head: `|i, j| j <= start + i % m`).
/// Masked entries are skipped by the max (replaced by a public very negative constant), by
/// exp and by the product, and are exactly 0 in the output; a row with no visible column is
/// all zeros. Same rounds and error as [`softmax_rows`].
pub fn softmax_rows_masked(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    cols: usize,
    visible: &(dyn Fn(usize, usize) -> bool + Sync),
    opts: SoftmaxOptions,
) -> Result<Vec<u64>, ProtocolError> {
    let total = rows
        .checked_mul(cols)
        .ok_or_else(|| ProtocolError::Shape(format!("softmax {rows} × {cols}")))?;
    check_len("softmax input", x.len(), total)?;
    if cols == 0 || rows == 0 {
        return Ok(Vec::new());
    }
    let f = p.fp.frac_bits;
    let exp_frac = EXP_WIDE_FRAC;
    if exp_frac + opts.recip_frac < f || exp_frac + opts.recip_frac > 61 {
        return Err(ProtocolError::Range(format!(
            "softmax scales {opts:?} at f = {f}"
        )));
    }
    let _scope = p.scope("softmax");
    if !(0..rows).any(|i| (0..cols).any(|j| visible(i, j))) {
        return Ok(vec![0; total]);
    }
    let cmp_bits = ACTIVATION_BITS - 1;
    let pad = (1u64 << (cmp_bits - 2)).wrapping_neg();
    let is_p0 = p.is_p0();
    let mut padded = x.to_vec();
    for i in 0..rows {
        for j in 0..cols {
            if !visible(i, j) {
                padded[i * cols + j] = if is_p0 { pad } else { 0 };
            }
        }
    }
    let maxes = max_rows(p, &padded, rows, cols, cmp_bits)?;
    let mut positions = Vec::with_capacity(total);
    let mut shifted = Vec::with_capacity(total);
    for i in 0..rows {
        for j in 0..cols {
            if visible(i, j) {
                positions.push((i, i * cols + j));
                shifted.push(x[i * cols + j].wrapping_sub(maxes[i]));
            }
        }
    }
    let e = exp_neg_wide(p, &shifted)?;
    let mut sums = vec![0u64; rows];
    for (&(i, _), v) in positions.iter().zip(&e) {
        sums[i] = sums[i].wrapping_add(*v);
    }
    let spline = reciprocal_spline(exp_frac, 0.5, (cols.max(2)) as f64, opts.recip_frac)?;
    let recip = {
        let _s = p.scope("softmax/reciprocal");
        spline.eval(p, &sums)?
    };
    let spread: Vec<u64> = positions.iter().map(|&(i, _)| recip[i]).collect();
    let mut prod = mul(p, &e, &spread)?;
    // Round to nearest: P0 adds half of the last kept unit before the exact floor.
    let shift = exp_frac + opts.recip_frac - f;
    if p.is_p0() {
        prod.iter_mut()
            .for_each(|v| *v = v.wrapping_add(1 << (shift - 1)));
    }
    let probs = truncate(p, &prod, shift)?;
    let mut out = vec![0u64; total];
    for (&(_, at), v) in positions.iter().zip(&probs) {
        out[at] = *v;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nonlinear::encode_at;
    use crate::nonlinear::test_support::{dec, run_shared};
    use comet_core::Prg;

    fn ideal(x: &[f64], rows: usize, cols: usize, causal: Option<usize>) -> Vec<f64> {
        ideal_masked(x, rows, cols, &|i, j| causal.is_none_or(|o| j <= o + i))
    }

    fn ideal_masked(
        x: &[f64],
        rows: usize,
        cols: usize,
        visible: &dyn Fn(usize, usize) -> bool,
    ) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for i in 0..rows {
            let vis: Vec<usize> = (0..cols).filter(|&j| visible(i, j)).collect();
            if vis.is_empty() {
                continue;
            }
            let m = vis
                .iter()
                .map(|&j| x[i * cols + j])
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = vis.iter().map(|&j| (x[i * cols + j] - m).exp()).sum();
            for &j in &vis {
                out[i * cols + j] = (x[i * cols + j] - m).exp() / s;
            }
        }
        out
    }

    fn check(x: &[f64], rows: usize, cols: usize, causal: Option<usize>, seed: u8) -> (f64, u64) {
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        let m = run_shared(&enc, seed, |p, v| softmax_rows(p, v, rows, cols, causal));
        let want = ideal(&xq, rows, cols, causal);
        let mut worst = 0.0f64;
        for (k, w) in want.iter().enumerate() {
            if *w == 0.0 {
                assert_eq!(m.out[k], 0, "masked entries are exactly zero");
            }
            worst = worst.max((dec(m.out[k], 12) - w).abs());
        }
        let expected_rounds = (cols as f64).log2().ceil() as u64 + 6;
        assert_eq!(m.rounds, expected_rounds);
        (worst, m.rounds)
    }

    #[test]
    fn per_head_causal_mask_and_empty_rows() {
        let mut prg = Prg::from_seed([26; 16]);
        let (heads, m, start) = (2, 3, 2);
        let (rows, cols) = (heads * m, start + m);
        let x: Vec<f64> = (0..rows * cols)
            .map(|_| (prg.next_u64() % 20_000) as f64 / 1000.0 - 10.0)
            .collect();
        // Row 5 sees nothing (an empty row is all zeros).
        let visible = |i: usize, j: usize| i != 5 && j <= start + i % m;
        let enc: Vec<u64> = x.iter().map(|v| encode_at(*v, 12)).collect();
        let xq: Vec<f64> = enc.iter().map(|&v| dec(v, 12)).collect();
        let m_out = run_shared(&enc, 27, |p, v| {
            softmax_rows_masked(p, v, rows, cols, &visible, SoftmaxOptions::default())
        });
        let want = ideal_masked(&xq, rows, cols, &visible);
        for (k, w) in want.iter().enumerate() {
            if *w == 0.0 {
                assert_eq!(m_out.out[k], 0);
            }
            assert!(
                (dec(m_out.out[k], 12) - w).abs() <= 2f64.powi(-12),
                "entry {k}"
            );
        }
        let none = run_shared(&enc, 28, |p, v| {
            softmax_rows_masked(p, v, rows, cols, &|_, _| false, SoftmaxOptions::default())
        });
        assert_eq!(none.out, vec![0; rows * cols]);
        assert_eq!(none.rounds, 0);
    }

    #[test]
    fn softmax_matches_f64_on_random_and_edge_rows() {
        let mut prg = Prg::from_seed([21; 16]);
        let (rows, cols) = (4, 37);
        let mut x: Vec<f64> = (0..rows * cols)
            .map(|_| (prg.next_u64() % 110_000) as f64 / 1000.0 - 55.0)
            .collect();
        // A row where one score dominates and a row of equal scores.
        for j in 0..cols {
            x[cols + j] = if j == 5 { 55.0 } else { -55.0 };
            x[2 * cols + j] = 3.25;
        }
        let bound = 2f64.powi(-12);
        let (worst, _) = check(&x, rows, cols, None, 22);
        assert!(worst <= bound, "softmax error {worst}");
        // Causal prefill: the first row has length 1 (output exactly 1).
        let (worst_c, _) = check(&x, rows, cols, Some(0), 23);
        assert!(worst_c <= bound, "causal softmax error {worst_c}");
        // Decode-style: one row seeing everything; single column.
        let (worst_d, _) = check(&x[..cols], 1, cols, Some(cols - 1), 24);
        assert!(worst_d <= bound);
        let (worst_1, _) = check(&[7.5, -3.0], 2, 1, None, 25);
        assert!(worst_1 <= bound);
        println!(
            "softmax: max abs error {:.3e} (dense), {:.3e} (causal), {:.3e} (decode row)",
            worst, worst_c, worst_d
        );
    }
}
