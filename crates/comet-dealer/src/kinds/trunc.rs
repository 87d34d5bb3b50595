//! Masks for one-round truncation by public shifts (`comet_protocols::trunc`).
//!
//! For every element with shift `s` and ring width `L` (3 ≤ L ≤ 64, 1 ≤ s ≤ L − 2) the dealer
//! draws a uniform `r ∈ Z_2^64` (the protocol uses `r_L = r mod 2^L`) and shares, additively
//! over Z_2^64:
//!
//! * `r` itself (both halves are seeds),
//! * `r_high = r_L >> s` (P0: seed, P1: an explicit word),
//! * `r_msb = r_L >> (L − 1)` (P0: seed, P1: explicit, only its low `64 − L + s` bits: the
//!   protocol uses `2^(L−s)·r_msb`, which depends on `r_msb mod 2^(64−L+s)` only),
//! * for the exact variant, a DCF key pair on `s`-bit inputs for `1{v < r mod 2^s}` with
//!   payload 1 in Z_2^64 (both halves are keys, about `24·s + 27` bytes each).
//!
//! The servers open `x + 2^62 + r` and finish locally (see `comet_protocols::trunc`).

use super::{check_size, expand, get_ring, get_seed, put_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::{ring, PartyId, Prg};
use comet_fss::{dcf_gen, DcfKey};
use comet_net::codec::{Reader, Writer};
use rayon::prelude::*;

/// Keys generated per parallel task (and per derived PRG seed).
const KEY_BLOCK: usize = 1024;

/// Largest supported shift: the protocol offsets inputs by 2^62, which must stay a multiple
/// of 2^s.
pub const MAX_SHIFT: u32 = 62;

/// Narrowest supported ring width `L` of a truncation (the offset `2^(L−2)` needs `s ≤ L − 2`).
pub const MIN_WIDTH: u32 = 3;

/// One block of elements truncated by the same shift in the same ring width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TruncSegment {
    /// Number of elements.
    pub len: usize,
    /// Shift `s` in bits, `1..=width − 2`.
    pub shift: u32,
    /// Ring width `L` of the masked opening (inputs satisfy |x| < 2^(L−2)), 3..=64; 64 is
    /// the full-width truncation.
    pub width: u32,
}

impl TruncSegment {
    /// A full-width (64-bit) segment: inputs anywhere in `[−2^62, 2^62)`.
    pub fn full(len: usize, shift: u32) -> Self {
        Self {
            len,
            shift,
            width: 64,
        }
    }

    /// Bits of P1's explicit share of `r_msb` that matter (`2^(L−s)·r_msb` mod 2^64).
    fn msb_bits(&self) -> u32 {
        (64 - self.width + self.shift).min(64)
    }
}

/// Public parameters: the blocks of one truncation round and the variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncParams {
    /// `true`: exact floor (needs a DCF key per element); `false`: floor or floor + 1.
    pub exact: bool,
    /// The blocks, in the order the protocol lays them out.
    pub segments: Vec<TruncSegment>,
}

impl TruncParams {
    /// Total number of elements over all segments.
    pub fn total_len(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn validate(&self) -> Result<(), DealerError> {
        if self.segments.is_empty() || self.segments.len() > 1 << 16 {
            return Err(DealerError::InvalidParams(format!(
                "truncation with {} segments (allowed 1..=65536)",
                self.segments.len()
            )));
        }
        if let Some(bad) = self
            .segments
            .iter()
            .find(|s| !(MIN_WIDTH..=64).contains(&s.width) || !(1..=s.width - 2).contains(&s.shift))
        {
            return Err(DealerError::InvalidParams(format!(
                "truncation by {} bits in a {}-bit ring (allowed: width {MIN_WIDTH}..=64, shift 1..=width − 2)",
                bad.shift, bad.width
            )));
        }
        let total = self
            .segments
            .iter()
            .try_fold(0usize, |acc, s| acc.checked_add(s.len));
        check_size("truncated elements", total.unwrap_or(usize::MAX))
    }

    /// The shift of every element, in layout order.
    fn shifts(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.shift, s.len))
    }

    /// The (shift, width) of every element, in layout order.
    fn shifts_widths(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.segments
            .iter()
            .flat_map(|s| std::iter::repeat_n((s.shift, s.width), s.len))
    }
}

