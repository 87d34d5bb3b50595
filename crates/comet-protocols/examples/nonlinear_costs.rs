//! Costs and accuracy of `comet_protocols::nonlinear` at the real model's sizes (SmolLM2-135M:
//! hidden 576, FFN 1536, 9 heads, context 128), two servers in one process over memory
//! channels with an in-process dealer, f = 12.
//!
//! Columns: rounds and online bytes sent by P0; offline bytes received by P0 / P1; total wall
//! time with a live dealer (key generation included); online time (the dealer halves are
//! recorded and replayed, so it covers key decoding plus the protocol; fastest of 3); max abs
//! error of the decoded output against the f64 function on the same (quantised) inputs.
//!
//! Run: `cargo run -p comet-protocols --release --example nonlinear_costs`

use comet_core::{share::reconstruct, FixedPoint, PartyId, Prg};
use comet_dealer::{CorrelationSource, Dealer, DealerError, InProcessDealer, LocalSource};
use comet_net::{memory_pair, CostMeter};
use comet_protocols::nonlinear::{self, gelu_f64, silu_f64};
use comet_protocols::testing::share_for_test;
use comet_protocols::{Party, ProtocolError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const F: u32 = 12;

/// Passes requests to the dealer and keeps a copy of every half for the replays.
struct Recording {
    inner: LocalSource,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CorrelationSource for Recording {
    fn fetch_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, DealerError> {
        let half = self.inner.fetch_raw(request)?;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(half.clone());
        Ok(half)
    }
    fn meter(&self) -> &CostMeter {
        self.inner.meter()
    }
}

/// Hands out recorded halves in order.
struct Replaying {
    halves: std::vec::IntoIter<Vec<u8>>,
    meter: CostMeter,
}

impl CorrelationSource for Replaying {
    fn fetch_raw(&mut self, _request: &[u8]) -> Result<Vec<u8>, DealerError> {
        self.halves
            .next()
            .ok_or_else(|| DealerError::Malformed("no recorded half left".into()))
    }
    fn meter(&self) -> &CostMeter {
        &self.meter
    }
}

type Op<'a> = dyn Fn(&mut Party, &[u64]) -> Result<Vec<u64>, ProtocolError> + Sync + 'a;

fn two_party(
    sources: [Box<dyn CorrelationSource>; 2],
    shares: &[Vec<u64>; 2],
    op: &Op,
) -> [(Vec<u64>, u64, u64, u64); 2] {
    let (c0, c1) = memory_pair();
    let [s0, s1] = sources;
    let mut parties = [
        Party::new(PartyId::P0, Box::new(c0), s0, FixedPoint::default()),
        Party::new(PartyId::P1, Box::new(c1), s1, FixedPoint::default()),
    ];
    let run = |p: &mut Party| {
        let y = op(p, &shares[p.id.index()]).expect("protocol failed");
        let on = p.online_meter().total();
        (
            y,
            on.rounds,
            on.bytes_sent,
            p.offline_meter().total().bytes_received,
        )
    };
    let [p0, p1] = &mut parties;
    std::thread::scope(|s| {
        let h = s.spawn(|| run(p1));
        let r0 = run(p0);
        [r0, h.join().expect("P1 thread")]
    })
}

/// Measures one operation on the encoded input `x` and compares with `ideal` (output scale f).
fn measure(name: &str, x: &[u64], op: &Op, ideal: &[f64]) {
    measure_at(name, x, op, ideal, F, false)
}

/// Like [`measure`] with the output at `out_frac` bits; `relative` reports max |err|/|ideal|.
fn measure_at(name: &str, x: &[u64], op: &Op, ideal: &[f64], out_frac: u32, relative: bool) {
    let mut prg = Prg::from_seed([3; 16]);
    let shares = share_for_test(x, &mut prg);
    let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([4; 16])));
    let logs = [
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    ];
    let sources = [0usize, 1].map(|b| {
        Box::new(Recording {
            inner: dealer.source(PartyId::from_index(b)),
            log: logs[b].clone(),
        }) as Box<dyn CorrelationSource>
    });
    let t = Instant::now();
    let [(y0, rounds, online, off0), (y1, _, _, off1)] = two_party(sources, &shares, op);
    let total_ms = t.elapsed().as_secs_f64() * 1e3;
    let halves = [0usize, 1]
        .map(|b| std::mem::take(&mut *logs[b].lock().unwrap_or_else(|e| e.into_inner())));
    let mut online_ms = f64::INFINITY;
    for _ in 0..3 {
        let sources = [0usize, 1].map(|b| {
            Box::new(Replaying {
                halves: halves[b].clone().into_iter(),
                meter: CostMeter::new(),
            }) as Box<dyn CorrelationSource>
        });
        let t = Instant::now();
        two_party(sources, &shares, op);
        online_ms = online_ms.min(t.elapsed().as_secs_f64() * 1e3);
    }
    let out = reconstruct(&y0, &y1);
    let err = out
        .iter()
        .zip(ideal)
        .map(|(v, w)| {
            let e = (*v as i64 as f64 / (out_frac as f64).exp2() - w).abs();
            if relative {
                e / w.abs()
            } else {
                e
            }
        })
        .fold(0.0f64, f64::max);
    println!(
        "| {name} | {} | {rounds} | {online} ({:.1}) | {off0} / {off1} ({:.0} / {:.0}) | {total_ms:.1} | {online_ms:.1} | {}{err:.2e} (2^{:.1}) |",
        x.len(),
        online as f64 / x.len() as f64,
        off0 as f64 / x.len() as f64,
        off1 as f64 / x.len() as f64,
        if relative { "rel " } else { "" },
        err.log2()
    );
}

