//! Masks for the fused RMSNorm + fixed-weight product (`comet_protocols::nonlinear::norm`,
//! `rms_norm_matmul`), tag 63.
//!
//! For a `rows × d` input `X` the dealer draws a uniform `A` (`rows × d`) and a uniform `v`
//! (one word per row) and shares, additively over Z_2^64:
//!
//! * `A` (both halves are seeds): the servers open `X̂ = X − A` once, and get the row sums
//!   of squares locally as `Σ X̂² + 2·Σ X̂·A + Σ A²`;
//! * `Σ_j A_ij²` per row (P0: seed, P1: one word per row);
//! * `v` (both halves are seeds): the servers open `înv = inv − v` for the per-row `1/rms`;
//! * `A ⊙ v`, i.e. `A_ij·v_i` (P0: seed, P1: one word per element), so that
//!   `X·inv = X̂·inv + A·înv + A ⊙ v` is local.
//!
//! Offline per row: P0 four seeds in all; P1 two seeds, `8` bytes for `Σ A²` and `8·d` for
//! `A ⊙ v` (the two Beaver triples this replaces cost P1 `16·d`).

use super::{check_size, expand, get_ring, get_seed, put_seed, share_with_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::{ring, PartyId};
use comet_net::codec::{Reader, Writer};

/// Public parameters: the shape of the normalised input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormParams {
    /// Rows (tokens).
    pub rows: usize,
    /// Row width (model dimension).
    pub d: usize,
}

impl NormParams {
    fn validate(&self) -> Result<(), DealerError> {
        check_size("norm rows", self.rows)?;
        check_size("norm width", self.d)?;
        check_size("norm elements", self.rows.saturating_mul(self.d))
    }
}

/// A server's half of the norm masks.
#[derive(Clone, Debug)]
pub struct NormMask {
    /// Share of the input mask `A` (`rows × d`).
    pub a: Vec<u64>,
    /// Share of `Σ_j A_ij²` per row.
    pub a_sq: Vec<u64>,
    /// Share of the per-row mask `v` of `1/rms`.
    pub v: Vec<u64>,
    /// Share of `A_ij·v_i` (`rows × d`).
    pub av: Vec<u64>,
}

impl CorrelationKind for NormMask {
    type Params = NormParams;
    const TAG: u8 = 63;
    const NAME: &'static str = "norm mask";

    fn encode_params(p: &NormParams, w: &mut Writer) {
        w.u32(p.rows as u32).u32(p.d as u32);
    }

    fn decode_params(r: &mut Reader) -> Result<NormParams, DealerError> {
        let p = NormParams {
            rows: r.u32()? as usize,
            d: r.u32()? as usize,
        };
        p.validate()?;
        Ok(p)
    }

    fn generate(p: &NormParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        p.validate()?;
        let n = p.rows * p.d;
        let seeds: Vec<_> = (0..4).map(|_| ctx.prg.next_seed()).collect();
        let a = ring::add(&expand(&seeds[0], n), &expand(&seeds[1], n));
        let v = ring::add(&expand(&seeds[2], p.rows), &expand(&seeds[3], p.rows));
        let a_sq: Vec<u64> = a
            .chunks_exact(p.d)
            .map(|row| {
                row.iter()
                    .fold(0u64, |s, x| s.wrapping_add(x.wrapping_mul(*x)))
            })
            .collect();
        let av: Vec<u64> = a
            .iter()
            .enumerate()
            .map(|(k, x)| x.wrapping_mul(v[k / p.d]))
            .collect();
        let (sq_seed, sq1) = share_with_seed(&a_sq, ctx.prg);
        let (av_seed, av1) = share_with_seed(&av, ctx.prg);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_seed(&mut w0, &seeds[2]);
        put_seed(&mut w0, &sq_seed);
        put_seed(&mut w0, &av_seed);
        put_seed(&mut w1, &seeds[1]);
        put_seed(&mut w1, &seeds[3]);
        w1.ring(&sq1, 64);
        w1.ring(&av1, 64);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &NormParams, bytes: &[u8]) -> Result<Self, DealerError> {
        p.validate()?;
        let n = p.rows * p.d;
        let mut r = Reader::new(bytes);
        let malformed = |e| DealerError::malformed(Self::NAME, e);
        let a = expand(&get_seed(&mut r).map_err(malformed)?, n);
        let v = expand(&get_seed(&mut r).map_err(malformed)?, p.rows);
        let (a_sq, av) = match party {
            PartyId::P0 => (
                expand(&get_seed(&mut r).map_err(malformed)?, p.rows),
                expand(&get_seed(&mut r).map_err(malformed)?, n),
            ),
            PartyId::P1 => (
                get_ring(&mut r, p.rows, Self::NAME)?,
                get_ring(&mut r, n, Self::NAME)?,
            ),
        };
        r.finish().map_err(malformed)?;
        Ok(NormMask { a, a_sq, v, av })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};
    use comet_core::Prg;

    #[test]
    fn halves_share_the_mask_its_squares_and_the_row_products() {
        let p = NormParams { rows: 3, d: 7 };
        let mut dealer = Dealer::with_prg(Prg::from_seed([5; 16]));
        let request = encode_request::<NormMask>(&p);
        let b0 = dealer.serve(PartyId::P0, &request).unwrap();
        let b1 = dealer.serve(PartyId::P1, &request).unwrap();
        assert_eq!(b0.len(), 64, "P0's half is four seeds");
        assert_eq!(b1.len(), 32 + 5 + 8 * 3 + 5 + 8 * 21);
        let h0 = NormMask::decode(PartyId::P0, &p, &b0).unwrap();
        let h1 = NormMask::decode(PartyId::P1, &p, &b1).unwrap();
        let a = ring::add(&h0.a, &h1.a);
        let v = ring::add(&h0.v, &h1.v);
        for i in 0..p.rows {
            let row = &a[i * p.d..(i + 1) * p.d];
            let sq = row
                .iter()
                .fold(0u64, |s, x| s.wrapping_add(x.wrapping_mul(*x)));
            assert_eq!(h0.a_sq[i].wrapping_add(h1.a_sq[i]), sq);
            for j in 0..p.d {
                let k = i * p.d + j;
                assert_eq!(h0.av[k].wrapping_add(h1.av[k]), a[k].wrapping_mul(v[i]));
            }
        }
        for cut in [0, 10, b1.len() - 1] {
            assert!(NormMask::decode(PartyId::P1, &p, &b1[..cut]).is_err());
        }
        assert!(NormMask::decode(PartyId::P1, &NormParams { rows: 3, d: 8 }, &b1).is_err());
    }

    #[test]
    fn empty_shapes_are_rejected() {
        let mut dealer = Dealer::new();
        for p in [NormParams { rows: 0, d: 4 }, NormParams { rows: 2, d: 0 }] {
            assert!(dealer
                .serve(PartyId::P0, &encode_request::<NormMask>(&p))
                .is_err());
        }
    }
}
