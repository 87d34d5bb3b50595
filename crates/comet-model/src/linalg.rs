//! Dense f32 kernels of the reference forward: `Y = X·Wᵀ` for row-major weights (each output
//! is a dot product of an input row with a weight row), dot products, RMSNorm, softmax.
//!
//! SIMD comes from `pulp`'s runtime dispatch (AVX2/FMA where the CPU has it, scalar otherwise),
//! parallelism from rayon. Everything here is safe code.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// Input rows per register tile.
const MR: usize = 4;
/// Weight rows per register tile.
const NR: usize = 3;
/// Weight rows per parallel task (a multiple of `NR`).
const NB: usize = 48;
/// Input rows per parallel task (keeps the input block in L2 for long prompts).
const MB: usize = 64;

/// `out[i*n + j] = Σ_p x[i*k + p] · w[j*k + p]` for `x: [m, k]`, `w: [n, k]`, `out: [m, n]`,
/// i.e. each row of `x` multiplied by the row-major linear layer `w` (`y = W x`).
///
/// Panics if a slice is shorter than its shape says (internal callers guarantee the shapes).
pub fn matmul_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert!(out.len() >= m * n, "matmul_nt output shape");
    let result = matmul_nt_many(x, m, k, &[(w, n)]);
    out[..m * n].copy_from_slice(&result[0]);
}

/// Several products sharing one input, `x: [m, k]` times each `(w: [n, k], n)`, computed in
/// one parallel pass (one synchronisation instead of one per matrix); returns `[m, n]` each.
///
/// Panics if a slice is shorter than its shape says (internal callers guarantee the shapes).
pub fn matmul_nt_many(x: &[f32], m: usize, k: usize, weights: &[(&[f32], usize)]) -> Vec<Vec<f32>> {
    assert!(x.len() >= m * k, "matmul_nt input shape");
    for (w, n) in weights {
        assert!(w.len() >= n * k, "matmul_nt weight shape");
    }
    let mut outs: Vec<Vec<f32>> = weights.iter().map(|(_, n)| vec![0.0f32; m * n]).collect();
    if m == 0 || k == 0 {
        return outs;
    }
    let m_blocks = m.div_ceil(MB);
    // (matrix, row block, column block) for every task.
    let tasks: Vec<(usize, usize, usize)> = weights
        .iter()
        .enumerate()
        .flat_map(|(mat, (_, n))| {
            let n_blocks = n.div_ceil(NB);
            (0..m_blocks).flat_map(move |mb| (0..n_blocks).map(move |nb| (mat, mb * MB, nb * NB)))
        })
        .collect();
    let blocks: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(mat, i0, j0)| {
            let (w, n) = weights[mat];
            let mb_len = MB.min(m - i0);
            let nb_len = NB.min(n - j0);
            let mut out_t = vec![0.0f32; mb_len * nb_len];
            Arch::new().dispatch(BlockKernel {
                x: &x[i0 * k..(i0 + mb_len) * k],
                w: &w[j0 * k..(j0 + nb_len) * k],
                m: mb_len,
                k,
                nb: nb_len,
                out_t: &mut out_t,
            });
            out_t
        })
        .collect();
    for (&(mat, i0, j0), out_t) in tasks.iter().zip(blocks) {
        let n = weights[mat].1;
        let out = &mut outs[mat];
        let nb_len = NB.min(n - j0);
        let mb_len = out_t.len() / nb_len;
        if mb_len == 1 {
            out[i0 * n + j0..i0 * n + j0 + nb_len].copy_from_slice(&out_t);
            continue;
        }
        for jj in 0..nb_len {
            for ii in 0..mb_len {
                out[(i0 + ii) * n + j0 + jj] = out_t[jj * mb_len + ii];
            }
        }
    }
    outs
}

/// Plain triple-loop version of [`matmul_nt`] (f64 accumulation), the reference for tests.
pub fn matmul_nt_reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += x[i * k + p] as f64 * w[j * k + p] as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

/// One parallel task: `out_t[jj*m + ii] = x[ii]·w[jj]` (output transposed, `nb` weight rows).
struct BlockKernel<'a> {
    x: &'a [f32],
    w: &'a [f32],
    m: usize,
    k: usize,
    nb: usize,
    out_t: &'a mut [f32],
}

impl WithSimd for BlockKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let BlockKernel {
            x,
            w,
            m,
            k,
            nb,
            out_t,
        } = self;
        let mut i = 0;
        while i < m {
            let mr = MR.min(m - i);
            let mut j = 0;
            while j < nb {
                let nr = NR.min(nb - j);
                macro_rules! run {
                    ($mr:literal, $nr:literal) => {{
                        let xs: [&[f32]; $mr] =
                            core::array::from_fn(|a| &x[(i + a) * k..(i + a + 1) * k]);
                        let ws: [&[f32]; $nr] =
                            core::array::from_fn(|b| &w[(j + b) * k..(j + b + 1) * k]);
                        let r = tile::<S, $mr, $nr>(simd, xs, ws);
                        for a in 0..$mr {
                            for b in 0..$nr {
                                out_t[(j + b) * m + i + a] = r[a][b];
                            }
                        }
                    }};
                }
                match (mr, nr) {
                    (4, 3) => run!(4, 3),
                    (4, 2) => run!(4, 2),
                    (4, 1) => run!(4, 1),
                    (3, 3) => run!(3, 3),
                    (3, 2) => run!(3, 2),
                    (3, 1) => run!(3, 1),
                    (2, 3) => run!(2, 3),
                    (2, 2) => run!(2, 2),
                    (2, 1) => run!(2, 1),
                    (1, 3) => run!(1, 3),
                    (1, 2) => run!(1, 2),
                    _ => run!(1, 1),
                }
                j += nr;
            }
            i += mr;
        }
    }
}