/// A server's half of a truncation mask.
#[derive(Clone, Debug)]
pub struct TruncMask {
    /// Share of `r` (the protocol uses `r mod 2^L`, reducing each share).
    pub r: Vec<u64>,
    /// Share of `(r mod 2^L) >> s`.
    pub r_high: Vec<u64>,
    /// Share of `msb_L(r)` (bit `L − 1`); only valid modulo `2^(64−L+s)` (enough for
    /// `2^(L−s)·msb_L(r)`).
    pub r_msb: Vec<u64>,
    /// DCF keys for `1{v < r mod 2^s}` (exact variant only).
    pub dcf: Option<Vec<DcfKey>>,
}

impl CorrelationKind for TruncMask {
    type Params = TruncParams;
    const TAG: u8 = 10;
    const NAME: &'static str = "truncation mask";

    fn encode_params(p: &TruncParams, w: &mut Writer) {
        w.u8(p.exact as u8).u32(p.segments.len() as u32);
        for s in &p.segments {
            w.u32(s.len as u32).u8(s.shift as u8).u8(s.width as u8);
        }
    }

    fn decode_params(r: &mut Reader) -> Result<TruncParams, DealerError> {
        let exact = match r.u8()? {
            0 => false,
            1 => true,
            other => {
                return Err(DealerError::InvalidParams(format!(
                    "truncation variant {other}"
                )))
            }
        };
        let count = r.u32()? as usize;
        if count > 1 << 16 {
            return Err(DealerError::InvalidParams(format!(
                "truncation with {count} segments"
            )));
        }
        let mut segments = Vec::with_capacity(count);
        for _ in 0..count {
            segments.push(TruncSegment {
                len: r.u32()? as usize,
                shift: r.u8()? as u32,
                width: r.u8()? as u32,
            });
        }
        let params = TruncParams { exact, segments };
        params.validate()?;
        Ok(params)
    }

    fn generate(p: &TruncParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        p.validate()?;
        let n = p.total_len();
        let seeds: Vec<_> = (0..4).map(|_| ctx.prg.next_seed()).collect();
        let r = ring::add(&expand(&seeds[0], n), &expand(&seeds[1], n));
        let high0 = expand(&seeds[2], n);
        let msb0 = expand(&seeds[3], n);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_seed(&mut w0, &seeds[2]);
        put_seed(&mut w0, &seeds[3]);
        put_seed(&mut w1, &seeds[1]);
        let high1: Vec<u64> = r
            .iter()
            .zip(p.shifts_widths())
            .zip(&high0)
            .map(|((v, (s, l)), h0)| ((v & ring::mask_bits(l)) >> s).wrapping_sub(*h0))
            .collect();
        w1.ring(&high1, 64);
        let mut start = 0;
        for seg in &p.segments {
            let range = start..start + seg.len;
            let msb1: Vec<u64> = r[range.clone()]
                .iter()
                .zip(&msb0[range])
                .map(|(v, m0)| ((v >> (seg.width - 1)) & 1).wrapping_sub(*m0))
                .collect();
            w1.ring(&msb1, seg.msb_bits());
            start += seg.len;
        }
        if p.exact {
            let (keys0, keys1) = comparison_keys(&r, p, ctx.prg);
            write_keys(&mut w0, p, &keys0);
            write_keys(&mut w1, p, &keys1);
        }
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &TruncParams, bytes: &[u8]) -> Result<Self, DealerError> {
        p.validate()?;
        let n = p.total_len();
        let mut rd = Reader::new(bytes);
        let r = expand(&get_seed(&mut rd)?, n);
        let (r_high, r_msb) = match party {
            PartyId::P0 => (
                expand(&get_seed(&mut rd)?, n),
                expand(&get_seed(&mut rd)?, n),
            ),
            PartyId::P1 => {
                let high = get_ring(&mut rd, n, Self::NAME)?;
                let mut msb = Vec::with_capacity(n);
                for seg in &p.segments {
                    msb.extend(get_ring(&mut rd, seg.len, Self::NAME)?);
                }
                (high, msb)
            }
        };
        let dcf = if p.exact {
            Some(read_keys(&mut rd, p)?)
        } else {
            None
        };
        rd.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        Ok(TruncMask {
            r,
            r_high,
            r_msb,
            dcf,
        })
    }
}

