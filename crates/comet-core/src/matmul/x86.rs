//! x86_64 SIMD micro-kernels: AVX-512F/DQ (`vpmullq`) and AVX2 (64-bit products emulated
//! with 32×32→64 multiplies). Only reached after run-time feature detection.
#![deny(unsafe_op_in_unsafe_fn)]

use super::{Backend, DotTile, Tile};
use std::arch::x86_64::*;

// ---------------------------------------------------------------------------------------------
// AVX-512

/// AVX-512F/DQ kernels: 8×24 register tile (24 zmm accumulators), 2×64 few-rows strips,
/// 4×4 dot tiles.
pub(crate) struct Avx512;

/// `u64` lanes per zmm register.
const L512: usize = 8;
/// zmm registers per tile row.
const V512: usize = 3;
/// zmm registers per row of a few-rows strip.
const VS512: usize = 8;

impl Backend for Avx512 {
    const MR: usize = 8;
    const NR: usize = V512 * L512;
    const DR: usize = 4;
    const DC: usize = 4;

    const SR: usize = 2;
    const SW: usize = VS512 * L512;

    unsafe fn tile(t: &Tile) {
        debug_assert!((1..=Self::MR).contains(&t.rows) && (1..=Self::NR).contains(&t.cols));
        // SAFETY: the caller guarantees the `Tile` contract and AVX-512F/DQ support; the
        // const row count equals `t.rows` and the const width is NR.
        unsafe {
            match t.rows {
                1 => avx512_tile::<1, V512>(t),
                2 => avx512_tile::<2, V512>(t),
                3 => avx512_tile::<3, V512>(t),
                4 => avx512_tile::<4, V512>(t),
                5 => avx512_tile::<5, V512>(t),
                6 => avx512_tile::<6, V512>(t),
                7 => avx512_tile::<7, V512>(t),
                _ => avx512_tile::<8, V512>(t),
            }
        }
    }

    unsafe fn strip(t: &Tile) {
        debug_assert!((1..=Self::SR).contains(&t.rows) && (1..=Self::SW).contains(&t.cols));
        // SAFETY: the caller guarantees the `Tile` contract for width SW and AVX-512F/DQ
        // support; the const row count equals `t.rows` and the const width is SW.
        unsafe {
            match t.rows {
                1 => avx512_tile::<1, VS512>(t),
                _ => avx512_tile::<2, VS512>(t),
            }
        }
    }

    unsafe fn dot_tile(t: &DotTile) {
        debug_assert!((1..=Self::DR).contains(&t.rows) && (1..=Self::DC).contains(&t.cols));
        // SAFETY: as for `tile`, with the `DotTile` contract.
        unsafe {
            match t.rows {
                1 => avx512_dot::<1>(t),
                2 => avx512_dot::<2>(t),
                3 => avx512_dot::<3>(t),
                _ => avx512_dot::<4>(t),
            }
        }
    }
}

/// Lane mask selecting the first `lanes` (≤ 8) lanes.
#[inline]
fn mask8(lanes: usize) -> __mmask8 {
    ((1u16 << lanes) - 1) as __mmask8
}

/// `C[R×cols] += A[R×kc] · B[kc×8V]`, accumulators in R·V zmm registers.
///
/// # Safety
/// `t` satisfies the `Tile` contract with `t.rows == R` and panel width `8V`, and the CPU
/// has AVX-512F and DQ.
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn avx512_tile<const R: usize, const V: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_si512(); V]; R];
    let mut a = t.a;
    let mut b = t.b;
    for _ in 0..t.kc {
        let mut bv = [_mm512_setzero_si512(); V];
        for (v, reg) in bv.iter_mut().enumerate() {
            // SAFETY: columns 8v..8v+8 < 8V of the current B row, inside the panel.
            *reg = unsafe { _mm512_loadu_si512(b.add(v * L512).cast()) };
        }
        for (i, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: row i < rows, current column p < kc: inside A.
            let x = unsafe { a.add(i * t.lda).read() };
            let av = _mm512_set1_epi64(x as i64);
            for (c, &bvv) in acc_row.iter_mut().zip(&bv) {
                *c = _mm512_add_epi64(*c, _mm512_mullo_epi64(av, bvv));
            }
        }
        a = a.wrapping_add(1);
        b = b.wrapping_add(t.ldb);
    }
    for (i, acc_row) in acc.iter().enumerate() {
        for (v, &sum) in acc_row.iter().enumerate() {
            let lanes = t.cols.saturating_sub(v * L512).min(L512);
            if lanes == 0 {
                break;
            }
            let mask = mask8(lanes);
            // SAFETY: the masked lanes are columns 8v..8v+lanes < cols of row i < rows, inside
            // this call's exclusive C tile; masked-off lanes are neither read nor written.
            unsafe {
                let c = t.c.add(i * t.ldc + v * L512).cast::<i64>();
                let old = _mm512_maskz_loadu_epi64(mask, c);
                _mm512_mask_storeu_epi64(c, mask, _mm512_add_epi64(old, sum));
            }
        }
    }
}

