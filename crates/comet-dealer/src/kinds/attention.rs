//! Correlations of secure attention over a KV cache with fixed row masks (DESIGN.md §4).
//!
//! Each cached key/value row `j` is opened once, when written, as `F_j = K_j − B_j`, where
//! `B` is a per-session mask the dealer holds as a registered [`crate::weights::WeightMask`]
//! (`rows × kv_width`, row `j` for position `j`). Products with the cache then need only the
//! opening of the *query side*:
//!
//! * scores `S = Q·Kᵀ`: the servers open `E = Q − A` and use `C = A·B_Kᵀ`
//!   ([`AttnScoreMask`]);
//! * outputs `O = P·V`: the servers open `E = P − A` and use `C = A·B_V`
//!   ([`AttnValueMask`]).
//!
//! Grouped-query attention: query head `h` reads key/value head `h / (n_heads / n_kv_heads)`.
//!
//! [`ClientInputMask`] is the fixed-weight product mask of [`super::matmul::MatmulMask`] for an
//! input that a *client* masks: the servers also learn the seed of their share of `A`, which
//! they forward to the client so that it can send `E = X − A` itself.

use super::matmul::{MatmulMask, MatmulParams};
use super::{check_size, expand, get_ring, get_seed, put_seed, share_with_seed};
use crate::weights::{WeightId, WeightMask};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::{PartyId, Seed};
use comet_net::codec::{Reader, Writer};

/// Public parameters of one attention product against the first `rows` cached rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnParams {
    /// New query rows (tokens of this step).
    pub m: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The registered mask of the cached rows (`max rows × n_kv_heads·head_dim`).
    pub cache: WeightId,
    /// How many cached rows (positions `0..rows`) the product reads.
    pub rows: usize,
}

