//! Gate-level FSS keys for masked wires (sans-IO): the dealer knows the input mask r, both
//! servers know the public masked input x̂ = x + r, and each key turns x̂ into one party's
//! share of f(x). Generation returns the two parties' keys; evaluation is local.
//!
//! Notation: n = bit width of the compared value, for a ∈ [0, 2^n) let msb(a) = bit n−1 and
//! a' = a mod 2^(n−1). With x = x̂ − r mod 2^n (fss-notes §2):
//!
//! ```text
//! msb(x) = msb(x̂) ⊕ msb(r) ⊕ 1{x̂' < r'}            DReLU(x) = 1{x ≥ 0} = 1 ⊕ msb(x)
//! ```
//!
//! (x̂ − r = (msb(x̂) − msb(r))·2^(n−1) + (x̂' − r'); the low difference borrows exactly when
//! x̂' < r'). Writing p = 1 ⊕ msb(x̂) (public), q = msb(r) (dealer) and c = 1{x̂' < r'}:
//! `DReLU = p ⊕ q ⊕ c`, and with `a ⊕ b = a + b − 2ab` for bits, `q ⊕ c = q + (1 − 2q)·c`,
//! `p ⊕ w = p + (1 − 2p)·w`. The dealer knows q, so it puts the factor (1 − 2q) into the DCF
//! payload (β = 1 − 2q) and hands out additive shares of q; everything else is linear in
//! public values, so shares of DReLU in Z_2^64 need no interaction beyond opening x̂.
//!
//! | gate | key bytes/party (n = 64) | AES per eval | after x̂ is open |
//! |---|---|---|---|
//! | [`DreluKey`] (DCF, ℓ = 64) | 1557 | 2n − 1 | nothing: additive share of DReLU |
//! | [`DreluBitKey`] (SIGMA DPF) | 948 | n − 8 | open 1 bit, then [`drelu_bit_finish`] |
//! | [`ReluKey`] (DCF, 2 × 64-bit payload) | 2085 | 2n − 1 | nothing: shares of DReLU and ReLU |
//! | [`LutKey`] (m-bit index; m = 8) | 76 | 2^(m−6) − 2 | open v̂ (64 bit), then [`lut_finish`] |
//!
//! Public thresholds reuse a key: the comparison with c is the gate at x̂ − c
//! ([`cmp_ge_eval`], [`cmp_lt_eval`]).

use crate::codec::{mask64, ByteReader};
use crate::dcf::{dcf_eval, dcf_eval_many, dcf_eval_vec, dcf_gen, dcf_gen_vec, DcfKey, TASK};
use crate::dpf::{
    dpf_eval_all, dpf_eval_bit, dpf_gen, dpf_lt, dpf_lt_many, DpfKey, MAX_EVAL_ALL_BITS,
};
use crate::error::FssError;
use comet_core::{PartyId, Prg};
use rayon::prelude::*;

const DRELU_TAG: u8 = 0xE1;
const DRELU_BIT_TAG: u8 = 0xE2;
const RELU_TAG: u8 = 0xE3;
const LUT_TAG: u8 = 0xE4;

/// Additive shares (P0 random, P1 the rest) of `value` in Z_2^64.
fn share_u64(value: u64, prg: &mut Prg) -> [u64; 2] {
    let s0 = prg.next_u64();
    [s0, value.wrapping_sub(s0)]
}

fn check_width_param(n_bits: u32, what: &'static str) -> Result<u32, FssError> {
    if !(1..=64).contains(&n_bits) {
        return Err(FssError::InvalidParameter {
            what,
            value: n_bits as u64,
            allowed: "1..=64",
        });
    }
    Ok(n_bits)
}

/// Splits the masked input into (p = 1 ⊕ msb_n(x̂), x̂ mod 2^(n−1)).
#[inline]
fn split_masked(x_hat: u64, n_bits: u32) -> (u64, u64) {
    let x = x_hat & mask64(n_bits);
    (1 ^ (x >> (n_bits - 1)), x & mask64(n_bits - 1))
}

