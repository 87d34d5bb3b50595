//! Correlations of the FSS comparison gates (tags 30–32, 34): DReLU keys, select masks,
//! one-round ReLU keys and compact (DPF-based, two-round) ReLU keys. The protocols that consume them live in `comet_protocols::compare`.
//!
//! Every kind serves a batch of `n` independent elements. Input masks whose two shares may both
//! be random come from two PRG seeds (one per server); shares of values the dealer derives
//! (msb(r), products) are a seed for P0 and explicit ring words for P1. FSS keys are carried
//! as one block of equally long serialized keys (`comet_fss` `to_bytes`), decoded in parallel;
//! every structural defect (truncation, wrong widths, trailing bytes) is a
//! [`DealerError::Malformed`].

use super::{check_size, expand, get_ring, get_seed, put_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::ring::mask_bits;
use comet_core::{PartyId, Prg, Seed};
use comet_fss::{dcf_gen, dcf_gen_vec, dpf_gen, DcfKey, DpfKey, FssError};
use comet_net::codec::{Reader, Writer};
use rayon::prelude::*;

/// A serializable FSS key, so that batches of keys share one encoder and decoder.
pub(crate) trait FssKeyBytes: Sized + Send + Sync {
    /// The key's bytes (`comet_fss` format).
    fn key_bytes(&self) -> Vec<u8>;
    /// Parses one key; structural corruption is an error.
    fn parse_key(bytes: &[u8]) -> Result<Self, FssError>;
}

impl FssKeyBytes for DcfKey<1> {
    fn key_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn parse_key(bytes: &[u8]) -> Result<Self, FssError> {
        DcfKey::<1>::from_bytes(bytes)
    }
}

impl FssKeyBytes for DcfKey<2> {
    fn key_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn parse_key(bytes: &[u8]) -> Result<Self, FssError> {
        DcfKey::<2>::from_bytes(bytes)
    }
}

impl FssKeyBytes for DpfKey {
    fn key_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn parse_key(bytes: &[u8]) -> Result<Self, FssError> {
        DpfKey::from_bytes(bytes)
    }
}

/// Appends a batch of keys of equal encoded length: the length (u32), then all key bytes as
/// one length-prefixed block.
pub(crate) fn put_keys<K: FssKeyBytes>(w: &mut Writer, keys: &[K]) {
    let encoded: Vec<Vec<u8>> = keys.par_iter().map(K::key_bytes).collect();
    let len = encoded.first().map_or(0, Vec::len);
    debug_assert!(
        encoded.iter().all(|k| k.len() == len),
        "keys of one batch have equal length"
    );
    w.u32(len as u32);
    w.bytes(&encoded.concat());
}

/// Reads `n` keys written by [`put_keys`], in parallel.
pub(crate) fn get_keys<K: FssKeyBytes>(
    r: &mut Reader,
    n: usize,
    what: &str,
) -> Result<Vec<K>, DealerError> {
    let len = r.u32().map_err(|e| DealerError::malformed(what, e))? as usize;
    let block = r.bytes().map_err(|e| DealerError::malformed(what, e))?;
    if len == 0 || n.checked_mul(len) != Some(block.len()) {
        return Err(DealerError::Malformed(format!(
            "{what}: key block of {} bytes does not hold {n} keys of {len} bytes",
            block.len()
        )));
    }
    block
        .par_chunks_exact(len)
        .map(|c| K::parse_key(c).map_err(|e| DealerError::malformed(what, e)))
        .collect()
}

/// Generates `n` key pairs in parallel: the dealer's PRG seeds one child PRG per chunk, so the
/// result depends only on the dealer's PRG state, not on the thread schedule.
pub(crate) fn gen_key_pairs<K: Send>(
    n: usize,
    prg: &mut Prg,
    gen: impl Fn(usize, &mut Prg) -> (K, K) + Sync,
) -> (Vec<K>, Vec<K>) {
    const CHUNK: usize = 64;
    let seeds: Vec<Seed> = (0..n.div_ceil(CHUNK)).map(|_| prg.next_seed()).collect();
    let chunks: Vec<Vec<(K, K)>> = seeds
        .par_iter()
        .enumerate()
        .map(|(c, seed)| {
            let mut child = Prg::from_seed(*seed);
            (c * CHUNK..n.min((c + 1) * CHUNK))
                .map(|i| gen(i, &mut child))
                .collect()
        })
        .collect();
    chunks.into_iter().flatten().unzip()
}

/// Checks the width of a signed value fed to a sign test (2..=64 bits: one bit for the sign,
/// at least one compared bit).
pub(crate) fn check_sign_bits(what: &str, bits: u32) -> Result<(), DealerError> {
    if !(2..=64).contains(&bits) {
        return Err(DealerError::InvalidParams(format!(
            "{what}: width {bits} is outside 2..=64 bits"
        )));
    }
    Ok(())
}

fn finish_reader(r: Reader, what: &str) -> Result<(), DealerError> {
    r.finish().map_err(|e| DealerError::malformed(what, e))
}

/// Public parameters of a batch of sign tests: `n` elements, signed `bits`-bit inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignParams {
    /// Number of elements.
    pub n: usize,
    /// Width of the signed input (2..=64); the sign is bit `bits − 1`.
    pub bits: u32,
}

