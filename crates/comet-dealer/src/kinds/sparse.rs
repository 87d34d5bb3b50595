//! Correlations of the sparse FFN and attention (DESIGN.md §7): the self-gate's keys (tag 40),
//! the per-session permuted FFN weights (tag 95) and attention weights (tag 96).
//!
//! **Self-gate.** For each element the dealer draws index masks `r_g, r_u ∈ Z_2^k` (both
//! servers' shares are PRG seeds) and a 1-bit DPF on `2k` bits at `α = r_g·2^k + r_u`. The
//! servers open `ĝ = g̃ + r_g` and `û = ũ + r_u` (k bits each) and XOR-share the public table's
//! entry `T[ĝ − r_g, û − r_u]` by one full-domain DPF evaluation.
//!
//! **Permuted FFN.** The dealer holds the plaintext FFN weights of every layer (it is the model
//! owner's service, DESIGN.md §1). Per session and layer it draws a secret permutation π of
//! the neurons and hands both servers the gate and up columns and the down rows in π order
//! under fresh masks (`F' = W_π − B'`, each server's share of `B'` as a seed). The new masks
//! replace the layer's previous session masks at the dealer.
//!
//! **Permuted attention.** Likewise per session and layer for the heads: a secret order of the
//! key/value groups and, inside each group, of its query heads (a query head stays with its
//! group, so the servers can pair it with the right cached keys). Q's columns and O's rows
//! move by head, K's and V's columns by group; a head predictor's outputs follow the heads.

use super::compare::{gen_key_pairs, get_keys, put_keys};
use super::{check_size, expand, get_ring, get_seed, put_seed};
use crate::weights::{FixedWeight, WeightId, WeightMask};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::ring::mask_bits;
use comet_core::{PartyId, Seed};
use comet_fss::{dpf_gen, DpfKey};
use comet_net::codec::{Reader, Writer};
use rayon::prelude::*;

/// Largest code width of the self-gate: the table has 2^(2k) entries and each element costs
/// one full-domain DPF evaluation of 2k bits.
pub const MAX_GATE_BITS: u32 = 8;

/// Public parameters of a batch of self-gate evaluations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfGateParams {
    /// Number of (token, neuron) elements.
    pub n: usize,
    /// Code width k of each of g̃ and ũ.
    pub bits: u32,
}

/// A server's half of `n` self-gate keys.
#[derive(Clone, Debug)]
pub struct SelfGateKeys {
    /// Share of the gate code mask `r_g` (mod 2^k).
    pub gate_mask: Vec<u64>,
    /// Share of the up code mask `r_u` (mod 2^k).
    pub up_mask: Vec<u64>,
    /// DPF keys at `r_g·2^k + r_u` on `2k` bits.
    pub dpf: Vec<DpfKey>,
}

fn check_gate_bits(bits: u32) -> Result<(), DealerError> {
    if !(1..=MAX_GATE_BITS).contains(&bits) {
        return Err(DealerError::InvalidParams(format!(
            "self-gate code width {bits} is outside 1..={MAX_GATE_BITS}"
        )));
    }
    Ok(())
}

/// The two k-bit mask shares a seed expands to.
fn gate_masks(seed: &Seed, n: usize, bits: u32) -> (Vec<u64>, Vec<u64>) {
    let m = mask_bits(bits);
    let v = expand(seed, 2 * n);
    (
        v[..n].iter().map(|x| x & m).collect(),
        v[n..].iter().map(|x| x & m).collect(),
    )
}

impl CorrelationKind for SelfGateKeys {
    type Params = SelfGateParams;
    const TAG: u8 = 40;
    const NAME: &'static str = "self-gate keys";

    fn encode_params(p: &SelfGateParams, w: &mut Writer) {
        w.u32(p.n as u32);
        w.u8(p.bits as u8);
    }

    fn decode_params(r: &mut Reader) -> Result<SelfGateParams, DealerError> {
        let n = r.u32()? as usize;
        let bits = r.u8()? as u32;
        Ok(SelfGateParams { n, bits })
    }

