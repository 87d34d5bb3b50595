//! Register-blocked scalar micro-kernels: the fallback on every CPU and every architecture.
#![deny(unsafe_op_in_unsafe_fn)]

use super::{Backend, DotTile, Tile};

/// Scalar kernels (wrapping `u64` multiply-adds, left to the compiler to schedule).
pub(crate) struct Portable;

const MR: usize = 4;
const NR: usize = 8;
const DR: usize = 2;
const DC: usize = 4;
/// Width of a one-row strip (the decode case reads `B` rows as 256-byte runs).
const SW: usize = 32;

impl Backend for Portable {
    const MR: usize = MR;
    const NR: usize = NR;
    const DR: usize = DR;
    const DC: usize = DC;
    const SR: usize = 1;
    const SW: usize = SW;

    unsafe fn tile(t: &Tile) {
        debug_assert!((1..=MR).contains(&t.rows) && (1..=NR).contains(&t.cols));
        // SAFETY: the caller guarantees the `Tile` contract, and `rows` picks a block height
        // equal to `t.rows`, so no row beyond the contract is read or written.
        unsafe {
            match t.rows {
                1 => tile_rows::<1, NR>(t),
                2 => tile_rows::<2, NR>(t),
                3 => tile_rows::<3, NR>(t),
                _ => tile_rows::<MR, NR>(t),
            }
        }
    }

    unsafe fn strip(t: &Tile) {
        debug_assert!(t.rows == 1 && (1..=SW).contains(&t.cols));
        // SAFETY: the caller guarantees the `Tile` contract with one row and width SW.
        unsafe { tile_rows::<1, SW>(t) }
    }

    unsafe fn dot_tile(t: &DotTile) {
        // SAFETY: as for `tile`, with the `DotTile` contract.
        unsafe {
            match t.rows {
                1 => dot_rows::<1>(t),
                _ => dot_rows::<DR>(t),
            }
        }
    }
}

/// `C[R×cols] += A[R×kc] · B[kc×W]`.
///
/// # Safety
/// `t` satisfies the `Tile` contract with `t.rows == R` and panel width `W`.
unsafe fn tile_rows<const R: usize, const W: usize>(t: &Tile) {
    let mut acc = [[0u64; W]; R];
    for p in 0..t.kc {
        // SAFETY: p < kc, so B row p (W elements from b + p*ldb) is inside the panel.
        let b_row: [u64; W] = unsafe { t.b.add(p * t.ldb).cast::<[u64; W]>().read_unaligned() };
        for (i, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: i < R = rows and p < kc: inside A by the contract.
            let a = unsafe { t.a.add(i * t.lda + p).read() };
            for (c, b) in acc_row.iter_mut().zip(b_row) {
                *c = c.wrapping_add(a.wrapping_mul(b));
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        for (j, &v) in acc_row.iter().enumerate().take(t.cols) {
            // SAFETY: i < rows, j < cols: inside this call's exclusive C tile.
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                c.write(c.read().wrapping_add(v));
            }
        }
    }
}

/// `C[R×cols] += A[R×k] · Bt[cols×k]ᵀ`; missing columns re-read the last valid `Bᵀ` row and
/// are discarded.
///
/// # Safety
/// `t` satisfies the `DotTile` contract with `t.rows == R`.
unsafe fn dot_rows<const R: usize>(t: &DotTile) {
    let mut bt_rows = [t.bt; DC];
    for (j, row) in bt_rows.iter_mut().enumerate() {
        *row = t.bt.wrapping_add(j.min(t.cols - 1) * t.ldb);
    }
    let mut acc = [[0u64; DC]; R];
    for p in 0..t.k {
        for (i, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: i < rows, p < k: inside A.
            let a = unsafe { t.a.add(i * t.lda + p).read() };
            for (c, row) in acc_row.iter_mut().zip(bt_rows) {
                // SAFETY: `row` is one of the first `cols` rows of Bᵀ and p < k.
                let b = unsafe { row.add(p).read() };
                *c = c.wrapping_add(a.wrapping_mul(b));
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        for (j, &v) in acc_row.iter().enumerate().take(t.cols) {
            // SAFETY: i < rows, j < cols: inside this call's exclusive C tile.
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                c.write(c.read().wrapping_add(v));
            }
        }
    }
}
