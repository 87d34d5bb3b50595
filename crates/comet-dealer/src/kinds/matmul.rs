//! Activation masks for products with fixed weight masks (DESIGN.md §4).
//!
//! For `Y_j = X·W_j` over several weights sharing the input `X` (`m × k`), the dealer draws
//! `A` (`m × k`) and shares `C_j = A·B_j`. The servers open `E = X − A` once and compute
//! `Y_j = E·F_j + E·B_j + A·F_j + C_j` locally. P0's shares of `A` and every `C_j` are seeds.

use super::{check_size, expand, get_ring, get_seed, put_seed, share_with_seed};
use crate::weights::WeightId;
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::PartyId;
use comet_net::codec::{Reader, Writer};

/// Public parameters: rows of the input and the weights that consume it.
#[derive(Clone, Debug, PartialEq)]
pub struct MatmulParams {
    /// Rows of `X` (tokens).
    pub m: usize,
    /// Columns of `X`; every weight must have `k` input rows.
    pub k: usize,
    /// The weights that multiply this input, each with its output width `n_j`.
    pub weights: Vec<(WeightId, usize)>,
}

/// A server's half: its share of `A` and of each `C_j`.
#[derive(Clone, Debug)]
pub struct MatmulMask {
    /// Share of the activation mask `A` (`m × k`).
    pub a: Vec<u64>,
    /// Shares of `C_j = A·B_j` (`m × n_j`), in the order of `MatmulParams::weights`.
    pub c: Vec<Vec<u64>>,
}

impl CorrelationKind for MatmulMask {
    type Params = MatmulParams;
    const TAG: u8 = 1;
    const NAME: &'static str = "matmul mask";

    fn encode_params(p: &MatmulParams, w: &mut Writer) {
        w.u32(p.m as u32)
            .u32(p.k as u32)
            .u32(p.weights.len() as u32);
        for (id, n) in &p.weights {
            w.u32(id.0).u32(*n as u32);
        }
    }

    fn decode_params(r: &mut Reader) -> Result<MatmulParams, DealerError> {
        let m = r.u32()? as usize;
        let k = r.u32()? as usize;
        let count = r.u32()? as usize;
        if count > 64 {
            return Err(DealerError::InvalidParams(format!(
                "{count} weights on one input"
            )));
        }
        let mut weights = Vec::with_capacity(count);
        for _ in 0..count {
            weights.push((WeightId(r.u32()?), r.u32()? as usize));
        }
        Ok(MatmulParams { m, k, weights })
    }

    fn generate(p: &MatmulParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        check_size("rows", p.m)?;
        check_size("input width", p.k)?;
        let seed_a0 = ctx.prg.next_seed();
        let seed_a1 = ctx.prg.next_seed();
        let a = comet_core::ring::add(&expand(&seed_a0, p.m * p.k), &expand(&seed_a1, p.m * p.k));
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seed_a0);
        put_seed(&mut w1, &seed_a1);
        for (id, n) in &p.weights {
            let mask = ctx
                .weights
                .get(id)
                .ok_or(DealerError::UnknownWeight(id.0))?;
            if mask.k != p.k || mask.n != *n {
                return Err(DealerError::InvalidParams(format!(
                    "weight {} is {}x{}, the request says {}x{n}",
                    id.0, mask.k, mask.n, p.k
                )));
            }
            let c = mask.times(&a, p.m);
            let (seed_c0, c1) = share_with_seed(&c, ctx.prg);
            put_seed(&mut w0, &seed_c0);
            w1.ring(&c1, 64);
        }
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &MatmulParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let a = expand(&get_seed(&mut r)?, p.m * p.k);
        let mut c = Vec::with_capacity(p.weights.len());
        for (_, n) in &p.weights {
            c.push(match party {
                PartyId::P0 => expand(&get_seed(&mut r)?, p.m * n),
                PartyId::P1 => get_ring(&mut r, p.m * n, Self::NAME)?,
            });
        }
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        Ok(MatmulMask { a, c })
    }
}