    fn generate(p: &SelfGateParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        check_size("self-gate elements", p.n)?;
        check_gate_bits(p.bits)?;
        let (n, k) = (p.n, p.bits);
        let seeds = [ctx.prg.next_seed(), ctx.prg.next_seed()];
        let (g0, u0) = gate_masks(&seeds[0], n, k);
        let (g1, u1) = gate_masks(&seeds[1], n, k);
        let m = mask_bits(k);
        let alpha: Vec<u64> = (0..n)
            .map(|i| ((g0[i] + g1[i]) & m) << k | ((u0[i] + u1[i]) & m))
            .collect();
        let (k0, k1) = gen_key_pairs(n, ctx.prg, |i, prg| dpf_gen(alpha[i], 2 * k, prg));
        let halves = [(seeds[0], k0), (seeds[1], k1)].map(|(seed, keys)| {
            let mut w = Writer::new();
            put_seed(&mut w, &seed);
            put_keys(&mut w, &keys);
            w.finish()
        });
        Ok(halves)
    }

    fn decode(_party: PartyId, p: &SelfGateParams, bytes: &[u8]) -> Result<Self, DealerError> {
        check_gate_bits(p.bits)?;
        let mut r = Reader::new(bytes);
        let seed = get_seed(&mut r)?;
        let dpf: Vec<DpfKey> = get_keys(&mut r, p.n, Self::NAME)?;
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        if let Some(key) = dpf.iter().find(|key| key.n_bits() != 2 * p.bits) {
            return Err(DealerError::Malformed(format!(
                "{}: DPF key of {} bits, expected {}",
                Self::NAME,
                key.n_bits(),
                2 * p.bits
            )));
        }
        let (gate_mask, up_mask) = gate_masks(&seed, p.n, p.bits);
        Ok(SelfGateKeys {
            gate_mask,
            up_mask,
            dpf,
        })
    }
}

/// The plaintext fixed-point FFN of one layer, kept by the dealer for per-session permutation.
#[derive(Clone, Debug)]
pub struct PlainFfn {
    /// Model width d.
    pub d: usize,
    /// Number of neurons.
    pub ffn: usize,
    /// Gate weight, input-major `d × ffn`.
    pub gate: Vec<u64>,
    /// Up weight, input-major `d × ffn`.
    pub up: Vec<u64>,
    /// Down weight, input-major `ffn × d`.
    pub down: Vec<u64>,
    /// The layer's trained activation predictor, if sessions may use it.
    pub predictor: Option<PlainPredictor>,
}

/// A trained predictor `logits = ReLU(x·W1 + b1)·W2 + b2` in fixed point, as the dealer keeps
/// it: W1 is the same for every session, W2's columns and b2 follow the neuron permutation.
#[derive(Clone, Debug)]
pub struct PlainPredictor {
    /// Hidden width.
    pub hidden: usize,
    /// `d × hidden`, input-major, scale f.
    pub w1: Vec<u64>,
    /// `hidden`, scale 2f.
    pub b1: Vec<u64>,
    /// `hidden × ffn`, input-major, scale f.
    pub w2: Vec<u64>,
    /// `ffn`, scale 3f.
    pub b2: Vec<u64>,
}

/// The plaintext fixed-point attention of one layer (gain folded into Q, K and V), kept by the
/// dealer for per-session head permutation.
#[derive(Clone, Debug)]
pub struct PlainAttn {
    /// Model width d.
    pub d: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value groups (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Query weight, input-major `d × n_heads·head_dim`.
    pub wq: Vec<u64>,
    /// Key weight, input-major `d × n_kv_heads·head_dim`.
    pub wk: Vec<u64>,
    /// Value weight, input-major `d × n_kv_heads·head_dim`.
    pub wv: Vec<u64>,
    /// Output weight, input-major `n_heads·head_dim × d`.
    pub wo: Vec<u64>,
    /// The layer's trained head predictor (one output per head), if sessions may use it.
    pub predictor: Option<PlainPredictor>,
}

impl PlainAttn {
    /// A secret head order: groups shuffled, then the heads inside each group. Position `p`
    /// of the servers' order holds head `perm[p]`, and `perm[p] / group == order[p / group]`.
    fn draw_permutation(&self, prg: &mut comet_core::Prg) -> Vec<usize> {
        let group = self.n_heads / self.n_kv_heads;
        let groups = prg.gen_permutation(self.n_kv_heads);
        groups
            .iter()
            .flat_map(|&g| {
                let inner = prg.gen_permutation(group);
                inner.into_iter().map(move |j| g * group + j)
            })
            .collect()
    }
}

/// One layer's session order and the ids of its session weights.
type Current = (Vec<usize>, Vec<WeightId>);

/// The dealer's per-session sparse state: plaintext FFN and attention weights, the current
/// permutations and weight ids of each layer, and the mask changes a generation asks the
/// dealer to apply.
#[derive(Debug, Default)]
pub struct SparseStore {
    plain: std::collections::HashMap<u32, PlainFfn>,
    current: std::collections::HashMap<u32, Current>,
    plain_attn: std::collections::HashMap<u32, PlainAttn>,
    current_attn: std::collections::HashMap<u32, Current>,
    next_id: u32,
    /// Masks to register once the generation is done.
    pub(crate) pending: Vec<(WeightId, WeightMask)>,
    /// Ids whose masks are no longer needed.
    pub(crate) retired: Vec<WeightId>,
}

/// Session weight ids live above this bound, apart from the model's fixed weights.
const SESSION_ID_BASE: u32 = 1 << 31;

impl SparseStore {
    /// Keeps layer `layer`'s plaintext FFN for permutation.
    pub fn insert(&mut self, layer: u32, ffn: PlainFfn) {
        self.plain.insert(layer, ffn);
    }