/// Rejects a nested key whose widths do not match its gate's header.
fn check_inner(found: u32, expected: u32, what: &'static str) -> Result<(), FssError> {
    if found != expected {
        return Err(FssError::InvalidParameter {
            what,
            value: found as u64,
            allowed: "the gate's width (see header)",
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DReLU with an arithmetic output (DCF-based).

/// One party's key for DReLU(x) = 1{x ≥ 0} of a signed n-bit x, output additively shared in
/// Z_2^64: a DCF on n−1 bits with payload 1 − 2·msb(r) plus a share of msb(r).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DreluKey {
    n_bits: u32,
    msb_share: u64,
    cmp: Option<DcfKey>,
}

/// Dealer: DReLU keys for input mask `r` (reduced mod 2^n) on signed `n_bits`-bit values.
///
/// # Panics
/// If `n_bits` is outside 1..=64.
pub fn drelu_gen(r: u64, n_bits: u32, prg: &mut Prg) -> (DreluKey, DreluKey) {
    assert!(
        (1..=64).contains(&n_bits),
        "DReLU width must be 1..=64 bits, got {n_bits}"
    );
    let r = r & mask64(n_bits);
    let q = r >> (n_bits - 1);
    let q_shares = share_u64(q, prg);
    let (c0, c1) = if n_bits >= 2 {
        let beta = 1u64.wrapping_sub(2 * q);
        let (a, b) = dcf_gen(r & mask64(n_bits - 1), beta, n_bits - 1, 64, prg);
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    (
        DreluKey {
            n_bits,
            msb_share: q_shares[0],
            cmp: c0,
        },
        DreluKey {
            n_bits,
            msb_share: q_shares[1],
            cmp: c1,
        },
    )
}

/// Party `party`'s additive share in Z_2^64 of 1{x ≥ 0}, x = x̂ − r as a signed n-bit value:
/// `[b = 0]·p + (1 − 2p)·(q_b + DCF_b(x̂'))` with p = 1 ⊕ msb(x̂).
pub fn drelu_eval(party: PartyId, key: &DreluKey, x_hat: u64) -> u64 {
    let (p, low) = split_masked(x_hat, key.n_bits);
    let c = key.cmp.as_ref().map_or(0, |k| dcf_eval(party, k, low));
    drelu_combine(party, key, p, c)
}

/// DReLU share from p = 1 ⊕ msb(x̂) and this party's DCF share c.
#[inline]
fn drelu_combine(party: PartyId, key: &DreluKey, p: u64, c: u64) -> u64 {
    let w = key.msb_share.wrapping_add(c);
    let public = if party == PartyId::P0 { p } else { 0 };
    public.wrapping_add(1u64.wrapping_sub(2 * p).wrapping_mul(w))
}

/// Runs `gate` over rayon tasks of [`TASK`] (key, x̂) pairs: `split` gives each pair's
/// (p, x̂'), `inner` its comparison key, `many` evaluates all comparison keys of a task in
/// lockstep (when every key of the task has one), and `finish` combines.
fn batch_gate<K, C, O, R>(
    keys: &[K],
    x_hats: &[u64],
    n_bits: impl Fn(&K) -> u32 + Sync,
    inner: impl Fn(&K) -> Option<&C> + Sync,
    many: impl Fn(&[&C], &[u64], &mut [R]) + Sync,
    single: impl Fn(&C, u64) -> R + Sync,
    finish: impl Fn(&K, u64, u64, R) -> O + Sync,
) -> Vec<O>
where
    K: Sync,
    C: Sync,
    O: Send + Default + Clone,
    R: Default + Clone,
{
    assert_eq!(
        keys.len(),
        x_hats.len(),
        "batch gate evaluation needs one input per key"
    );
    let mut out = vec![O::default(); keys.len()];
    out.par_chunks_mut(TASK)
        .zip(keys.par_chunks(TASK).zip(x_hats.par_chunks(TASK)))
        .for_each(|(o, (k, x))| {
            let split: Vec<(u64, u64)> = k
                .iter()
                .zip(x)
                .map(|(key, &xh)| split_masked(xh, n_bits(key)))
                .collect();
            let lows: Vec<u64> = split.iter().map(|s| s.1).collect();
            let mut c = vec![R::default(); k.len()];
            let refs: Option<Vec<&C>> = k.iter().map(&inner).collect();
            match refs {
                Some(refs) => many(&refs, &lows, &mut c),
                None => {
                    for ((cj, key), &low) in c.iter_mut().zip(k).zip(&lows) {
                        if let Some(ck) = inner(key) {
                            *cj = single(ck, low);
                        }
                    }
                }
            }
            for j in 0..k.len() {
                o[j] = finish(&k[j], x[j], split[j].0, c[j].clone());
            }
        });
    out
}

/// [`drelu_eval`] for many (key, x̂) pairs in parallel (rayon, lockstep AES).
///
/// # Panics
/// If `keys` and `x_hats` have different lengths.
pub fn drelu_eval_batch(party: PartyId, keys: &[DreluKey], x_hats: &[u64]) -> Vec<u64> {
    batch_gate(
        keys,
        x_hats,
        DreluKey::n_bits,
        |k| k.cmp.as_ref(),
        |refs, lows, out: &mut [[u64; 1]]| dcf_eval_many(party, refs, lows, out),
        |k, low| [dcf_eval(party, k, low)],
        |key, _, p, c| drelu_combine(party, key, p, c[0]),
    )
}

/// Share of 1{x ≥ c} for signed n-bit x and a public threshold c, from the same DReLU key:
/// x − c is masked by the same r, so this is DReLU at x̂ − c. Correct when x − c does not
/// overflow n signed bits (keep a spare bit, fss-notes §2).
pub fn cmp_ge_eval(party: PartyId, key: &DreluKey, x_hat: u64, c: u64) -> u64 {
    drelu_eval(party, key, x_hat.wrapping_sub(c))
}

/// Share of 1{x < c} = 1 − 1{x ≥ c}, same conditions as [`cmp_ge_eval`].
pub fn cmp_lt_eval(party: PartyId, key: &DreluKey, x_hat: u64, c: u64) -> u64 {
    let ge = cmp_ge_eval(party, key, x_hat, c);
    let one: u64 = if party == PartyId::P0 { 1 } else { 0 };
    one.wrapping_sub(ge)
}

impl DreluKey {
    /// Width n of the signed input.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }

    /// Length of [`DreluKey::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        2 + 8 + self.cmp.as_ref().map_or(0, DcfKey::encoded_len)
    }

    /// Serializes: tag, n, msb share (8 bytes LE), then the DCF key when n ≥ 2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(DRELU_TAG);
        out.push(self.n_bits as u8);
        out.extend_from_slice(&self.msb_share.to_le_bytes());
        if let Some(k) = &self.cmp {
            k.write_to(&mut out);
        }
        out
    }

    /// Parses [`DreluKey::to_bytes`] output; structural corruption gives an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FssError> {
        const WHAT: &str = "DReLU key";
        let mut r = ByteReader::new(bytes);
        r.tag(DRELU_TAG, WHAT)?;
        let n_bits = check_width_param(r.byte(WHAT)? as u32, "DReLU width")?;
        let msb_share = r.u64(WHAT)?;
        let cmp = if n_bits >= 2 {
            let k = DcfKey::<1>::read_from(&mut r)?;
            check_inner(k.n_bits(), n_bits - 1, "DReLU comparison width")?;
            check_inner(k.out_bits(), 64, "DReLU payload width")?;
            Some(k)
        } else {
            None
        };
        r.finish(WHAT)?;
        Ok(DreluKey {
            n_bits,
            msb_share,
            cmp,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// DReLU with a masked one-bit output (SIGMA, DPF-based).

/// One party's key for SIGMA's DReLU: an early-terminated DPF on n−1 bits at r', an XOR share
/// of msb(r) ⊕ m and an additive share of m, for a random output mask bit m.
///
/// [`drelu_bit_eval`] gives XOR shares of `e = DReLU(x) ⊕ m`; e is uniform, so the parties
/// may open it (1 bit each, one round). [`drelu_bit_finish`] then turns the public e into
/// additive shares of `DReLU(x) = e ⊕ m = e + (1 − 2e)·m` in Z_2^64. Key ≈ 16(n − 6) + 9
/// bytes, n − 8 AES per evaluation (vs. a 64-bit-payload DCF for [`DreluKey`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DreluBitKey {
    n_bits: u32,
    masked_msb_share: bool,
    out_mask_share: u64,
    cmp: Option<DpfKey>,
}

/// Dealer: masked-bit DReLU keys for input mask `r` (reduced mod 2^n).
///
/// # Panics
/// If `n_bits` is outside 1..=64.
pub fn drelu_bit_gen(r: u64, n_bits: u32, prg: &mut Prg) -> (DreluBitKey, DreluBitKey) {
    assert!(
        (1..=64).contains(&n_bits),
        "DReLU width must be 1..=64 bits, got {n_bits}"
    );
    let r = r & mask64(n_bits);
    let q = (r >> (n_bits - 1)) == 1;
    let bits = prg.next_u64();
    let out_mask = bits & 1 == 1;
    let share0 = bits & 2 == 2;
    let m_sh = share_u64(out_mask as u64, prg);
    let (c0, c1) = if n_bits >= 2 {
        let (a, b) = dpf_gen(r & mask64(n_bits - 1), n_bits - 1, prg);
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    (
        DreluBitKey {
            n_bits,
            masked_msb_share: share0,
            out_mask_share: m_sh[0],
            cmp: c0,
        },
        DreluBitKey {
            n_bits,
            masked_msb_share: share0 ^ q ^ out_mask,
            out_mask_share: m_sh[1],
            cmp: c1,
        },
    )
}

/// Party `party`'s XOR share of `DReLU(x) ⊕ m`: `[b = 0]·p ⊕ (q ⊕ m)_b ⊕ DPF-lt_b(x̂')`.
/// Safe to open; see [`DreluBitKey`].
pub fn drelu_bit_eval(party: PartyId, key: &DreluBitKey, x_hat: u64) -> u8 {
    let (p, low) = split_masked(x_hat, key.n_bits);
    let c = key.cmp.as_ref().map_or(0, |k| dpf_lt(party, k, low));
    drelu_bit_combine(party, key, p, c)
}

/// Masked DReLU bit share from p = 1 ⊕ msb(x̂) and this party's DPF comparison share c.
#[inline]
fn drelu_bit_combine(party: PartyId, key: &DreluBitKey, p: u64, c: u8) -> u8 {
    let public = if party == PartyId::P0 { p as u8 } else { 0 };
    public ^ key.masked_msb_share as u8 ^ c
}

/// Party `party`'s additive share in Z_2^64 of DReLU(x) from the opened bit
/// `e = e_0 ⊕ e_1` of [`drelu_bit_eval`]: `[b = 0]·e + (1 − 2e)·m_b`.
pub fn drelu_bit_finish(party: PartyId, key: &DreluBitKey, opened: u8) -> u64 {
    let e = (opened & 1) as u64;
    let public = if party == PartyId::P0 { e } else { 0 };
    public.wrapping_add(1u64.wrapping_sub(2 * e).wrapping_mul(key.out_mask_share))
}

/// [`drelu_bit_eval`] for many (key, x̂) pairs in parallel (rayon, lockstep AES).
///
/// # Panics
/// If `keys` and `x_hats` have different lengths.
pub fn drelu_bit_eval_batch(party: PartyId, keys: &[DreluBitKey], x_hats: &[u64]) -> Vec<u8> {
    batch_gate(
        keys,
        x_hats,
        DreluBitKey::n_bits,
        |k| k.cmp.as_ref(),
        |refs, lows, out: &mut [u8]| dpf_lt_many(party, refs, lows, out),
        |k, low| dpf_lt(party, k, low),
        |key, _, p, c| drelu_bit_combine(party, key, p, c),
    )
}

impl DreluBitKey {
    /// Width n of the signed input.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }

    /// Length of [`DreluBitKey::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        3 + 8 + self.cmp.as_ref().map_or(0, DpfKey::encoded_len)
    }

    /// Serializes: tag, n, masked msb share byte (0/1), m share (8 bytes LE), then the DPF
    /// key when n ≥ 2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(DRELU_BIT_TAG);
        out.push(self.n_bits as u8);
        out.push(self.masked_msb_share as u8);
        out.extend_from_slice(&self.out_mask_share.to_le_bytes());
        if let Some(k) = &self.cmp {
            k.write_to(&mut out);
        }
        out
    }

    /// Parses [`DreluBitKey::to_bytes`] output; structural corruption gives an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FssError> {
        const WHAT: &str = "DReLU bit key";
        let mut r = ByteReader::new(bytes);
        r.tag(DRELU_BIT_TAG, WHAT)?;
        let n_bits = check_width_param(r.byte(WHAT)? as u32, "DReLU width")?;
        let masked_msb_share = match r.byte(WHAT)? {
            0 => false,
            1 => true,
            _ => return Err(FssError::NonZeroPadding { what: WHAT }),
        };
        let out_mask_share = r.u64(WHAT)?;
        let cmp = if n_bits >= 2 {
            let k = DpfKey::read_from(&mut r)?;
            check_inner(k.n_bits(), n_bits - 1, "DReLU comparison width")?;
            Some(k)
        } else {
            None
        };
        r.finish(WHAT)?;
        Ok(DreluBitKey {
            n_bits,
            masked_msb_share,
            out_mask_share,
            cmp,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One-round ReLU (DCF with a 2-word payload).

/// One party's key for ReLU(x) = x·1{x ≥ 0} with x ∈ Z_2^64 masked by a full 64-bit r, where
/// the sign is read from the low n bits (requires −2^(n−1) ≤ x < 2^(n−1)).
///
/// With d = DReLU(x) = p ⊕ (q ⊕ c) as in the module docs: `ReLU = d·x̂ − d·r` and
/// `d·r = p·r + (1 − 2p)·(q·r + (1 − 2q)·r·c)`. The DCF payload is β = (1 − 2q, (1 − 2q)·r)
/// and the key carries additive shares of q, r and q·r. Both d and ReLU come out additively
/// shared in Z_2^64 after the single opening of x̂ (BCG+21 / LLAMA style, fss-notes §2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReluKey {
    n_bits: u32,
    msb_share: u64,
    mask_share: u64,
    msb_mask_share: u64,
    cmp: Option<DcfKey<2>>,
}

/// Dealer: one-round ReLU keys for the 64-bit input mask `r`; the sign test uses n bits.
///
/// # Panics
/// If `n_bits` is outside 1..=64.
pub fn relu_gen(r: u64, n_bits: u32, prg: &mut Prg) -> (ReluKey, ReluKey) {
    assert!(
        (1..=64).contains(&n_bits),
        "ReLU sign width must be 1..=64 bits, got {n_bits}"
    );
    let r_n = r & mask64(n_bits);
    let q = r_n >> (n_bits - 1);
    let q_sh = share_u64(q, prg);
    let r_sh = share_u64(r, prg);
    let qr_sh = share_u64(q.wrapping_mul(r), prg);
    let (c0, c1) = if n_bits >= 2 {
        let factor = 1u64.wrapping_sub(2 * q);
        let beta = [factor, factor.wrapping_mul(r)];
        let (a, b) = dcf_gen_vec(r_n & mask64(n_bits - 1), beta, n_bits - 1, 64, prg);
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let make = |b: usize, cmp: Option<DcfKey<2>>| ReluKey {
        n_bits,
        msb_share: q_sh[b],
        mask_share: r_sh[b],
        msb_mask_share: qr_sh[b],
        cmp,
    };
    (make(0, c0), make(1, c1))
}

/// Party `party`'s additive shares in Z_2^64 of (DReLU(x), ReLU(x)) from the public x̂ = x + r.
pub fn relu_eval(party: PartyId, key: &ReluKey, x_hat: u64) -> (u64, u64) {
    let (p, low) = split_masked(x_hat, key.n_bits);
    let c = key
        .cmp
        .as_ref()
        .map_or([0, 0], |k| dcf_eval_vec(party, k, low));
    relu_combine(party, key, x_hat, p, c)
}

/// (DReLU, ReLU) shares from x̂, p = 1 ⊕ msb(x̂) and this party's two DCF output words.
#[inline]
fn relu_combine(
    party: PartyId,
    key: &ReluKey,
    x_hat: u64,
    p: u64,
    [c1, c2]: [u64; 2],
) -> (u64, u64) {
    let flip = 1u64.wrapping_sub(2 * p);
    let w1 = key.msb_share.wrapping_add(c1);
    let w2 = key.msb_mask_share.wrapping_add(c2);
    let public = if party == PartyId::P0 { p } else { 0 };
    let drelu = public.wrapping_add(flip.wrapping_mul(w1));
    let drelu_times_r = p
        .wrapping_mul(key.mask_share)
        .wrapping_add(flip.wrapping_mul(w2));
    (drelu, drelu.wrapping_mul(x_hat).wrapping_sub(drelu_times_r))
}

/// [`relu_eval`] for many (key, x̂) pairs in parallel (rayon, lockstep AES).
///
/// # Panics
/// If `keys` and `x_hats` have different lengths.
pub fn relu_eval_batch(party: PartyId, keys: &[ReluKey], x_hats: &[u64]) -> Vec<(u64, u64)> {
    batch_gate(
        keys,
        x_hats,
        ReluKey::n_bits,
        |k| k.cmp.as_ref(),
        |refs, lows, out: &mut [[u64; 2]]| dcf_eval_many(party, refs, lows, out),
        |k, low| dcf_eval_vec(party, k, low),
        |key, x_hat, p, c| relu_combine(party, key, x_hat, p, c),
    )
}

impl ReluKey {
    /// Width n of the sign test.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }

    /// Length of [`ReluKey::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        2 + 24 + self.cmp.as_ref().map_or(0, DcfKey::<2>::encoded_len)
    }

    /// Serializes: tag, n, shares of q, r, q·r (8 bytes LE each), then the DCF key if n ≥ 2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(RELU_TAG);
        out.push(self.n_bits as u8);
        for w in [self.msb_share, self.mask_share, self.msb_mask_share] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        if let Some(k) = &self.cmp {
            k.write_to(&mut out);
        }
        out
    }

    /// Parses [`ReluKey::to_bytes`] output; structural corruption gives an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FssError> {
        const WHAT: &str = "ReLU key";
        let mut r = ByteReader::new(bytes);
        r.tag(RELU_TAG, WHAT)?;
        let n_bits = check_width_param(r.byte(WHAT)? as u32, "ReLU sign width")?;
        let msb_share = r.u64(WHAT)?;
        let mask_share = r.u64(WHAT)?;
        let msb_mask_share = r.u64(WHAT)?;
        let cmp = if n_bits >= 2 {
            let k = DcfKey::<2>::read_from(&mut r)?;
            check_inner(k.n_bits(), n_bits - 1, "ReLU comparison width")?;
            check_inner(k.out_bits(), 64, "ReLU payload width")?;
            Some(k)
        } else {
            None
        };
        r.finish(WHAT)?;
        Ok(ReluKey {
            n_bits,
            msb_share,
            mask_share,
            msb_mask_share,
            cmp,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// DPF lookup table (SIGMA, fss-notes §4).

/// One party's key for an m-bit lookup table T: Z_2^m → Z_2^64 on a masked index.
///
/// The dealer gives a 1-bit DPF at the index mask r. Party b expands the whole point vector
/// t_b(i) (2^(m−6) AES) and computes
///
/// ```text
/// v_b = (−1)^b · Σ_i T[x̂ − i mod 2^m] · t_b(i)        u_b = (−1)^b · Σ_i t_b(i)
/// ```
///
/// For i ≠ r both parties hold the same bit, so the terms cancel; at i = r exactly one holds
/// a 1. Hence u = u_0 + u_1 = s ∈ {+1, −1} (s = +1 iff P0 holds the 1) and v = `s·T[x̂ − r]`
/// = `s·T[x]`, i.e. **`T[x] = u·v`**. Opening u in the clear would leak t_0(r), so the sign is
/// fixed with dealer material instead of SIGMA's masked u + Select: the key also holds
/// additive shares of s, of a random ρ and of s·ρ. The parties open v̂ = v + ρ (one round,
/// 64 bits each, see [`lut_mask_v`]) and output `s_b·v̂ − (sρ)_b`, whose sum is
/// `s·v = s²·T[x] = T[x]` ([`lut_finish`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LutKey {
    m_bits: u32,
    dpf: DpfKey,
    sign_share: u64,
    mask_share: u64,
    sign_mask_share: u64,
}

/// Dealer: lookup-table keys for the index mask `r` (reduced mod 2^m).
///
/// # Panics
/// If `m_bits` is outside 1..=MAX_EVAL_ALL_BITS.
pub fn lut_gen(r: u64, m_bits: u32, prg: &mut Prg) -> (LutKey, LutKey) {
    assert!(
        (1..=MAX_EVAL_ALL_BITS).contains(&m_bits),
        "lookup-table index width must be 1..={MAX_EVAL_ALL_BITS} bits, got {m_bits}"
    );
    let r = r & mask64(m_bits);
    let (k0, k1) = dpf_gen(r, m_bits, prg);
    let p0_holds_one = dpf_eval_bit(PartyId::P0, &k0, r) == 1;
    let sign = if p0_holds_one { 1u64 } else { u64::MAX };
    let rho = prg.next_u64();
    let s_sh = share_u64(sign, prg);
    let rho_sh = share_u64(rho, prg);
    let srho_sh = share_u64(sign.wrapping_mul(rho), prg);
    let make = |b: usize, dpf: DpfKey| LutKey {
        m_bits,
        dpf,
        sign_share: s_sh[b],
        mask_share: rho_sh[b],
        sign_mask_share: srho_sh[b],
    };
    (make(0, k0), make(1, k1))
}

/// Party `party`'s (v_b, u_b) for the public masked index x̂ (reduced mod 2^m); see
/// [`LutKey`]: (v_0 + v_1)·(u_0 + u_1) = T\[x\]. Constant-time in the DPF bits.
///
/// # Panics
/// If `table.len() != 2^m`.
pub fn lut_eval(party: PartyId, key: &LutKey, x_hat: u64, table: &[u64]) -> (u64, u64) {
    let size = 1usize << key.m_bits;
    assert_eq!(
        table.len(),
        size,
        "lookup table must have 2^{} entries",
        key.m_bits
    );
    let bits = dpf_eval_all(party, &key.dpf);
    let index_mask = size - 1;
    let x_hat = x_hat as usize & index_mask;
    let mut v = 0u64;
    let mut u = 0u64;
    for (w, &word) in bits.iter().enumerate() {
        let base = w * 64;
        let count = (size - base).min(64);
        u = u.wrapping_add(word.count_ones() as u64);
        for j in 0..count {
            let take = ((word >> j) & 1).wrapping_neg();
            let i = base + j;
            v = v.wrapping_add(table[x_hat.wrapping_sub(i) & index_mask] & take);
        }
    }
    if party == PartyId::P1 {
        (v.wrapping_neg(), u.wrapping_neg())
    } else {
        (v, u)
    }
}

/// The message a party sends to open v̂ = v + ρ: `v_b + ρ_b` (its key holds ρ_b).
pub fn lut_mask_v(key: &LutKey, v_share: u64) -> u64 {
    v_share.wrapping_add(key.mask_share)
}

/// A party's additive share of `T[x]` from the opened v̂: `s_b·v̂ − (sρ)_b`.
pub fn lut_finish(key: &LutKey, v_hat: u64) -> u64 {
    key.sign_share
        .wrapping_mul(v_hat)
        .wrapping_sub(key.sign_mask_share)
}

/// [`lut_eval`] for many (key, x̂) pairs against one table, in parallel (rayon).
///
/// # Panics
/// If `keys` and `x_hats` have different lengths or the table size is wrong.
pub fn lut_eval_batch(
    party: PartyId,
    keys: &[LutKey],
    x_hats: &[u64],
    table: &[u64],
) -> Vec<(u64, u64)> {
    assert_eq!(
        keys.len(),
        x_hats.len(),
        "lut_eval_batch needs one input per key"
    );
    keys.par_iter()
        .zip(x_hats.par_iter())
        .map(|(k, &x)| lut_eval(party, k, x, table))
        .collect()
}

impl LutKey {
    /// Index width m.
    pub fn m_bits(&self) -> u32 {
        self.m_bits
    }

    /// Length of [`LutKey::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        2 + 24 + self.dpf.encoded_len()
    }

    /// Serializes: tag, m, shares of s, ρ, s·ρ (8 bytes LE each), then the DPF key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(LUT_TAG);
        out.push(self.m_bits as u8);
        for w in [self.sign_share, self.mask_share, self.sign_mask_share] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        self.dpf.write_to(&mut out);
        out
    }

    /// Parses [`LutKey::to_bytes`] output; structural corruption gives an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FssError> {
        const WHAT: &str = "LUT key";
        let mut r = ByteReader::new(bytes);
        r.tag(LUT_TAG, WHAT)?;
        let m_bits = r.byte(WHAT)? as u32;
        if !(1..=MAX_EVAL_ALL_BITS).contains(&m_bits) {
            return Err(FssError::InvalidParameter {
                what: "LUT index width",
                value: m_bits as u64,
                allowed: "1..=32",
            });
        }
        let sign_share = r.u64(WHAT)?;
        let mask_share = r.u64(WHAT)?;
        let sign_mask_share = r.u64(WHAT)?;
        let dpf = DpfKey::read_from(&mut r)?;
        check_inner(dpf.n_bits(), m_bits, "LUT DPF width")?;
        r.finish(WHAT)?;
        Ok(LutKey {
            m_bits,
            dpf,
            sign_share,
            mask_share,
            sign_mask_share,
        })
    }
}
