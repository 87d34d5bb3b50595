//! Opening, local linear operations, element-wise products and products with fixed weight
//! masks (DESIGN.md §4).

use crate::error::check_len;
use crate::{Party, ProtocolError};
use comet_core::{matmul, ring};
use comet_dealer::kinds::beaver::BeaverTriple;
use comet_dealer::kinds::matmul::{MatmulMask, MatmulParams};
use comet_dealer::FixedWeight;

/// Ideal functionality: reveals `x` to both servers. One round, 8 bytes per element each way.
pub fn open(p: &mut Party, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    let theirs = p.exchange(x, 64)?;
    Ok(ring::add(x, &theirs))
}

/// Reveals `x mod 2^bits` (shares only need their low `bits` bits on the wire).
pub fn open_bits(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let mask = ring::mask_bits(bits);
    let theirs = p.exchange(x, bits)?;
    Ok(x.iter()
        .zip(&theirs)
        .map(|(a, b)| a.wrapping_add(*b) & mask)
        .collect())
}

/// Reveals several vectors, each modulo its own `2^bits`, in a single round.
pub fn open_many(p: &mut Party, parts: &[(&[u64], u32)]) -> Result<Vec<Vec<u64>>, ProtocolError> {
    let theirs = p.exchange_many(parts)?;
    Ok(parts
        .iter()
        .zip(theirs)
        .map(|((mine, bits), other)| {
            let mask = ring::mask_bits(*bits);
            mine.iter()
                .zip(&other)
                .map(|(a, b)| a.wrapping_add(*b) & mask)
                .collect()
        })
        .collect())
}

/// Shares of `x + c` for a public vector `c` (only P0 adds it).
pub fn add_public(p: &Party, x: &[u64], c: &[u64]) -> Vec<u64> {
    if p.is_p0() {
        ring::add(x, c)
    } else {
        x.to_vec()
    }
}

/// Shares of `x + c` for a public constant `c` added to every element.
pub fn add_constant(p: &Party, x: &[u64], c: u64) -> Vec<u64> {
    if p.is_p0() {
        x.iter().map(|v| v.wrapping_add(c)).collect()
    } else {
        x.to_vec()
    }
}

/// Ideal functionality: shares of `x ⊙ y` (element-wise, in the ring; a fixed-point product
/// has `2f` fractional bits and needs a truncation). One round with a Beaver triple.
pub fn mul(p: &mut Party, x: &[u64], y: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    check_len("right operand", y.len(), x.len())?;
    let triple: BeaverTriple = p.correlation(&x.len())?;
    let e_share = ring::sub(x, &triple.a);
    let f_share = ring::sub(y, &triple.b);
    let opened = open_many(p, &[(&e_share, 64), (&f_share, 64)])?;
    let (e, f) = (&opened[0], &opened[1]);
    let is_p0 = p.is_p0();
    Ok((0..x.len())
        .map(|i| {
            let mut z = triple.c[i]
                .wrapping_add(e[i].wrapping_mul(triple.b[i]))
                .wrapping_add(f[i].wrapping_mul(triple.a[i]));
            if is_p0 {
                z = z.wrapping_add(e[i].wrapping_mul(f[i]));
            }
            z
        })
        .collect())
}

/// Ideal functionality: shares of `X·W_j` for each weight `W_j` (`k × n_j`), where `X` is
/// `m × k`. One opening of `X − A` serves every weight (DESIGN.md §4); the weights are never
/// opened. Results have the fractional bits of `X` plus those of `W`.
pub fn matmul_fixed(
    p: &mut Party,
    x: &[u64],
    m: usize,
    weights: &[&FixedWeight],
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    matmul_fixed_bits(p, x, m, weights, 64)
}

/// [`matmul_fixed`] opening `X − A` modulo `2^bits` only (`bits` per element on the wire):
/// the products are then correct **modulo 2^bits** (garbage above), for consumers that reduce
/// to that width first, such as a narrow truncation (`trunc::truncate_many_narrow`).
pub fn matmul_fixed_bits(
    p: &mut Party,
    x: &[u64],
    m: usize,
    weights: &[&FixedWeight],
    bits: u32,
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    if !(1..=64).contains(&bits) {
        return Err(ProtocolError::Range(format!(
            "product opening of {bits} bits (allowed 1..=64)"
        )));
    }
    let k = weights
        .first()
        .map(|w| w.k)
        .ok_or_else(|| ProtocolError::Shape("matmul_fixed needs at least one weight".into()))?;
    check_len("matmul input", x.len(), m * k)?;
    if let Some(w) = weights.iter().find(|w| w.k != k) {
        return Err(ProtocolError::Shape(format!(
            "weight {} has {} input rows, expected {k}",
            w.id.0, w.k
        )));
    }
    let params = MatmulParams {
        m,
        k,
        weights: weights.iter().map(|w| (w.id, w.n)).collect(),
    };
    let mask: MatmulMask = p.correlation(&params)?;
    let e = open_bits(p, &ring::sub(x, &mask.a), bits)?;
    let is_p0 = p.is_p0();
    Ok(weights
        .iter()
        .zip(&mask.c)
        .map(|(w, c)| product_after_opening(is_p0, &e, &mask.a, c, w, m))
        .collect())
}