    /// Keeps layer `layer`'s plaintext attention for head permutation.
    pub fn insert_attn(&mut self, layer: u32, attn: PlainAttn) {
        self.plain_attn.insert(layer, attn);
    }

    /// The permutation of layer `layer`'s current session: position `i` of the servers'
    /// order holds neuron `perm[i]`. Only the dealer knows it (tests use it).
    pub fn permutation(&self, layer: u32) -> Option<&[usize]> {
        self.current.get(&layer).map(|(p, _)| p.as_slice())
    }

    /// The head order of layer `layer`'s current session: position `i` holds head `perm[i]`.
    pub fn head_permutation(&self, layer: u32) -> Option<&[usize]> {
        self.current_attn.get(&layer).map(|(p, _)| p.as_slice())
    }

    /// Masks a layer's session matrices (and shares the predictor's biases), records `perm` as
    /// the layer's current FFN (or, with `attention`, head) order and retires the previous
    /// session's ids; returns both servers' halves.
    fn finish_layer(
        &mut self,
        attention: bool,
        layer: u32,
        perm: Vec<usize>,
        matrices: Vec<(Vec<u64>, usize, usize)>,
        biases: Option<(Vec<u64>, Vec<u64>)>,
        prg: &mut comet_core::Prg,
    ) -> [Vec<u8>; 2] {
        let mut halves = [Writer::new(), Writer::new()];
        let ids = self.emit_masked(matrices, &mut halves, prg);
        if let Some((b1, b2)) = biases {
            put_shared_biases(&mut halves, b1, b2, prg);
        }
        let current = if attention {
            &mut self.current_attn
        } else {
            &mut self.current
        };
        if let Some((_, old)) = current.insert(layer, (perm, ids)) {
            self.retired.extend(old);
        }
        halves.map(Writer::finish)
    }

    /// Masks every matrix `(values, k, n)` under fresh seeds, writes both servers' views into
    /// `halves` (a count byte, then per matrix its id, shape, `F = W − B` and the server's
    /// seed of `B`) and returns the new ids; the masks join `pending`.
    fn emit_masked(
        &mut self,
        matrices: Vec<(Vec<u64>, usize, usize)>,
        halves: &mut [Writer; 2],
        prg: &mut comet_core::Prg,
    ) -> Vec<WeightId> {
        for half in halves.iter_mut() {
            half.u8(matrices.len() as u8);
        }
        let mut ids = Vec::with_capacity(matrices.len());
        for (w, k, cols_n) in matrices {
            let id = self.fresh_id();
            ids.push(id);
            let (mask, masked, seeds) = mask_with_seeds(&w, prg);
            self.pending.push((id, WeightMask { k, n: cols_n, mask }));
            for (half, seed) in halves.iter_mut().zip(&seeds) {
                half.u32(id.0).u32(k as u32).u32(cols_n as u32);
                half.ring(&masked, 64);
                put_seed(half, seed);
            }
        }
        ids
    }

    fn fresh_id(&mut self) -> WeightId {
        let id = WeightId(SESSION_ID_BASE | self.next_id);
        self.next_id = (self.next_id + 1) % SESSION_ID_BASE;
        id
    }
}

/// Public parameters: which layer's FFN to permute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermutedFfnParams {
    /// Transformer block index.
    pub layer: u32,
}