fn encode_sign_params(p: &SignParams, w: &mut Writer) {
    w.u32(p.n as u32);
    w.u8(p.bits as u8);
}

fn decode_sign_params(r: &mut Reader) -> Result<SignParams, DealerError> {
    let n = r.u32()? as usize;
    let bits = r.u8()? as u32;
    Ok(SignParams { n, bits })
}

/// A server's half of `n` DReLU keys (tag 30): shares of 1{x ≥ 0} for signed `bits`-bit x
/// from the opened x̂ = x + r mod 2^bits, by the MSB identity
/// `msb(x) = msb(x̂) ⊕ msb(r) ⊕ 1{x̂' < r'}` (fss-notes §2, primes = low bits − 1 bits).
#[derive(Clone, Debug)]
pub struct DreluKeys {
    /// Width of the signed input.
    pub bits: u32,
    /// Share of the input mask r (mod 2^bits).
    pub mask: Vec<u64>,
    /// Additive Z_2^64 share of q = msb(r).
    pub msb: Vec<u64>,
    /// DCF keys on `bits − 1` bits for 1{x̂' < r'} with payload 1 − 2q (64-bit words).
    pub cmp: Vec<DcfKey>,
}

impl CorrelationKind for DreluKeys {
    type Params = SignParams;
    const TAG: u8 = 30;
    const NAME: &'static str = "DReLU keys";

    fn encode_params(params: &SignParams, w: &mut Writer) {
        encode_sign_params(params, w);
    }

    fn decode_params(r: &mut Reader) -> Result<SignParams, DealerError> {
        decode_sign_params(r)
    }

    fn generate(params: &SignParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        let SignParams { n, bits } = *params;
        check_size("DReLU elements", n)?;
        check_sign_bits(Self::NAME, bits)?;
        let mask = mask_bits(bits);
        let seeds = [ctx.prg.next_seed(), ctx.prg.next_seed()];
        let p0 = expand(&seeds[0], 2 * n);
        let r1 = expand(&seeds[1], n);
        let r: Vec<u64> = (0..n).map(|i| p0[i].wrapping_add(r1[i]) & mask).collect();
        let q1: Vec<u64> = (0..n)
            .map(|i| (r[i] >> (bits - 1)).wrapping_sub(p0[n + i]))
            .collect();
        let (k0, k1) = gen_key_pairs(n, ctx.prg, |i, prg| {
            let q = r[i] >> (bits - 1);
            dcf_gen(
                r[i] & mask_bits(bits - 1),
                1u64.wrapping_sub(2 * q),
                bits - 1,
                64,
                prg,
            )
        });
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_keys(&mut w0, &k0);
        put_seed(&mut w1, &seeds[1]);
        w1.ring(&q1, 64);
        put_keys(&mut w1, &k1);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, params: &SignParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let SignParams { n, bits } = *params;
        check_sign_bits(Self::NAME, bits)?;
        let mut r = Reader::new(bytes);
        let seed = get_seed(&mut r)?;
        let (mask, msb) = match party {
            PartyId::P0 => {
                let mut v = expand(&seed, 2 * n);
                let msb = v.split_off(n);
                (v, msb)
            }
            PartyId::P1 => (expand(&seed, n), get_ring(&mut r, n, Self::NAME)?),
        };
        let cmp: Vec<DcfKey> = get_keys(&mut r, n, Self::NAME)?;
        finish_reader(r, Self::NAME)?;
        if let Some(k) = cmp
            .iter()
            .find(|k| k.n_bits() != bits - 1 || k.out_bits() != 64)
        {
            return Err(DealerError::Malformed(format!(
                "{}: DCF key of {} bits / {}-bit payload, expected {} / 64",
                Self::NAME,
                k.n_bits(),
                k.out_bits(),
                bits - 1
            )));
        }
        let m = mask_bits(bits);
        Ok(DreluKeys {
            bits,
            mask: mask.into_iter().map(|v| v & m).collect(),
            msb,
            cmp,
        })
    }
}