fn encode(v: &[f64]) -> (Vec<u64>, Vec<f64>) {
    let enc: Vec<u64> = v
        .iter()
        .map(|x| (x * (F as f64).exp2()).round() as i64 as u64)
        .collect();
    let q = enc
        .iter()
        .map(|&e| e as i64 as f64 / (F as f64).exp2())
        .collect();
    (enc, q)
}

fn uniform(prg: &mut Prg, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| lo + (hi - lo) * (prg.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect()
}

fn softmax_ideal(x: &[f64], rows: usize, cols: usize, causal: Option<usize>) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for i in 0..rows {
        let vis: Vec<usize> = (0..cols)
            .filter(|&j| causal.is_none_or(|o| j <= o + i))
            .collect();
        let m = vis
            .iter()
            .map(|&j| x[i * cols + j])
            .fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = vis.iter().map(|&j| (x[i * cols + j] - m).exp()).sum();
        for &j in &vis {
            out[i * cols + j] = (x[i * cols + j] - m).exp() / s;
        }
    }
    out
}

fn norm_ideal(x: &[f64], d: usize, gamma: &[f64], centre: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for row in x.chunks_exact(d) {
        let mu = if centre {
            row.iter().sum::<f64>() / d as f64
        } else {
            0.0
        };
        let ms = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
        out.extend(
            row.iter()
                .zip(gamma)
                .map(|(v, g)| (v - mu) / (ms + 1e-5).sqrt() * g),
        );
    }
    out
}