/// A server's view of one layer's FFN for one session, in the secret neuron order.
#[derive(Clone, Debug)]
pub struct PermutedFfn {
    /// Gate weight (`d × ffn`), columns permuted.
    pub gate: FixedWeight,
    /// Up weight (`d × ffn`), columns permuted.
    pub up: FixedWeight,
    /// Down weight (`ffn × d`), rows permuted.
    pub down: FixedWeight,
    /// The predictor under fresh masks, its outputs permuted, when the dealer holds one.
    pub predictor: Option<SessionPredictor>,
}

/// A server's view of a layer's predictor for one session.
#[derive(Clone, Debug)]
pub struct SessionPredictor {
    /// `d × hidden`.
    pub w1: FixedWeight,
    /// Share of b1 (scale 2f).
    pub b1: Vec<u64>,
    /// `hidden × ffn`, columns permuted.
    pub w2: FixedWeight,
    /// Share of b2 in the permuted order (scale 3f).
    pub b2: Vec<u64>,
}

/// Masks `w` under a fresh mask made of two seeds; returns the dealer's record, `F = W − B`
/// and the two seeds.
fn mask_with_seeds(w: &[u64], prg: &mut comet_core::Prg) -> (Vec<u64>, Vec<u64>, [Seed; 2]) {
    let seeds = [prg.next_seed(), prg.next_seed()];
    let (b0, b1) = rayon::join(|| expand(&seeds[0], w.len()), || expand(&seeds[1], w.len()));
    let mask: Vec<u64> = b0
        .par_iter()
        .zip(&b1)
        .map(|(a, b)| a.wrapping_add(*b))
        .collect();
    let masked = w
        .par_iter()
        .zip(&mask)
        .map(|(a, b)| a.wrapping_sub(*b))
        .collect();
    (mask, masked, seeds)
}

impl CorrelationKind for PermutedFfn {
    type Params = PermutedFfnParams;
    const TAG: u8 = 95;
    const NAME: &'static str = "permuted FFN weights";

    fn encode_params(p: &PermutedFfnParams, w: &mut Writer) {
        w.u32(p.layer);
    }

    fn decode_params(r: &mut Reader) -> Result<PermutedFfnParams, DealerError> {
        Ok(PermutedFfnParams { layer: r.u32()? })
    }

    fn generate(p: &PermutedFfnParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        let store = &mut *ctx.sparse;
        let plain = store.plain.get(&p.layer).ok_or_else(|| {
            DealerError::InvalidParams(format!(
                "the dealer holds no plaintext FFN for layer {} (sparse sessions need a dealer \
                 started with the model)",
                p.layer
            ))
        })?;
        let (d, n) = (plain.d, plain.ffn);
        let perm = ctx.prg.gen_permutation(n);
        let cols = |w: &[u64]| -> Vec<u64> {
            let mut out = vec![0u64; d * n];
            out.par_chunks_mut(n)
                .zip(w.par_chunks(n))
                .for_each(|(dst, src)| {
                    for (o, &j) in dst.iter_mut().zip(&perm) {
                        *o = src[j];
                    }
                });
            out
        };
        let gate = cols(&plain.gate);
        let up = cols(&plain.up);
        let down: Vec<u64> = perm
            .iter()
            .flat_map(|&j| plain.down[j * d..(j + 1) * d].iter().copied())
            .collect();
        let mut matrices = vec![(gate, d, n), (up, d, n), (down, n, d)];
        let predictor = plain
            .predictor
            .as_ref()
            .map(|pr| pr.permuted(&perm, d, &mut matrices));
        Ok(store.finish_layer(false, p.layer, perm, matrices, predictor, ctx.prg))
    }

    fn decode(party: PartyId, _p: &PermutedFfnParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let with_predictor = read_count(&mut r, 3, Self::NAME)?;
        let (gate, up, down) = (
            read_weight(&mut r, Self::NAME)?,
            read_weight(&mut r, Self::NAME)?,
            read_weight(&mut r, Self::NAME)?,
        );
        let predictor = if with_predictor {
            Some(read_predictor(&mut r, party, gate.k, gate.n, Self::NAME)?)
        } else {
            None
        };
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        if gate.k != up.k || gate.n != up.n || down.k != gate.n || down.n != gate.k {
            return Err(DealerError::Malformed(format!(
                "{}: inconsistent shapes {}×{}, {}×{}, {}×{}",
                Self::NAME,
                gate.k,
                gate.n,
                up.k,
                up.n,
                down.k,
                down.n
            )));
        }
        Ok(PermutedFfn {
            gate,
            up,
            down,
            predictor,
        })
    }
}