/// A server's half of `n` select masks (tag 31) for b·x with a secret bit b and a secret ring
/// element x: x is opened as x̂ = x + r (64 bits) and b as ĉ = b ⊕ ρ (1 bit).
#[derive(Clone, Debug)]
pub struct SelectMasks {
    /// Additive share of the 64-bit mask r of x.
    pub x_mask: Vec<u64>,
    /// XOR share (0/1) of the bit mask ρ.
    pub bit_mask: Vec<u64>,
    /// Additive Z_2^64 share of ρ.
    pub bit_mask_arith: Vec<u64>,
    /// Additive share of ρ·r.
    pub product: Vec<u64>,
}

impl CorrelationKind for SelectMasks {
    type Params = usize;
    const TAG: u8 = 31;
    const NAME: &'static str = "select masks";

    fn encode_params(n: &usize, w: &mut Writer) {
        w.u32(*n as u32);
    }

    fn decode_params(r: &mut Reader) -> Result<usize, DealerError> {
        Ok(r.u32()? as usize)
    }

    fn generate(&n: &usize, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        check_size("select elements", n)?;
        let seeds = [ctx.prg.next_seed(), ctx.prg.next_seed()];
        let h0 = expand(&seeds[0], 4 * n);
        let h1 = expand(&seeds[1], 2 * n);
        let mut rho1 = Vec::with_capacity(n);
        let mut prod1 = Vec::with_capacity(n);
        for i in 0..n {
            let r = h0[i].wrapping_add(h1[i]);
            let rho = (h0[n + i] ^ h1[n + i]) & 1;
            rho1.push(rho.wrapping_sub(h0[2 * n + i]));
            prod1.push(rho.wrapping_mul(r).wrapping_sub(h0[3 * n + i]));
        }
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_seed(&mut w1, &seeds[1]);
        w1.ring(&rho1, 64);
        w1.ring(&prod1, 64);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, &n: &usize, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let seed = get_seed(&mut r)?;
        let masks = match party {
            PartyId::P0 => {
                let v = expand(&seed, 4 * n);
                SelectMasks {
                    x_mask: v[..n].to_vec(),
                    bit_mask: v[n..2 * n].iter().map(|b| b & 1).collect(),
                    bit_mask_arith: v[2 * n..3 * n].to_vec(),
                    product: v[3 * n..].to_vec(),
                }
            }
            PartyId::P1 => {
                let v = expand(&seed, 2 * n);
                SelectMasks {
                    x_mask: v[..n].to_vec(),
                    bit_mask: v[n..].iter().map(|b| b & 1).collect(),
                    bit_mask_arith: get_ring(&mut r, n, Self::NAME)?,
                    product: get_ring(&mut r, n, Self::NAME)?,
                }
            }
        };
        finish_reader(r, Self::NAME)?;
        Ok(masks)
    }
}

