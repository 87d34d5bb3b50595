//! DCF correctness against the plaintext function β·1{x < α} mod 2^ℓ.

use comet_core::{PartyId, Prg};
use comet_fss::{dcf_eval, dcf_eval_batch, dcf_eval_vec, dcf_gen, dcf_gen_vec, DcfKey};
use proptest::prelude::*;

fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

fn reconstruct(k0: &DcfKey, k1: &DcfKey, x: u64) -> u64 {
    let out = k0.out_bits();
    dcf_eval(PartyId::P0, k0, x).wrapping_add(dcf_eval(PartyId::P1, k1, x)) & mask(out)
}

#[test]
fn exhaustive_small_domains_z2_64_and_narrow_payloads() {
    let mut prg = Prg::from_seed([1; 16]);
    for n in 1..=8u32 {
        for alpha in 0..(1u64 << n) {
            for (out_bits, beta) in [
                (64, prg.next_u64()),
                (64, 1),
                (64, u64::MAX),
                (1, 1),
                (13, prg.next_u64()),
            ] {
                let (k0, k1) = dcf_gen(alpha, beta, n, out_bits, &mut prg);
                for x in 0..(1u64 << n) {
                    let want = if x < alpha { beta & mask(out_bits) } else { 0 };
                    assert_eq!(
                        reconstruct(&k0, &k1, x),
                        want,
                        "n={n} α={alpha} β={beta} ℓ={out_bits} x={x}"
                    );
                }
            }
        }
    }
}

#[test]
fn shares_look_random_not_zero() {
    // Guards against a scheme that "works" by outputting the value in one party's share.
    let mut prg = Prg::from_seed([2; 16]);
    let (k0, k1) = dcf_gen(100, 7, 8, 64, &mut prg);
    let s0: Vec<u64> = (0..256).map(|x| dcf_eval(PartyId::P0, &k0, x)).collect();
    assert!(s0.iter().filter(|&&v| v == 0 || v == 7).count() < 4);
    assert_ne!(k0, k1);
}

#[test]
fn vector_payload_exhaustive() {
    let mut prg = Prg::from_seed([3; 16]);
    for n in 1..=7u32 {
        for alpha in 0..(1u64 << n) {
            let beta = [prg.next_u64(), prg.next_u64()];
            for out_bits in [64, 20] {
                let (k0, k1) = dcf_gen_vec(alpha, beta, n, out_bits, &mut prg);
                for x in 0..(1u64 << n) {
                    let a = dcf_eval_vec(PartyId::P0, &k0, x);
                    let b = dcf_eval_vec(PartyId::P1, &k1, x);
                    for k in 0..2 {
                        let want = if x < alpha {
                            beta[k] & mask(out_bits)
                        } else {
                            0
                        };
                        assert_eq!(a[k].wrapping_add(b[k]) & mask(out_bits), want);
                    }
                }
            }
        }
    }
}

#[test]
fn batch_matches_single() {
    let mut prg = Prg::from_seed([4; 16]);
    let n = 40;
    let mut k0s = Vec::new();
    let mut k1s = Vec::new();
    let mut xs = Vec::new();
    let mut want = Vec::new();
    for _ in 0..500 {
        let alpha = prg.next_u64() & mask(n);
        let beta = prg.next_u64();
        let x = prg.next_u64() & mask(n);
        let (a, b) = dcf_gen(alpha, beta, n, 64, &mut prg);
        k0s.push(a);
        k1s.push(b);
        xs.push(x);
        want.push(if x < alpha { beta } else { 0 });
    }
    let s0 = dcf_eval_batch(PartyId::P0, &k0s, &xs);
    let s1 = dcf_eval_batch(PartyId::P1, &k1s, &xs);
    for i in 0..xs.len() {
        assert_eq!(s0[i], dcf_eval(PartyId::P0, &k0s[i], xs[i]));
        assert_eq!(s0[i].wrapping_add(s1[i]), want[i]);
    }
}