/// This server's share of `X·W` once `E = X − A` is open: `[E·F] + E·B_i + A_i·F + C_i`, the
/// bracket added by P0 only; accumulates straight into the output (no temporary `F + B_i`).
/// Also used where `E` arrives by other means (the client's masked one-hot embedding).
pub fn product_after_opening(
    is_p0: bool,
    e: &[u64],
    a: &[u64],
    c: &[u64],
    w: &FixedWeight,
    m: usize,
) -> Vec<u64> {
    let mut y = c.to_vec();
    if is_p0 {
        matmul::matmul_acc(e, &w.masked, m, w.k, w.n, &mut y);
    }
    matmul::matmul_acc(e, &w.mask_share, m, w.k, w.n, &mut y);
    matmul::matmul_acc(a, &w.masked, m, w.k, w.n, &mut y);
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run_pair, share_for_test};
    use comet_core::share::reconstruct;
    use comet_core::Prg;
    use comet_dealer::{Dealer, InProcessDealer};

    #[test]
    fn open_and_products_match_plaintext() {
        let mut prg = Prg::from_seed([1; 16]);
        let x = prg.gen_u64s(37);
        let y = prg.gen_u64s(37);
        let xs = share_for_test(&x, &mut prg);
        let ys = share_for_test(&y, &mut prg);
        let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([2; 16])));
        let (r0, r1) = run_pair(&dealer, |p| {
            let i = p.id.index();
            let opened = open(p, &xs[i])?;
            let small = open_bits(p, &xs[i], 12)?;
            let prod = mul(p, &xs[i], &ys[i])?;
            let shifted = add_constant(p, &prod, 5);
            Ok((opened, small, shifted, p.online_meter().total().rounds))
        });
        let (o0, s0, z0, rounds) = r0.unwrap();
        let (o1, s1, z1, _) = r1.unwrap();
        assert_eq!(o0, x);
        assert_eq!(o1, x);
        assert_eq!(s0, x.iter().map(|v| v & 0xfff).collect::<Vec<_>>());
        assert_eq!(s0, s1);
        let expected: Vec<u64> = x
            .iter()
            .zip(&y)
            .map(|(a, b)| a.wrapping_mul(*b).wrapping_add(5))
            .collect();
        assert_eq!(reconstruct(&z0, &z1), expected);
        assert_eq!(rounds, 3, "open, open_bits and mul take one round each");
    }

    #[test]
    fn fixed_weight_matmul_matches_plaintext_and_uses_one_opening() {
        let mut prg = Prg::from_seed([3; 16]);
        let (m, k, n1, n2) = (3, 17, 9, 4);
        let w1 = prg.gen_u64s(k * n1);
        let w2 = prg.gen_u64s(k * n2);
        let x = prg.gen_u64s(m * k);
        let xs = share_for_test(&x, &mut prg);
        let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([4; 16])));
        let v1 = dealer.with(|d| d.register_weight(&w1, k, n1));
        let v2 = dealer.with(|d| d.register_weight(&w2, k, n2));
        let (r0, r1) = run_pair(&dealer, |p| {
            let i = p.id.index();
            let ys = matmul_fixed(p, &xs[i], m, &[&v1[i], &v2[i]])?;
            Ok((ys, p.online_meter().total()))
        });
        let (y0, c0) = r0.unwrap();
        let (y1, _) = r1.unwrap();
        assert_eq!(
            reconstruct(&y0[0], &y1[0]),
            matmul::matmul_naive(&x, &w1, m, k, n1)
        );
        assert_eq!(
            reconstruct(&y0[1], &y1[1]),
            matmul::matmul_naive(&x, &w2, m, k, n2)
        );
        assert_eq!(c0.rounds, 1);
        // Only the activation (m·k ring elements) crosses the wire, never the weights.
        assert_eq!(c0.bytes_sent as usize, 5 + 8 * m * k);
    }

    #[test]
    fn narrow_fixed_weight_matmul_is_right_modulo_its_width() {
        let mut prg = Prg::from_seed([5; 16]);
        let (m, k, n, bits) = (2, 40, 7, 40);
        let w = prg.gen_u64s(k * n);
        let x = prg.gen_u64s(m * k);
        let xs = share_for_test(&x, &mut prg);
        let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([6; 16])));
        let v = dealer.with(|d| d.register_weight(&w, k, n));
        let (r0, r1) = run_pair(&dealer, |p| {
            let i = p.id.index();
            let y = matmul_fixed_bits(p, &xs[i], m, &[&v[i]], bits)?;
            Ok((y, p.online_meter().total()))
        });
        let ((y0, c0), (y1, _)) = (r0.unwrap(), r1.unwrap());
        let want = matmul::matmul_naive(&x, &w, m, k, n);
        let low = ring::mask_bits(bits);
        let got = reconstruct(&y0[0], &y1[0]);
        assert!(got.iter().zip(&want).all(|(a, b)| (a ^ b) & low == 0));
        assert_eq!(c0.bytes_sent as usize, 5 + 5 * m * k, "5 bytes per element");
        let (r0, _) = run_pair(&dealer, |p| matmul_fixed_bits(p, &xs[0], m, &[&v[0]], 0));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
    }

    #[test]
    fn shape_errors_are_reported() {
        let dealer = InProcessDealer::new(Dealer::new());
        let (r0, r1) = run_pair(&dealer, |p| mul(p, &[1, 2], &[3]));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        assert!(matches!(r1, Err(ProtocolError::Shape(_))));
    }
}