/// A server's half of `n` one-round ReLU keys (tag 32): x ∈ Z_2^64 is opened as x̂ = x + r
/// (64 bits); the sign is read from the low `bits` bits by the MSB identity with a DCF whose
/// payload is (1 − 2q, (1 − 2q)·r), q = msb_bits(r) (BCG+21 style, fss-notes §2).
#[derive(Clone, Debug)]
pub struct ReluKeys {
    /// Width of the signed input.
    pub bits: u32,
    /// Additive share of the 64-bit mask r.
    pub mask: Vec<u64>,
    /// Additive share of q = bit `bits − 1` of r.
    pub msb: Vec<u64>,
    /// Additive share of q·r.
    pub msb_mask: Vec<u64>,
    /// DCF keys on `bits − 1` bits for 1{x̂' < r'} with the two-word payload above.
    pub cmp: Vec<DcfKey<2>>,
}

impl CorrelationKind for ReluKeys {
    type Params = SignParams;
    const TAG: u8 = 32;
    const NAME: &'static str = "ReLU keys";

    fn encode_params(params: &SignParams, w: &mut Writer) {
        encode_sign_params(params, w);
    }

    fn decode_params(r: &mut Reader) -> Result<SignParams, DealerError> {
        decode_sign_params(r)
    }

    fn generate(params: &SignParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        let SignParams { n, bits } = *params;
        check_size("ReLU elements", n)?;
        check_sign_bits(Self::NAME, bits)?;
        let seeds = [ctx.prg.next_seed(), ctx.prg.next_seed()];
        let h0 = expand(&seeds[0], 3 * n);
        let h1 = expand(&seeds[1], n);
        let r: Vec<u64> = (0..n).map(|i| h0[i].wrapping_add(h1[i])).collect();
        let q: Vec<u64> = r.iter().map(|v| (v >> (bits - 1)) & 1).collect();
        let q1: Vec<u64> = (0..n).map(|i| q[i].wrapping_sub(h0[n + i])).collect();
        let qr1: Vec<u64> = (0..n)
            .map(|i| q[i].wrapping_mul(r[i]).wrapping_sub(h0[2 * n + i]))
            .collect();
        let (k0, k1) = gen_key_pairs(n, ctx.prg, |i, prg| {
            let factor = 1u64.wrapping_sub(2 * q[i]);
            let beta = [factor, factor.wrapping_mul(r[i])];
            dcf_gen_vec(r[i] & mask_bits(bits - 1), beta, bits - 1, 64, prg)
        });
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_keys(&mut w0, &k0);
        put_seed(&mut w1, &seeds[1]);
        w1.ring(&q1, 64);
        w1.ring(&qr1, 64);
        put_keys(&mut w1, &k1);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, params: &SignParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let SignParams { n, bits } = *params;
        check_sign_bits(Self::NAME, bits)?;
        let mut r = Reader::new(bytes);
        let seed = get_seed(&mut r)?;
        let (mask, msb, msb_mask) = match party {
            PartyId::P0 => {
                let v = expand(&seed, 3 * n);
                (v[..n].to_vec(), v[n..2 * n].to_vec(), v[2 * n..].to_vec())
            }
            PartyId::P1 => {
                let mask = expand(&seed, n);
                let msb = get_ring(&mut r, n, Self::NAME)?;
                (mask, msb, get_ring(&mut r, n, Self::NAME)?)
            }
        };
        let cmp: Vec<DcfKey<2>> = get_keys(&mut r, n, Self::NAME)?;
        finish_reader(r, Self::NAME)?;
        if let Some(k) = cmp
            .iter()
            .find(|k| k.n_bits() != bits - 1 || k.out_bits() != 64)
        {
            return Err(DealerError::Malformed(format!(
                "{}: DCF key of {} bits / {}-bit payload, expected {} / 64",
                Self::NAME,
                k.n_bits(),
                k.out_bits(),
                bits - 1
            )));
        }
        Ok(ReluKeys {
            bits,
            mask,
            msb,
            msb_mask,
            cmp,
        })
    }
}

