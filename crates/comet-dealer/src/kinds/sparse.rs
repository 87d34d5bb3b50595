//! Correlations of the sparse FFN (DESIGN.md §7): the self-gate's keys (tag 40) and the
//! per-session permuted FFN weights (tag 95).
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

/// The dealer's per-session FFN state: plaintext weights, the current permutation and weight
/// ids of each layer, and the mask changes a generation asks the dealer to apply.
#[derive(Debug, Default)]
pub struct FfnStore {
    plain: std::collections::HashMap<u32, PlainFfn>,
    current: std::collections::HashMap<u32, (Vec<usize>, Vec<WeightId>)>,
    next_id: u32,
    /// Masks to register once the generation is done.
    pub(crate) pending: Vec<(WeightId, WeightMask)>,
    /// Ids whose masks are no longer needed.
    pub(crate) retired: Vec<WeightId>,
}

/// Session weight ids live above this bound, apart from the model's fixed weights.
const SESSION_ID_BASE: u32 = 1 << 31;

impl FfnStore {
    /// Keeps layer `layer`'s plaintext FFN for permutation.
    pub fn insert(&mut self, layer: u32, ffn: PlainFfn) {
        self.plain.insert(layer, ffn);
    }

    /// The permutation of layer `layer`'s current session: position `i` of the servers'
    /// order holds neuron `perm[i]`. Only the dealer knows it (tests use it).
    pub fn permutation(&self, layer: u32) -> Option<&[usize]> {
        self.current.get(&layer).map(|(p, _)| p.as_slice())
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
        let store = &mut *ctx.ffn;
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
        let predictor = plain.predictor.as_ref().map(|pr| {
            let h = pr.hidden;
            let mut w2 = vec![0u64; h * n];
            for (dst, src) in w2.chunks_mut(n).zip(pr.w2.chunks(n)) {
                for (o, &j) in dst.iter_mut().zip(&perm) {
                    *o = src[j];
                }
            }
            let b2: Vec<u64> = perm.iter().map(|&j| pr.b2[j]).collect();
            matrices.push((pr.w1.clone(), d, h));
            matrices.push((w2, h, n));
            (pr.b1.clone(), b2)
        });
        let mut halves = [Writer::new(), Writer::new()];
        for half in &mut halves {
            half.u8(matrices.len() as u8);
        }
        let mut ids = Vec::with_capacity(matrices.len());
        for (w, k, cols_n) in matrices {
            let id = store.fresh_id();
            ids.push(id);
            let (mask, masked, seeds) = mask_with_seeds(&w, ctx.prg);
            store.pending.push((id, WeightMask { k, n: cols_n, mask }));
            for (half, seed) in halves.iter_mut().zip(&seeds) {
                half.u32(id.0).u32(k as u32).u32(cols_n as u32);
                half.ring(&masked, 64);
                put_seed(half, seed);
            }
        }
        if let Some((b1, b2)) = predictor {
            let biases: Vec<u64> = b1.into_iter().chain(b2).collect();
            let (seed, share1) = super::share_with_seed(&biases, ctx.prg);
            put_seed(&mut halves[0], &seed);
            halves[1].ring(&share1, 64);
        }
        if let Some((_, old)) = store.current.insert(p.layer, (perm, ids)) {
            store.retired.extend(old);
        }
        Ok(halves.map(Writer::finish))
    }

    fn decode(party: PartyId, _p: &PermutedFfnParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let count = r.u8()?;
        if count != 3 && count != 5 {
            return Err(DealerError::Malformed(format!(
                "{}: {count} matrices (expected 3, or 5 with a predictor)",
                Self::NAME
            )));
        }
        let next = |r: &mut Reader| -> Result<FixedWeight, DealerError> {
            let id = WeightId(r.u32()?);
            let k = r.u32()? as usize;
            let n = r.u32()? as usize;
            let size = k.checked_mul(n).ok_or_else(|| {
                DealerError::Malformed(format!("{}: shape {k} × {n}", Self::NAME))
            })?;
            let masked = get_ring(r, size, Self::NAME)?;
            let seed = get_seed(r)?;
            Ok(FixedWeight {
                id,
                k,
                n,
                masked,
                mask_share: expand(&seed, size),
            })
        };
        let (gate, up, down) = (next(&mut r)?, next(&mut r)?, next(&mut r)?);
        let predictor = if count == 5 {
            let (w1, w2) = (next(&mut r)?, next(&mut r)?);
            if w1.k != gate.k || w2.k != w1.n || w2.n != gate.n {
                return Err(DealerError::Malformed(format!(
                    "{}: predictor shapes {}×{} and {}×{}",
                    Self::NAME,
                    w1.k,
                    w1.n,
                    w2.k,
                    w2.n
                )));
            }
            let len = w1.n + w2.n;
            let biases = match party {
                PartyId::P0 => expand(&get_seed(&mut r)?, len),
                PartyId::P1 => get_ring(&mut r, len, Self::NAME)?,
            };
            Some(SessionPredictor {
                b1: biases[..w1.n].to_vec(),
                b2: biases[w1.n..].to_vec(),
                w1,
                w2,
            })
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
}
