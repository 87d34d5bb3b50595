//! DPF point-function, full-domain and comparison correctness against plaintext.

use comet_core::{PartyId, Prg};
use comet_fss::{dpf_eval_all, dpf_eval_bit, dpf_gen, dpf_lt, dpf_lt_batch, DpfKey};
use proptest::prelude::*;

fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

fn eq_bit(k0: &DpfKey, k1: &DpfKey, x: u64) -> u8 {
    dpf_eval_bit(PartyId::P0, k0, x) ^ dpf_eval_bit(PartyId::P1, k1, x)
}

fn lt_bit(k0: &DpfKey, k1: &DpfKey, x: u64) -> u8 {
    dpf_lt(PartyId::P0, k0, x) ^ dpf_lt(PartyId::P1, k1, x)
}

#[test]
fn exhaustive_point_and_comparison_n1_to_10() {
    let mut prg = Prg::from_seed([5; 16]);
    for n in 1..=10u32 {
        for alpha in 0..(1u64 << n) {
            let (k0, k1) = dpf_gen(alpha, n, &mut prg);
            for x in 0..(1u64 << n) {
                assert_eq!(
                    eq_bit(&k0, &k1, x),
                    (x == alpha) as u8,
                    "eq n={n} α={alpha} x={x}"
                );
                assert_eq!(
                    lt_bit(&k0, &k1, x),
                    (x < alpha) as u8,
                    "lt n={n} α={alpha} x={x}"
                );
            }
        }
    }
}

#[test]
fn eval_all_matches_pointwise_and_is_a_point() {
    let mut prg = Prg::from_seed([6; 16]);
    for n in 1..=16u32 {
        for _ in 0..4 {
            let alpha = prg.next_u64() & mask(n);
            let (k0, k1) = dpf_gen(alpha, n, &mut prg);
            let a = dpf_eval_all(PartyId::P0, &k0);
            let b = dpf_eval_all(PartyId::P1, &k1);
            assert_eq!(a.len(), (1usize << n).div_ceil(64));
            let mut ones = 0;
            for x in 0..(1u64 << n) {
                let (w, j) = ((x / 64) as usize, x % 64);
                let sa = ((a[w] >> j) & 1) as u8;
                let sb = ((b[w] >> j) & 1) as u8;
                if n <= 12 || x % 97 == 0 || x == alpha {
                    assert_eq!(sa, dpf_eval_bit(PartyId::P0, &k0, x));
                    assert_eq!(sb, dpf_eval_bit(PartyId::P1, &k1, x));
                }
                ones += (sa ^ sb) as u32;
                if sa ^ sb == 1 {
                    assert_eq!(x, alpha);
                }
            }
            assert_eq!(ones, 1);
            // Bits beyond 2^n are zero in both shares (n < 6).
            if n < 6 {
                assert_eq!(a[0] >> (1 << n), 0);
            }
            // A share alone is not the point vector.
            assert!(a.iter().map(|w| w.count_ones()).sum::<u32>() > 1 || n < 4);
        }
    }
}

#[test]
fn lt_batch_matches_single() {
    let mut prg = Prg::from_seed([7; 16]);
    let n = 37;
    let (mut k0s, mut k1s, mut xs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..300 {
        let alpha = prg.next_u64() & mask(n);
        let (a, b) = dpf_gen(alpha, n, &mut prg);
        let x = if prg.next_u64() & 1 == 0 {
            alpha
        } else {
            prg.next_u64() & mask(n)
        };
        k0s.push(a);
        k1s.push(b);
        xs.push(x);
    }
    let s0 = dpf_lt_batch(PartyId::P0, &k0s, &xs);
    let s1 = dpf_lt_batch(PartyId::P1, &k1s, &xs);
    for i in 0..xs.len() {
        assert_eq!(s0[i], dpf_lt(PartyId::P0, &k0s[i], xs[i]));
        assert_eq!(s0[i] ^ s1[i], lt_bit(&k0s[i], &k1s[i], xs[i]));
    }
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
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn random_wide_domains(n in 1u32..=64, a in any::<u64>(), x in any::<u64>(), edge in 0u32..8) {
        let m = mask(n);
        let alpha = a & m;
        let x = match edge {
            0 => 0,
            1 => m,
            2 => alpha,
            3 => alpha.wrapping_add(1) & m,
            4 => alpha.wrapping_sub(1) & m,
            5 => alpha ^ 1,
            _ => x & m,
        };
        let mut prg = Prg::from_seed(case_seed(&[n as u64, alpha, x]));
        let (k0, k1) = dpf_gen(alpha, n, &mut prg);
        prop_assert_eq!(eq_bit(&k0, &k1, x), (x == alpha) as u8);
        prop_assert_eq!(lt_bit(&k0, &k1, x), (x < alpha) as u8);
        for alpha in [0, m] {
            let (k0, k1) = dpf_gen(alpha, n, &mut prg);
            prop_assert_eq!(eq_bit(&k0, &k1, x), (x == alpha) as u8);
            prop_assert_eq!(lt_bit(&k0, &k1, x), (x < alpha) as u8);
        }
    }
}

#[test]
fn lt_batch_with_mixed_widths() {
    let mut prg = Prg::from_seed([15; 16]);
    let (mut k0s, mut k1s, mut xs, mut want) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..600u64 {
        let n = [3u32, 7, 8, 9, 30, 64][(i / 5 % 6) as usize];
        let alpha = prg.next_u64() & mask(n);
        let x = if i % 4 == 0 {
            alpha
        } else {
            prg.next_u64() & mask(n)
        };
        let (a, b) = dpf_gen(alpha, n, &mut prg);
        k0s.push(a);
        k1s.push(b);
        xs.push(x);
        want.push((x < alpha) as u8);
    }
    let s0 = dpf_lt_batch(PartyId::P0, &k0s, &xs);
    let s1 = dpf_lt_batch(PartyId::P1, &k1s, &xs);
    for i in 0..xs.len() {
        assert_eq!(s0[i] ^ s1[i], want[i], "i={i}");
    }
}