/// A server's half of `n` compact ReLU keys (tag 34, SIGMA style): a 1-bit DPF on `bits − 1`
/// bits instead of a DCF, at the price of a second round. x ∈ Z_2^64 is opened as x̂ = x + r
/// (64 bits); the DPF comparison gives XOR shares of e = DReLU(x) ⊕ ρ for a random bit ρ, e is
/// opened (1 bit), and `DReLU = e + (1 − 2e)·ρ`, `ReLU = DReLU·x̂ − e·r − (1 − 2e)·ρr`.
#[derive(Clone, Debug)]
pub struct CompactReluKeys {
    /// Width of the signed input.
    pub bits: u32,
    /// Additive share of the 64-bit mask r.
    pub mask: Vec<u64>,
    /// XOR share (0/1) of q ⊕ ρ, q = bit `bits − 1` of r.
    pub masked_msb: Vec<u64>,
    /// Additive Z_2^64 share of the output mask bit ρ.
    pub out_mask: Vec<u64>,
    /// Additive share of ρ·r.
    pub out_mask_times_mask: Vec<u64>,
    /// DPF keys at r mod 2^(bits−1) on `bits − 1` bits (comparison by one path walk).
    pub cmp: Vec<DpfKey>,
}

impl CorrelationKind for CompactReluKeys {
    type Params = SignParams;
    const TAG: u8 = 34;
    const NAME: &'static str = "compact ReLU keys";

    fn encode_params(params: &SignParams, w: &mut Writer) {
        encode_sign_params(params, w);
    }

    fn decode_params(r: &mut Reader) -> Result<SignParams, DealerError> {
        decode_sign_params(r)
    }

