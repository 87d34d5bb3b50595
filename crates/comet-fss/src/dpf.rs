//! Distributed point function with a 1-bit output and early termination (SIGMA style), plus
//! the DPF-based comparison `1{x < α}` by one path walk.
//!
//! The two keys XOR-share the point vector e_α ∈ {0,1}^{2^n}. For n ≤ 7 a key is simply an
//! XOR share of the 2^n-bit truth table. For n > 7 the top d = n − 7 bits of x select a
//! 128-bit leaf block through a GGM tree and the low 7 bits select a bit in it:
//!
//! ```text
//! levels 1..d−1: standard BGI node step, node = (s, t):
//!     (s^c, t^c) = child(s, x_i);  s' = s^c ⊕ t·s_CW;  t' = t^c ⊕ t·t_CW^{x_i}
//! level d (leaf): L = child(s, x_d) ⊕ t·LeafCW[x_d]     (full 128-bit block, no new seed)
//! ```
//!
//! with `LeafCW[keep] = c_0^keep ⊕ c_1^keep ⊕ e_{α mod 128}` and `LeafCW[lose] = c_0^lose ⊕ c_1^lose`
//! (c_b = raw child blocks of the two parties' last on-path seeds, control bit included, so
//! each leaf correction word is masked by 128 bits of the other party's PRG output; off α's
//! path both parties hold equal seeds and equal leaves). Evaluation costs exactly
//! d = n − 7 AES calls, full-domain evaluation 2^(d+1) − 2 AES calls (pipelined). Key size:
//! 127 + (d − 1)·129 + 256 bits + 2 header bytes (≈ 16(n − 5) bytes, fss-notes §1).
//!
//! **Comparison.** Let T(p) = t_0(p) ⊕ t_1(p) for an inner node p; T(p) = 1 iff p is a prefix
//! of α, hence T(p) = T(p‖0) ⊕ T(p‖1). For a leaf let t_b(p) = parity(L_b(p)), which has the
//! same property. Then
//!
//! ```text
//! 1{x < α} = ⊕_{levels i with x_i = 0} T(x_{<i}‖1)  ⊕  ⊕_{j > x mod 128} (L_0 ⊕ L_1)(x_{≤d})[j]
//! ```
//!
//! and the sibling's share is `t_b(x_{<i}) ⊕ t_b(x_{≤i})` (both on x's own path), so one
//! walk with d AES calls yields an XOR share of `1{x < α}`.

use crate::codec::{mask64, BitReader, BitWriter, ByteReader};
use crate::dcf::{LANES, TASK};
use crate::error::FssError;
use crate::prg::{mask_u128, split_node, TreePrg, SEED_MASK};
use comet_core::{PartyId, Prg};
use rayon::prelude::*;

/// Tag byte of a serialized DPF key.
const DPF_TAG: u8 = 0xD0;

/// Number of input bits resolved inside one 128-bit leaf block.
pub const LEAF_BITS: u32 = 7;

/// Largest domain for which [`dpf_eval_all`] materializes the whole point vector.
pub const MAX_EVAL_ALL_BITS: u32 = 32;

/// Correction word of one inner tree level.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DpfLevel {
    seed_cw: u128,
    t_left: bool,
    t_right: bool,
}

