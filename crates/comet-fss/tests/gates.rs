//! Masked-input gates against plaintext references (signed n-bit values, Z_2^64 outputs).

use comet_core::{PartyId, Prg};
use comet_fss::*;
use proptest::prelude::*;

fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

/// The signed value of the n-bit pattern `v` (sign extension of bit n − 1).
fn signed(v: u64, n: u32) -> i64 {
    let v = v & mask(n);
    if v >> (n - 1) == 1 {
        (v | !mask(n)) as i64
    } else {
        v as i64
    }
}

/// Opens the masked DReLU bit and reconstructs the finished arithmetic shares.
fn drelu_bit_pair(k: &(DreluBitKey, DreluBitKey), x_hat: u64) -> u64 {
    let e = drelu_bit_eval(PartyId::P0, &k.0, x_hat) ^ drelu_bit_eval(PartyId::P1, &k.1, x_hat);
    drelu_bit_finish(PartyId::P0, &k.0, e).wrapping_add(drelu_bit_finish(PartyId::P1, &k.1, e))
}

fn drelu_pair(k: &(DreluKey, DreluKey), x_hat: u64) -> u64 {
    drelu_eval(PartyId::P0, &k.0, x_hat).wrapping_add(drelu_eval(PartyId::P1, &k.1, x_hat))
}

#[test]
fn drelu_exhaustive_n1_to_8() {
    let mut prg = Prg::from_seed([8; 16]);
    for n in 1..=8u32 {
        for r in 0..(1u64 << n) {
            let keys = drelu_gen(r, n, &mut prg);
            let bkeys = drelu_bit_gen(r, n, &mut prg);
            for x in 0..(1u64 << n) {
                let x_hat = x.wrapping_add(r) & mask(n);
                let want = (signed(x, n) >= 0) as u64;
                assert_eq!(drelu_pair(&keys, x_hat), want, "n={n} r={r} x={x}");
                assert_eq!(drelu_bit_pair(&bkeys, x_hat), want, "bit n={n} r={r} x={x}");
                // Bits above n in the public input are ignored.
                assert_eq!(drelu_pair(&keys, x_hat | (0xdead << n.min(40))), want);
            }
        }
    }
}

#[test]
fn relu_exhaustive_small_widths_full_ring_mask() {
    let mut prg = Prg::from_seed([9; 16]);
    for n in 1..=7u32 {
        for _ in 0..(1u64 << n) {
            let r = prg.next_u64();
            let (k0, k1) = relu_gen(r, n, &mut prg);
            for xs in 0..(1u64 << n) {
                let x = signed(xs, n) as u64; // sign-extended into Z_2^64
                let x_hat = x.wrapping_add(r);
                let (d0, y0) = relu_eval(PartyId::P0, &k0, x_hat);
                let (d1, y1) = relu_eval(PartyId::P1, &k1, x_hat);
                let pos = (x as i64) >= 0;
                assert_eq!(d0.wrapping_add(d1), pos as u64);
                assert_eq!(
                    y0.wrapping_add(y1),
                    if pos { x } else { 0 },
                    "n={n} r={r} x={}",
                    x as i64
                );
            }
        }
    }
}

#[test]
fn cmp_ge_with_public_thresholds() {
    let mut prg = Prg::from_seed([10; 16]);
    let n = 8;
    for r in (0..256u64).step_by(7) {
        let keys = drelu_gen(r, n, &mut prg);
        for x in -64i64..64 {
            for c in [-64i64, -3, 0, 1, 17, 63] {
                let x_hat = (x as u64).wrapping_add(r);
                let s = cmp_ge_eval(PartyId::P0, &keys.0, x_hat, c as u64)
                    .wrapping_add(cmp_ge_eval(PartyId::P1, &keys.1, x_hat, c as u64));
                assert_eq!(s, (x >= c) as u64, "x={x} c={c}");
                let l = cmp_lt_eval(PartyId::P0, &keys.0, x_hat, c as u64)
                    .wrapping_add(cmp_lt_eval(PartyId::P1, &keys.1, x_hat, c as u64));
                assert_eq!(l, (x < c) as u64, "x={x} c={c}");
            }
        }
    }
}

