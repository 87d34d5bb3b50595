//! Beaver triples for element-wise products of two secret vectors: `c = a ⊙ b`.

use super::{check_size, expand, get_ring, get_seed, put_seed, share_with_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::PartyId;
use comet_net::codec::{Reader, Writer};

/// A server's half of `n` Beaver triples.
#[derive(Clone, Debug)]
pub struct BeaverTriple {
    /// Share of `a`.
    pub a: Vec<u64>,
    /// Share of `b`.
    pub b: Vec<u64>,
    /// Share of `c = a ⊙ b`.
    pub c: Vec<u64>,
}

impl CorrelationKind for BeaverTriple {
    type Params = usize;
    const TAG: u8 = 2;
    const NAME: &'static str = "Beaver triple";

    fn encode_params(n: &usize, w: &mut Writer) {
        w.u32(*n as u32);
    }

    fn decode_params(r: &mut Reader) -> Result<usize, DealerError> {
        Ok(r.u32()? as usize)
    }

    fn generate(&n: &usize, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        check_size("triples", n)?;
        let seeds: Vec<_> = (0..4).map(|_| ctx.prg.next_seed()).collect();
        let a = comet_core::ring::add(&expand(&seeds[0], n), &expand(&seeds[1], n));
        let b = comet_core::ring::add(&expand(&seeds[2], n), &expand(&seeds[3], n));
        let c = comet_core::ring::mul(&a, &b);
        let (seed_c0, c1) = share_with_seed(&c, ctx.prg);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_seed(&mut w0, &seeds[2]);
        put_seed(&mut w0, &seed_c0);
        put_seed(&mut w1, &seeds[1]);
        put_seed(&mut w1, &seeds[3]);
        w1.ring(&c1, 64);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, &n: &usize, bytes: &[u8]) -> Result<Self, DealerError> {
        let mut r = Reader::new(bytes);
        let a = expand(&get_seed(&mut r)?, n);
        let b = expand(&get_seed(&mut r)?, n);
        let c = match party {
            PartyId::P0 => expand(&get_seed(&mut r)?, n),
            PartyId::P1 => get_ring(&mut r, n, Self::NAME)?,
        };
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        Ok(BeaverTriple { a, b, c })
    }
}
