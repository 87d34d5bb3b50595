//! Fixed weight masks (DESIGN.md §4): weights are shared once as `F = W − B` (public to both
//! servers) plus additive shares of a mask `B` that only the dealer knows.

use comet_core::{matmul, Prg};

/// Identifies a registered weight matrix at the dealer and at both servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightId(pub u32);

/// The dealer's record of one weight: its mask `B`, shape `k × n` (input-major, row-major).
#[derive(Clone, Debug)]
pub struct WeightMask {
    /// Input dimension (rows of W).
    pub k: usize,
    /// Output dimension (columns of W).
    pub n: usize,
    /// The mask `B`, `k × n` row-major.
    pub mask: Vec<u64>,
}

/// A server's view of one weight matrix `W` (`k × n`, so `Y = X·W` for `X` of shape `m × k`).
#[derive(Clone, Debug)]
pub struct FixedWeight {
    /// The weight's identifier, shared with the dealer.
    pub id: WeightId,
    /// Input dimension.
    pub k: usize,
    /// Output dimension.
    pub n: usize,
    /// `F = W − B`, public to both servers.
    pub masked: Vec<u64>,
    /// This server's additive share of `B`.
    pub mask_share: Vec<u64>,
}

/// Masks `w` (`k × n`) with a fresh `B = B0 + B1`, each `Bi` expanded from its own seed, and
/// returns the dealer's record and both servers' views.
pub fn mask_weight(
    id: WeightId,
    w: &[u64],
    k: usize,
    n: usize,
    prg: &mut Prg,
) -> (WeightMask, [FixedWeight; 2]) {
    assert_eq!(
        w.len(),
        k * n,
        "weight has {} elements, expected {k}x{n}",
        w.len()
    );
    let b0 = Prg::from_seed(prg.next_seed()).gen_u64s(k * n);
    let b1 = Prg::from_seed(prg.next_seed()).gen_u64s(k * n);
    let mask = comet_core::ring::add(&b0, &b1);
    let masked = comet_core::ring::sub(w, &mask);
    let view = |mask_share| FixedWeight {
        id,
        k,
        n,
        masked: masked.clone(),
        mask_share,
    };
    (
        WeightMask {
            k,
            n,
            mask: mask.clone(),
        },
        [view(b0), view(b1)],
    )
}

impl WeightMask {
    /// `A·B` for an activation mask `A` of shape `m × k`.
    pub fn times(&self, a: &[u64], m: usize) -> Vec<u64> {
        matmul::matmul(a, &self.mask, m, self.k, self.n)
    }
}
