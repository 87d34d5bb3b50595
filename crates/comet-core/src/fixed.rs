//! Fixed-point encoding of reals into Z_2^64: `x ↦ round(x · 2^f)` in two's complement.

/// Number of fractional bits used when nothing else is configured (DESIGN.md §3).
pub const DEFAULT_FRAC_BITS: u32 = 12;

/// A fixed-point format with `frac_bits` fractional bits over Z_2^64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPoint {
    /// Number of fractional bits f; one unit in the last place is 2^-f.
    pub frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        Self::new(DEFAULT_FRAC_BITS)
    }
}

impl FixedPoint {
    /// A format with `frac_bits` fractional bits (at most 40, so products still fit).
    pub fn new(frac_bits: u32) -> Self {
        assert!(
            frac_bits <= 40,
            "fixed point supports at most 40 fractional bits"
        );
        Self { frac_bits }
    }

    /// The scale 2^f as a float.
    pub fn scale(&self) -> f64 {
        (1u64 << self.frac_bits) as f64
    }

    /// The ring element 1.0.
    pub fn one(&self) -> u64 {
        1u64 << self.frac_bits
    }

    /// Encodes a real by rounding to the nearest multiple of 2^-f.
    pub fn encode(&self, x: f64) -> u64 {
        ((x * self.scale()).round() as i64) as u64
    }

    /// Decodes a ring element, read as a signed integer, into a real.
    pub fn decode(&self, x: u64) -> f64 {
        (x as i64) as f64 / self.scale()
    }

    /// Encodes a slice of reals.
    pub fn encode_vec(&self, xs: &[f64]) -> Vec<u64> {
        xs.iter().map(|&x| self.encode(x)).collect()
    }

    /// Encodes a slice of f32 values.
    pub fn encode_f32(&self, xs: &[f32]) -> Vec<u64> {
        xs.iter().map(|&x| self.encode(x as f64)).collect()
    }

    /// Decodes a slice of ring elements.
    pub fn decode_vec(&self, xs: &[u64]) -> Vec<f64> {
        xs.iter().map(|&x| self.decode(x)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_half_ulp() {
        let fp = FixedPoint::default();
        for &x in &[0.0, 1.0, -1.0, 3.25, -22550.25, 1e-4, -0.5] {
            let back = fp.decode(fp.encode(x));
            assert!((back - x).abs() <= 0.5 / fp.scale(), "{x} -> {back}");
        }
        assert_eq!(fp.encode(-1.0), (-4096i64) as u64);
        assert_eq!(fp.one(), 4096);
    }
}