impl DpfLevel {
    /// The block XORed into child `dir` when the parent's control bit is set.
    #[inline]
    fn block(&self, dir: u64) -> u128 {
        let t = if dir == 0 { self.t_left } else { self.t_right };
        self.seed_cw | t as u128
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DpfBody {
    /// n ≤ 7: XOR share of the 2^n-bit truth table.
    Table(u128),
    /// n > 7: GGM tree with n − 8 inner levels and a 128-bit leaf level.
    Tree {
        root: u128,
        levels: Vec<DpfLevel>,
        leaf_cw: [u128; 2],
    },
}

/// One party's key of a 1-bit DPF with early termination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpfKey {
    n_bits: u32,
    body: DpfBody,
}

/// Parity of a 128-bit block.
#[inline]
fn parity(x: u128) -> bool {
    x.count_ones() & 1 == 1
}

/// Bits of `x` at positions ≥ `from` (0 if `from` ≥ 128).
#[inline]
fn bits_from(x: u128, from: u32) -> u128 {
    x.checked_shr(from).unwrap_or(0)
}

/// Generates DPF keys whose evaluations XOR-share the bit 1{x = α} on `n_bits`-bit inputs.
///
/// # Panics
/// If `n_bits` is outside 1..=64 or `alpha ≥ 2^n_bits`.
pub fn dpf_gen(alpha: u64, n_bits: u32, prg: &mut Prg) -> (DpfKey, DpfKey) {
    assert!(
        (1..=64).contains(&n_bits),
        "DPF input width must be 1..=64 bits, got {n_bits}"
    );
    assert!(
        alpha <= mask64(n_bits),
        "DPF point {alpha} does not fit in {n_bits} bits"
    );
    if n_bits <= LEAF_BITS {
        let table_mask = mask128(1u32 << n_bits);
        let r = u128::from_le_bytes(prg.next_seed()) & table_mask;
        let k0 = DpfKey {
            n_bits,
            body: DpfBody::Table(r),
        };
        let k1 = DpfKey {
            n_bits,
            body: DpfBody::Table(r ^ (1u128 << alpha)),
        };
        return (k0, k1);
    }
    let tree = TreePrg::global();
    let depth = n_bits - LEAF_BITS;
    let roots = [
        u128::from_le_bytes(prg.next_seed()) & SEED_MASK,
        u128::from_le_bytes(prg.next_seed()) & SEED_MASK,
    ];
    let mut seeds = roots;
    let mut ts = [false, true];
    let mut levels = Vec::with_capacity(depth as usize - 1);
    for i in 0..depth - 1 {
        let a = (alpha >> (n_bits - 1 - i)) & 1;
        let keep = a as usize;
        let lose = 1 - keep;
        let children = [tree.children(seeds[0]), tree.children(seeds[1])];
        let (s0_lose, _) = split_node(children[0][lose]);
        let (s1_lose, _) = split_node(children[1][lose]);
        let seed_cw = s0_lose ^ s1_lose;
        let a_bit = a == 1;
        let t_left = ((children[0][0] ^ children[1][0]) & 1 == 1) ^ a_bit ^ true;
        let t_right = ((children[0][1] ^ children[1][1]) & 1 == 1) ^ a_bit;
        let level = DpfLevel {
            seed_cw,
            t_left,
            t_right,
        };
        for b in 0..2 {
            let node = children[b][keep] ^ (mask_u128(ts[b]) & level.block(a));
            (seeds[b], ts[b]) = split_node(node);
        }
        levels.push(level);
    }
    let a = (alpha >> LEAF_BITS) & 1;
    let keep = a as usize;
    let children = [tree.children(seeds[0]), tree.children(seeds[1])];
    let mut leaf_cw = [
        children[0][0] ^ children[1][0],
        children[0][1] ^ children[1][1],
    ];
    leaf_cw[keep] ^= 1u128 << (alpha & 127);
    let make = |root: u128| DpfKey {
        n_bits,
        body: DpfBody::Tree {
            root,
            levels: levels.clone(),
            leaf_cw,
        },
    };
    (make(roots[0]), make(roots[1]))
}

/// Mask of the low `bits` bits of a u128 (`bits` ≤ 128).
fn mask128(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// Walks x's path; returns this party's leaf block (bit x mod 128 is its share of 1{x = α})
/// and its XOR share of the tree part of 1{x < α}.
#[inline]
fn walk(
    party: PartyId,
    n_bits: u32,
    root: u128,
    levels: &[DpfLevel],
    leaf_cw: &[u128; 2],
    x: u64,
) -> (u128, bool) {
    let tree = TreePrg::global();
    let mut seed = root;
    let mut t = party == PartyId::P1;
    let mut lt = false;
    for (i, level) in levels.iter().enumerate() {
        let dir = (x >> (n_bits - 1 - i as u32)) & 1;
        let node = tree.child(seed, dir) ^ (mask_u128(t) & level.block(dir));
        let (s_next, t_next) = split_node(node);
        lt ^= (dir == 0) & (t ^ t_next);
        seed = s_next;
        t = t_next;
    }
    let dir = (x >> LEAF_BITS) & 1;
    let leaf = tree.child(seed, dir) ^ (mask_u128(t) & leaf_cw[dir as usize]);
    lt ^= (dir == 0) & (t ^ parity(leaf));
    (leaf, lt)
}

/// Party `party`'s XOR share of 1{x = α} (x reduced mod 2^n); n − 7 AES calls for n > 7.
pub fn dpf_eval_bit(party: PartyId, key: &DpfKey, x: u64) -> u8 {
    let x = x & mask64(key.n_bits);
    match &key.body {
        DpfBody::Table(table) => ((table >> x) & 1) as u8,
        DpfBody::Tree {
            root,
            levels,
            leaf_cw,
        } => {
            let (leaf, _) = walk(party, key.n_bits, *root, levels, leaf_cw, x);
            ((leaf >> (x & 127)) & 1) as u8
        }
    }
}

/// Party `party`'s XOR share of 1{x < α} (unsigned, x reduced mod 2^n) by one path walk
/// (SIGMA's DPF-based comparison; n − 7 AES calls for n > 7).
pub fn dpf_lt(party: PartyId, key: &DpfKey, x: u64) -> u8 {
    let x = x & mask64(key.n_bits);
    match &key.body {
        DpfBody::Table(table) => parity(bits_from(*table, x as u32 + 1)) as u8,
        DpfBody::Tree {
            root,
            levels,
            leaf_cw,
        } => {
            let (leaf, lt) = walk(party, key.n_bits, *root, levels, leaf_cw, x);
            (lt ^ parity(bits_from(leaf, (x & 127) as u32 + 1))) as u8
        }
    }
}

/// [`dpf_lt`] for up to [`LANES`] tree keys of equal width walked in lockstep (one batched,
/// pipelined AES call per level for all lanes).
fn lt_lanes(party: PartyId, keys: &[&DpfKey], xs: &[u64], out: &mut [u8]) {
    let lanes = keys.len();
    debug_assert!(lanes <= LANES && xs.len() == lanes && out.len() == lanes);
    let tree = TreePrg::global();
    let n = keys[0].n_bits;
    let x_mask = mask64(n);
    let mut seeds = [0u128; LANES];
    let mut ts = [party == PartyId::P1; LANES];
    let mut lt = [false; LANES];
    let mut inputs = [0u128; LANES];
    let parts: Vec<(&[DpfLevel], &[u128; 2])> = keys
        .iter()
        .map(|k| match &k.body {
            DpfBody::Tree {
                levels, leaf_cw, ..
            } => (levels.as_slice(), leaf_cw),
            DpfBody::Table(_) => unreachable!("lt_lanes is only called on tree keys"),
        })
        .collect();
    for (j, k) in keys.iter().enumerate() {
        if let DpfBody::Tree { root, .. } = &k.body {
            seeds[j] = *root;
        }
    }
    let inner = (n - LEAF_BITS - 1) as usize;
    for i in 0..=inner {
        let shift = n - 1 - i as u32;
        for j in 0..lanes {
            inputs[j] = seeds[j] ^ (((xs[j] & x_mask) >> shift) & 1) as u128;
        }
        tree.child_batch(&mut inputs[..lanes]);
        for j in 0..lanes {
            let dir = ((xs[j] & x_mask) >> shift) & 1;
            let (levels, leaf_cw) = parts[j];
            let t = ts[j];
            if i < inner {
                let node = inputs[j] ^ (mask_u128(t) & levels[i].block(dir));
                let (s_next, t_next) = split_node(node);
                lt[j] ^= (dir == 0) & (t ^ t_next);
                seeds[j] = s_next;
                ts[j] = t_next;
            } else {
                let leaf = inputs[j] ^ (mask_u128(t) & leaf_cw[dir as usize]);
                lt[j] ^= (dir == 0) & (t ^ parity(leaf));
                lt[j] ^= parity(bits_from(leaf, (xs[j] & 127) as u32 + 1));
            }
        }
    }
    for j in 0..lanes {
        out[j] = lt[j] as u8;
    }
}

/// Sequential [`dpf_lt`] of `keys[i]` at `xs[i]` into `out[i]`, lockstep over groups of
/// [`LANES`] consecutive tree keys of equal width.
pub(crate) fn dpf_lt_many(party: PartyId, keys: &[&DpfKey], xs: &[u64], out: &mut [u8]) {
    for ((k, x), o) in keys
        .chunks(LANES)
        .zip(xs.chunks(LANES))
        .zip(out.chunks_mut(LANES))
    {
        let uniform = k[0].n_bits > LEAF_BITS && k.iter().all(|key| key.n_bits == k[0].n_bits);
        if uniform {
            lt_lanes(party, k, x, o);
        } else {
            for j in 0..k.len() {
                o[j] = dpf_lt(party, k[j], x[j]);
            }
        }
    }
}

/// [`dpf_lt`] of `keys[i]` at `xs[i]` for every i, in parallel (rayon tasks of 256 keys, AES
/// pipelined over 8 keys in lockstep).
///
/// # Panics
/// If `keys` and `xs` have different lengths.
pub fn dpf_lt_batch(party: PartyId, keys: &[DpfKey], xs: &[u64]) -> Vec<u8> {
    assert_eq!(keys.len(), xs.len(), "dpf_lt_batch needs one input per key");
    let mut out = vec![0u8; keys.len()];
    out.par_chunks_mut(TASK)
        .zip(keys.par_chunks(TASK).zip(xs.par_chunks(TASK)))
        .for_each(|(o, (k, x))| {
            let refs: Vec<&DpfKey> = k.iter().collect();
            dpf_lt_many(party, &refs, x, o);
        });
    out
}

/// Party `party`'s XOR share of the whole point vector e_α as a bitset: bit i of the result
/// is word `i / 64`, bit `i % 64` (2^n bits, at least one word). For n > 7 this costs
/// 2^(n−6) − 2 AES calls, batched level by level.
///
/// # Panics
/// If `n_bits > MAX_EVAL_ALL_BITS`.
pub fn dpf_eval_all(party: PartyId, key: &DpfKey) -> Vec<u64> {
    assert!(
        key.n_bits <= MAX_EVAL_ALL_BITS,
        "dpf_eval_all materializes 2^n bits; n = {} is above {MAX_EVAL_ALL_BITS}",
        key.n_bits
    );
    match &key.body {
        DpfBody::Table(table) => {
            let words = (1usize << key.n_bits).div_ceil(64);
            (0..words).map(|w| (table >> (64 * w)) as u64).collect()
        }
        DpfBody::Tree {
            root,
            levels,
            leaf_cw,
        } => {
            let tree = TreePrg::global();
            let mut nodes = vec![*root | (party == PartyId::P1) as u128];
            let mut next = Vec::new();
            for level in levels {
                expand_level(tree, &nodes, &mut next, [level.block(0), level.block(1)]);
                std::mem::swap(&mut nodes, &mut next);
            }
            expand_level(tree, &nodes, &mut next, *leaf_cw);
            let mut out = Vec::with_capacity(next.len() * 2);
            for leaf in next {
                out.push(leaf as u64);
                out.push((leaf >> 64) as u64);
            }
            out
        }
    }
}

/// Expands every node (seed | t) into its two corrected children, in order.
fn expand_level(tree: &TreePrg, nodes: &[u128], out: &mut Vec<u128>, cw: [u128; 2]) {
    out.clear();
    out.reserve(nodes.len() * 2);
    for &node in nodes {
        let seed = node & SEED_MASK;
        out.push(seed);
        out.push(seed | 1);
    }
    tree.child_batch(out);
    for (pair, &node) in out.chunks_exact_mut(2).zip(nodes) {
        let m = mask_u128(node & 1 == 1);
        pair[0] ^= m & cw[0];
        pair[1] ^= m & cw[1];
    }
}

impl DpfKey {
    /// Input width n in bits.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }

    fn body_bits(n_bits: u32) -> usize {
        if n_bits <= LEAF_BITS {
            1usize << n_bits
        } else {
            let inner = (n_bits - LEAF_BITS - 1) as usize;
            127 + inner * 129 + 256
        }
    }

    /// Length of [`DpfKey::to_bytes`]: 2 header bytes + the bit-packed body.
    pub fn encoded_len(&self) -> usize {
        Self::encoded_len_for(self.n_bits)
    }

    /// Serialized key length for an `n_bits`-bit domain, without generating a key.
    pub fn encoded_len_for(n_bits: u32) -> usize {
        2 + Self::body_bits(n_bits).div_ceil(8)
    }

    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.push(DPF_TAG);
        out.push(self.n_bits as u8);
        let mut w = BitWriter::new(out);
        match &self.body {
            DpfBody::Table(table) => w.put_u128(*table, 1 << self.n_bits),
            DpfBody::Tree {
                root,
                levels,
                leaf_cw,
            } => {
                w.put_u128(root >> 1, 127);
                for level in levels {
                    w.put_u128(level.seed_cw >> 1, 127);
                    w.put_bit(level.t_left);
                    w.put_bit(level.t_right);
                }
                w.put_u128(leaf_cw[0], 128);
                w.put_u128(leaf_cw[1], 128);
            }
        }
        w.finish();
    }

    /// Serializes the key (seeds 127 bits, control bits packed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }

    pub(crate) fn read_from(r: &mut ByteReader<'_>) -> Result<Self, FssError> {
        const WHAT: &str = "DPF key";
        r.tag(DPF_TAG, WHAT)?;
        let n_bits = r.byte(WHAT)? as u32;
        if !(1..=64).contains(&n_bits) {
            return Err(FssError::InvalidParameter {
                what: "DPF input width",
                value: n_bits as u64,
                allowed: "1..=64",
            });
        }
        let body = r.take(Self::body_bits(n_bits).div_ceil(8), WHAT)?;
        let mut br = BitReader::new(body);
        let body = if n_bits <= LEAF_BITS {
            DpfBody::Table(br.get_u128(1 << n_bits, WHAT)?)
        } else {
            let root = br.get_u128(127, WHAT)? << 1;
            let inner = n_bits - LEAF_BITS - 1;
            let mut levels = Vec::with_capacity(inner as usize);
            for _ in 0..inner {
                let seed_cw = br.get_u128(127, WHAT)? << 1;
                let t_left = br.get_bit(WHAT)?;
                let t_right = br.get_bit(WHAT)?;
                levels.push(DpfLevel {
                    seed_cw,
                    t_left,
                    t_right,
                });
            }
            let leaf_cw = [br.get_u128(128, WHAT)?, br.get_u128(128, WHAT)?];
            DpfBody::Tree {
                root,
                levels,
                leaf_cw,
            }
        };
        br.finish(WHAT)?;
        Ok(DpfKey { n_bits, body })
    }

    /// Parses a key written by [`DpfKey::to_bytes`]; wrong tag, bad width, truncation,
    /// trailing bytes or non-zero padding give an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FssError> {
        let mut r = ByteReader::new(bytes);
        let key = Self::read_from(&mut r)?;
        r.finish("DPF key")?;
        Ok(key)
    }
}
