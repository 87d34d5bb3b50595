//! Two-party additive secret sharing over Z_2^64: `x = x0 + x1 (mod 2^64)`.

use crate::prg::Prg;

/// Which of the two computing servers a share belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartyId {
    /// Server P0.
    P0,
    /// Server P1.
    P1,
}

impl PartyId {
    /// 0 for P0, 1 for P1.
    pub fn index(self) -> usize {
        match self {
            PartyId::P0 => 0,
            PartyId::P1 => 1,
        }
    }

    /// The other server.
    pub fn other(self) -> PartyId {
        match self {
            PartyId::P0 => PartyId::P1,
            PartyId::P1 => PartyId::P0,
        }
    }

    /// The party with index `i` (0 or 1).
    pub fn from_index(i: usize) -> PartyId {
        match i {
            0 => PartyId::P0,
            1 => PartyId::P1,
            _ => panic!("party index must be 0 or 1, got {i}"),
        }
    }
}

/// Splits `secret` into two additive shares using randomness from `prg`.
pub fn share(secret: &[u64], prg: &mut Prg) -> (Vec<u64>, Vec<u64>) {
    let s0 = prg.gen_u64s(secret.len());
    let s1 = secret
        .iter()
        .zip(&s0)
        .map(|(x, r)| x.wrapping_sub(*r))
        .collect();
    (s0, s1)
}

/// Recombines two additive shares.
pub fn reconstruct(s0: &[u64], s1: &[u64]) -> Vec<u64> {
    crate::ring::add(s0, s1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_then_reconstruct() {
        let mut prg = Prg::from_seed([5; 16]);
        let x = vec![1, 2, u64::MAX, 0];
        let (a, b) = share(&x, &mut prg);
        assert_ne!(a, x);
        assert_eq!(reconstruct(&a, &b), x);
        assert_eq!(PartyId::P0.other(), PartyId::P1);
        assert_eq!(PartyId::from_index(1).index(), 1);
    }
}