    fn generate(params: &SignParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        let SignParams { n, bits } = *params;
        check_size("compact ReLU elements", n)?;
        check_sign_bits(Self::NAME, bits)?;
        let seeds = [ctx.prg.next_seed(), ctx.prg.next_seed()];
        // P0: r0, (q ⊕ ρ)_0, ρ_0, (ρr)_0.  P1: r1, ρ (the dealer's draw of the output mask).
        let h0 = expand(&seeds[0], 4 * n);
        let h1 = expand(&seeds[1], n);
        let rho_bits = ctx.prg.gen_bits(n, 1);
        let mut masked_msb1 = Vec::with_capacity(n);
        let mut rho1 = Vec::with_capacity(n);
        let mut rho_r1 = Vec::with_capacity(n);
        let mut alphas = Vec::with_capacity(n);
        for i in 0..n {
            let r = h0[i].wrapping_add(h1[i]);
            let q = (r >> (bits - 1)) & 1;
            let rho = rho_bits[i];
            masked_msb1.push((h0[n + i] ^ q ^ rho) & 1);
            rho1.push(rho.wrapping_sub(h0[2 * n + i]));
            rho_r1.push(rho.wrapping_mul(r).wrapping_sub(h0[3 * n + i]));
            alphas.push(r & mask_bits(bits - 1));
        }
        let (k0, k1) = gen_key_pairs(n, ctx.prg, |i, prg| dpf_gen(alphas[i], bits - 1, prg));
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_keys(&mut w0, &k0);
        put_seed(&mut w1, &seeds[1]);
        w1.ring(&masked_msb1, 1);
        w1.ring(&rho1, 64);
        w1.ring(&rho_r1, 64);
        put_keys(&mut w1, &k1);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, params: &SignParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let SignParams { n, bits } = *params;
        check_sign_bits(Self::NAME, bits)?;
        let mut r = Reader::new(bytes);
        let seed = get_seed(&mut r)?;
        let (mask, masked_msb, out_mask, out_mask_times_mask) = match party {
            PartyId::P0 => {
                let v = expand(&seed, 4 * n);
                (
                    v[..n].to_vec(),
                    v[n..2 * n].iter().map(|b| b & 1).collect(),
                    v[2 * n..3 * n].to_vec(),
                    v[3 * n..].to_vec(),
                )
            }
            PartyId::P1 => {
                let mask = expand(&seed, n);
                let masked_msb = get_ring(&mut r, n, Self::NAME)?;
                let out_mask = get_ring(&mut r, n, Self::NAME)?;
                (mask, masked_msb, out_mask, get_ring(&mut r, n, Self::NAME)?)
            }
        };
        let cmp: Vec<DpfKey> = get_keys(&mut r, n, Self::NAME)?;
        finish_reader(r, Self::NAME)?;
        if let Some(k) = cmp.iter().find(|k| k.n_bits() != bits - 1) {
            return Err(DealerError::Malformed(format!(
                "{}: DPF key of {} bits, expected {}",
                Self::NAME,
                k.n_bits(),
                bits - 1
            )));
        }
        Ok(CompactReluKeys {
            bits,
            mask,
            masked_msb: masked_msb.into_iter().map(|b| b & 1).collect(),
            out_mask,
            out_mask_times_mask,
            cmp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};
    use comet_fss::dcf_eval;

    fn halves<K: CorrelationKind>(params: &K::Params) -> [Vec<u8>; 2] {
        let mut d = Dealer::with_prg(Prg::from_seed([3; 16]));
        let req = encode_request::<K>(params);
        [
            d.serve(PartyId::P0, &req).unwrap(),
            d.serve(PartyId::P1, &req).unwrap(),
        ]
    }

    /// Every strict prefix, a trailing byte and a corrupted key tag must be decoding errors.
    fn assert_rejects_damage<K: CorrelationKind + std::fmt::Debug>(
        params: &K::Params,
        h: &[Vec<u8>; 2],
    ) {
        for (b, half) in h.iter().enumerate() {
            let party = PartyId::from_index(b);
            K::decode(party, params, half).unwrap();
            let cuts = [0, 1, 15, 16, 17, half.len() / 2, half.len() - 1];
            for cut in cuts.into_iter().filter(|&c| c < half.len()) {
                assert!(
                    K::decode(party, params, &half[..cut]).is_err(),
                    "{} cut at {cut}",
                    K::NAME
                );
            }
            let mut longer = half.clone();
            longer.push(0);
            assert!(
                K::decode(party, params, &longer).is_err(),
                "{} with a trailing byte",
                K::NAME
            );
        }
    }

    #[test]
    fn drelu_keys_reconstruct_the_msb_identity() {
        let params = SignParams { n: 40, bits: 13 };
        let h = halves::<DreluKeys>(&params);
        let k0 = DreluKeys::decode(PartyId::P0, &params, &h[0]).unwrap();
        let k1 = DreluKeys::decode(PartyId::P1, &params, &h[1]).unwrap();
        for i in 0..params.n {
            let r = k0.mask[i].wrapping_add(k1.mask[i]) & mask_bits(13);
            let q = k0.msb[i].wrapping_add(k1.msb[i]);
            assert_eq!(q, r >> 12);
            for x in [0u64, r & 0xfff, (r + 1) & 0xfff, 0xfff] {
                let c = dcf_eval(PartyId::P0, &k0.cmp[i], x).wrapping_add(dcf_eval(
                    PartyId::P1,
                    &k1.cmp[i],
                    x,
                ));
                let want = if x < (r & 0xfff) {
                    1u64.wrapping_sub(2 * q)
                } else {
                    0
                };
                assert_eq!(c, want);
            }
        }
        // P0's half is a seed plus the keys; P1's adds the msb shares.
        assert_eq!(h[1].len() - h[0].len(), 5 + 8 * params.n);
        assert_rejects_damage::<DreluKeys>(&params, &h);
    }

    #[test]
    fn corrupted_keys_and_wrong_widths_are_rejected() {
        let params = SignParams { n: 3, bits: 20 };
        let h = halves::<DreluKeys>(&params);
        // Layout of P0's half: seed (16), key length (4), block length (4), keys.
        let mut bad = h[0].clone();
        bad[24] ^= 0xff;
        assert!(
            DreluKeys::decode(PartyId::P0, &params, &bad).is_err(),
            "corrupt key tag"
        );
        let mut bad = h[0].clone();
        bad[16] = bad[16].wrapping_add(1);
        assert!(
            DreluKeys::decode(PartyId::P0, &params, &bad).is_err(),
            "wrong key length"
        );
        let other = SignParams { n: 3, bits: 21 };
        assert!(
            DreluKeys::decode(PartyId::P0, &other, &h[0]).is_err(),
            "keys of another width"
        );
        assert!(DreluKeys::decode(PartyId::P0, &SignParams { n: 3, bits: 1 }, &h[0]).is_err());
        let mut d = Dealer::new();
        for bits in [0u32, 1, 65] {
            let req = encode_request::<DreluKeys>(&SignParams { n: 3, bits });
            assert!(matches!(
                d.serve(PartyId::P0, &req),
                Err(DealerError::InvalidParams(_))
            ));
        }
        let req = encode_request::<ReluKeys>(&SignParams { n: 0, bits: 8 });
        assert!(matches!(
            d.serve(PartyId::P0, &req),
            Err(DealerError::InvalidParams(_))
        ));
    }

    #[test]
    fn select_masks_are_consistent() {
        let n = 50;
        let h = halves::<SelectMasks>(&n);
        let m0 = SelectMasks::decode(PartyId::P0, &n, &h[0]).unwrap();
        let m1 = SelectMasks::decode(PartyId::P1, &n, &h[1]).unwrap();
        for i in 0..n {
            let rho = m0.bit_mask[i] ^ m1.bit_mask[i];
            assert!(rho <= 1);
            assert_eq!(m0.bit_mask_arith[i].wrapping_add(m1.bit_mask_arith[i]), rho);
            let r = m0.x_mask[i].wrapping_add(m1.x_mask[i]);
            assert_eq!(
                m0.product[i].wrapping_add(m1.product[i]),
                rho.wrapping_mul(r)
            );
        }
        assert_eq!(h[0].len(), 16, "P0's half is one seed");
        assert_rejects_damage::<SelectMasks>(&n, &h);
    }

    #[test]
    fn relu_keys_are_consistent() {
        let params = SignParams { n: 20, bits: 64 };
        let h = halves::<ReluKeys>(&params);
        let k0 = ReluKeys::decode(PartyId::P0, &params, &h[0]).unwrap();
        let k1 = ReluKeys::decode(PartyId::P1, &params, &h[1]).unwrap();
        for i in 0..params.n {
            let r = k0.mask[i].wrapping_add(k1.mask[i]);
            let q = k0.msb[i].wrapping_add(k1.msb[i]);
            assert_eq!(q, r >> 63);
            assert_eq!(
                k0.msb_mask[i].wrapping_add(k1.msb_mask[i]),
                q.wrapping_mul(r)
            );
        }
        assert_rejects_damage::<ReluKeys>(&params, &h);
    }

    #[test]
    fn compact_relu_keys_are_consistent() {
        use comet_fss::dpf_lt;
        let params = SignParams { n: 30, bits: 17 };
        let h = halves::<CompactReluKeys>(&params);
        let k0 = CompactReluKeys::decode(PartyId::P0, &params, &h[0]).unwrap();
        let k1 = CompactReluKeys::decode(PartyId::P1, &params, &h[1]).unwrap();
        for i in 0..params.n {
            let r = k0.mask[i].wrapping_add(k1.mask[i]);
            let rho = k0.out_mask[i].wrapping_add(k1.out_mask[i]);
            assert!(rho <= 1);
            assert_eq!(k0.masked_msb[i] ^ k1.masked_msb[i], ((r >> 16) & 1) ^ rho);
            assert_eq!(
                k0.out_mask_times_mask[i].wrapping_add(k1.out_mask_times_mask[i]),
                rho.wrapping_mul(r)
            );
            for x in [0u64, r & 0xffff, (r + 1) & 0xffff, 0xffff] {
                let lt = dpf_lt(PartyId::P0, &k0.cmp[i], x) ^ dpf_lt(PartyId::P1, &k1.cmp[i], x);
                assert_eq!(lt as u64, (x < (r & 0xffff)) as u64);
            }
        }
        assert_rejects_damage::<CompactReluKeys>(&params, &h);
    }
}