fn main() {
    let mut prg = Prg::from_seed([7; 16]);
    println!("| op | n | rounds | online B sent/party (per elem) | offline B P0 / P1 (per elem) | total ms | online ms | max abs err vs f64 |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [576usize, 1536] {
        let (x, q) = encode(&uniform(&mut prg, n, -20.0, 20.0));
        let ideal: Vec<f64> = q.iter().map(|v| silu_f64(*v)).collect();
        measure("silu [-20,20]", &x, &|p, v| nonlinear::silu(p, v), &ideal);
        if n == 1536 {
            measure(
                "silu_with_bits 24 [-20,20]",
                &x,
                &|p, v| nonlinear::silu_with_bits(p, v, 24),
                &ideal,
            );
        }
        let ideal: Vec<f64> = q.iter().map(|v| gelu_f64(*v)).collect();
        measure("gelu [-20,20]", &x, &|p, v| nonlinear::gelu(p, v), &ideal);
    }
    let (x, q) = encode(&uniform(&mut prg, 9 * 128, -32.0, 0.0));
    let ideal: Vec<f64> = q.iter().map(|v| v.exp()).collect();
    measure(
        "exp_neg [-32,0]",
        &x,
        &|p, v| nonlinear::exp_neg(p, v),
        &ideal,
    );
    measure_at(
        "exp_neg_scaled [-32,0] (out 56 bits)",
        &x,
        &|p, v| nonlinear::exp_neg_scaled(p, v, 56),
        &ideal,
        56,
        true,
    );
    measure_at(
        "exp_neg_wide [-32,0] (out 32 bits, used by softmax)",
        &x,
        &|p, v| nonlinear::exp_neg_wide(p, v),
        &ideal,
        nonlinear::EXP_WIDE_FRAC,
        false,
    );
    let (x, q) = encode(&uniform(&mut prg, 9, 1.0, 128.0));
    let ideal: Vec<f64> = q.iter().map(|v| 1.0 / v).collect();
    measure_at(
        "reciprocal [1,128] (out 30 bits)",
        &x,
        &|p, v| nonlinear::reciprocal(p, v, 1.0, 128.0, 30),
        &ideal,
        30,
        true,
    );
    let (x, q) = encode(&uniform(&mut prg, 9, 0.007, 900_000.0));
    let ideal: Vec<f64> = q.iter().map(|v| 1.0 / v.sqrt()).collect();
    measure_at(
        "rsqrt [0.007,9e5] (in 12, out 30 bits)",
        &x,
        &|p, v| nonlinear::rsqrt(p, v, F, 0.007, 900_000.0, 30),
        &ideal,
        30,
        true,
    );
    for (rows, causal, label) in [
        (9usize, None, "softmax 9x128 (decode, 9 heads)"),
        (9, Some(119), "softmax 9x128 causal offset 119"),
    ] {
        let (x, q) = encode(&uniform(&mut prg, rows * 128, -55.0, 55.0));
        let ideal = softmax_ideal(&q, rows, 128, causal);
        measure(
            label,
            &x,
            &|p, v| nonlinear::softmax_rows(p, v, rows, 128, causal),
            &ideal,
        );
    }
    {
        let (x, q) = encode(&uniform(&mut prg, 128 * 128, -55.0, 55.0));
        let ideal = softmax_ideal(&q, 128, 128, Some(0));
        measure(
            "softmax 128x128 causal prefill",
            &x,
            &|p, v| nonlinear::softmax_rows(p, v, 128, 128, Some(0)),
            &ideal,
        );
    }
    let d = 576;
    let gamma: Vec<f64> = uniform(&mut prg, d, 0.2, 3.0);
    let mut row = uniform(&mut prg, d, -3.0, 3.0);
    row[507] = 22_550.0;
    let mut rows_x = row.clone();
    rows_x.extend(uniform(&mut prg, d, -0.2, 0.2));
    let (x, q) = encode(&rows_x);
    let ideal = norm_ideal(&q, d, &gamma, false);
    measure(
        "rms_norm 2x576 (massive 22550 row + rms 0.12 row)",
        &x,
        &|p, v| nonlinear::rms_norm(p, v, 2, d, Some(&gamma), 1e-5),
        &ideal,
    );
    let ideal = norm_ideal(&q, d, &gamma, true);
    measure(
        "layer_norm 2x576",
        &x,
        &|p, v| nonlinear::layer_norm(p, v, 2, d, Some(&gamma), None, 1e-5),
        &ideal,
    );
}