/// Inputs for the property test: random α, β, x plus the edge cases named in the brief.
fn case() -> impl Strategy<Value = (u32, u64, u64, u64, u32)> {
    (1u32..=64, any::<u64>(), any::<u64>(), any::<u64>(), 0u32..8).prop_map(
        |(n, a, beta, x, edge)| {
            let m = mask(n);
            let alpha = a & m;
            let x = match edge {
                0 => 0,
                1 => m,
                2 => alpha,
                3 => alpha.wrapping_add(1) & m,
                4 => alpha.wrapping_sub(1) & m,
                _ => x & m,
            };
            (n, alpha, beta, x, edge)
        },
    )
}

/// A key-generation seed that varies with every property-test input.
fn case_seed(parts: &[u64]) -> [u8; 16] {
    let mut s = [0u8; 16];
    for (i, p) in parts.iter().enumerate() {
        for (j, b) in p.to_le_bytes().iter().enumerate() {
            s[(i * 8 + j) % 16] ^= b.rotate_left(i as u32);
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]
    #[test]
    fn random_wide_domains((n, alpha, beta, x, _edge) in case(), out_bits in prop_oneof![Just(64u32), 1u32..64]) {
        let mut prg = Prg::from_seed(case_seed(&[n as u64, alpha, beta, x, out_bits as u64]));
        let (k0, k1) = dcf_gen(alpha, beta, n, out_bits, &mut prg);
        let want = if x < alpha { beta & mask(out_bits) } else { 0 };
        prop_assert_eq!(reconstruct(&k0, &k1, x), want);
        // Extreme thresholds too.
        let (k0, k1) = dcf_gen(mask(n), beta, n, out_bits, &mut prg);
        let want = if x < mask(n) { beta & mask(out_bits) } else { 0 };
        prop_assert_eq!(reconstruct(&k0, &k1, x), want);
        let (k0, k1) = dcf_gen(0, beta, n, out_bits, &mut prg);
        prop_assert_eq!(reconstruct(&k0, &k1, x), 0);
    }

    #[test]
    fn random_wide_domains_vector((n, alpha, beta, x, _edge) in case(), beta2 in any::<u64>()) {
        let mut prg = Prg::from_seed(case_seed(&[n as u64, alpha, beta, x, beta2]));
        let (k0, k1) = dcf_gen_vec(alpha, [beta, beta2], n, 64, &mut prg);
        let a = dcf_eval_vec(PartyId::P0, &k0, x);
        let b = dcf_eval_vec(PartyId::P1, &k1, x);
        let on = x < alpha;
        prop_assert_eq!(a[0].wrapping_add(b[0]), if on { beta } else { 0 });
        prop_assert_eq!(a[1].wrapping_add(b[1]), if on { beta2 } else { 0 });
    }
}

#[test]
fn batch_with_mixed_widths() {
    let mut prg = Prg::from_seed([16; 16]);
    let (mut k0s, mut k1s, mut xs, mut want) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..600u64 {
        let n = [1u32, 5, 17, 64][(i / 3 % 4) as usize];
        let out_bits = if i % 7 == 0 { 9 } else { 64 };
        let alpha = prg.next_u64() & mask(n);
        let beta = prg.next_u64();
        let x = if i % 5 == 0 {
            alpha.saturating_sub(1)
        } else {
            prg.next_u64() & mask(n)
        };
        let (a, b) = dcf_gen(alpha, beta, n, out_bits, &mut prg);
        k0s.push(a);
        k1s.push(b);
        xs.push(x);
        want.push(if x < alpha { beta & mask(out_bits) } else { 0 });
    }
    let s0 = dcf_eval_batch(PartyId::P0, &k0s, &xs);
    let s1 = dcf_eval_batch(PartyId::P1, &k1s, &xs);
    for i in 0..xs.len() {
        assert_eq!(
            s0[i].wrapping_add(s1[i]) & mask(k0s[i].out_bits()),
            want[i],
            "i={i}"
        );
    }
}
