//! The kinds of correlated randomness, one module each, and the tag registry.
//!
//! Tag ranges: 1–9 arithmetic (products), 10–29 truncation and shuffles, 30–59 FSS gates,
//! 60–89 nonlinear functions, 90–99 model-specific masks and weights. Add a kind by
//! implementing [`crate::CorrelationKind`] in a new module and adding one line to
//! [`generate_by_tag`].

pub mod attention;
pub mod beaver;
pub mod compare;
pub mod lut;
pub mod matmul;
pub mod nonlinear;
pub mod norm;
pub mod shuffle;
pub mod silu;
pub mod sparse;
pub mod trunc;

use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::{Prg, Seed};
use comet_net::codec::{Reader, Writer};

/// Generates the halves for a raw request (tag already split off).
pub fn generate_by_tag(
    tag: u8,
    params: &[u8],
    ctx: &mut GenContext,
) -> Result<[Vec<u8>; 2], DealerError> {
    match tag {
        matmul::MatmulMask::TAG => generate::<matmul::MatmulMask>(params, ctx),
        beaver::BeaverTriple::TAG => generate::<beaver::BeaverTriple>(params, ctx),
        compare::DreluKeys::TAG => generate::<compare::DreluKeys>(params, ctx),
        compare::SelectMasks::TAG => generate::<compare::SelectMasks>(params, ctx),
        compare::ReluKeys::TAG => generate::<compare::ReluKeys>(params, ctx),
        compare::CompactReluKeys::TAG => generate::<compare::CompactReluKeys>(params, ctx),
        lut::LutKeys::TAG => generate::<lut::LutKeys>(params, ctx),
        trunc::TruncMask::TAG => generate::<trunc::TruncMask>(params, ctx),
        shuffle::ShuffleMask::TAG => generate::<shuffle::ShuffleMask>(params, ctx),
        nonlinear::GatedLutKeys::TAG => generate::<nonlinear::GatedLutKeys>(params, ctx),
        nonlinear::MultiReluKeys::TAG => generate::<nonlinear::MultiReluKeys>(params, ctx),
        nonlinear::ExpPairKeys::TAG => generate::<nonlinear::ExpPairKeys>(params, ctx),
        norm::NormMask::TAG => generate::<norm::NormMask>(params, ctx),
        silu::SiluKeys::TAG => generate::<silu::SiluKeys>(params, ctx),
        attention::AttnScoreMask::TAG => generate::<attention::AttnScoreMask>(params, ctx),
        attention::AttnValueMask::TAG => generate::<attention::AttnValueMask>(params, ctx),
        attention::ClientInputMask::TAG => generate::<attention::ClientInputMask>(params, ctx),
        sparse::SelfGateKeys::TAG => generate::<sparse::SelfGateKeys>(params, ctx),
        sparse::PermutedFfn::TAG => generate::<sparse::PermutedFfn>(params, ctx),
        sparse::PermutedAttn::TAG => generate::<sparse::PermutedAttn>(params, ctx),
        other => Err(DealerError::UnknownKind(other)),
    }
}

fn generate<K: CorrelationKind>(
    params: &[u8],
    ctx: &mut GenContext,
) -> Result<[Vec<u8>; 2], DealerError> {
    let mut r = Reader::new(params);
    let p = K::decode_params(&mut r).map_err(|e| DealerError::malformed(K::NAME, e))?;
    r.finish().map_err(|e| DealerError::malformed(K::NAME, e))?;
    K::generate(&p, ctx)
}

/// Appends a PRG seed.
pub fn put_seed(w: &mut Writer, seed: &Seed) {
    for chunk in seed.chunks_exact(8) {
        w.u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    }
}

/// Reads a PRG seed.
pub fn get_seed(r: &mut Reader) -> Result<Seed, comet_net::NetError> {
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&r.u64()?.to_le_bytes());
    seed[8..].copy_from_slice(&r.u64()?.to_le_bytes());
    Ok(seed)
}

/// `n` ring elements expanded from a seed: how a 16-byte seed stands in for a share.
pub fn expand(seed: &Seed, n: usize) -> Vec<u64> {
    Prg::from_seed(*seed).gen_u64s(n)
}

/// Shares `secret` so that P0's half is a seed: returns `(seed0, share1)` with
/// `expand(seed0) + share1 = secret`.
pub fn share_with_seed(secret: &[u64], prg: &mut Prg) -> (Seed, Vec<u64>) {
    let seed = prg.next_seed();
    let s0 = expand(&seed, secret.len());
    (seed, comet_core::ring::sub(secret, &s0))
}

/// Reads a ring vector and checks its length.
pub fn get_ring(r: &mut Reader, n: usize, what: &str) -> Result<Vec<u64>, DealerError> {
    let v = r.ring().map_err(|e| DealerError::malformed(what, e))?;
    if v.len() != n {
        return Err(DealerError::Malformed(format!(
            "{what}: expected {n} elements, got {}",
            v.len()
        )));
    }
    Ok(v)
}

/// Checks a size parameter is non-zero and not absurd (guards against malicious requests).
pub fn check_size(what: &str, n: usize) -> Result<(), DealerError> {
    const MAX: usize = 1 << 28;
    if n == 0 || n > MAX {
        return Err(DealerError::InvalidParams(format!(
            "{what} = {n} is outside 1..={MAX}"
        )));
    }
    Ok(())
}