/// Register tile: all `R × C` dot products of `xs[a]` with `ws[b]`.
#[inline(always)]
fn tile<S: Simd, const R: usize, const C: usize>(
    simd: S,
    xs: [&[f32]; R],
    ws: [&[f32]; C],
) -> [[f32; C]; R] {
    let xv: [(&[S::f32s], &[f32]); R] = xs.map(|s| S::as_simd_f32s(s));
    let wv: [(&[S::f32s], &[f32]); C] = ws.map(|s| S::as_simd_f32s(s));
    let len = xv[0].0.len();
    let xh: [&[S::f32s]; R] = core::array::from_fn(|a| &xv[a].0[..len]);
    let wh: [&[S::f32s]; C] = core::array::from_fn(|b| &wv[b].0[..len]);
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; C]; R];
    for p in 0..len {
        let wl: [S::f32s; C] = core::array::from_fn(|b| wh[b][p]);
        for a in 0..R {
            let xa = xh[a][p];
            for b in 0..C {
                acc[a][b] = simd.mul_add_e_f32s(xa, wl[b], acc[a][b]);
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for a in 0..R {
        for b in 0..C {
            let mut s = simd.reduce_sum_f32s(acc[a][b]);
            for (u, v) in xv[a].1.iter().zip(wv[b].1) {
                s += u * v;
            }
            out[a][b] = s;
        }
    }
    out
}

/// Dot product of two equally long slices (SIMD).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    struct Dot<'a>(&'a [f32], &'a [f32]);
    impl WithSimd for Dot<'_> {
        type Output = f32;
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) -> f32 {
            tile::<S, 1, 1>(simd, [self.0], [self.1])[0][0]
        }
    }
    let n = a.len().min(b.len());
    Arch::new().dispatch(Dot(&a[..n], &b[..n]))
}

/// `y += alpha · x` over equally long slices.
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// RMSNorm of each `d`-wide row of `x` into `out`: `out = x / sqrt(mean(x²) + eps) ⊙ gain`.
pub fn rms_norm(x: &[f32], gain: &[f32], eps: f64, out: &mut [f32]) {
    let d = gain.len();
    for (row, out_row) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean_sq = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / d as f64;
        let inv = (1.0 / (mean_sq + eps).sqrt()) as f32;
        for ((o, v), g) in out_row.iter_mut().zip(row).zip(gain) {
            *o = v * inv * g;
        }
    }
}

/// In-place numerically stable softmax.
pub fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in values.iter_mut() {
        *v *= inv;
    }
}

/// SiLU (x · sigmoid(x)).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rounds every value to the nearest multiple of 2^-`frac_bits` (fixed-point simulation).
pub fn round_to_fixed_point(values: &mut [f32], frac_bits: u32) {
    let scale = (2.0f64).powi(frac_bits as i32);
    for v in values.iter_mut() {
        *v = ((*v as f64 * scale).round() / scale) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matmul_matches_reference_on_odd_shapes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 5),
            (1, 64, 100),
            (2, 9, 3),
            (5, 33, 49),
            (7, 16, 97),
            (65, 40, 50),
            (130, 24, 7),
            (3, 0, 4),
        ] {
            let x = pseudo_random(m * k, 1 + m as u64);
            let w = pseudo_random(n * k, 7 + n as u64);
            let mut out = vec![f32::NAN; m * n];
            matmul_nt(&x, &w, m, k, n, &mut out);
            let reference = matmul_nt_reference(&x, &w, m, k, n);
            for (a, b) in out.iter().zip(&reference) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{m}x{k}x{n}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn dot_and_softmax_and_norm() {
        let a = pseudo_random(37, 3);
        let b = pseudo_random(37, 4);
        let expected: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - expected).abs() < 1e-5);

        let mut s = vec![1.0, 2.0, 3.0, -1000.0];
        softmax(&mut s);
        let z = 1.0 + 1f64.exp() + 2f64.exp();
        assert!((s[0] as f64 - 1.0 / z).abs() < 1e-6 && s[3] == 0.0);

        let x = vec![3.0, 4.0];
        let mut out = vec![0.0; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f64).sqrt();
        assert!((out[0] as f64 - 3.0 / rms).abs() < 1e-6);
        assert!((out[1] as f64 - 8.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn fixed_point_rounding_lands_on_grid() {
        let mut v = vec![0.3, -1.234_567, 1e-9, 2.5 / 4096.0];
        round_to_fixed_point(&mut v, 12);
        for x in &v {
            let scaled = *x as f64 * 4096.0;
            assert_eq!(scaled, scaled.round());
        }
        assert!((v[0] - 0.3).abs() <= 0.5 / 4096.0);
        assert_eq!(v[2], 0.0);
    }
}
