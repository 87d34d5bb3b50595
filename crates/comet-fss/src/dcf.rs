//! Distributed comparison function (BCG+21 style) with a payload in the additive group
//! (Z_2^ℓ)^W, ℓ ≤ 64, W ∈ {1, 2}.
//!
//! The pair of keys shares f_{α,β}(x) = β if x < α else 0 over n-bit inputs (1 ≤ n ≤ 64):
//! `dcf_eval(P0, k0, x) + dcf_eval(P1, k1, x) = f(x) mod 2^ℓ`.
//!
//! **Generation** (both parties' nodes expanded; s = seed, t = control bit, x_i / α_i = bit i
//! from the MSB, "keep" = the child on α's path, "lose" = the other one, V_α = 0 at start):
//!
//! ```text
//! per level i:  (s_b^L, t_b^L), (s_b^R, t_b^R) = child(s_b, 0/1);  v_b^{L/R} = value(s_b, 0/1)
//!   σ      = (−1)^{t_1}
//!   s_CW   = s_0^lose ⊕ s_1^lose
//!   V_CW   = σ·(v_1^lose − v_0^lose − V_α) + σ·β·[α_i = 1]       (lose = L exactly when α_i = 1)
//!   V_α   += v_0^keep − v_1^keep + σ·V_CW
//!   t_CW^L = t_0^L ⊕ t_1^L ⊕ α_i ⊕ 1,   t_CW^R = t_0^R ⊕ t_1^R ⊕ α_i
//!   s_b    = s_b^keep ⊕ t_b·s_CW,       t_b = t_b^keep ⊕ t_b·t_CW^keep
//! final:  CW_{n+1} = σ·(value(s_1, 0) − value(s_0, 0) − V_α)
//! ```
//!
//! **Evaluation** by party b (t starts at b): along x's path accumulate
//! `V += v^{x_i} + t·V_CW`, correct the child `s ⊕= t·s_CW`, `t ⊕= t·t_CW^{x_i}`, finally
//! `V += value(s, 0) + t·CW_{n+1}` and output `(−1)^b·V`. V_α is the reconstructed sum on α's
//! path, so leaving the path at a level where α goes right contributes exactly β and leaving
//! it where α goes left contributes 0; off the path both parties hold equal seeds and cancel.
//! The `(−1)^{t_1}` factor on β and the order `v_1 − v_0` are exactly what fss-rs 0.6.0 gets
//! wrong (fss-notes §7.1); the tests use Z_2^64 payloads with random α, β, x.
//!
//! Cost: 2 AES per level + 1 per evaluation (seed and payload of the one child taken), 4 per
//! level per party at generation. Key: n·(127 + 2 + W·ℓ) + 127 + W·ℓ bits + 3 header bytes.
//! W = 2 costs no extra AES (one 128-bit payload block holds both words); W > 2 would need
//! more payload blocks per level (fss-notes §7.2) and is not offered.

use crate::codec::{mask64, BitReader, BitWriter, ByteReader};
use crate::error::FssError;
use crate::prg::{mask_u128, mask_u64, split_node, TreePrg, SEED_MASK};
use comet_core::{PartyId, Prg};
use rayon::prelude::*;

/// Tag byte of a serialized DCF key with payload width W is `DCF_TAG_BASE + W`.
const DCF_TAG_BASE: u8 = 0xC0;

/// Correction word of one tree level.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DcfLevel<const W: usize> {
    seed_cw: u128,
    value_cw: [u64; W],
    t_left: bool,
    t_right: bool,
}

/// One party's key of a DCF with W payload words of `out_bits` bits each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcfKey<const W: usize = 1> {
    n_bits: u32,
    out_bits: u32,
    root: u128,
    levels: Vec<DcfLevel<W>>,
    final_cw: [u64; W],
}

/// The payload words of a 128-bit PRG value block, reduced mod 2^ℓ.
#[inline]
fn convert<const W: usize>(block: u128, out_mask: u64) -> [u64; W] {
    let mut out = [0u64; W];
    for (k, o) in out.iter_mut().enumerate() {
        *o = (block >> (64 * k)) as u64 & out_mask;
    }
    out
}