impl PlainPredictor {
    /// W1 as is and W2's columns in `perm` order, appended to `matrices`; returns b1 and the
    /// permuted b2, which travel as shares (public biases in `perm` order would reveal it).
    fn permuted(
        &self,
        perm: &[usize],
        d: usize,
        matrices: &mut Vec<(Vec<u64>, usize, usize)>,
    ) -> (Vec<u64>, Vec<u64>) {
        let (h, n) = (self.hidden, perm.len());
        let mut w2 = vec![0u64; h * n];
        for (dst, src) in w2.chunks_mut(n).zip(self.w2.chunks(n)) {
            for (o, &j) in dst.iter_mut().zip(perm) {
                *o = src[j];
            }
        }
        matrices.push((self.w1.clone(), d, h));
        matrices.push((w2, h, n));
        (self.b1.clone(), perm.iter().map(|&j| self.b2[j]).collect())
    }
}

/// Appends a predictor's biases as shares: P0's as a seed, P1's in full.
fn put_shared_biases(
    halves: &mut [Writer; 2],
    b1: Vec<u64>,
    b2: Vec<u64>,
    prg: &mut comet_core::Prg,
) {
    let biases: Vec<u64> = b1.into_iter().chain(b2).collect();
    let (seed, share1) = super::share_with_seed(&biases, prg);
    put_seed(&mut halves[0], &seed);
    halves[1].ring(&share1, 64);
}

/// Reads the matrix count of a permuted-weights half: `base`, or `base + 2` with a predictor.
fn read_count(r: &mut Reader, base: u8, name: &str) -> Result<bool, DealerError> {
    match r.u8()? {
        c if c == base => Ok(false),
        c if c == base + 2 => Ok(true),
        c => Err(DealerError::Malformed(format!(
            "{name}: {c} matrices (expected {base}, or {} with a predictor)",
            base + 2
        ))),
    }
}

/// Reads one masked session weight (id, shape, `F`, the server's seed of `B`).
fn read_weight(r: &mut Reader, name: &str) -> Result<FixedWeight, DealerError> {
    let id = WeightId(r.u32()?);
    let k = r.u32()? as usize;
    let n = r.u32()? as usize;
    let size = k
        .checked_mul(n)
        .ok_or_else(|| DealerError::Malformed(format!("{name}: shape {k} × {n}")))?;
    let masked = get_ring(r, size, name)?;
    let seed = get_seed(r)?;
    Ok(FixedWeight {
        id,
        k,
        n,
        masked,
        mask_share: expand(&seed, size),
    })
}

/// Reads a session predictor reading `d` inputs with `outputs` outputs.
fn read_predictor(
    r: &mut Reader,
    party: PartyId,
    d: usize,
    outputs: usize,
    name: &str,
) -> Result<SessionPredictor, DealerError> {
    let (w1, w2) = (read_weight(r, name)?, read_weight(r, name)?);
    if w1.k != d || w2.k != w1.n || w2.n != outputs {
        return Err(DealerError::Malformed(format!(
            "{name}: predictor shapes {}×{} and {}×{}",
            w1.k, w1.n, w2.k, w2.n
        )));
    }
    let len = w1.n + w2.n;
    let biases = match party {
        PartyId::P0 => expand(&get_seed(r)?, len),
        PartyId::P1 => get_ring(r, len, name)?,
    };
    Ok(SessionPredictor {
        b1: biases[..w1.n].to_vec(),
        b2: biases[w1.n..].to_vec(),
        w1,
        w2,
    })
}

/// Public parameters: which layer's attention to permute, and its head count (checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermutedAttnParams {
    /// Transformer block index.
    pub layer: u32,
    /// Query heads of the layer.
    pub n_heads: u32,
}

/// A server's view of one layer's attention for one session, in the secret head order.
#[derive(Clone, Debug)]
pub struct PermutedAttn {
    /// Query weight (`d × n_heads·head_dim`), head column blocks permuted.
    pub wq: FixedWeight,
    /// Key weight (`d × n_kv_heads·head_dim`), group column blocks permuted.
    pub wk: FixedWeight,
    /// Value weight, group column blocks permuted.
    pub wv: FixedWeight,
    /// Output weight (`n_heads·head_dim × d`), head row blocks permuted.
    pub wo: FixedWeight,
    /// The head predictor under fresh masks, its outputs permuted, when the dealer holds one.
    pub predictor: Option<SessionPredictor>,
}