/// DCF key pairs for `1{v < r mod 2^s}` with payload 1 over Z_2^64, one per element.
fn comparison_keys(r: &[u64], p: &TruncParams, prg: &mut Prg) -> (Vec<DcfKey>, Vec<DcfKey>) {
    let shifts: Vec<u32> = p.shifts().collect();
    // Each block of keys draws from its own PRG seeded by the dealer's PRG, so generation
    // runs in parallel and stays deterministic for a given dealer seed.
    let seeds: Vec<_> = (0..r.len().div_ceil(KEY_BLOCK))
        .map(|_| prg.next_seed())
        .collect();
    let blocks: Vec<(Vec<DcfKey>, Vec<DcfKey>)> = r
        .par_chunks(KEY_BLOCK)
        .zip(shifts.par_chunks(KEY_BLOCK))
        .zip(seeds.par_iter())
        .map(|((r, shifts), seed)| {
            let mut prg = Prg::from_seed(*seed);
            r.iter()
                .zip(shifts)
                .map(|(v, &s)| dcf_gen(v & ring::mask_bits(s), 1, s, 64, &mut prg))
                .unzip()
        })
        .collect();
    let (mut keys0, mut keys1) = (Vec::with_capacity(r.len()), Vec::with_capacity(r.len()));
    for (k0, k1) in blocks {
        keys0.extend(k0);
        keys1.extend(k1);
    }
    (keys0, keys1)
}

/// Writes the keys segment by segment: the common encoded length of the segment's keys
/// (they share `s`), then the keys back to back.
fn write_keys(w: &mut Writer, p: &TruncParams, keys: &[DcfKey]) {
    let mut start = 0;
    for seg in &p.segments {
        let segment = &keys[start..start + seg.len];
        let key_len = segment.first().map_or(0, DcfKey::encoded_len);
        let blob: Vec<u8> = segment.par_iter().flat_map_iter(DcfKey::to_bytes).collect();
        w.u32(key_len as u32).bytes(&blob);
        start += seg.len;
    }
}