#[test]
fn batches_match_single_evaluations() {
    let mut prg = Prg::from_seed([11; 16]);
    let n = 50;
    let mut dk = (Vec::new(), Vec::new());
    let mut rk = (Vec::new(), Vec::new());
    let mut xh = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        let r = prg.next_u64();
        let x = (prg.next_u64() >> 15) as i64 - (1i64 << 48) + i;
        let (a, b) = drelu_gen(r, n, &mut prg);
        dk.0.push(a);
        dk.1.push(b);
        let (a, b) = relu_gen(r, n, &mut prg);
        rk.0.push(a);
        rk.1.push(b);
        xh.push((x as u64).wrapping_add(r));
        want.push(x);
    }
    let d0 = drelu_eval_batch(PartyId::P0, &dk.0, &xh);
    let d1 = drelu_eval_batch(PartyId::P1, &dk.1, &xh);
    let r0 = relu_eval_batch(PartyId::P0, &rk.0, &xh);
    let r1 = relu_eval_batch(PartyId::P1, &rk.1, &xh);
    for i in 0..xh.len() {
        assert_eq!(d0[i].wrapping_add(d1[i]), (want[i] >= 0) as u64);
        assert_eq!(r0[i].1.wrapping_add(r1[i].1), want[i].max(0) as u64);
        assert_eq!(r0[i], relu_eval(PartyId::P0, &rk.0[i], xh[i]));
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
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn drelu_and_relu_wide(n in 2u32..=64, r in any::<u64>(), raw in any::<u64>(), edge in 0u32..6) {
        let half = 1u64 << (n - 1);
        // x as a signed n-bit value, with edge cases 0, −1, ±(2^(n−1)) limits, and r-dependent values.
        let xs = match edge {
            0 => 0,
            1 => mask(n),
            2 => half - 1,
            3 => half,
            4 => r.wrapping_neg() & mask(n), // x̂ = 0
            _ => raw & mask(n),
        };
        let x = signed(xs, n);
        let mut prg = Prg::from_seed(case_seed(&[n as u64, r, raw, edge as u64]));
        let keys = drelu_gen(r, n, &mut prg);
        let x_hat = (x as u64).wrapping_add(r);
        prop_assert_eq!(drelu_pair(&keys, x_hat), (x >= 0) as u64);
        let bk = drelu_bit_gen(r, n, &mut prg);
        prop_assert_eq!(drelu_bit_pair(&bk, x_hat), (x >= 0) as u64);
        let (k0, k1) = relu_gen(r, n, &mut prg);
        let (_, y0) = relu_eval(PartyId::P0, &k0, x_hat);
        let (_, y1) = relu_eval(PartyId::P1, &k1, x_hat);
        prop_assert_eq!(y0.wrapping_add(y1), x.max(0) as u64);
    }
}

#[test]
fn lut_exhaustive_m4_to_8_several_masks() {
    let mut prg = Prg::from_seed([12; 16]);
    for m in 1..=10u32 {
        let size = 1usize << m;
        let table: Vec<u64> = (0..size).map(|_| prg.next_u64()).collect();
        let masks: Vec<u64> = if m <= 8 {
            (0..size as u64)
                .step_by(size.div_ceil(16).max(1))
                .chain([size as u64 - 1])
                .collect()
        } else {
            vec![prg.next_u64(), 0]
        };
        for r in masks {
            let (k0, k1) = lut_gen(r, m, &mut prg);
            for x in 0..size as u64 {
                let x_hat = x.wrapping_add(r);
                let (v0, u0) = lut_eval(PartyId::P0, &k0, x_hat, &table);
                let (v1, u1) = lut_eval(PartyId::P1, &k1, x_hat, &table);
                let u = u0.wrapping_add(u1);
                assert!(u == 1 || u == u64::MAX, "u = ±1");
                let v = v0.wrapping_add(v1);
                assert_eq!(u.wrapping_mul(v), table[x as usize], "m={m} r={r} x={x}");
                // The dealer-assisted sign fix: open v̂ = v + ρ, then s_b·v̂ − (sρ)_b.
                let v_hat = lut_mask_v(&k0, v0).wrapping_add(lut_mask_v(&k1, v1));
                let t = lut_finish(&k0, v_hat).wrapping_add(lut_finish(&k1, v_hat));
                assert_eq!(t, table[x as usize]);
            }
        }
    }
}

