//! Throughput and key-size report (run with `--ignored --nocapture`; single thread unless
//! the name says batch). Not a pass/fail test of speed; it checks results while timing so
//! the measured work cannot be optimized away.

use comet_core::{PartyId, Prg};
use comet_fss::*;
use std::time::Instant;

fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

#[test]
#[ignore]
fn report_key_sizes() {
    let mut prg = Prg::from_seed([30; 16]);
    println!("n | DPF(1-bit ET) | DCF l=1 | DCF l=8 | DCF l=64 | DCF 2x64 | DReLU(DCF) | DReLU(DPF) | ReLU(1-round)");
    for n in [8u32, 12, 16, 38, 52, 63, 64] {
        let a = 1 % (1u64 << (n - 1));
        let dpf = dpf_gen(a, n, &mut prg).0.encoded_len();
        let dcf1 = dcf_gen(a, 1, n, 1, &mut prg).0.encoded_len();
        let dcf8 = dcf_gen(a, 1, n, 8, &mut prg).0.encoded_len();
        let dcf64 = dcf_gen(a, 1, n, 64, &mut prg).0.encoded_len();
        let dcf2 = dcf_gen_vec(a, [1, 2], n, 64, &mut prg).0.encoded_len();
        let drelu = drelu_gen(a, n, &mut prg).0.encoded_len();
        let dx = drelu_bit_gen(a, n, &mut prg).0.encoded_len();
        let relu = relu_gen(a, n, &mut prg).0.encoded_len();
        println!("{n} | {dpf} | {dcf1} | {dcf8} | {dcf64} | {dcf2} | {drelu} | {dx} | {relu}");
    }
    for m in [8u32, 10, 13] {
        println!("LUT m={m}: {} B", lut_gen(3, m, &mut prg).0.encoded_len());
    }
}

fn rate(label: &str, count: usize, levels: u32, start: Instant, check: u64) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label}: {:.0} evals/s, {:.1} M levels/s ({:.1} ns/level) [check {check}]",
        count as f64 / secs,
        count as f64 * levels as f64 / secs / 1e6,
        secs * 1e9 / (count as f64 * levels as f64)
    );
}

#[test]
#[ignore]
fn report_throughput() {
    let mut prg = Prg::from_seed([31; 16]);
    let count = 20_000;
    for n in [16u32, 38, 64] {
        let keys: Vec<_> = (0..count)
            .map(|_| dcf_gen(prg.next_u64() & mask(n), prg.next_u64(), n, 64, &mut prg).0)
            .collect();
        let xs: Vec<u64> = (0..count).map(|_| prg.next_u64() & mask(n)).collect();
        let start = Instant::now();
        let mut acc = 0u64;
        for (k, &x) in keys.iter().zip(&xs) {
            acc = acc.wrapping_add(dcf_eval(PartyId::P0, k, x));
        }
        rate(
            &format!("DCF eval n={n} l=64 (1 thread)"),
            count,
            n,
            start,
            acc,
        );
        let start = Instant::now();
        let out = dcf_eval_batch(PartyId::P0, &keys, &xs);
        rate(
            &format!("DCF eval_batch n={n} (rayon)"),
            count,
            n,
            start,
            out.iter().fold(0u64, |a, &b| a.wrapping_add(b)),
        );
        assert_eq!(out.iter().fold(0u64, |a, &b| a.wrapping_add(b)), acc);

        let keys: Vec<_> = (0..count)
            .map(|_| dpf_gen(prg.next_u64() & mask(n), n, &mut prg).0)
            .collect();
        let start = Instant::now();
        let mut acc = 0u64;
        for (k, &x) in keys.iter().zip(&xs) {
            acc += dpf_lt(PartyId::P0, k, x) as u64;
        }
        rate(
            &format!("DPF lt n={n} (1 thread)"),
            count,
            n - 7,
            start,
            acc,
        );
        let start = Instant::now();
        let out = dpf_lt_batch(PartyId::P0, &keys, &xs);
        let acc2: u64 = out.iter().map(|&b| b as u64).sum();
        rate(
            &format!("DPF lt_batch n={n} (rayon)"),
            count,
            n - 7,
            start,
            acc2,
        );
        assert_eq!(acc, acc2);
    }
    for m in [8u32, 13, 16] {
        let reps = if m == 16 { 200 } else { 5000 };
        let key = dpf_gen(5, m, &mut prg).0;
        let start = Instant::now();
        let mut acc = 0u64;
        for _ in 0..reps {
            acc = acc.wrapping_add(dpf_eval_all(PartyId::P1, &key)[0]);
        }
        let secs = start.elapsed().as_secs_f64();
        let aes = (1u64 << (m - 6)) - 2;
        println!(
            "DPF eval_all m={m}: {:.1} us/key, {:.1} ns/AES ({aes} AES) [check {acc}]",
            secs * 1e6 / reps as f64,
            secs * 1e9 / (reps as f64 * aes as f64)
        );
        let table: Vec<u64> = (0..1u64 << m).collect();
        let lkey = lut_gen(9, m, &mut prg).0;
        let start = Instant::now();
        let mut acc = 0u64;
        for i in 0..reps {
            acc = acc.wrapping_add(lut_eval(PartyId::P0, &lkey, i as u64, &table).0);
        }
        println!(
            "LUT eval m={m}: {:.1} us/key [check {acc}]",
            start.elapsed().as_secs_f64() * 1e6 / reps as f64
        );
    }
    let n = 64;
    let start = Instant::now();
    let gens = 2000;
    for _ in 0..gens {
        std::hint::black_box(dcf_gen(prg.next_u64(), 1, n, 64, &mut prg));
    }
    println!(
        "DCF gen n=64: {:.1} us/pair",
        start.elapsed().as_secs_f64() * 1e6 / gens as f64
    );
    let start = Instant::now();
    for _ in 0..gens {
        std::hint::black_box(dpf_gen(prg.next_u64(), n, &mut prg));
    }
    println!(
        "DPF gen n=64: {:.1} us/pair",
        start.elapsed().as_secs_f64() * 1e6 / gens as f64
    );
}