/// Reads the keys written by [`write_keys`], checking each one's input and payload width.
fn read_keys(r: &mut Reader, p: &TruncParams) -> Result<Vec<DcfKey>, DealerError> {
    let malformed = |e: &dyn std::fmt::Display| DealerError::malformed(TruncMask::NAME, e);
    let mut keys = Vec::with_capacity(p.total_len());
    for seg in &p.segments {
        let key_len = r.u32().map_err(|e| malformed(&e))? as usize;
        let blob = r.bytes().map_err(|e| malformed(&e))?;
        if key_len.checked_mul(seg.len) != Some(blob.len()) || (seg.len > 0 && key_len == 0) {
            return Err(malformed(&format!(
                "{} bytes of keys for {} keys of {key_len} bytes",
                blob.len(),
                seg.len
            )));
        }
        let decoded: Vec<DcfKey> = blob
            .par_chunks(key_len.max(1))
            .map(|chunk| {
                let key = DcfKey::from_bytes(chunk).map_err(|e| malformed(&e))?;
                if key.n_bits() != seg.shift || key.out_bits() != 64 {
                    return Err(malformed(&format!(
                        "DCF key on {} bits with {}-bit payload, expected {} and 64",
                        key.n_bits(),
                        key.out_bits(),
                        seg.shift
                    )));
                }
                Ok(key)
            })
            .collect::<Result<_, _>>()?;
        keys.extend(decoded);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};
    use comet_fss::dcf_eval;

    fn halves(p: &TruncParams) -> (TruncMask, TruncMask, [usize; 2]) {
        let mut dealer = Dealer::with_prg(Prg::from_seed([3; 16]));
        let request = encode_request::<TruncMask>(p);
        let b0 = dealer.serve(PartyId::P0, &request).unwrap();
        let b1 = dealer.serve(PartyId::P1, &request).unwrap();
        let h0 = TruncMask::decode(PartyId::P0, p, &b0).unwrap();
        let h1 = TruncMask::decode(PartyId::P1, p, &b1).unwrap();
        (h0, h1, [b0.len(), b1.len()])
    }

    #[test]
    fn halves_share_the_mask_its_high_part_msb_and_comparison() {
        let segments = vec![
            TruncSegment::full(40, 12),
            TruncSegment::full(0, 5),
            TruncSegment::full(25, 62),
            TruncSegment {
                len: 30,
                shift: 26,
                width: 48,
            },
            TruncSegment {
                len: 20,
                shift: 1,
                width: 3,
            },
        ];
        let p = TruncParams {
            exact: true,
            segments,
        };
        let (h0, h1, _) = halves(&p);
        let keys = (h0.dcf.as_ref().unwrap(), h1.dcf.as_ref().unwrap());
        let mut probe = Prg::from_seed([4; 16]);
        for (i, (s, l)) in p.shifts_widths().enumerate() {
            let r = h0.r[i].wrapping_add(h1.r[i]);
            let r_l = r & ring::mask_bits(l);
            assert_eq!(h0.r_high[i].wrapping_add(h1.r_high[i]), r_l >> s);
            let valid = ring::mask_bits((64 - l + s).min(64));
            assert_eq!(
                h0.r_msb[i].wrapping_add(h1.r_msb[i]) & valid,
                (r_l >> (l - 1)) & valid
            );
            let low = r & ring::mask_bits(s);
            for v in [
                0,
                low.saturating_sub(1),
                low,
                low + 1,
                probe.next_u64() & ring::mask_bits(s),
            ] {
                let w = dcf_eval(PartyId::P0, &keys.0[i], v).wrapping_add(dcf_eval(
                    PartyId::P1,
                    &keys.1[i],
                    v,
                ));
                assert_eq!(
                    w,
                    u64::from(v & ring::mask_bits(s) < low),
                    "v = {v}, r_l = {low}"
                );
            }
        }
    }

    #[test]
    fn faithful_halves_are_small_and_carry_no_keys() {
        let p = TruncParams {
            exact: false,
            segments: vec![TruncSegment::full(1000, 12)],
        };
        let (h0, h1, sizes) = halves(&p);
        assert!(h0.dcf.is_none() && h1.dcf.is_none());
        // P0: three seeds. P1: one seed, r_high (8 bytes each), msb (2 bytes each), headers.
        assert_eq!(sizes[0], 48);
        assert_eq!(sizes[1], 16 + 5 + 8000 + 5 + 2000);
    }

    #[test]
    fn bad_parameters_and_cut_halves_are_errors() {
        let mut dealer = Dealer::new();
        for segments in [
            vec![],
            vec![TruncSegment::full(4, 0)],
            vec![TruncSegment::full(4, 63)],
            vec![TruncSegment::full(0, 3)],
            vec![TruncSegment {
                len: 4,
                shift: 31,
                width: 32,
            }],
            vec![TruncSegment {
                len: 4,
                shift: 1,
                width: 2,
            }],
            vec![TruncSegment {
                len: 4,
                shift: 1,
                width: 65,
            }],
        ] {
            let request = encode_request::<TruncMask>(&TruncParams {
                exact: true,
                segments,
            });
            assert!(
                matches!(dealer.serve(PartyId::P0, &request), Err(DealerError::Malformed(m)) if m.contains("invalid correlation parameters"))
            );
        }
        let p = TruncParams {
            exact: true,
            segments: vec![TruncSegment::full(3, 12)],
        };
        let half = dealer
            .serve(PartyId::P1, &encode_request::<TruncMask>(&p))
            .unwrap();
        for cut in [0, 10, half.len() / 2, half.len() - 1] {
            assert!(
                TruncMask::decode(PartyId::P1, &p, &half[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let wrong_shift = TruncParams {
            exact: true,
            segments: vec![TruncSegment::full(3, 13)],
        };
        assert!(TruncMask::decode(PartyId::P1, &wrong_shift, &half).is_err());
    }
}
