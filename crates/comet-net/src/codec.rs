//! Compact encodings of ring elements and simple structured messages.

use crate::NetError;

/// Bytes one element of Z_2^bits takes on the wire when `bits > 1` (byte-aligned).
pub fn bytes_per_element(bits: u32) -> usize {
    bits.div_ceil(8) as usize
}

/// Wire size of `n` elements of Z_2^bits (bit-packed for `bits == 1`).
pub fn packed_len(n: usize, bits: u32) -> usize {
    if bits == 1 {
        n.div_ceil(8)
    } else {
        n * bytes_per_element(bits)
    }
}

/// Packs the low `bits` bits of each value: 1-bit values eight to a byte, wider values in
/// `ceil(bits/8)` little-endian bytes each.
pub fn pack_ring(values: &[u64], bits: u32) -> Vec<u8> {
    assert!((1..=64).contains(&bits), "ring width must be 1..=64 bits");
    let mut out = vec![0u8; packed_len(values.len(), bits)];
    if bits == 1 {
        for (i, v) in values.iter().enumerate() {
            out[i / 8] |= ((v & 1) as u8) << (i % 8);
        }
    } else {
        let w = bytes_per_element(bits);
        for (chunk, v) in out.chunks_exact_mut(w).zip(values) {
            chunk.copy_from_slice(&v.to_le_bytes()[..w]);
        }
        if !bits.is_multiple_of(8) {
            let top = (1u8 << (bits % 8)) - 1;
            for chunk in out.chunks_exact_mut(w) {
                chunk[w - 1] &= top;
            }
        }
    }
    out
}

/// Inverse of [`pack_ring`]; fails if `bytes` does not hold exactly `n` elements.
pub fn unpack_ring(bytes: &[u8], n: usize, bits: u32) -> Result<Vec<u64>, NetError> {
    assert!((1..=64).contains(&bits), "ring width must be 1..=64 bits");
    let expected = packed_len(n, bits);
    if bytes.len() != expected {
        return Err(NetError::Malformed(format!(
            "expected {n} elements of {bits} bits ({expected} bytes), got {} bytes",
            bytes.len()
        )));
    }
    if bits == 1 {
        return Ok((0..n)
            .map(|i| ((bytes[i / 8] >> (i % 8)) & 1) as u64)
            .collect());
    }
    let w = bytes_per_element(bits);
    Ok(bytes
        .chunks_exact(w)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..w].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect())
}

/// Appends primitive values to a byte buffer (little-endian).
#[derive(Default, Debug)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes with a u32 length prefix.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
    /// Appends a length-prefixed vector of ring elements packed to `bits` bits.
    pub fn ring(&mut self, v: &[u64], bits: u32) -> &mut Self {
        self.u32(v.len() as u32);
        self.u8(bits as u8);
        self.buf.extend_from_slice(&pack_ring(v, bits));
        self
    }
    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads what a [`Writer`] wrote; every read checks the remaining length.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], NetError> {
        if self.buf.len() < n {
            return Err(NetError::Malformed(format!(
                "truncated message: needed {n} bytes for {what}, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, NetError> {
        Ok(self.take(1, "u8")?[0])
    }
    /// Reads a u32.
    pub fn u32(&mut self) -> Result<u32, NetError> {
        Ok(u32::from_le_bytes(
            self.take(4, "u32")?.try_into().expect("4 bytes"),
        ))
    }
    /// Reads a u64.
    pub fn u64(&mut self) -> Result<u64, NetError> {
        Ok(u64::from_le_bytes(
            self.take(8, "u64")?.try_into().expect("8 bytes"),
        ))
    }
    /// Reads length-prefixed raw bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], NetError> {
        let n = self.u32()? as usize;
        self.take(n, "byte string")
    }
    /// Reads a length-prefixed packed ring vector.
    pub fn ring(&mut self) -> Result<Vec<u64>, NetError> {
        let n = self.u32()? as usize;
        let bits = self.u8()? as u32;
        if !(1..=64).contains(&bits) {
            return Err(NetError::Malformed(format!("invalid ring width {bits}")));
        }
        let raw = self.take(packed_len(n, bits), "ring vector")?;
        unpack_ring(raw, n, bits)
    }
    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), NetError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(NetError::Malformed(format!(
                "{} trailing bytes",
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_round_trip(values in proptest::collection::vec(any::<u64>(), 0..40), bits in 1u32..=64) {
            let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
            let reduced: Vec<u64> = values.iter().map(|v| v & mask).collect();
            let packed = pack_ring(&values, bits);
            prop_assert_eq!(packed.len(), packed_len(values.len(), bits));
            prop_assert_eq!(unpack_ring(&packed, values.len(), bits).unwrap(), reduced);
        }
    }

    #[test]
    fn reader_rejects_truncation() {
        let mut w = Writer::new();
        w.u64(7).ring(&[1, 2, 3], 12).bytes(b"ab");
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.ring().unwrap(), vec![1, 2, 3]);
        assert_eq!(r.bytes().unwrap(), b"ab");
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let res = r
                .u64()
                .and_then(|_| r.ring())
                .and_then(|_| r.bytes().map(|_| ()));
            assert!(res.is_err(), "cut at {cut} must fail");
        }
        assert!(unpack_ring(&[0u8; 3], 2, 12).is_err());
    }
}
