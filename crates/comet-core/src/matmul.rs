//! Ring matrix multiplication over Z_2^64 (row-major), with run-time CPU dispatch.
//!
//! All products wrap mod 2^64. [`matmul`] and friends pick the fastest kernel this CPU
//! supports ([`detected_kernel`]); [`matmul_with`] forces one, for tests and benchmarks.
//!
//! Structure (GotoBLAS style, simplified):
//! * a *micro-kernel* adds `A[r×kc] · B[kc×NR]` into an `r×NR` tile of `C` held in registers;
//! * `B` is packed into `kc×NR` column panels (zero-padded at the right edge) so the
//!   micro-kernel streams it contiguously, with cache blocking over `k` (`KC`);
//! * for few rows (the decode case, `m = 1`) `B` is read in place instead of packed, and for
//!   `B` given transposed a dot-product kernel reads `Bᵀ` rows in place;
//! * rayon splits `C` into disjoint (row block × column block) tasks, so even `m = 1` is
//!   parallel over `n`.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;
use std::sync::OnceLock;

/// A matrix-multiplication kernel family; [`matmul_with`] runs a specific one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The reference triple loop ([`matmul_naive`]), single-threaded.
    Naive,
    /// Register-blocked scalar kernel; runs on every CPU.
    Portable,
    /// AVX2 kernel with 64-bit products emulated from 32-bit multiplies (x86_64 only).
    Avx2,
    /// AVX-512F/DQ kernel using `vpmullq` (x86_64 only).
    Avx512,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Naive,
        Kernel::Portable,
        Kernel::Avx2,
        Kernel::Avx512,
    ];

    /// Whether this CPU can run the kernel (checked at run time, so one binary runs anywhere).
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Naive | Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => false,
        }
    }

    /// Short lowercase name, used in benchmark ids and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Naive => "naive",
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// The kernels this CPU supports, slowest first.
    pub fn supported() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }
}

/// The fastest kernel this CPU supports (detected once, then cached).
pub fn detected_kernel() -> Kernel {
    static DETECTED: OnceLock<Kernel> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.is_supported())
            .unwrap_or(Kernel::Portable)
    })
}

/// How the right-hand operand `B` of a product `A·B` is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BLayout {
    /// `B` is k×n row-major.
    RowMajor,
    /// `Bᵀ` is given, n×k row-major (e.g. GGUF weights stored as `[out, in]`).
    Transposed,
}

/// Whether a product overwrites the output or is added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// `out = A·B`.
    Overwrite,
    /// `out += A·B` (wrapping).
    Accumulate,
}

/// Shape of a product `A (m×k) · B (k×n) = C (m×n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
}

/// Why a matrix product could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatmulError {
    /// The requested kernel needs CPU features this machine lacks.
    #[error("matmul kernel `{}` is not supported by this CPU", .0.name())]
    UnsupportedKernel(Kernel),
    /// An operand's length does not match the stated shape.
    #[error("matmul: {operand} has {len} elements, expected {rows}x{cols}")]
    ShapeMismatch {
        /// Which operand (`A`, `B`, `Bᵀ` or `out`).
        operand: &'static str,
        /// Its actual length.
        len: usize,
        /// Expected rows.
        rows: usize,
        /// Expected columns.
        cols: usize,
    },
    /// `m·k`, `k·n` or `m·n` overflows `usize`.
    #[error("matmul: shape {m}x{k}x{n} overflows usize")]
    TooLarge {
        /// Rows of `A`.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of `B`.
        n: usize,
    },
}

/// `C = A·B` for row-major `A` (m×k) and `B` (k×n), all arithmetic wrapping mod 2^64.
/// Reference implementation; the fast kernels are checked against it.
pub fn matmul_naive(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    assert_eq!(
        a.len(),
        m * k,
        "matmul: A has {} elements, expected {m}x{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "matmul: B has {} elements, expected {k}x{n}",
        b.len()
    );
    let mut c = vec![0u64; m * n];
    naive_acc(a, b, BLayout::RowMajor, Dims { m, k, n }, &mut c);
    c
}