/// Columns of the input-major `rows × (blocks·width)` matrix `w`, moved by whole blocks of
/// `width`: output block `p` is input block `order[p]`.
fn permute_column_blocks(w: &[u64], rows: usize, order: &[usize], width: usize) -> Vec<u64> {
    let cols = order.len() * width;
    let mut out = vec![0u64; rows * cols];
    out.par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .for_each(|(dst, src)| {
            for (p, &b) in order.iter().enumerate() {
                dst[p * width..(p + 1) * width].copy_from_slice(&src[b * width..(b + 1) * width]);
            }
        });
    debug_assert_eq!(w.len(), rows * cols);
    out
}

impl CorrelationKind for PermutedAttn {
    type Params = PermutedAttnParams;
    const TAG: u8 = 96;
    const NAME: &'static str = "permuted attention weights";

    fn encode_params(p: &PermutedAttnParams, w: &mut Writer) {
        w.u32(p.layer).u32(p.n_heads);
    }

    fn decode_params(r: &mut Reader) -> Result<PermutedAttnParams, DealerError> {
        Ok(PermutedAttnParams {
            layer: r.u32()?,
            n_heads: r.u32()?,
        })
    }

    fn generate(p: &PermutedAttnParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        let store = &mut *ctx.sparse;
        let plain = store.plain_attn.get(&p.layer).ok_or_else(|| {
            DealerError::InvalidParams(format!(
                "the dealer holds no plaintext attention for layer {} (head-sparse sessions \
                 need a dealer started with the model)",
                p.layer
            ))
        })?;
        if plain.n_heads != p.n_heads as usize
            || plain.n_kv_heads == 0
            || plain.n_heads % plain.n_kv_heads != 0
        {
            return Err(DealerError::InvalidParams(format!(
                "layer {} has {} heads in {} groups, the request says {}",
                p.layer, plain.n_heads, plain.n_kv_heads, p.n_heads
            )));
        }
        let (d, hd) = (plain.d, plain.head_dim);
        let (qd, kvd) = (plain.n_heads * hd, plain.n_kv_heads * hd);
        let perm = plain.draw_permutation(ctx.prg);
        let group = plain.n_heads / plain.n_kv_heads;
        let groups: Vec<usize> = perm.iter().step_by(group).map(|&h| h / group).collect();
        let wo: Vec<u64> = perm
            .iter()
            .flat_map(|&h| plain.wo[h * hd * d..(h + 1) * hd * d].iter().copied())
            .collect();
        let mut matrices = vec![
            (permute_column_blocks(&plain.wq, d, &perm, hd), d, qd),
            (permute_column_blocks(&plain.wk, d, &groups, hd), d, kvd),
            (permute_column_blocks(&plain.wv, d, &groups, hd), d, kvd),
            (wo, qd, d),
        ];
        let predictor = plain
            .predictor
            .as_ref()
            .map(|pr| pr.permuted(&perm, d, &mut matrices));
        Ok(store.finish_layer(true, p.layer, perm, matrices, predictor, ctx.prg))
    }