fn check_params(n_bits: u32, out_bits: u32) {
    assert!(
        (1..=64).contains(&n_bits),
        "DCF input width must be 1..=64 bits, got {n_bits}"
    );
    assert!(
        (1..=64).contains(&out_bits),
        "DCF payload width must be 1..=64 bits, got {out_bits}"
    );
}

/// Generates DCF keys for f(x) = β·1{x < α} on `n_bits`-bit inputs with a scalar payload in
/// Z_2^`out_bits` (β is reduced mod 2^out_bits).
///
/// # Panics
/// If `n_bits` or `out_bits` is outside 1..=64 or `alpha ≥ 2^n_bits`.
pub fn dcf_gen(
    alpha: u64,
    beta: u64,
    n_bits: u32,
    out_bits: u32,
    prg: &mut Prg,
) -> (DcfKey, DcfKey) {
    dcf_gen_vec::<1>(alpha, [beta], n_bits, out_bits, prg)
}

/// Party `party`'s additive share (mod 2^out_bits) of β·1{x < α}; x is reduced mod 2^n.
pub fn dcf_eval(party: PartyId, key: &DcfKey, x: u64) -> u64 {
    dcf_eval_vec(party, key, x)[0]
}

/// Generates DCF keys with a vector payload β ∈ (Z_2^out_bits)^W, W ∈ {1, 2}
/// (W = 2 serves one-round ReLU-type gates: one comparison, two payload words).
///
/// # Panics
/// As [`dcf_gen`], or if W is not 1 or 2 (compile-time check).
pub fn dcf_gen_vec<const W: usize>(
    alpha: u64,
    beta: [u64; W],
    n_bits: u32,
    out_bits: u32,
    prg: &mut Prg,
) -> (DcfKey<W>, DcfKey<W>) {
    const { assert!(W == 1 || W == 2, "DCF payload width W must be 1 or 2") };
    check_params(n_bits, out_bits);
    assert!(
        alpha <= mask64(n_bits),
        "DCF threshold {alpha} does not fit in {n_bits} bits"
    );
    let out_mask = mask64(out_bits);
    let tree = TreePrg::global();
    let roots = [
        u128::from_le_bytes(prg.next_seed()) & SEED_MASK,
        u128::from_le_bytes(prg.next_seed()) & SEED_MASK,
    ];
    let mut seeds = roots;
    let mut ts = [false, true];
    let mut v_alpha = [0u64; W];
    let mut levels = Vec::with_capacity(n_bits as usize);
    for i in 0..n_bits {
        let a = (alpha >> (n_bits - 1 - i)) & 1;
        let keep = a as usize;
        let lose = 1 - keep;
        let children = [tree.children(seeds[0]), tree.children(seeds[1])];
        let values = [tree.values(seeds[0]), tree.values(seeds[1])];
        let negate = ts[1];
        let sign = |v: u64| if negate { v.wrapping_neg() } else { v };
        let v_lose = [
            convert::<W>(values[0][lose], out_mask),
            convert::<W>(values[1][lose], out_mask),
        ];
        let v_keep = [
            convert::<W>(values[0][keep], out_mask),
            convert::<W>(values[1][keep], out_mask),
        ];
        let mut value_cw = [0u64; W];
        for k in 0..W {
            let mut cw = sign(
                v_lose[1][k]
                    .wrapping_sub(v_lose[0][k])
                    .wrapping_sub(v_alpha[k]),
            );
            if a == 1 {
                cw = cw.wrapping_add(sign(beta[k]));
            }
            value_cw[k] = cw & out_mask;
            v_alpha[k] = v_alpha[k]
                .wrapping_add(v_keep[0][k])
                .wrapping_sub(v_keep[1][k])
                .wrapping_add(sign(value_cw[k]));
        }
        let (s0l, t0l) = split_node(children[0][0]);
        let (s0r, t0r) = split_node(children[0][1]);
        let (s1l, t1l) = split_node(children[1][0]);
        let (s1r, t1r) = split_node(children[1][1]);
        let seed_cw = if lose == 0 { s0l ^ s1l } else { s0r ^ s1r };
        let a_bit = a == 1;
        let t_left = t0l ^ t1l ^ a_bit ^ true;
        let t_right = t0r ^ t1r ^ a_bit;
        let t_keep_cw = if keep == 0 { t_left } else { t_right };
        for b in 0..2 {
            let (s_keep, t_keep) = split_node(children[b][keep]);
            let t = ts[b];
            seeds[b] = s_keep ^ (mask_u128(t) & seed_cw);
            ts[b] = t_keep ^ (t & t_keep_cw);
        }
        levels.push(DcfLevel {
            seed_cw,
            value_cw,
            t_left,
            t_right,
        });
    }
    let last = [
        convert::<W>(tree.value(seeds[0], 0), out_mask),
        convert::<W>(tree.value(seeds[1], 0), out_mask),
    ];
    let mut final_cw = [0u64; W];
    for k in 0..W {
        let d = last[1][k].wrapping_sub(last[0][k]).wrapping_sub(v_alpha[k]);
        final_cw[k] = if ts[1] { d.wrapping_neg() } else { d } & out_mask;
    }
    let make = |root: u128| DcfKey {
        n_bits,
        out_bits,
        root,
        levels: levels.clone(),
        final_cw,
    };
    (make(roots[0]), make(roots[1]))
}

