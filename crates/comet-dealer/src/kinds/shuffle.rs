//! Correlations for the two-pass oblivious shuffle (`comet_protocols::shuffle`).
//!
//! The shuffle applies `π = π1 ∘ π0` (first π0, then π1) to shared vectors over Z_2^bits,
//! where P0 knows only π0 and P1 only π1. With `permute(π, v)[i] = v[π[i]]`, the dealer draws,
//! per shuffled vector, uniform `a` (P1), `m` and `d` (P0), and gives P1
//!
//! ```text
//! Δ = π1(π0(a) − m) − d        (mod 2^bits)
//! ```
//!
//! P0's half is three seeds (π0, m, d); P1's half is two seeds (π1, a) plus Δ, the only
//! explicit data (`bits` bits per element).

use super::{check_size, get_ring, get_seed, put_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::{ring, PartyId, Prg, Seed};
use comet_net::codec::{Reader, Writer};

/// Public parameters of one shuffle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShuffleParams {
    /// Length of each shuffled vector.
    pub len: usize,
    /// Number of vectors moved by the same permutation.
    pub vectors: usize,
    /// Ring width: values and shares live in Z_2^bits (1..=64).
    pub bits: u32,
}

impl ShuffleParams {
    fn validate(&self) -> Result<(), DealerError> {
        check_size("shuffle length", self.len)?;
        if !(1..=64).contains(&self.vectors) {
            return Err(DealerError::InvalidParams(format!(
                "{} vectors in one shuffle (allowed 1..=64)",
                self.vectors
            )));
        }
        check_size("shuffled elements", self.len.saturating_mul(self.vectors))?;
        if !(1..=64).contains(&self.bits) {
            return Err(DealerError::InvalidParams(format!(
                "shuffle ring width {} bits",
                self.bits
            )));
        }
        Ok(())
    }
}

/// A server's half of a shuffle correlation.
///
/// P0: `perm = π0`, `mask[j] = m_j`, `correction[j] = d_j` (its output share).
/// P1: `perm = π1`, `mask[j] = a_j`, `correction[j] = Δ_j`.
#[derive(Clone, Debug)]
pub struct ShuffleMask {
    /// This server's permutation (`permute(perm, v)[i] = v[perm[i]]`).
    pub perm: Vec<usize>,
    /// Per vector: P0's re-mask `m`, or P1's input mask `a`.
    pub mask: Vec<Vec<u64>>,
    /// Per vector: P0's output share `d`, or P1's correction `Δ`.
    pub correction: Vec<Vec<u64>>,
}

/// `v` reordered by `perm`: element `i` of the result is `v[perm[i]]`.
pub fn permute(perm: &[usize], v: &[u64]) -> Vec<u64> {
    perm.iter().map(|&j| v[j]).collect()
}

fn vectors_from_seed(seed: &Seed, p: &ShuffleParams) -> Vec<Vec<u64>> {
    let mut prg = Prg::from_seed(*seed);
    (0..p.vectors)
        .map(|_| prg.gen_bits(p.len, p.bits))
        .collect()
}

fn permutation_from_seed(seed: &Seed, len: usize) -> Vec<usize> {
    Prg::from_seed(*seed).gen_permutation(len)
}

impl CorrelationKind for ShuffleMask {
    type Params = ShuffleParams;
    const TAG: u8 = 11;
    const NAME: &'static str = "shuffle mask";

    fn encode_params(p: &ShuffleParams, w: &mut Writer) {
        w.u32(p.len as u32).u8(p.vectors as u8).u8(p.bits as u8);
    }

    fn decode_params(r: &mut Reader) -> Result<ShuffleParams, DealerError> {
        let p = ShuffleParams {
            len: r.u32()? as usize,
            vectors: r.u8()? as usize,
            bits: r.u8()? as u32,
        };
        p.validate()?;
        Ok(p)
    }

