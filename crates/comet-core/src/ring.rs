//! Wrapping arithmetic on Z_2^64 and on its sub-rings Z_2^k (k ≤ 64).

/// An element of Z_2^64; all arithmetic on it wraps.
pub type Ring = u64;

/// The mask selecting the low `bits` bits (`bits` in 1..=64).
#[inline]
pub fn mask_bits(bits: u32) -> u64 {
    debug_assert!((1..=64).contains(&bits));
    if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Sign-extends the low `bits` bits of `x` to a full 64-bit two's-complement value.
#[inline]
pub fn sign_extend(x: u64, bits: u32) -> u64 {
    let shift = 64 - bits;
    (((x << shift) as i64) >> shift) as u64
}

/// Element-wise `a + b` (wrapping).
pub fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    assert_eq!(a.len(), b.len(), "ring::add length mismatch");
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

/// Element-wise `a - b` (wrapping).
pub fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    assert_eq!(a.len(), b.len(), "ring::sub length mismatch");
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}

/// Element-wise `a * b` (wrapping).
pub fn mul(a: &[u64], b: &[u64]) -> Vec<u64> {
    assert_eq!(a.len(), b.len(), "ring::mul length mismatch");
    a.iter().zip(b).map(|(x, y)| x.wrapping_mul(*y)).collect()
}

/// In place `a += b` (wrapping).
pub fn add_assign(a: &mut [u64], b: &[u64]) {
    assert_eq!(a.len(), b.len(), "ring::add_assign length mismatch");
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_add(*y);
    }
}

/// In place `a -= b` (wrapping).
pub fn sub_assign(a: &mut [u64], b: &[u64]) {
    assert_eq!(a.len(), b.len(), "ring::sub_assign length mismatch");
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_sub(*y);
    }
}

/// Element-wise negation (wrapping).
pub fn neg(a: &[u64]) -> Vec<u64> {
    a.iter().map(|x| x.wrapping_neg()).collect()
}

/// Multiplies every element by the public constant `c` (wrapping).
pub fn scale(a: &[u64], c: u64) -> Vec<u64> {
    a.iter().map(|x| x.wrapping_mul(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_extension_matches_i64() {
        assert_eq!(sign_extend(0xff, 8), u64::MAX);
        assert_eq!(sign_extend(0x7f, 8), 0x7f);
        assert_eq!(sign_extend(5, 64), 5);
        assert_eq!(mask_bits(12), 0xfff);
        assert_eq!(mask_bits(64), u64::MAX);
    }

    #[test]
    fn vector_ops_wrap() {
        let a = [u64::MAX, 3];
        let b = [2, 5];
        assert_eq!(add(&a, &b), vec![1, 8]);
        assert_eq!(sub(&b, &a), vec![3, 2]);
        assert_eq!(mul(&a, &b), vec![u64::MAX - 1, 15]);
        assert_eq!(neg(&[1]), vec![u64::MAX]);
        assert_eq!(scale(&[3], 7), vec![21]);
    }
}