/// Party `party`'s additive shares (mod 2^out_bits) of the W payload words of β·1{x < α}.
pub fn dcf_eval_vec<const W: usize>(party: PartyId, key: &DcfKey<W>, x: u64) -> [u64; W] {
    let tree = TreePrg::global();
    let out_mask = mask64(key.out_bits);
    let n = key.n_bits;
    let x = x & mask64(n);
    let mut seed = key.root;
    let mut t = party == PartyId::P1;
    let mut acc = [0u64; W];
    for (i, cw) in key.levels.iter().enumerate() {
        let dir = (x >> (n - 1 - i as u32)) & 1;
        let child = tree.child(seed, dir);
        let value = convert::<W>(tree.value(seed, dir), out_mask);
        let tm = mask_u64(t);
        for k in 0..W {
            acc[k] = acc[k]
                .wrapping_add(value[k])
                .wrapping_add(tm & cw.value_cw[k]);
        }
        let (s_child, t_child) = split_node(child);
        let t_cw = if dir == 0 { cw.t_left } else { cw.t_right };
        seed = s_child ^ (mask_u128(t) & cw.seed_cw);
        t = t_child ^ (t & t_cw);
    }
    let last = convert::<W>(tree.value(seed, 0), out_mask);
    let tm = mask_u64(t);
    for k in 0..W {
        acc[k] = acc[k]
            .wrapping_add(last[k])
            .wrapping_add(tm & key.final_cw[k]);
        if party == PartyId::P1 {
            acc[k] = acc[k].wrapping_neg();
        }
        acc[k] &= out_mask;
    }
    acc
}

/// Number of keys walked in lockstep so that their AES calls pipeline in one batch.
pub(crate) const LANES: usize = 8;

/// Keys per rayon task in the batch evaluators.
pub(crate) const TASK: usize = 256;