#[test]
fn lut_batch_matches_single() {
    let mut prg = Prg::from_seed([13; 16]);
    let table: Vec<u64> = (0..256).map(|i| i * i).collect();
    let (mut a, mut b, mut xh) = (Vec::new(), Vec::new(), Vec::new());
    for x in 0..256u64 {
        let r = prg.next_u64();
        let (k0, k1) = lut_gen(r, 8, &mut prg);
        a.push(k0);
        b.push(k1);
        xh.push(x.wrapping_add(r));
    }
    let s0 = lut_eval_batch(PartyId::P0, &a, &xh, &table);
    let s1 = lut_eval_batch(PartyId::P1, &b, &xh, &table);
    for x in 0..256usize {
        let u = s0[x].1.wrapping_add(s1[x].1);
        assert_eq!(
            u.wrapping_mul(s0[x].0.wrapping_add(s1[x].0)),
            (x * x) as u64
        );
    }
}

#[test]
fn batches_with_mixed_widths_use_the_fallback_correctly() {
    let mut prg = Prg::from_seed([14; 16]);
    let (mut dk, mut xk, mut rk) = (
        (Vec::new(), Vec::new()),
        (Vec::new(), Vec::new()),
        (Vec::new(), Vec::new()),
    );
    let (mut xh, mut want) = (Vec::new(), Vec::new());
    // Widths change every few keys and include n = 1 (no comparison key) and n ≤ 8 (DPF table).
    for i in 0..700u64 {
        let n = [1u32, 2, 5, 8, 9, 20, 64][(i / 3 % 7) as usize];
        let r = prg.next_u64();
        let x = signed(prg.next_u64(), n);
        let (a, b) = drelu_gen(r, n, &mut prg);
        dk.0.push(a);
        dk.1.push(b);
        let (a, b) = drelu_bit_gen(r, n, &mut prg);
        xk.0.push(a);
        xk.1.push(b);
        let (a, b) = relu_gen(r, n, &mut prg);
        rk.0.push(a);
        rk.1.push(b);
        xh.push((x as u64).wrapping_add(r));
        want.push(x);
    }
    let d0 = drelu_eval_batch(PartyId::P0, &dk.0, &xh);
    let d1 = drelu_eval_batch(PartyId::P1, &dk.1, &xh);
    let x0 = drelu_bit_eval_batch(PartyId::P0, &xk.0, &xh);
    let x1 = drelu_bit_eval_batch(PartyId::P1, &xk.1, &xh);
    let r0 = relu_eval_batch(PartyId::P0, &rk.0, &xh);
    let r1 = relu_eval_batch(PartyId::P1, &rk.1, &xh);
    let (mut masked_differs, mut masked_equal) = (false, false);
    for i in 0..xh.len() {
        let pos = want[i] >= 0;
        assert_eq!(d0[i].wrapping_add(d1[i]), pos as u64, "i={i}");
        let e = x0[i] ^ x1[i];
        let d = drelu_bit_finish(PartyId::P0, &xk.0[i], e).wrapping_add(drelu_bit_finish(
            PartyId::P1,
            &xk.1[i],
            e,
        ));
        assert_eq!(d, pos as u64, "i={i}");
        assert_eq!(x0[i], drelu_bit_eval(PartyId::P0, &xk.0[i], xh[i]));
        masked_differs |= e as u64 != pos as u64;
        masked_equal |= e as u64 == pos as u64;
        assert_eq!(
            r0[i].1.wrapping_add(r1[i].1),
            want[i].max(0) as u64,
            "i={i}"
        );
    }
    // The opened bit is masked: it must sometimes differ from DReLU(x) and sometimes not.
    assert!(masked_differs && masked_equal);
}