    fn decode(party: PartyId, p: &PermutedAttnParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let with_predictor = read_count(&mut r, 4, Self::NAME)?;
        let wq = read_weight(&mut r, Self::NAME)?;
        let wk = read_weight(&mut r, Self::NAME)?;
        let wv = read_weight(&mut r, Self::NAME)?;
        let wo = read_weight(&mut r, Self::NAME)?;
        let predictor = if with_predictor {
            let heads = p.n_heads as usize;
            Some(read_predictor(&mut r, party, wq.k, heads, Self::NAME)?)
        } else {
            None
        };
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        let heads = (p.n_heads as usize).max(1);
        if wk.k != wq.k
            || wv.k != wq.k
            || wv.n != wk.n
            || wo.k != wq.n
            || wo.n != wq.k
            || wq.n % heads != 0
        {
            return Err(DealerError::Malformed(format!(
                "{}: inconsistent shapes {}×{}, {}×{}, {}×{}, {}×{}",
                Self::NAME,
                wq.k,
                wq.n,
                wk.k,
                wk.n,
                wv.k,
                wv.n,
                wo.k,
                wo.n
            )));
        }
        Ok(PermutedAttn {
            wq,
            wk,
            wv,
            wo,
            predictor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};
    use comet_core::share::reconstruct;
    use comet_fss::dpf_eval_all;

    #[test]
    fn self_gate_keys_point_at_the_masks() {
        let params = SelfGateParams { n: 20, bits: 5 };
        let mut d = Dealer::with_prg(comet_core::Prg::from_seed([3; 16]));
        let req = encode_request::<SelfGateKeys>(&params);
        let h = [
            d.serve(PartyId::P0, &req).unwrap(),
            d.serve(PartyId::P1, &req).unwrap(),
        ];
        let k0 = SelfGateKeys::decode(PartyId::P0, &params, &h[0]).unwrap();
        let k1 = SelfGateKeys::decode(PartyId::P1, &params, &h[1]).unwrap();
        for i in 0..params.n {
            let rg = (k0.gate_mask[i] + k1.gate_mask[i]) & 31;
            let ru = (k0.up_mask[i] + k1.up_mask[i]) & 31;
            let (e0, e1) = (
                dpf_eval_all(PartyId::P0, &k0.dpf[i]),
                dpf_eval_all(PartyId::P1, &k1.dpf[i]),
            );
            for x in 0..1024usize {
                let bit = ((e0[x / 64] ^ e1[x / 64]) >> (x % 64)) & 1;
                assert_eq!(bit, (x as u64 == rg << 5 | ru) as u64);
            }
        }
        for cut in [0, 10, h[1].len() - 1] {
            assert!(SelfGateKeys::decode(PartyId::P1, &params, &h[1][..cut]).is_err());
        }
        let bad = SelfGateParams { n: 20, bits: 9 };
        assert!(d
            .serve(PartyId::P0, &encode_request::<SelfGateKeys>(&bad))
            .is_err());
    }

    #[test]
    fn permuted_ffn_is_the_permuted_weight_under_fresh_masks() {
        let (dm, n) = (3, 5);
        let mut prg = comet_core::Prg::from_seed([5; 16]);
        let plain = PlainFfn {
            d: dm,
            ffn: n,
            gate: prg.gen_u64s(dm * n),
            up: prg.gen_u64s(dm * n),
            down: prg.gen_u64s(n * dm),
            predictor: Some(PlainPredictor {
                hidden: 2,
                w1: prg.gen_u64s(dm * 2),
                b1: prg.gen_u64s(2),
                w2: prg.gen_u64s(2 * n),
                b2: prg.gen_u64s(n),
            }),
        };
        let mut d = Dealer::with_prg(comet_core::Prg::from_seed([6; 16]));
        let params = PermutedFfnParams { layer: 2 };
        let req = encode_request::<PermutedFfn>(&params);
        assert!(d
            .serve(PartyId::P0, &req)
            .unwrap_err()
            .to_string()
            .contains("no plaintext FFN"));
        d.insert_plain_ffn(2, plain.clone());
        let mut ids = Vec::new();
        for _session in 0..2 {
            let h = [
                d.serve(PartyId::P0, &req).unwrap(),
                d.serve(PartyId::P1, &req).unwrap(),
            ];
            let v0 = PermutedFfn::decode(PartyId::P0, &params, &h[0]).unwrap();
            let v1 = PermutedFfn::decode(PartyId::P1, &params, &h[1]).unwrap();
            let perm = d.ffn_permutation(2).unwrap().to_vec();
            let w = |a: &FixedWeight, b: &FixedWeight| {
                assert_eq!(a.masked, b.masked);
                comet_core::ring::add(&a.masked, &reconstruct(&a.mask_share, &b.mask_share))
            };
            let (gate, up, down) = (
                w(&v0.gate, &v1.gate),
                w(&v0.up, &v1.up),
                w(&v0.down, &v1.down),
            );
            for i in 0..dm {
                for (p, &j) in perm.iter().enumerate() {
                    assert_eq!(gate[i * n + p], plain.gate[i * n + j]);
                    assert_eq!(up[i * n + p], plain.up[i * n + j]);
                    assert_eq!(down[p * dm + i], plain.down[j * dm + i]);
                }
            }
            assert!(d.has_weight(v0.gate.id) && d.has_weight(v0.down.id));
            let (p0, p1) = (v0.predictor.unwrap(), v1.predictor.unwrap());
            let pr = plain.predictor.as_ref().unwrap();
            assert_eq!(w(&p0.w1, &p1.w1), pr.w1);
            let w2 = w(&p0.w2, &p1.w2);
            let b2 = reconstruct(&p0.b2, &p1.b2);
            assert_eq!(reconstruct(&p0.b1, &p1.b1), pr.b1);
            for (pos, &j) in perm.iter().enumerate() {
                assert_eq!(b2[pos], pr.b2[j]);
                for h in 0..2 {
                    assert_eq!(w2[h * n + pos], pr.w2[h * n + j]);
                }
            }
            ids.push(v0.gate.id);
        }
        assert_ne!(ids[0], ids[1]);
        assert!(
            !d.has_weight(ids[0]),
            "the previous session's mask is dropped"
        );
    }

    #[test]
    fn permuted_attention_moves_heads_with_their_groups() {
        let (dm, heads, groups, hd) = (3, 6, 2, 2);
        let (qd, kvd) = (heads * hd, groups * hd);
        let mut prg = comet_core::Prg::from_seed([7; 16]);
        let plain = PlainAttn {
            d: dm,
            n_heads: heads,
            n_kv_heads: groups,
            head_dim: hd,
            wq: prg.gen_u64s(dm * qd),
            wk: prg.gen_u64s(dm * kvd),
            wv: prg.gen_u64s(dm * kvd),
            wo: prg.gen_u64s(qd * dm),
            predictor: Some(PlainPredictor {
                hidden: 2,
                w1: prg.gen_u64s(dm * 2),
                b1: prg.gen_u64s(2),
                w2: prg.gen_u64s(2 * heads),
                b2: prg.gen_u64s(heads),
            }),
        };
        let mut d = Dealer::with_prg(comet_core::Prg::from_seed([8; 16]));
        let params = PermutedAttnParams {
            layer: 1,
            n_heads: heads as u32,
        };
        let req = encode_request::<PermutedAttn>(&params);
        assert!(d.serve(PartyId::P0, &req).is_err(), "no plaintext yet");
        d.insert_plain_attn(1, plain.clone());
        let wrong = encode_request::<PermutedAttn>(&PermutedAttnParams {
            n_heads: 4,
            ..params
        });
        assert!(d.serve(PartyId::P0, &wrong).is_err(), "head count checked");
        let mut orders = std::collections::HashSet::new();
        for _session in 0..12 {
            let h = [
                d.serve(PartyId::P0, &req).unwrap(),
                d.serve(PartyId::P1, &req).unwrap(),
            ];
            let v0 = PermutedAttn::decode(PartyId::P0, &params, &h[0]).unwrap();
            let v1 = PermutedAttn::decode(PartyId::P1, &params, &h[1]).unwrap();
            let perm = d.head_permutation(1).unwrap().to_vec();
            let group = heads / groups;
            for (p, &head) in perm.iter().enumerate() {
                assert_eq!(
                    head / group,
                    perm[p - p % group] / group,
                    "a group stays together"
                );
            }
            let w = |a: &FixedWeight, b: &FixedWeight| {
                comet_core::ring::add(&a.masked, &reconstruct(&a.mask_share, &b.mask_share))
            };
            let (wq, wk, wo) = (w(&v0.wq, &v1.wq), w(&v0.wk, &v1.wk), w(&v0.wo, &v1.wo));
            for i in 0..dm {
                for (p, &head) in perm.iter().enumerate() {
                    for c in 0..hd {
                        assert_eq!(wq[i * qd + p * hd + c], plain.wq[i * qd + head * hd + c]);
                        assert_eq!(
                            wo[(p * hd + c) * dm + i],
                            plain.wo[(head * hd + c) * dm + i]
                        );
                    }
                    if p % group == 0 {
                        let (pg, g) = (p / group, head / group);
                        for c in 0..hd {
                            assert_eq!(wk[i * kvd + pg * hd + c], plain.wk[i * kvd + g * hd + c]);
                        }
                    }
                }
            }
            let (p0, p1) = (v0.predictor.unwrap(), v1.predictor.unwrap());
            let b2 = reconstruct(&p0.b2, &p1.b2);
            let w2 = w(&p0.w2, &p1.w2);
            for (p, &head) in perm.iter().enumerate() {
                assert_eq!(b2[p], plain.predictor.as_ref().unwrap().b2[head]);
                assert_eq!(
                    w2[heads + p],
                    plain.predictor.as_ref().unwrap().w2[heads + head]
                );
            }
            orders.insert(perm);
        }
        assert!(
            orders.len() > 4,
            "fresh orders per session: {}",
            orders.len()
        );
        let h = d.serve(PartyId::P0, &req).unwrap();
        assert!(PermutedAttn::decode(PartyId::P0, &params, &h[..h.len() - 5]).is_err());
    }
}