/// Walks up to [`LANES`] keys with identical widths in lockstep: per level one batched AES
/// call for the seeds and one for the payloads of all lanes. Same result as
/// [`dcf_eval_vec`] per lane.
fn eval_lanes<const W: usize>(
    party: PartyId,
    keys: &[&DcfKey<W>],
    xs: &[u64],
    out: &mut [[u64; W]],
) {
    let lanes = keys.len();
    debug_assert!(lanes <= LANES && xs.len() == lanes && out.len() == lanes);
    let tree = TreePrg::global();
    let n = keys[0].n_bits;
    let out_mask = mask64(keys[0].out_bits);
    let x_mask = mask64(n);
    let mut seeds = [0u128; LANES];
    let mut ts = [party == PartyId::P1; LANES];
    let mut acc = [[0u64; W]; LANES];
    let mut child_in = [0u128; LANES];
    let mut value_in = [0u128; LANES];
    for j in 0..lanes {
        seeds[j] = keys[j].root;
    }
    for i in 0..n as usize {
        let shift = n - 1 - i as u32;
        for j in 0..lanes {
            let dir = ((xs[j] & x_mask) >> shift) & 1;
            child_in[j] = seeds[j] ^ dir as u128;
        }
        value_in[..lanes].copy_from_slice(&child_in[..lanes]);
        tree.child_batch(&mut child_in[..lanes]);
        tree.value_batch(&mut value_in[..lanes]);
        for j in 0..lanes {
            let cw = &keys[j].levels[i];
            let dir = ((xs[j] & x_mask) >> shift) & 1;
            let value = convert::<W>(value_in[j], out_mask);
            let t = ts[j];
            let tm = mask_u64(t);
            for k in 0..W {
                acc[j][k] = acc[j][k]
                    .wrapping_add(value[k])
                    .wrapping_add(tm & cw.value_cw[k]);
            }
            let (s_child, t_child) = split_node(child_in[j]);
            let t_cw = if dir == 0 { cw.t_left } else { cw.t_right };
            seeds[j] = s_child ^ (mask_u128(t) & cw.seed_cw);
            ts[j] = t_child ^ (t & t_cw);
        }
    }
    value_in[..lanes].copy_from_slice(&seeds[..lanes]);
    tree.value_batch(&mut value_in[..lanes]);
    for j in 0..lanes {
        let last = convert::<W>(value_in[j], out_mask);
        let tm = mask_u64(ts[j]);
        for k in 0..W {
            let mut v = acc[j][k]
                .wrapping_add(last[k])
                .wrapping_add(tm & keys[j].final_cw[k]);
            if party == PartyId::P1 {
                v = v.wrapping_neg();
            }
            out[j][k] = v & out_mask;
        }
    }
}

/// Sequential evaluation of `keys[i]` at `xs[i]` into `out[i]`, in lockstep groups of
/// [`LANES`] consecutive keys that share their widths (others one by one).
pub(crate) fn dcf_eval_many<const W: usize>(
    party: PartyId,
    keys: &[&DcfKey<W>],
    xs: &[u64],
    out: &mut [[u64; W]],
) {
    for ((k, x), o) in keys
        .chunks(LANES)
        .zip(xs.chunks(LANES))
        .zip(out.chunks_mut(LANES))
    {
        let uniform = k
            .iter()
            .all(|key| key.n_bits == k[0].n_bits && key.out_bits == k[0].out_bits);
        if uniform {
            eval_lanes(party, k, x, o);
        } else {
            for j in 0..k.len() {
                o[j] = dcf_eval_vec(party, k[j], x[j]);
            }
        }
    }
}

/// Evaluates `keys[i]` at `xs[i]` for every i in parallel (rayon tasks of 256 keys, AES
/// pipelined over 8 keys in lockstep); the i-th output is party `party`'s share of
/// `β_i·1{xs[i] < α_i}`.
///
/// # Panics
/// If `keys` and `xs` have different lengths.
pub fn dcf_eval_batch(party: PartyId, keys: &[DcfKey], xs: &[u64]) -> Vec<u64> {
    assert_eq!(
        keys.len(),
        xs.len(),
        "dcf_eval_batch needs one input per key"
    );
    let mut out = vec![0u64; keys.len()];
    out.par_chunks_mut(TASK)
        .zip(keys.par_chunks(TASK).zip(xs.par_chunks(TASK)))
        .for_each(|(o, (k, x))| {
            let refs: Vec<&DcfKey> = k.iter().collect();
            let mut tmp = vec![[0u64; 1]; k.len()];
            dcf_eval_many(party, &refs, x, &mut tmp);
            for (dst, src) in o.iter_mut().zip(tmp) {
                *dst = src[0];
            }
        });
    out
}

