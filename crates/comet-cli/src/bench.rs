//! `comet bench`: measured costs of comet's building blocks.
//!
//! `comet bench ops` runs every 2PC protocol of the library at a realistic size, both servers
//! in this process over an in-memory link (optionally shaped), with correlations from an
//! in-process dealer, and reports per op: online time, online bytes (both servers' sends),
//! offline bytes (both servers' halves from the dealer), rounds, and the max abs error of the
//! reconstructed output against f64 evaluated on the same fixed-point inputs.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comet_core::{FixedPoint, PartyId, Prg};
use comet_dealer::{Dealer, FixedWeight, InProcessDealer};
use comet_engine::report::TimedSource;
use comet_net::{memory_pair_shaped, NetProfile};
use comet_protocols::{arith, compare, lut, nonlinear, shuffle, trunc, Party, ProtocolError};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Arguments of `comet bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Every 2PC protocol at a realistic size: time, bytes, rounds, error.
    Ops(OpsArgs),
    /// One secure generation on the real model: time, bytes and rounds per token.
    Generate(Box<crate::bench_generate::BenchGenerateArgs>),
}

/// Arguments of `comet bench ops`.
#[derive(Args, Debug)]
pub struct OpsArgs {
    /// Network shaping of the link between the servers: none, lan, wan, slow, or e.g. `bw=1gbps,lat=5ms`.
    #[arg(long, default_value = "none")]
    net: NetProfile,
    /// Also write the results as a JSON array to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Only run ops whose name contains this text.
    #[arg(long)]
    only: Option<String>,
}

/// Runs `comet bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Ops(ops) => run_ops(ops),
        BenchWhat::Generate(g) => crate::bench_generate::run(*g),
    }
}

/// One row of the `bench ops` report.
#[derive(Debug, Serialize)]
struct OpResult {
    op: String,
    n: usize,
    time_ms: f64,
    online_bytes: u64,
    offline_bytes: u64,
    rounds: u64,
    max_abs_err: f64,
}

type Protocol = dyn Fn(&mut Party, &[Vec<u64>]) -> Result<Vec<u64>, ProtocolError> + Sync;

/// One benchmark case: secret inputs, the protocol, and the f64 reference.
struct Case {
    op: String,
    /// Number of elements the op works on (its "size").
    n: usize,
    /// Secret input vectors (as reals, encoded at `in_frac` bits).
    inputs: Vec<Vec<f64>>,
    in_frac: u32,
    /// Fractional bits of the output.
    out_frac: u32,
    /// Expected output, computed in f64 from the encoded inputs.
    reference: Vec<f64>,
    protocol: Box<Protocol>,
    dealer: InProcessDealer,
}

struct Measured {
    outputs: Vec<u64>,
    online: Duration,
    online_bytes: u64,
    offline_bytes: u64,
    rounds: u64,
}