/// `C[R×cols] += A[R×k] · Bt[cols×k]ᵀ` with 4R zmm accumulators, reduced at the end.
/// Missing columns re-read the last valid `Bᵀ` row and are discarded.
///
/// # Safety
/// `t` satisfies the `DotTile` contract with `t.rows == R` and `t.cols <= 4`, and the CPU
/// has AVX-512F and DQ.
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn avx512_dot<const R: usize>(t: &DotTile) {
    const C: usize = 4;
    let mut bt_rows = [t.bt; C];
    for (j, row) in bt_rows.iter_mut().enumerate() {
        *row = t.bt.wrapping_add(j.min(t.cols - 1) * t.ldb);
    }
    let mut acc = [[_mm512_setzero_si512(); C]; R];
    let mut p = 0;
    while p < t.k {
        let mask = mask8((t.k - p).min(L512));
        let mut bv = [_mm512_setzero_si512(); C];
        for (reg, row) in bv.iter_mut().zip(bt_rows) {
            // SAFETY: the unmasked lanes p..p+lanes < k of a valid Bᵀ row; masked-off lanes
            // are not accessed (AVX-512 masked loads suppress faults).
            *reg = unsafe { _mm512_maskz_loadu_epi64(mask, row.add(p).cast()) };
        }
        for (i, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: as above, for A row i < rows.
            let av = unsafe { _mm512_maskz_loadu_epi64(mask, t.a.add(i * t.lda + p).cast()) };
            for (c, &bvv) in acc_row.iter_mut().zip(&bv) {
                *c = _mm512_add_epi64(*c, _mm512_mullo_epi64(av, bvv));
            }
        }
        p += L512;
    }
    for (i, acc_row) in acc.iter().enumerate() {
        for (j, &sum) in acc_row.iter().enumerate().take(t.cols) {
            let total = _mm512_reduce_add_epi64(sum) as u64;
            // SAFETY: i < rows, j < cols: inside this call's exclusive C tile.
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                c.write(c.read().wrapping_add(total));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2

/// AVX2 kernels: 4×8 register tile (8 ymm accumulators), 1×32 few-rows strips, 2×4 dot
/// tiles.
pub(crate) struct Avx2;

/// `u64` lanes per ymm register.
const L256: usize = 4;
/// ymm registers per tile row.
const V256: usize = 2;
/// ymm registers in a one-row strip.
const VS256: usize = 8;

impl Backend for Avx2 {
    const MR: usize = 4;
    const NR: usize = V256 * L256;
    const DR: usize = 2;
    const DC: usize = 4;
    const SR: usize = 1;
    const SW: usize = VS256 * L256;

    unsafe fn tile(t: &Tile) {
        debug_assert!((1..=Self::MR).contains(&t.rows) && (1..=Self::NR).contains(&t.cols));
        // SAFETY: the caller guarantees the `Tile` contract and AVX2 support; the const row
        // count equals `t.rows` and the const width is NR.
        unsafe {
            match t.rows {
                1 => avx2_tile::<1, V256>(t),
                2 => avx2_tile::<2, V256>(t),
                3 => avx2_tile::<3, V256>(t),
                _ => avx2_tile::<4, V256>(t),
            }
        }
    }

    unsafe fn strip(t: &Tile) {
        debug_assert!(t.rows == 1 && (1..=Self::SW).contains(&t.cols));
        // SAFETY: the caller guarantees the `Tile` contract with one row and width SW, and
        // AVX2 support.
        unsafe { avx2_tile::<1, VS256>(t) }
    }

    unsafe fn dot_tile(t: &DotTile) {
        debug_assert!((1..=Self::DR).contains(&t.rows) && (1..=Self::DC).contains(&t.cols));
        // SAFETY: as for `tile`, with the `DotTile` contract.
        unsafe {
            match t.rows {
                1 => avx2_dot::<1>(t),
                _ => avx2_dot::<2>(t),
            }
        }
    }
}

/// Low 64 bits of the lane-wise product `a·b`, given `a_hi = a >> 32` and `b_hi = b >> 32`:
/// `lo(a)·lo(b) + ((lo(a)·hi(b) + hi(a)·lo(b)) << 32)` (the `hi·hi` term vanishes mod 2^64).
#[inline]
#[target_feature(enable = "avx2")]
fn mul64_avx2(a: __m256i, a_hi: __m256i, b: __m256i, b_hi: __m256i) -> __m256i {
    let lo = _mm256_mul_epu32(a, b);
    let cross = _mm256_add_epi64(_mm256_mul_epu32(a, b_hi), _mm256_mul_epu32(a_hi, b));
    _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(cross))
}

/// `C[R×cols] += A[R×kc] · B[kc×4V]`, accumulators in R·V ymm registers.
///
/// # Safety
/// `t` satisfies the `Tile` contract with `t.rows == R` and panel width `4V`, and the CPU
/// has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn avx2_tile<const R: usize, const V: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_si256(); V]; R];
    let mut a = t.a;
    let mut b = t.b;
    for _ in 0..t.kc {
        let mut bv = [_mm256_setzero_si256(); V];
        let mut bh = [_mm256_setzero_si256(); V];
        for v in 0..V {
            // SAFETY: columns 4v..4v+4 < 4V of the current B row, inside the panel.
            bv[v] = unsafe { _mm256_loadu_si256(b.add(v * L256).cast()) };
            bh[v] = _mm256_srli_epi64::<32>(bv[v]);
        }
        for (i, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: row i < rows, current column p < kc: inside A.
            let x = unsafe { a.add(i * t.lda).read() };
            let al = _mm256_set1_epi64x(x as i64);
            let ah = _mm256_set1_epi64x((x >> 32) as i64);
            for v in 0..V {
                acc_row[v] = _mm256_add_epi64(acc_row[v], mul64_avx2(al, ah, bv[v], bh[v]));
            }
        }
        a = a.wrapping_add(1);
        b = b.wrapping_add(t.ldb);
    }
    for (i, acc_row) in acc.iter().enumerate() {
        let mut lanes = [[0u64; L256]; V];
        for (chunk, &sum) in lanes.iter_mut().zip(acc_row) {
            // SAFETY: `chunk` is exactly one ymm register wide.
            unsafe { _mm256_storeu_si256(chunk.as_mut_ptr().cast(), sum) };
        }
        for (j, &v) in lanes.iter().flatten().enumerate().take(t.cols) {
            // SAFETY: i < rows, j < cols: inside this call's exclusive C tile.
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                c.write(c.read().wrapping_add(v));
            }
        }
    }
}