impl AttnParams {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.m as u32)
            .u32(self.n_heads as u32)
            .u32(self.n_kv_heads as u32)
            .u32(self.head_dim as u32)
            .u32(self.cache.0)
            .u32(self.rows as u32);
    }

    fn decode(r: &mut Reader) -> Result<Self, DealerError> {
        Ok(Self {
            m: r.u32()? as usize,
            n_heads: r.u32()? as usize,
            n_kv_heads: r.u32()? as usize,
            head_dim: r.u32()? as usize,
            cache: WeightId(r.u32()?),
            rows: r.u32()? as usize,
        })
    }

    /// Checks sizes and returns the cache mask the request reads.
    fn check<'a>(
        &self,
        weights: &'a std::collections::HashMap<WeightId, WeightMask>,
    ) -> Result<&'a WeightMask, DealerError> {
        check_size("query rows", self.m)?;
        check_size("heads", self.n_heads)?;
        check_size("key/value heads", self.n_kv_heads)?;
        check_size("head width", self.head_dim)?;
        check_size("cached rows", self.rows)?;
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(DealerError::InvalidParams(format!(
                "{} query heads cannot share {} key/value heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        let mask = weights
            .get(&self.cache)
            .ok_or(DealerError::UnknownWeight(self.cache.0))?;
        if mask.n != self.n_kv_heads * self.head_dim || mask.k < self.rows {
            return Err(DealerError::InvalidParams(format!(
                "cache mask {} is {}x{}, the request reads {} rows of width {}",
                self.cache.0,
                mask.k,
                mask.n,
                self.rows,
                self.n_kv_heads * self.head_dim
            )));
        }
        Ok(mask)
    }

    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// A server's half of the score correlation: shares of `A` (`m × n_heads·head_dim`, laid out
/// like the query rows) and of `C = A·B_Kᵀ` per head (`n_heads × m × rows`).
#[derive(Clone, Debug)]
pub struct AttnScoreMask {
    /// Share of the query mask `A`.
    pub a: Vec<u64>,
    /// Share of `C[h][i][j] = Σ_d A[i, h·hd + d] · B_K[j, g(h)·hd + d]`.
    pub c: Vec<u64>,
}

impl CorrelationKind for AttnScoreMask {
    type Params = AttnParams;
    const TAG: u8 = 90;
    const NAME: &'static str = "attention score mask";

    fn encode_params(p: &AttnParams, w: &mut Writer) {
        p.encode(w);
    }

    fn decode_params(r: &mut Reader) -> Result<AttnParams, DealerError> {
        AttnParams::decode(r)
    }

    fn generate(p: &AttnParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        let weights = ctx.weights;
        let mask = p.check(weights)?;
        let (hd, qd, kvd) = (p.head_dim, p.q_dim(), p.kv_dim());
        let seed_a0 = ctx.prg.next_seed();
        let seed_a1 = ctx.prg.next_seed();
        let a = comet_core::ring::add(&expand(&seed_a0, p.m * qd), &expand(&seed_a1, p.m * qd));
        let mut c = vec![0u64; p.n_heads * p.m * p.rows];
        for h in 0..p.n_heads {
            let g = h / p.group();
            for i in 0..p.m {
                let ai = &a[i * qd + h * hd..i * qd + (h + 1) * hd];
                for j in 0..p.rows {
                    let bj = &mask.mask[j * kvd + g * hd..j * kvd + (g + 1) * hd];
                    c[(h * p.m + i) * p.rows + j] = dot(ai, bj);
                }
            }
        }
        let (seed_c0, c1) = share_with_seed(&c, ctx.prg);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seed_a0);
        put_seed(&mut w0, &seed_c0);
        put_seed(&mut w1, &seed_a1);
        w1.ring(&c1, 64);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &AttnParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let a = expand(&get_seed(&mut r)?, p.m * p.q_dim());
        let n_c = p.n_heads * p.m * p.rows;
        let c = match party {
            PartyId::P0 => expand(&get_seed(&mut r)?, n_c),
            PartyId::P1 => get_ring(&mut r, n_c, Self::NAME)?,
        };
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        Ok(Self { a, c })
    }
}

/// A server's half of the value correlation: shares of `A` (`n_heads × m × rows`, laid out
/// like the attention probabilities) and of `C = A·B_V` (`m × n_heads·head_dim`, laid out
/// like the attention output rows).
#[derive(Clone, Debug)]
pub struct AttnValueMask {
    /// Share of the probability mask `A`.
    pub a: Vec<u64>,
    /// Share of `C[i, h·hd + d] = Σ_j A[h][i][j] · B_V[j, g(h)·hd + d]`.
    pub c: Vec<u64>,
}

impl CorrelationKind for AttnValueMask {
    type Params = AttnParams;
    const TAG: u8 = 91;
    const NAME: &'static str = "attention value mask";

    fn encode_params(p: &AttnParams, w: &mut Writer) {
        p.encode(w);
    }

    fn decode_params(r: &mut Reader) -> Result<AttnParams, DealerError> {
        AttnParams::decode(r)
    }

    fn generate(p: &AttnParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        let weights = ctx.weights;
        let mask = p.check(weights)?;
        let (hd, qd, kvd) = (p.head_dim, p.q_dim(), p.kv_dim());
        let n_a = p.n_heads * p.m * p.rows;
        let seed_a0 = ctx.prg.next_seed();
        let seed_a1 = ctx.prg.next_seed();
        let a = comet_core::ring::add(&expand(&seed_a0, n_a), &expand(&seed_a1, n_a));
        let mut c = vec![0u64; p.m * qd];
        for h in 0..p.n_heads {
            let g = h / p.group();
            for i in 0..p.m {
                let out = &mut c[i * qd + h * hd..i * qd + (h + 1) * hd];
                for j in 0..p.rows {
                    let aij = a[(h * p.m + i) * p.rows + j];
                    let bj = &mask.mask[j * kvd + g * hd..j * kvd + (g + 1) * hd];
                    for (o, b) in out.iter_mut().zip(bj) {
                        *o = o.wrapping_add(aij.wrapping_mul(*b));
                    }
                }
            }
        }
        let (seed_c0, c1) = share_with_seed(&c, ctx.prg);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seed_a0);
        put_seed(&mut w0, &seed_c0);
        put_seed(&mut w1, &seed_a1);
        w1.ring(&c1, 64);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &AttnParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let a = expand(&get_seed(&mut r)?, p.n_heads * p.m * p.rows);
        let n_c = p.m * p.q_dim();
        let c = match party {
            PartyId::P0 => expand(&get_seed(&mut r)?, n_c),
            PartyId::P1 => get_ring(&mut r, n_c, Self::NAME)?,
        };
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        Ok(Self { a, c })
    }
}

/// A fixed-weight product mask whose input is masked by the client (token one-hots): the
/// same correlation as [`MatmulMask`], plus the seed of this server's share of `A`.
#[derive(Clone, Debug)]
pub struct ClientInputMask {
    /// Seed that expands to this server's share of `A`; the client adds both servers' seeds'
    /// expansions to learn `A`.
    pub a_seed: Seed,
    /// The product mask (shares of `A` and of each `C_j = A·B_j`).
    pub mask: MatmulMask,
}

impl CorrelationKind for ClientInputMask {
    type Params = MatmulParams;
    const TAG: u8 = 92;
    const NAME: &'static str = "client input mask";

    fn encode_params(p: &MatmulParams, w: &mut Writer) {
        MatmulMask::encode_params(p, w);
    }

    fn decode_params(r: &mut Reader) -> Result<MatmulParams, DealerError> {
        MatmulMask::decode_params(r)
    }

    fn generate(p: &MatmulParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        // MatmulMask already sends both shares of A as seeds, first in each half.
        MatmulMask::generate(p, ctx)
    }

    fn decode(party: PartyId, p: &MatmulParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let a_seed =
            get_seed(&mut Reader::new(bytes)).map_err(|e| DealerError::malformed(Self::NAME, e))?;
        let mask = MatmulMask::decode(party, p, bytes)?;
        Ok(Self { a_seed, mask })
    }
}

