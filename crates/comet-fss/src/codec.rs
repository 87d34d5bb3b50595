//! Byte and bit packing used by every key's `to_bytes` / `from_bytes`.
//!
//! Keys are a tag byte, a few parameter bytes and then a bit-packed body (seeds 127 bits,
//! control bits 1 bit, ring words `out_bits` bits), padded with zero bits to a whole byte.

use crate::error::FssError;

/// Appends values of arbitrary bit width (LSB first) to a byte vector.
pub(crate) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    filled: u32,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            filled: 0,
        }
    }

    /// Writes the low `bits` bits of `value` (`bits` ≤ 64; higher bits must be zero).
    pub(crate) fn put(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 64);
        debug_assert!(bits == 64 || value >> bits == 0);
        let mut value = value;
        let mut bits = bits;
        while bits > 0 {
            // `filled` < 8 here, so a 32-bit chunk always fits in the accumulator.
            let take = bits.min(32);
            let part = value & ((1u64 << take) - 1);
            self.acc |= part << self.filled;
            self.filled += take;
            value >>= take;
            bits -= take;
            while self.filled >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.filled -= 8;
            }
        }
    }

    /// Writes the low `bits` bits (≤ 128) of a 128-bit value.
    pub(crate) fn put_u128(&mut self, value: u128, bits: u32) {
        let low = bits.min(64);
        self.put(value as u64 & mask64(low), low);
        if bits > 64 {
            self.put((value >> 64) as u64 & mask64(bits - 64), bits - 64);
        }
    }

    /// Writes one bit.
    pub(crate) fn put_bit(&mut self, bit: bool) {
        self.put(bit as u64, 1);
    }

    /// Pads with zero bits to a whole byte.
    pub(crate) fn finish(mut self) {
        if self.filled > 0 {
            self.out.push(self.acc as u8);
            self.acc = 0;
            self.filled = 0;
        }
    }
}

/// Reads bit-packed values written by [`BitWriter`] from a byte slice of known length.
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    bit_pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader over exactly the bytes of one bit-packed body.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, bit_pos: 0 }
    }

    /// Reads `bits` (≤ 64) bits. The caller has checked the body length, so running out of
    /// bits is an internal error reported as truncation rather than a panic.
    pub(crate) fn get(&mut self, bits: u32, what: &'static str) -> Result<u64, FssError> {
        let end = self.bit_pos + bits as usize;
        if end > self.bytes.len() * 8 {
            return Err(FssError::Truncated {
                what,
                needed: end.div_ceil(8) - self.bytes.len(),
                available: 0,
            });
        }
        let mut value = 0u64;
        let mut got = 0u32;
        while got < bits {
            let byte = self.bytes[self.bit_pos / 8] as u64;
            let offset = (self.bit_pos % 8) as u32;
            let take = (8 - offset).min(bits - got);
            let part = (byte >> offset) & ((1u64 << take) - 1);
            value |= part << got;
            got += take;
            self.bit_pos += take as usize;
        }
        Ok(value)
    }

    /// Reads `bits` (≤ 128) bits into a 128-bit value.
    pub(crate) fn get_u128(&mut self, bits: u32, what: &'static str) -> Result<u128, FssError> {
        let low = self.get(bits.min(64), what)? as u128;
        let high = if bits > 64 {
            self.get(bits - 64, what)? as u128
        } else {
            0
        };
        Ok(low | (high << 64))
    }

    /// Reads one bit.
    pub(crate) fn get_bit(&mut self, what: &'static str) -> Result<bool, FssError> {
        Ok(self.get(1, what)? == 1)
    }

    /// Checks that every remaining bit (the byte padding) is zero.
    pub(crate) fn finish(self, what: &'static str) -> Result<(), FssError> {
        let total = self.bytes.len() * 8;
        if total - self.bit_pos >= 8 {
            return Err(FssError::TrailingBytes {
                what,
                count: (total - self.bit_pos) / 8,
            });
        }
        if self.bit_pos < total {
            let last = self.bytes[self.bytes.len() - 1];
            if last >> (self.bit_pos % 8) != 0 {
                return Err(FssError::NonZeroPadding { what });
            }
        }
        Ok(())
    }
}

/// A cursor over the bytes of a serialized key that reports truncation as an error.
pub(crate) struct ByteReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FssError> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(FssError::Truncated {
                what,
                needed: n - available,
                available,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes one byte.
    pub(crate) fn byte(&mut self, what: &'static str) -> Result<u8, FssError> {
        Ok(self.take(1, what)?[0])
    }

    /// Takes a little-endian u64.
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, FssError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Checks the tag byte of a key kind.
    pub(crate) fn tag(&mut self, expected: u8, what: &'static str) -> Result<(), FssError> {
        let found = self.byte(what)?;
        if found != expected {
            return Err(FssError::WrongTag {
                what,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Fails if bytes remain after a complete key.
    pub(crate) fn finish(self, what: &'static str) -> Result<(), FssError> {
        let count = self.bytes.len() - self.pos;
        if count != 0 {
            return Err(FssError::TrailingBytes { what, count });
        }
        Ok(())
    }
}

/// The mask of the low `bits` bits (`bits` ≤ 64).
pub(crate) fn mask64(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_packing_round_trips_mixed_widths() {
        let widths = [1u32, 7, 64, 3, 127, 2, 33, 128, 5];
        let values: Vec<u128> = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let v = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834u128.rotate_left(i as u32 * 13);
                if w == 128 {
                    v
                } else {
                    v & ((1u128 << w) - 1)
                }
            })
            .collect();
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        for (&v, &bits) in values.iter().zip(&widths) {
            w.put_u128(v, bits);
        }
        w.finish();
        let total: u32 = widths.iter().sum();
        assert_eq!(out.len(), total.div_ceil(8) as usize);
        let mut r = BitReader::new(&out);
        for (&v, &bits) in values.iter().zip(&widths) {
            assert_eq!(r.get_u128(bits, "t").unwrap(), v);
        }
        r.finish("t").unwrap();
    }

    #[test]
    fn reader_reports_padding_and_truncation() {
        let mut r = BitReader::new(&[0b1000_0001]);
        assert!(r.get_bit("t").unwrap());
        assert_eq!(r.finish("t"), Err(FssError::NonZeroPadding { what: "t" }));
        let mut r = BitReader::new(&[0xff]);
        assert!(r.get(9, "t").is_err());
        let mut b = ByteReader::new(&[1, 2]);
        assert!(b.u64("t").is_err());
    }
}