/// `C = A·B` for row-major `A` (m×k) and `B` (k×n) over Z_2^64, using the fastest kernel
/// this CPU supports.
///
/// # Panics
/// If `a.len() != m*k` or `b.len() != k*n`.
pub fn matmul(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut out = vec![0u64; m.saturating_mul(n)];
    matmul_into(a, b, m, k, n, &mut out);
    out
}

/// `out = A·B` (overwriting `out`, m×n row-major) with the fastest kernel; avoids an allocation.
///
/// # Panics
/// If an operand's length does not match the shape.
pub fn matmul_into(a: &[u64], b: &[u64], m: usize, k: usize, n: usize, out: &mut [u64]) {
    run_detected(
        a,
        b,
        BLayout::RowMajor,
        Dims { m, k, n },
        out,
        OutputMode::Overwrite,
    );
}

/// `out += A·B` (wrapping, `out` m×n row-major) with the fastest kernel.
///
/// # Panics
/// If an operand's length does not match the shape.
pub fn matmul_acc(a: &[u64], b: &[u64], m: usize, k: usize, n: usize, out: &mut [u64]) {
    run_detected(
        a,
        b,
        BLayout::RowMajor,
        Dims { m, k, n },
        out,
        OutputMode::Accumulate,
    );
}

/// `C = A·B` where `bt` holds `Bᵀ` (n×k row-major): `y = x·Wᵀ` for activations `x` (m×k)
/// and weights `W` stored `[out = n, in = k]`, as in GGUF; fastest kernel.
///
/// # Panics
/// If `a.len() != m*k` or `bt.len() != n*k`.
pub fn matmul_transposed_b(a: &[u64], bt: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut out = vec![0u64; m.saturating_mul(n)];
    matmul_transposed_b_into(a, bt, m, k, n, &mut out);
    out
}

/// `out = A·B` with `bt = Bᵀ` (n×k row-major), overwriting `out` (m×n); fastest kernel.
///
/// # Panics
/// If an operand's length does not match the shape.
pub fn matmul_transposed_b_into(
    a: &[u64],
    bt: &[u64],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [u64],
) {
    run_detected(
        a,
        bt,
        BLayout::Transposed,
        Dims { m, k, n },
        out,
        OutputMode::Overwrite,
    );
}

/// `out += A·B` with `bt = Bᵀ` (n×k row-major), `out` m×n; fastest kernel.
///
/// # Panics
/// If an operand's length does not match the shape.
pub fn matmul_transposed_b_acc(
    a: &[u64],
    bt: &[u64],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [u64],
) {
    run_detected(
        a,
        bt,
        BLayout::Transposed,
        Dims { m, k, n },
        out,
        OutputMode::Accumulate,
    );
}

/// [`matmul_general`] with [`detected_kernel`], panicking with the error's message on a bad
/// shape (the infallible entry points above).
fn run_detected(
    a: &[u64],
    b: &[u64],
    b_layout: BLayout,
    dims: Dims,
    out: &mut [u64],
    mode: OutputMode,
) {
    if let Err(e) = matmul_general(detected_kernel(), a, b, b_layout, dims, out, mode) {
        panic!("{e}");
    }
}