/// `C[R×cols] += A[R×k] · Bt[cols×k]ᵀ` with 4R ymm accumulators; scalar tail for `k % 4`.
/// Missing columns re-read the last valid `Bᵀ` row and are discarded.
///
/// # Safety
/// `t` satisfies the `DotTile` contract with `t.rows == R` and `t.cols <= 4`, and the CPU
/// has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn avx2_dot<const R: usize>(t: &DotTile) {
    const C: usize = 4;
    let mut bt_rows = [t.bt; C];
    for (j, row) in bt_rows.iter_mut().enumerate() {
        *row = t.bt.wrapping_add(j.min(t.cols - 1) * t.ldb);
    }
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    let full = t.k / L256 * L256;
    let mut p = 0;
    while p < full {
        let mut av = [_mm256_setzero_si256(); R];
        let mut ah = [_mm256_setzero_si256(); R];
        for i in 0..R {
            // SAFETY: p + 4 <= k, inside A row i < rows.
            av[i] = unsafe { _mm256_loadu_si256(t.a.add(i * t.lda + p).cast()) };
            ah[i] = _mm256_srli_epi64::<32>(av[i]);
        }
        for (j, row) in bt_rows.iter().enumerate() {
            // SAFETY: p + 4 <= k, inside a valid Bᵀ row.
            let bv = unsafe { _mm256_loadu_si256(row.add(p).cast()) };
            let bh = _mm256_srli_epi64::<32>(bv);
            for i in 0..R {
                acc[i][j] = _mm256_add_epi64(acc[i][j], mul64_avx2(av[i], ah[i], bv, bh));
            }
        }
        p += L256;
    }
    for (i, acc_row) in acc.iter().enumerate() {
        for (j, &sum) in acc_row.iter().enumerate().take(t.cols) {
            let mut lanes = [0u64; L256];
            // SAFETY: `lanes` holds exactly one ymm register.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sum) };
            let mut total = lanes.iter().fold(0u64, |s, &x| s.wrapping_add(x));
            for q in full..t.k {
                // SAFETY: q < k, inside A row i and Bᵀ row j (j < cols).
                let (x, y) = unsafe { (t.a.add(i * t.lda + q).read(), bt_rows[j].add(q).read()) };
                total = total.wrapping_add(x.wrapping_mul(y));
            }
            // SAFETY: i < rows, j < cols: inside this call's exclusive C tile.
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                c.write(c.read().wrapping_add(total));
            }
        }
    }
}