fn execute(case: &Case, profile: NetProfile, prg: &mut Prg) -> anyhow::Result<Measured> {
    let fp = FixedPoint::default();
    let mut shares: [Vec<Vec<u64>>; 2] = [Vec::new(), Vec::new()];
    for input in &case.inputs {
        let (s0, s1) = comet_core::share::share(&encode(input, case.in_frac), prg);
        shares[0].push(s0);
        shares[1].push(s1);
    }
    let (c0, c1) = memory_pair_shaped(profile);
    let mut clocks = Vec::new();
    let mut make = |id: PartyId, chan| {
        let (source, clock) = TimedSource::new(Box::new(case.dealer.source(id)));
        clocks.push(clock);
        Party::new(id, Box::new(chan), Box::new(source), fp)
    };
    let parties = [make(PartyId::P0, c0), make(PartyId::P1, c1)];
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = parties
            .into_iter()
            .zip(&shares)
            .map(|(mut party, mine)| {
                s.spawn(move || {
                    let start = Instant::now();
                    let out = (case.protocol)(&mut party, mine);
                    (out, start.elapsed(), party)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut outs = Vec::new();
    let (mut online, mut online_bytes, mut offline_bytes, mut rounds) = (Duration::ZERO, 0, 0, 0);
    for (i, r) in results.into_iter().enumerate() {
        let (out, wall, party) = r.map_err(|_| anyhow::anyhow!("a server thread panicked"))?;
        outs.push(out.with_context(|| format!("{} failed", case.op))?);
        let costs = party.online_meter().total();
        online_bytes += costs.bytes_sent;
        rounds = rounds.max(costs.rounds);
        offline_bytes += party.offline_meter().total().bytes_received;
        // The dealer's generation time is offline work; online time excludes it.
        let dealer_time = Duration::from_secs_f64(clocks[i].millis() / 1e3);
        online = online.max(wall.saturating_sub(dealer_time));
    }
    let outputs = comet_core::share::reconstruct(&outs[0], &outs[1]);
    Ok(Measured {
        outputs,
        online,
        online_bytes,
        offline_bytes,
        rounds,
    })
}

fn encode(values: &[f64], frac: u32) -> Vec<u64> {
    FixedPoint::new(frac).encode_vec(values)
}

fn decode(values: &[u64], frac: u32) -> Vec<f64> {
    FixedPoint::new(frac).decode_vec(values)
}

/// The inputs as the protocol sees them: rounded to `frac` fractional bits.
fn quantized(values: &[f64], frac: u32) -> Vec<f64> {
    decode(&encode(values, frac), frac)
}

fn uniform(prg: &mut Prg, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| lo + (hi - lo) * (prg.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect()
}

fn fresh_dealer() -> InProcessDealer {
    InProcessDealer::new(Dealer::new())
}

fn case(
    op: impl Into<String>,
    inputs: Vec<Vec<f64>>,
    in_frac: u32,
    out_frac: u32,
    reference: Vec<f64>,
    protocol: Box<Protocol>,
) -> Case {
    Case {
        op: op.into(),
        // The size is the number of secret input elements (9×128 scores for max_rows).
        n: inputs.first().map_or(0, Vec::len),
        inputs,
        in_frac,
        out_frac,
        reference,
        protocol,
        dealer: fresh_dealer(),
    }
}

/// Softmax of each row over its visible columns (`j ≤ offset + i` when causal).
fn softmax_reference(x: &[f64], rows: usize, cols: usize, causal: Option<usize>) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for i in 0..rows {
        let visible = causal.map_or(cols, |off| (off + i + 1).min(cols));
        let row = &x[i * cols..i * cols + visible];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        for (j, v) in row.iter().enumerate() {
            out[i * cols + j] = (v - max).exp() / sum;
        }
    }
    out
}

fn rms_norm_reference(x: &[f64], d: usize, eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().map(move |v| v * inv).collect::<Vec<_>>()
        })
        .collect()
}

fn layer_norm_reference(x: &[f64], d: usize, eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            row.iter()
                .map(move |v| (v - mean) * inv)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A residual-stream-like row of SmolLM2: mostly small values plus one massive activation.
fn residual_row(prg: &mut Prg, d: usize) -> Vec<f64> {
    let mut row = uniform(prg, d, -3.0, 3.0);
    row[d / 2] = 22_550.0;
    row
}

/// Every op of the protocol library at the size it has in one SmolLM2 decode step.
fn cases(prg: &mut Prg) -> Vec<Case> {
    const F: u32 = 12;
    const ACT: u32 = nonlinear::ACTIVATION_BITS;
    let mut v = Vec::new();
    let x = uniform(prg, 1536, -50.0, 50.0);
    let y = uniform(prg, 1536, -50.0, 50.0);
    let (qx, qy) = (quantized(&x, F), quantized(&y, F));

    v.push(case(
        "open",
        vec![x.clone()],
        F,
        F,
        qx.clone(),
        Box::new(|p, s| {
            let opened = arith::open(p, &s[0])?;
            Ok(as_p0_share(p, opened))
        }),
    ));
    let sum: Vec<f64> = qx.iter().zip(&qy).map(|(a, b)| a + b).collect();
    v.push(case(
        "add",
        vec![x.clone(), y.clone()],
        F,
        F,
        sum,
        Box::new(|_, s| Ok(comet_core::ring::add(&s[0], &s[1]))),
    ));
    let scaled: Vec<f64> = qx.iter().map(|a| a * 0.125).collect();
    v.push(case(
        "scale_public",
        vec![x.clone()],
        F,
        F,
        scaled,
        Box::new(|p, s| trunc::scale_public(p, &s[0], 0.125)),
    ));
    let prod: Vec<f64> = qx.iter().zip(&qy).map(|(a, b)| a * b).collect();
    v.push(case(
        "mul_fixed",
        vec![x.clone(), y.clone()],
        F,
        F,
        prod,
        Box::new(|p, s| trunc::mul_fixed(p, &s[0], &s[1])),
    ));

    // 1×576 · 576×1536 with a fixed weight mask (the gate/up projection of one token).
    let (k, n) = (576, 1536);
    let w = uniform(prg, k * n, -0.1, 0.1);
    let act = uniform(prg, k, -4.0, 4.0);
    let (qw, qa) = (quantized(&w, F), quantized(&act, F));
    let expected: Vec<f64> = (0..n)
        .map(|j| (0..k).map(|i| qa[i] * qw[i * n + j]).sum())
        .collect();
    let dealer = fresh_dealer();
    let views: [FixedWeight; 2] = dealer.with(|d| d.register_weight(&encode(&w, F), k, n));
    v.push(Case {
        op: "matmul_fixed 1x576x1536".into(),
        n,
        inputs: vec![act],
        in_frac: F,
        out_frac: 2 * F,
        reference: expected,
        protocol: Box::new(move |p, s| {
            Ok(arith::matmul_fixed(p, &s[0], 1, &[&views[p.id.index()]])?.swap_remove(0))
        }),
        dealer,
    });

    let wide = uniform(prg, 1536, -1000.0, 1000.0);
    let qwide = quantized(&wide, 2 * F);
    let floor: Vec<f64> = qwide
        .iter()
        .map(|a| (a * 4096.0).floor() / 4096.0)
        .collect();
    v.push(case(
        "truncate",
        vec![wide.clone()],
        2 * F,
        F,
        floor.clone(),
        Box::new(|p, s| trunc::truncate(p, &s[0], 12)),
    ));
    v.push(case(
        "truncate_faithful",
        vec![wide.clone()],
        2 * F,
        F,
        floor.clone(),
        Box::new(|p, s| trunc::truncate_faithful(p, &s[0], 12)),
    ));
    // |x| < 2^38 ring units at 2f (16,384 in value): 5 bytes per element instead of 8.
    v.push(case(
        "truncate_narrow L=40",
        vec![wide],
        2 * F,
        F,
        floor,
        Box::new(|p, s| Ok(trunc::truncate_many_narrow(p, &[(&s[0], 12, 40)])?.swap_remove(0))),
    ));

    let step: Vec<f64> = qx
        .iter()
        .map(|a| if *a >= 0.0 { 1.0 } else { 0.0 })
        .collect();
    v.push(case(
        "drelu",
        vec![x.clone()],
        F,
        0,
        step,
        Box::new(|p, s| compare::drelu(p, &s[0], ACT)),
    ));
    let relu: Vec<f64> = qx.iter().map(|a| a.max(0.0)).collect();
    v.push(case(
        "relu",
        vec![x.clone()],
        F,
        F,
        relu,
        Box::new(|p, s| compare::relu(p, &s[0], ACT)),
    ));
    let lt: Vec<f64> = qx
        .iter()
        .zip(&qy)
        .map(|(a, b)| if a < b { 1.0 } else { 0.0 })
        .collect();
    v.push(case(
        "less_than",
        vec![x.clone(), y.clone()],
        F,
        0,
        lt,
        Box::new(|p, s| compare::less_than(p, &s[0], &s[1], ACT)),
    ));

    let scores = uniform(prg, 9 * 128, -55.0, 55.0);
    let qs = quantized(&scores, F);
    let maxes: Vec<f64> = qs
        .chunks(128)
        .map(|r| r.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
        .collect();
    v.push(case(
        "max_rows 9x128",
        vec![scores.clone()],
        F,
        F,
        maxes,
        Box::new(|p, s| compare::max_rows(p, &s[0], 9, 128, ACT)),
    ));

    let table: Vec<u64> = (0..1024)
        .map(|i| encode(&[(i as f64 / 100.0).sin()], F)[0])
        .collect();
    let idx: Vec<f64> = (0..1536).map(|_| prg.gen_index(1024) as f64).collect();
    let looked: Vec<f64> = idx
        .iter()
        .map(|i| decode(&[table[*i as usize]], F)[0])
        .collect();
    v.push(case(
        "lut m=10",
        vec![idx],
        0,
        F,
        looked,
        Box::new(move |p, s| lut::lookup(p, &s[0], 10, &table)),
    ));

    let gate = uniform(prg, 1536, -20.0, 20.0);
    let qg = quantized(&gate, F);
    v.push(case(
        "silu",
        vec![gate.clone()],
        F,
        F,
        qg.iter().map(|a| nonlinear::silu_f64(*a)).collect(),
        Box::new(|p, s| nonlinear::silu(p, &s[0])),
    ));
    v.push(case(
        "silu bits=24",
        vec![gate.clone()],
        F,
        F,
        qg.iter().map(|a| nonlinear::silu_f64(*a)).collect(),
        Box::new(|p, s| nonlinear::silu_with_bits(p, &s[0], 24)),
    ));
    // The untruncated gate (2f) and up (2f) projections, as they leave the matmul.
    let qg2 = quantized(&gate, 2 * F);
    let up = uniform(prg, 1536, -75.0, 75.0);
    let qu2 = quantized(&up, 2 * F);
    v.push(case(
        "silu_2f bits=36",
        vec![gate.clone()],
        2 * F,
        F,
        qg2.iter().map(|a| nonlinear::silu_f64(*a)).collect(),
        Box::new(|p, s| nonlinear::silu::silu_2f(p, &s[0], 36)),
    ));
    v.push(case(
        "silu_mul_2f 36/40",
        vec![gate.clone(), up],
        2 * F,
        2 * F,
        qg2.iter()
            .zip(&qu2)
            .map(|(g, u)| nonlinear::silu_f64(*g) * u)
            .collect(),
        Box::new(|p, s| nonlinear::silu::silu_mul_2f(p, &s[0], &s[1], 36, 40)),
    ));
    v.push(case(
        "gelu",
        vec![gate],
        F,
        F,
        qg.iter().map(|a| nonlinear::gelu_f64(*a)).collect(),
        Box::new(|p, s| nonlinear::gelu(p, &s[0])),
    ));

    let neg = uniform(prg, 9 * 128, -32.0, 0.0);
    let qn = quantized(&neg, F);
    v.push(case(
        "exp_neg",
        vec![neg],
        F,
        F,
        qn.iter().map(|a| a.exp()).collect(),
        Box::new(|p, s| nonlinear::exp_neg(p, &s[0])),
    ));

    let pos = uniform(prg, 576, 1.0, 128.0);
    let qp = quantized(&pos, F);
    v.push(case(
        "reciprocal [1,128]",
        vec![pos],
        F,
        24,
        qp.iter().map(|a| 1.0 / a).collect(),
        Box::new(|p, s| nonlinear::reciprocal(p, &s[0], 1.0, 128.0, 24)),
    ));
    let sq = uniform(prg, 576, 0.0069, 900_000.0);
    let qsq = quantized(&sq, F);
    v.push(case(
        "rsqrt [0.0069,9e5]",
        vec![sq],
        F,
        24,
        qsq.iter().map(|a| 1.0 / a.sqrt()).collect(),
        Box::new(|p, s| nonlinear::rsqrt(p, &s[0], 12, 0.0069, 900_000.0, 24)),
    ));

    v.push(case(
        "softmax 9x128",
        vec![scores.clone()],
        F,
        F,
        softmax_reference(&qs, 9, 128, None),
        Box::new(|p, s| nonlinear::softmax_rows(p, &s[0], 9, 128, None)),
    ));
    v.push(case(
        "softmax 9x128 causal",
        vec![scores],
        F,
        F,
        softmax_reference(&qs, 9, 128, Some(119)),
        Box::new(|p, s| nonlinear::softmax_rows(p, &s[0], 9, 128, Some(119))),
    ));

    let row = residual_row(prg, 576);
    let qrow = quantized(&row, F);
    v.push(case(
        "rms_norm 1x576",
        vec![row.clone()],
        F,
        F,
        rms_norm_reference(&qrow, 576, 1e-5),
        Box::new(|p, s| nonlinear::rms_norm(p, &s[0], 1, 576, None, 1e-5)),
    ));
    // RMSNorm fused with the gate/up-sized product it feeds (576 × 1536, gain folded in).
    let (k, n) = (576, 1536);
    let w = uniform(prg, k * n, -0.1, 0.1);
    let qw = quantized(&w, F);
    let normed = rms_norm_reference(&qrow, k, 1e-5);
    let expected: Vec<f64> = (0..n)
        .map(|j| (0..k).map(|i| normed[i] * qw[i * n + j]).sum())
        .collect();
    let dealer = fresh_dealer();
    let views: [FixedWeight; 2] = dealer.with(|d| d.register_weight(&encode(&w, F), k, n));
    v.push(Case {
        op: "rms_norm_matmul 1x576x1536".into(),
        n: k,
        inputs: vec![row.clone()],
        in_frac: F,
        out_frac: 2 * F,
        reference: expected,
        protocol: Box::new(move |p, s| {
            Ok(
                nonlinear::norm::rms_norm_matmul(p, &s[0], 1, 576, 1e-5, &[&views[p.id.index()]])?
                    .swap_remove(0),
            )
        }),
        dealer,
    });
    v.push(case(
        "layer_norm 1x576",
        vec![row],
        F,
        F,
        layer_norm_reference(&qrow, 576, 1e-5),
        Box::new(|p, s| nonlinear::layer_norm(p, &s[0], 1, 576, None, None, 1e-5)),
    ));

    v.push(case(
        "shuffle",
        vec![x.clone()],
        F,
        F,
        qx.clone(),
        Box::new(|p, s| shuffle::shuffle(p, &s[0])),
    ));
    let bits: Vec<f64> = (0..1536).map(|i| (i % 3 == 0) as u8 as f64).collect();
    v.push(case(
        "open_shuffled_bits",
        vec![bits.clone()],
        0,
        0,
        bits,
        Box::new(|p, s| {
            let opened = shuffle::open_shuffled_bits(p, &s[0])?
                .into_iter()
                .map(u64::from)
                .collect();
            Ok(as_p0_share(p, opened))
        }),
    ));
    v
}

/// Turns a value both servers know into a sharing of it (P0 holds it, P1 holds zeros), so
/// opened results reconstruct like shared ones.
fn as_p0_share(p: &Party, opened: Vec<u64>) -> Vec<u64> {
    if p.is_p0() {
        opened
    } else {
        vec![0; opened.len()]
    }
}

/// Max abs error of `got` against `reference`; permutation-invariant ops compare sorted values.
fn max_abs_error(op: &str, got: &[f64], reference: &[f64]) -> f64 {
    let (mut g, mut r) = (got.to_vec(), reference.to_vec());
    if op.starts_with("shuffle") || op.starts_with("open_shuffled") {
        g.sort_by(f64::total_cmp);
        r.sort_by(f64::total_cmp);
    }
    g.iter()
        .zip(&r)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn run_ops(args: OpsArgs) -> anyhow::Result<()> {
    let mut prg = Prg::from_entropy();
    let all = cases(&mut prg);
    let selected: Vec<&Case> = all
        .iter()
        .filter(|c| args.only.as_ref().is_none_or(|o| c.op.contains(o.as_str())))
        .collect();
    if selected.is_empty() {
        bail!("no op matches --only {:?}", args.only.unwrap_or_default());
    }
    let bar = indicatif::ProgressBar::new(selected.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let mut rows = Vec::new();
    for c in selected {
        bar.set_message(c.op.clone());
        let m = execute(c, args.net, &mut prg)?;
        let got = decode(&m.outputs, c.out_frac);
        rows.push(OpResult {
            op: c.op.clone(),
            n: c.n,
            time_ms: m.online.as_secs_f64() * 1e3,
            online_bytes: m.online_bytes,
            offline_bytes: m.offline_bytes,
            rounds: m.rounds,
            max_abs_err: max_abs_error(&c.op, &got, &c.reference),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "comet bench ops — net {}, both servers in one process, f = 12",
        args.net
    );
    println!(
        "{:<26} {:>6} {:>10} {:>13} {:>14} {:>7} {:>12}",
        "op", "n", "time ms", "online B", "offline B", "rounds", "max abs err"
    );
    for r in &rows {
        println!(
            "{:<26} {:>6} {:>10.3} {:>13} {:>14} {:>7} {:>12.3e}",
            r.op, r.n, r.time_ms, r.online_bytes, r.offline_bytes, r.rounds, r.max_abs_err
        );
    }
    println!("online B: bytes sent by both servers; offline B: dealer halves received by both; time excludes dealer generation.");
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