    fn generate(p: &ShuffleParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        p.validate()?;
        let [perm0_seed, perm1_seed, a_seed, m_seed, d_seed] = [(); 5].map(|_| ctx.prg.next_seed());
        let perm0 = permutation_from_seed(&perm0_seed, p.len);
        let perm1 = permutation_from_seed(&perm1_seed, p.len);
        let (a, m, d) = (
            vectors_from_seed(&a_seed, p),
            vectors_from_seed(&m_seed, p),
            vectors_from_seed(&d_seed, p),
        );
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &perm0_seed);
        put_seed(&mut w0, &m_seed);
        put_seed(&mut w0, &d_seed);
        put_seed(&mut w1, &perm1_seed);
        put_seed(&mut w1, &a_seed);
        for j in 0..p.vectors {
            let inner = ring::sub(&permute(&perm0, &a[j]), &m[j]);
            let delta = ring::sub(&permute(&perm1, &inner), &d[j]);
            w1.ring(&delta, p.bits);
        }
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &ShuffleParams, bytes: &[u8]) -> Result<Self, DealerError> {
        p.validate()?;
        let mut r = Reader::new(bytes);
        let perm = permutation_from_seed(&get_seed(&mut r)?, p.len);
        let mask = vectors_from_seed(&get_seed(&mut r)?, p);
        let correction = match party {
            PartyId::P0 => vectors_from_seed(&get_seed(&mut r)?, p),
            PartyId::P1 => (0..p.vectors)
                .map(|_| get_ring(&mut r, p.len, Self::NAME))
                .collect::<Result<_, _>>()?,
        };
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        Ok(ShuffleMask {
            perm,
            mask,
            correction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};

    #[test]
    fn halves_satisfy_the_shuffle_correlation() {
        let p = ShuffleParams {
            len: 100,
            vectors: 2,
            bits: 20,
        };
        let mut dealer = Dealer::with_prg(Prg::from_seed([5; 16]));
        let request = encode_request::<ShuffleMask>(&p);
        let b1 = dealer.serve(PartyId::P1, &request).unwrap();
        let b0 = dealer.serve(PartyId::P0, &request).unwrap();
        let h0 = ShuffleMask::decode(PartyId::P0, &p, &b0).unwrap();
        let h1 = ShuffleMask::decode(PartyId::P1, &p, &b1).unwrap();
        assert_eq!(b0.len(), 48, "P0's half is three seeds");
        for j in 0..p.vectors {
            let inner = ring::sub(&permute(&h0.perm, &h1.mask[j]), &h0.mask[j]);
            let expected: Vec<u64> = ring::sub(&permute(&h1.perm, &inner), &h0.correction[j])
                .iter()
                .map(|v| v & 0xfffff)
                .collect();
            assert_eq!(h1.correction[j], expected);
        }
        let mut sorted = h0.perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(h0.perm, h1.perm);
    }

    #[test]
    fn bad_parameters_and_cut_halves_are_errors() {
        let mut dealer = Dealer::new();
        for p in [
            ShuffleParams {
                len: 0,
                vectors: 1,
                bits: 64,
            },
            ShuffleParams {
                len: 5,
                vectors: 0,
                bits: 64,
            },
            ShuffleParams {
                len: 5,
                vectors: 65,
                bits: 64,
            },
            ShuffleParams {
                len: 5,
                vectors: 1,
                bits: 0,
            },
            ShuffleParams {
                len: 5,
                vectors: 1,
                bits: 65,
            },
        ] {
            let request = encode_request::<ShuffleMask>(&p);
            assert!(
                matches!(dealer.serve(PartyId::P0, &request), Err(DealerError::Malformed(m)) if m.contains("invalid correlation parameters")),
                "{p:?}"
            );
        }
        let p = ShuffleParams {
            len: 9,
            vectors: 1,
            bits: 64,
        };
        let half = dealer
            .serve(PartyId::P1, &encode_request::<ShuffleMask>(&p))
            .unwrap();
        for cut in [0, 20, half.len() - 1] {
            assert!(ShuffleMask::decode(PartyId::P1, &p, &half[..cut]).is_err());
        }
    }
}