/// `C = A·B` (row-major `B`, k×n) with a chosen kernel; errors if the CPU lacks it.
pub fn matmul_with(
    kernel: Kernel,
    a: &[u64],
    b: &[u64],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Vec<u64>, MatmulError> {
    let dims = Dims { m, k, n };
    let mut out = vec![0u64; check_operands(kernel, a, b, BLayout::RowMajor, dims)?];
    matmul_general(
        kernel,
        a,
        b,
        BLayout::RowMajor,
        dims,
        &mut out,
        OutputMode::Overwrite,
    )?;
    Ok(out)
}

/// `C = A·B` with `bt = Bᵀ` (n×k row-major) and a chosen kernel; errors if the CPU lacks it.
pub fn matmul_transposed_b_with(
    kernel: Kernel,
    a: &[u64],
    bt: &[u64],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Vec<u64>, MatmulError> {
    let dims = Dims { m, k, n };
    let mut out = vec![0u64; check_operands(kernel, a, bt, BLayout::Transposed, dims)?];
    matmul_general(
        kernel,
        a,
        bt,
        BLayout::Transposed,
        dims,
        &mut out,
        OutputMode::Overwrite,
    )?;
    Ok(out)
}

/// The general entry point: `out (=|+=) A·B` with `B` in `b_layout`, using `kernel`.
/// Checks every length against `dims` and that the CPU supports `kernel`.
pub fn matmul_general(
    kernel: Kernel,
    a: &[u64],
    b: &[u64],
    b_layout: BLayout,
    dims: Dims,
    out: &mut [u64],
    mode: OutputMode,
) -> Result<(), MatmulError> {
    let Dims { m, k, n } = dims;
    let out_len = check_operands(kernel, a, b, b_layout, dims)?;
    check_len("out", out.len(), out_len, m, n)?;
    if mode == OutputMode::Overwrite {
        out.fill(0);
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    match kernel {
        Kernel::Naive => naive_acc(a, b, b_layout, dims, out),
        Kernel::Portable => drive::<portable::Portable>(a, b, b_layout, dims, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => drive::<x86::Avx2>(a, b, b_layout, dims, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => drive::<x86::Avx512>(a, b, b_layout, dims, out),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2 | Kernel::Avx512 => unreachable!("is_supported() is false off x86_64"),
    }
    Ok(())
}

/// Checks `a` and `b` against `dims` and `kernel` against the CPU; returns the output length.
fn check_operands(
    kernel: Kernel,
    a: &[u64],
    b: &[u64],
    b_layout: BLayout,
    dims: Dims,
) -> Result<usize, MatmulError> {
    let Dims { m, k, n } = dims;
    check_len("A", a.len(), checked_len(dims, m, k)?, m, k)?;
    match b_layout {
        BLayout::RowMajor => check_len("B", b.len(), checked_len(dims, k, n)?, k, n)?,
        BLayout::Transposed => check_len("Bᵀ", b.len(), checked_len(dims, n, k)?, n, k)?,
    }
    let out_len = checked_len(dims, m, n)?;
    if !kernel.is_supported() {
        return Err(MatmulError::UnsupportedKernel(kernel));
    }
    Ok(out_len)
}

fn checked_len(dims: Dims, rows: usize, cols: usize) -> Result<usize, MatmulError> {
    rows.checked_mul(cols).ok_or(MatmulError::TooLarge {
        m: dims.m,
        k: dims.k,
        n: dims.n,
    })
}

fn check_len(
    operand: &'static str,
    len: usize,
    expected: usize,
    rows: usize,
    cols: usize,
) -> Result<(), MatmulError> {
    if len == expected {
        Ok(())
    } else {
        Err(MatmulError::ShapeMismatch {
            operand,
            len,
            rows,
            cols,
        })
    }
}

/// Reference `out += A·B`, i-k-j order, single-threaded.
fn naive_acc(a: &[u64], b: &[u64], b_layout: BLayout, dims: Dims, out: &mut [u64]) {
    let Dims { m, k, n } = dims;
    for i in 0..m {
        let c_row = &mut out[i * n..(i + 1) * n];
        for p in 0..k {
            let aip = a[i * k + p];
            for (j, c) in c_row.iter_mut().enumerate() {
                let bpj = match b_layout {
                    BLayout::RowMajor => b[p * n + j],
                    BLayout::Transposed => b[j * k + p],
                };
                *c = c.wrapping_add(aip.wrapping_mul(bpj));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Blocked driver, shared by every fast kernel.

/// Depth of one `k` block: a packed `KC×NR` panel stays in L1 while it meets every row tile.
const KC: usize = 128;
/// Depth of one `k` block when `B` is read in place (few rows: the `C` tile is tiny).
const DIRECT_KC: usize = 256;
/// Rows of `C` per parallel task (rounded to a multiple of the kernel's `MR`).
const MC: usize = 64;
/// Target columns of `C` per parallel task (rounded to a multiple of the kernel's `NR`).
const NC: usize = 96;
/// Columns (rows of `Bᵀ`) per task in the transposed few-rows dot-product path.
const DOT_NC: usize = 32;
/// At most this many rows use the dot-product path when `B` is given transposed.
const DOT_MAX_ROWS: usize = 4;
/// Products with fewer multiply-adds than this run on the calling thread only.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// One micro-kernel call: `C[rows×cols] += A[rows×kc] · B[kc×NR]`.
///
/// Pointer contract (the callers in [`drive`] build these from in-bounds slices):
/// `a + i*lda + p` readable for `i < rows, p < kc`; `b + p*ldb + j` readable for
/// `p < kc, j < NR` (a full panel, zero-padded when packed); `c + i*ldc + j` readable and
/// writable, and not touched by any other thread, for `i < rows, j < cols`;
/// `1 <= rows <= MR`, `1 <= cols <= NR`.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub a: *const u64,
    pub lda: usize,
    pub b: *const u64,
    pub ldb: usize,
    pub c: *mut u64,
    pub ldc: usize,
    pub kc: usize,
    pub rows: usize,
    pub cols: usize,
}

/// One dot-product kernel call: `C[rows×cols] += A[rows×k] · Bt[cols×k]ᵀ`.
///
/// Pointer contract: `a + i*lda + p` readable for `i < rows, p < k`; `bt + j*ldb + p`
/// readable for `j < cols, p < k`; `c + i*ldc + j` readable and writable, and exclusive to
/// this call, for `i < rows, j < cols`; `1 <= rows <= DR`, `1 <= cols <= DC`.
#[derive(Clone, Copy)]
pub(crate) struct DotTile {
    pub a: *const u64,
    pub lda: usize,
    pub bt: *const u64,
    pub ldb: usize,
    pub c: *mut u64,
    pub ldc: usize,
    pub k: usize,
    pub rows: usize,
    pub cols: usize,
}

/// A family of micro-kernels with its register-block shape.
pub(crate) trait Backend {
    /// Rows of `C` per register tile.
    const MR: usize;
    /// Columns of `C` per register tile (width of a packed `B` panel).
    const NR: usize;
    /// Rows per dot-product tile.
    const DR: usize;
    /// Columns (rows of `Bᵀ`) per dot-product tile.
    const DC: usize;

    /// Most rows of a [`Backend::strip`] call (the few-rows path, `B` read in place).
    const SR: usize = Self::MR;
    /// Columns of a [`Backend::strip`] call: wider than `NR` so each `B` row is read as a
    /// longer contiguous run.
    const SW: usize = Self::NR;

    /// Runs one register tile.
    ///
    /// # Safety
    /// `t` satisfies the [`Tile`] contract and the CPU supports this backend's features.
    unsafe fn tile(t: &Tile);

    /// Runs one few-rows strip: the [`Tile`] contract with `SR` and `SW` in place of `MR`
    /// and `NR`.
    ///
    /// # Safety
    /// As for [`Backend::tile`], with the strip bounds.
    unsafe fn strip(t: &Tile) {
        // SAFETY: by default SR = MR and SW = NR, so the strip is a tile.
        unsafe { Self::tile(t) }
    }

    /// Runs one dot-product tile.
    ///
    /// # Safety
    /// `t` satisfies the [`DotTile`] contract and the CPU supports this backend's features.
    unsafe fn dot_tile(t: &DotTile);
}

/// The output pointer, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut u64);
// SAFETY: tasks built by `drive` write pairwise-disjoint (row block × column block) regions
// of the output, and the output slice outlives the parallel scope that uses the pointer.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The output element `offset` (a method, so closures capture the whole `Sync` wrapper).
    fn at(self, offset: usize) -> *mut u64 {
        self.0.wrapping_add(offset)
    }
}

/// Runs `task(0..count)` in parallel when `work` multiply-adds justify it.
fn for_each_task(count: usize, work: usize, task: impl Fn(usize) + Sync + Send) {
    if work >= PARALLEL_MIN_WORK && count > 1 {
        (0..count).into_par_iter().for_each(task);
    } else {
        (0..count).for_each(task);
    }
}

/// `out += A·B` with backend `K`; `out` is m×n, all lengths already checked.
fn drive<K: Backend>(a: &[u64], b: &[u64], b_layout: BLayout, dims: Dims, out: &mut [u64]) {
    let out_ptr = OutPtr(out.as_mut_ptr());
    match b_layout {
        BLayout::RowMajor if dims.m <= K::MR => drive_direct::<K>(a, b, dims, out_ptr),
        BLayout::Transposed if dims.m <= DOT_MAX_ROWS => drive_dot::<K>(a, b, dims, out_ptr),
        _ => drive_packed::<K>(a, b, b_layout, dims, out_ptr),
    }
}

/// General case: tasks over (MC rows × NC columns) of `C`; each packs its `B` columns one
/// `KC` block at a time and sweeps its row tiles over every panel.
fn drive_packed<K: Backend>(a: &[u64], b: &[u64], b_layout: BLayout, dims: Dims, out: OutPtr) {
    let Dims { m, k, n } = dims;
    let mc = MC.div_ceil(K::MR) * K::MR;
    let nc = NC.div_ceil(K::NR) * K::NR;
    let row_blocks = m.div_ceil(mc);
    let col_blocks = n.div_ceil(nc);
    for_each_task(row_blocks * col_blocks, m * k * n, |task| {
        let (i0, j0) = ((task / col_blocks) * mc, (task % col_blocks) * nc);
        let (i1, j1) = ((i0 + mc).min(m), (j0 + nc).min(n));
        let panels = (j1 - j0).div_ceil(K::NR);
        let mut packed = vec![0u64; KC.min(k) * panels * K::NR];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let panel_len = kc * K::NR;
            for (q, panel) in packed[..panels * panel_len]
                .chunks_exact_mut(panel_len)
                .enumerate()
            {
                let jp = j0 + q * K::NR;
                let cols = K::NR.min(j1 - jp);
                pack_panel(b, b_layout, dims, p0, kc, jp, cols, K::NR, panel);
            }
            for q in 0..panels {
                let jp = j0 + q * K::NR;
                let panel = &packed[q * panel_len..(q + 1) * panel_len];
                for i in (i0..i1).step_by(K::MR) {
                    let tile = Tile {
                        a: a[i * k + p0..].as_ptr(),
                        lda: k,
                        b: panel.as_ptr(),
                        ldb: K::NR,
                        c: out.at(i * n + jp),
                        ldc: n,
                        kc,
                        rows: K::MR.min(i1 - i),
                        cols: K::NR.min(j1 - jp),
                    };
                    // SAFETY: `a` rows i..i+rows, columns p0..p0+kc lie inside `a` (m×k);
                    // `panel` holds kc×NR elements; the C tile lies inside this task's
                    // disjoint block of the m×n output; rows ≤ MR, cols ≤ NR. `drive` is only
                    // called with a backend whose CPU support `matmul_general` checked.
                    unsafe { K::tile(&tile) };
                }
            }
        }
    });
}

/// Copies `B[p0..p0+kc, jp..jp+cols]` into a `kc×nr` panel (row-major, zero-padded right).
#[allow(clippy::too_many_arguments)]
fn pack_panel(
    b: &[u64],
    b_layout: BLayout,
    dims: Dims,
    p0: usize,
    kc: usize,
    jp: usize,
    cols: usize,
    nr: usize,
    panel: &mut [u64],
) {
    let Dims { k, n, .. } = dims;
    match b_layout {
        BLayout::RowMajor => {
            for (p, dst) in panel.chunks_exact_mut(nr).enumerate().take(kc) {
                let src = &b[(p0 + p) * n + jp..][..cols];
                dst[..cols].copy_from_slice(src);
                dst[cols..].fill(0);
            }
        }
        BLayout::Transposed => {
            if cols < nr {
                panel.fill(0);
            }
            for jj in 0..cols {
                let src = &b[(jp + jj) * k + p0..][..kc];
                for (p, &v) in src.iter().enumerate() {
                    panel[p * nr + jj] = v;
                }
            }
        }
    }
}

/// Few rows, row-major `B`: read `B` in place (row stride n), one task per column block.
/// Up to `SR` rows use the wide `strip` kernel, up to `MR` the register tile. Only a ragged
/// last panel is packed, zero-padded.
fn drive_direct<K: Backend>(a: &[u64], b: &[u64], dims: Dims, out: OutPtr) {
    let Dims { m, k, n } = dims;
    let wide = m <= K::SR;
    let width = if wide { K::SW } else { K::NR };
    let nc = NC.div_ceil(width) * width;
    for_each_task(n.div_ceil(nc), m * k * n, |task| {
        let j0 = task * nc;
        let j1 = (j0 + nc).min(n);
        let mut edge = Vec::new();
        for jp in (j0..j1).step_by(width) {
            let cols = width.min(j1 - jp);
            let (panel, ldb): (&[u64], usize) = if jp + width <= n {
                (&b[jp..], n)
            } else {
                edge.resize(k * width, 0);
                pack_panel(b, BLayout::RowMajor, dims, 0, k, jp, cols, width, &mut edge);
                (&edge, width)
            };
            for p0 in (0..k).step_by(DIRECT_KC) {
                let tile = Tile {
                    a: a[p0..].as_ptr(),
                    lda: k,
                    b: panel[p0 * ldb..].as_ptr(),
                    ldb,
                    c: out.at(jp),
                    ldc: n,
                    kc: DIRECT_KC.min(k - p0),
                    rows: m,
                    cols,
                };
                // SAFETY: rows = m ≤ SR (wide) or MR and A is m×k, so A rows 0..m, columns
                // p0..p0+kc are in bounds; B rows p0..p0+kc, columns jp..jp+width lie inside
                // B (jp+width ≤ n) or inside the k×width `edge` panel; the C columns
                // jp..jp+cols belong to this task only; the backend's CPU support was checked
                // by `matmul_general`.
                unsafe {
                    if wide {
                        K::strip(&tile)
                    } else {
                        K::tile(&tile)
                    }
                };
            }
        }
    });
}

/// Few rows, transposed `B`: dot products of `A` rows with `Bᵀ` rows, both read in place.
fn drive_dot<K: Backend>(a: &[u64], bt: &[u64], dims: Dims, out: OutPtr) {
    let Dims { m, k, n } = dims;
    let nc = DOT_NC.div_ceil(K::DC) * K::DC;
    for_each_task(n.div_ceil(nc), m * k * n, |task| {
        let j0 = task * nc;
        let j1 = (j0 + nc).min(n);
        for j in (j0..j1).step_by(K::DC) {
            for i in (0..m).step_by(K::DR) {
                let tile = DotTile {
                    a: a[i * k..].as_ptr(),
                    lda: k,
                    bt: bt[j * k..].as_ptr(),
                    ldb: k,
                    c: out.at(i * n + j),
                    ldc: n,
                    k,
                    rows: K::DR.min(m - i),
                    cols: K::DC.min(j1 - j),
                };
                // SAFETY: A rows i..i+rows (≤ m) and Bᵀ rows j..j+cols (≤ n) are full k-long
                // rows inside `a` and `bt`; the C tile is inside this task's columns; rows ≤
                // DR, cols ≤ DC; the backend's CPU support was checked by `matmul_general`.
                unsafe { K::dot_tile(&tile) };
            }
        }
    });
}

#[cfg(test)]
mod tests;