impl<const W: usize> DcfKey<W> {
    /// Input width n in bits.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }

    /// Payload width ℓ in bits (shares are mod 2^ℓ).
    pub fn out_bits(&self) -> u32 {
        self.out_bits
    }

    fn body_bits(n_bits: u32, out_bits: u32) -> usize {
        let per_level = 127 + 2 + W as u32 * out_bits;
        (n_bits * per_level + 127 + W as u32 * out_bits) as usize
    }

    /// Length of [`DcfKey::to_bytes`]: 3 header bytes + the bit-packed body.
    pub fn encoded_len(&self) -> usize {
        Self::encoded_len_for(self.n_bits, self.out_bits)
    }

    /// Serialized key length for the given widths, without generating a key (cost models).
    pub fn encoded_len_for(n_bits: u32, out_bits: u32) -> usize {
        3 + Self::body_bits(n_bits, out_bits).div_ceil(8)
    }

    /// Appends the serialized key to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.push(DCF_TAG_BASE + W as u8);
        out.push(self.n_bits as u8);
        out.push(self.out_bits as u8);
        let mut w = BitWriter::new(out);
        w.put_u128(self.root >> 1, 127);
        for level in &self.levels {
            w.put_u128(level.seed_cw >> 1, 127);
            w.put_bit(level.t_left);
            w.put_bit(level.t_right);
            for &v in &level.value_cw {
                w.put(v, self.out_bits);
            }
        }
        for &v in &self.final_cw {
            w.put(v, self.out_bits);
        }
        w.finish();
    }

    /// Serializes the key (compact: seeds 127 bits, control bits 1 bit, payload ℓ bits).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }

    /// Reads one key from the front of `r`.
    pub(crate) fn read_from(r: &mut ByteReader<'_>) -> Result<Self, FssError> {
        const WHAT: &str = "DCF key";
        r.tag(DCF_TAG_BASE + W as u8, WHAT)?;
        let n_bits = r.byte(WHAT)? as u32;
        let out_bits = r.byte(WHAT)? as u32;
        if !(1..=64).contains(&n_bits) {
            return Err(FssError::InvalidParameter {
                what: "DCF input width",
                value: n_bits as u64,
                allowed: "1..=64",
            });
        }
        if !(1..=64).contains(&out_bits) {
            return Err(FssError::InvalidParameter {
                what: "DCF payload width",
                value: out_bits as u64,
                allowed: "1..=64",
            });
        }
        let body = r.take(Self::body_bits(n_bits, out_bits).div_ceil(8), WHAT)?;
        let mut br = BitReader::new(body);
        let root = br.get_u128(127, WHAT)? << 1;
        let mut levels = Vec::with_capacity(n_bits as usize);
        for _ in 0..n_bits {
            let seed_cw = br.get_u128(127, WHAT)? << 1;
            let t_left = br.get_bit(WHAT)?;
            let t_right = br.get_bit(WHAT)?;
            let mut value_cw = [0u64; W];
            for v in value_cw.iter_mut() {
                *v = br.get(out_bits, WHAT)?;
            }
            levels.push(DcfLevel {
                seed_cw,
                value_cw,
                t_left,
                t_right,
            });
        }
        let mut final_cw = [0u64; W];
        for v in final_cw.iter_mut() {
            *v = br.get(out_bits, WHAT)?;
        }
        br.finish(WHAT)?;
        Ok(DcfKey {
            n_bits,
            out_bits,
            root,
            levels,
            final_cw,
        })
    }

    /// Parses a key written by [`DcfKey::to_bytes`]; wrong tag, bad parameters, truncation,
    /// trailing bytes or non-zero padding give an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FssError> {
        let mut r = ByteReader::new(bytes);
        let key = Self::read_from(&mut r)?;
        r.finish("DCF key")?;
        Ok(key)
    }
}