/// The dealer's per-session record of one KV cache: a fresh mask `B = B0 + B1` of `rows ×
/// width`, each server's share expanded from its own seed. Returns the mask (to register with
/// [`crate::Dealer::insert_weight_mask`]) and the two seeds (one per server).
pub fn fresh_cache_mask(
    rows: usize,
    width: usize,
    prg: &mut comet_core::Prg,
) -> (WeightMask, [Seed; 2]) {
    let s0 = prg.next_seed();
    let s1 = prg.next_seed();
    let mask = comet_core::ring::add(&expand(&s0, rows * width), &expand(&s1, rows * width));
    (
        WeightMask {
            k: rows,
            n: width,
            mask,
        },
        [s0, s1],
    )
}

fn dot(a: &[u64], b: &[u64]) -> u64 {
    a.iter()
        .zip(b)
        .fold(0u64, |acc, (x, y)| acc.wrapping_add(x.wrapping_mul(*y)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightId;
    use crate::Dealer;
    use comet_core::share::reconstruct;
    use comet_core::Prg;

    fn fetch<K: CorrelationKind>(d: &mut Dealer, p: &K::Params) -> (K, K) {
        let req = crate::encode_request::<K>(p);
        let h0 = d.serve(PartyId::P0, &req).unwrap();
        let h1 = d.serve(PartyId::P1, &req).unwrap();
        (
            K::decode(PartyId::P0, p, &h0).unwrap(),
            K::decode(PartyId::P1, p, &h1).unwrap(),
        )
    }

    #[test]
    fn score_and_value_masks_match_their_definition() {
        let mut prg = Prg::from_seed([7; 16]);
        let mut d = Dealer::with_prg(Prg::from_seed([8; 16]));
        let (n_heads, n_kv, hd, max_rows) = (4, 2, 3, 6);
        let (mask, _) = fresh_cache_mask(max_rows, n_kv * hd, &mut prg);
        let b = mask.mask.clone();
        let id = WeightId(1000);
        d.insert_weight_mask(id, mask);
        let p = AttnParams {
            m: 2,
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            cache: id,
            rows: 5,
        };
        let (s0, s1) = fetch::<AttnScoreMask>(&mut d, &p);
        let a = reconstruct(&s0.a, &s1.a);
        let c = reconstruct(&s0.c, &s1.c);
        for h in 0..n_heads {
            for i in 0..2 {
                for j in 0..5 {
                    let g = h / 2;
                    let want = (0..hd).fold(0u64, |acc, t| {
                        acc.wrapping_add(a[i * 12 + h * hd + t].wrapping_mul(b[j * 6 + g * hd + t]))
                    });
                    assert_eq!(c[(h * 2 + i) * 5 + j], want);
                }
            }
        }
        let (v0, v1) = fetch::<AttnValueMask>(&mut d, &p);
        let a = reconstruct(&v0.a, &v1.a);
        let c = reconstruct(&v0.c, &v1.c);
        for h in 0..n_heads {
            for i in 0..2 {
                for t in 0..hd {
                    let g = h / 2;
                    let want = (0..5).fold(0u64, |acc, j| {
                        acc.wrapping_add(a[(h * 2 + i) * 5 + j].wrapping_mul(b[j * 6 + g * hd + t]))
                    });
                    assert_eq!(c[i * 12 + h * hd + t], want);
                }
            }
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut d = Dealer::with_prg(Prg::from_seed([9; 16]));
        let p = AttnParams {
            m: 1,
            n_heads: 3,
            n_kv_heads: 2,
            head_dim: 4,
            cache: WeightId(5),
            rows: 2,
        };
        let req = crate::encode_request::<AttnScoreMask>(&p);
        assert!(d.serve(PartyId::P0, &req).is_err());
        let (mask, _) = fresh_cache_mask(4, 8, &mut Prg::from_seed([1; 16]));
        d.insert_weight_mask(WeightId(5), mask);
        let p = AttnParams {
            m: 1,
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 4,
            cache: WeightId(5),
            rows: 9,
        };
        let req = crate::encode_request::<AttnValueMask>(&p);
        assert!(matches!(
            d.serve(PartyId::P0, &req),
            Err(DealerError::InvalidParams(_))
        ));
    }

    #[test]
    fn client_input_mask_exposes_the_seed_of_a() {
        let mut d = Dealer::with_prg(Prg::from_seed([3; 16]));
        let w: Vec<u64> = (0..12).collect();
        let _views = d.register_weight(&w, 4, 3);
        let p = MatmulParams {
            m: 2,
            k: 4,
            weights: vec![(WeightId(0), 3)],
        };
        let (h0, h1) = fetch::<ClientInputMask>(&mut d, &p);
        assert_eq!(expand(&h0.a_seed, 8), h0.mask.a);
        assert_eq!(expand(&h1.a_seed, 8), h1.mask.a);
    }
}
