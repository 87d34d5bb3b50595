//! `comet bench generate`: secure generations on the real model in every requested
//! (mode, sparsity, network) setting, measured in one run: per phase (prefill, decode) time,
//! bytes and rounds, the FFN's, the gate's and the attention's share, KV holes and refills,
//! the session's permuted-weight bytes; a table with the ratios against dense, a JSON array
//! and an SVG plot.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use comet_engine::local::{capacity_for, generate as secure_generate};
use comet_engine::sparse::SessionMode;
use comet_engine::{GenerationReport, LocalDeployment, StepCosts};
use comet_model::{Sampler, SamplingParams, SparsitySpec};
use serde::Serialize;

use crate::secure::{load_model, parse_net, share_in_process, write_json};
use crate::sparse_mode::{session_mode, SecureSparsityArgs};

/// Arguments of `comet bench generate`.
#[derive(Args, Debug)]
pub struct BenchGenerateArgs {
    /// Engine modes, comma-separated: `dense`, `sparse` (FFN, at --sparsity-levels), `heads`
    /// (attention heads, at --head-skips and/or with --head-gate-file).
    #[arg(long, default_value = "dense")]
    pub mode: String,
    /// Heads mode: heads skipped per layer and token, comma-separated (exact counts, in the
    /// session's secret order: the cost of a head sparsity without a predictor's variation).
    #[arg(long, default_value = "1,2")]
    pub head_skips: String,
    /// Heads mode: also run the trained head predictor from this file (`comet train-predictor
    /// --target heads`), at the sparsity it was trained for.
    #[arg(long, value_name = "FILE")]
    pub head_gate_file: Option<PathBuf>,
    /// Heads mode: every N steps each layer also skips one whole key/value group (holes that
    /// the next step refills).
    #[arg(long, value_name = "N")]
    pub force_group_skip: Option<usize>,
    /// FFN sparsity levels of the sparse mode, comma-separated.
    #[arg(long, default_value = "0.5,0.9")]
    pub sparsity_levels: String,
    /// Network shaping of every link, comma-separated: none, lan, wan, slow (or custom).
    #[arg(long, default_value = "none")]
    pub net: String,
    /// Prompt to generate from (ignored with --prompt-tokens).
    #[arg(long, default_value = "The capital of France is")]
    pub prompt: String,
    /// Use the first N tokens of the evaluation text (data/eval.txt) as the prompt.
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// Tokens to generate (the first comes from the prefill, the others are decode steps).
    #[arg(long, default_value_t = 8)]
    pub max_tokens: usize,
    /// GGUF model file.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Gate of the sparse mode: `self` or `mlp` (the latter needs --gate-file).
    #[arg(long, default_value = "self")]
    pub gate: String,
    /// Gate files, comma-separated, one per sparsity level (self-gates from `comet calibrate`
    /// or predictors from `comet train-predictor`); self-gates are calibrated here without it.
    #[arg(long)]
    pub gate_file: Option<String>,
    /// Self-gate code width for calibrations made here (2–8).
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Calibration text for the self-gates (default: data/calib.txt).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Write the results as a JSON array to this file (and the plot beside it as .svg).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to draw the SVG plot (default: the JSON path with .svg).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// One (mode, sparsity, net, phase) measurement.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// `dense`, `sparse` (FFN) or `heads`.
    pub mode: String,
    /// Target fraction skipped: FFN neurons (sparse) or heads (heads); 0 for dense.
    pub sparsity: f64,
    /// Network preset.
    pub net: String,
    /// `prefill` or `decode`.
    pub phase: String,
    /// Tokens in the phase (prefill: prompt tokens; decode: steps averaged).
    pub tokens: usize,
    /// Wall time: the prefill's, or the mean per decode token, ms.
    pub time_ms: f64,
    /// The same without the waits for dealer material (the dealer runs ahead in a deployment).
    pub online_ms: f64,
    /// Online bytes between the servers (prefill total or mean per decode token).
    pub online_bytes: f64,
    /// Offline (dealer) bytes, same basis.
    pub offline_bytes: f64,
    /// Rounds, same basis.
    pub rounds: f64,
    /// FFN online bytes per token (gate/up opening and truncation, gate, SiLU, product, down).
    pub ffn_online_bytes: f64,
    /// Gate online bytes per token (the FFN's self-gate or MLP, the head predictor).
    pub gate_online_bytes: f64,
    /// Attention online bytes per token (without its norm; with the head gate).
    pub attn_online_bytes: f64,
    /// Fraction of (token, neuron) pairs computed (1 for dense).
    pub active_fraction: f64,
    /// Offline bytes of the session's permuted weights (0 for dense).
    pub session_offline_bytes: u64,
    /// Fraction of (token, head) pairs computed (1 without head sparsity).
    pub heads_active_fraction: f64,
    /// Key/value rows × groups left as holes (prefill total or mean per decode token).
    pub kv_holes: f64,
    /// Holes refilled (KV misses), same basis.
    pub kv_misses: f64,
    /// Rounds beyond the dense run's (same net and phase): the gates' rounds; refills ride
    /// the step's own rounds, so they add none.
    pub extra_rounds: f64,
}

fn op_bytes(step: &StepCosts, keep: impl Fn(&str) -> bool) -> f64 {
    step.by_op()
        .iter()
        .filter(|(op, _)| keep(op))
        .map(|(_, v)| v[0] as f64)
        .fold(0.0, |a, b| a + b)
}

fn is_ffn(op: &str) -> bool {
    op.starts_with("ffn.") && op != "ffn.norm"
}

fn is_attn(op: &str) -> bool {
    op.starts_with("attn.") && op != "attn.norm"
}

/// Rows of one generation: its prefill and the mean of its decode steps.
fn rows_of(
    report: &GenerationReport,
    mode: &str,
    sparsity: f64,
    neurons_per_token: f64,
    heads_per_token: f64,
) -> Vec<BenchRow> {
    let session_bytes = report.prefill.as_ref().map_or(0, |p| p.setup_offline_bytes);
    let row = |phase: &str, steps: &[&StepCosts]| -> BenchRow {
        let n = steps.len().max(1) as f64;
        let tokens: usize = steps.iter().map(|s| s.tokens).sum();
        let per_token = |f: &dyn Fn(&StepCosts) -> f64| -> f64 {
            steps.iter().map(|s| f(s)).sum::<f64>() / tokens.max(1) as f64
        };
        let mean =
            |f: &dyn Fn(&StepCosts) -> f64| -> f64 { steps.iter().map(|s| f(s)).sum::<f64>() / n };
        let active: f64 = steps
            .iter()
            .map(|s| s.ffn_active.iter().sum::<u64>() as f64)
            .sum();
        let heads_active: f64 = steps
            .iter()
            .map(|s| s.attn_active.iter().sum::<u64>() as f64)
            .sum();
        BenchRow {
            mode: mode.to_string(),
            sparsity,
            net: report.net.clone(),
            phase: phase.to_string(),
            tokens: if phase == "prefill" {
                tokens
            } else {
                steps.len()
            },
            time_ms: mean(&|s| s.wall_ms),
            online_ms: mean(&|s| s.online_ms),
            online_bytes: mean(&|s| s.online_bytes as f64),
            offline_bytes: mean(&|s| s.offline_bytes as f64),
            rounds: mean(&|s| s.rounds as f64),
            ffn_online_bytes: per_token(&|s| op_bytes(s, is_ffn)),
            gate_online_bytes: per_token(&|s| op_bytes(s, |op| op.ends_with(".gate"))),
            attn_online_bytes: per_token(&|s| op_bytes(s, is_attn)),
            active_fraction: if active == 0.0 {
                1.0
            } else {
                active / (tokens as f64 * neurons_per_token).max(1.0)
            },
            session_offline_bytes: session_bytes,
            heads_active_fraction: if heads_active == 0.0 {
                1.0
            } else {
                heads_active / (tokens as f64 * heads_per_token).max(1.0)
            },
            kv_holes: mean(&|s| s.kv_holes as f64),
            kv_misses: mean(&|s| s.kv_refilled as f64),
            extra_rounds: 0.0,
        }
    };
    let mut out = Vec::new();
    if let Some(p) = &report.prefill {
        out.push(row("prefill", &[p]));
    }
    if !report.decode.is_empty() {
        let steps: Vec<&StepCosts> = report.decode.iter().collect();
        out.push(row("decode", &steps));
    }
    out
}

fn parse_list<T: std::str::FromStr>(what: &str, text: &str) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("--{what}: `{s}` is not valid"))
        })
        .collect()
}

/// `comet bench generate`.
pub fn run(args: BenchGenerateArgs) -> anyhow::Result<()> {
    let modes: Vec<String> = parse_list("mode", &args.mode)?;
    for m in &modes {
        if !["dense", "sparse", "heads"].contains(&m.as_str()) {
            bail!("--mode {m}: expected dense, sparse and/or heads");
        }
    }
    let head_skips: Vec<usize> = parse_list("head-skips", &args.head_skips)?;
    let levels: Vec<f64> = parse_list("sparsity-levels", &args.sparsity_levels)?;
    if let Some(bad) = levels.iter().find(|l| !(0.0..1.0).contains(*l)) {
        bail!("--sparsity-levels: {bad} is outside [0, 1)");
    }
    let nets: Vec<String> = parse_list("net", &args.net)?;
    let profiles = nets
        .iter()
        .map(|n| parse_net(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let (model, tokenizer, path) = load_model(args.model.as_deref())?;
    let prompt = match args.prompt_tokens {
        Some(n) => {
            let eval = comet_model::repo_root().join("data").join("eval.txt");
            let text = std::fs::read_to_string(&eval)
                .with_context(|| format!("reading {}", eval.display()))?;
            let mut t = tokenizer.encode(&text)?;
            if t.len() < n {
                bail!(
                    "{} has only {} tokens, fewer than --prompt-tokens {n}",
                    eval.display(),
                    t.len()
                );
            }
            t.truncate(n);
            t
        }
        None => tokenizer.encode(&args.prompt)?,
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let c = model.config().clone();
    if capacity_for(prompt.len(), args.max_tokens) > c.context_length {
        bail!(
            "prompt + tokens exceed the model's context of {}",
            c.context_length
        );
    }
    let gate_files: Vec<Option<PathBuf>> = match &args.gate_file {
        None => vec![None; levels.len()],
        Some(list) => {
            let files: Vec<Option<PathBuf>> = list
                .split(',')
                .map(|s| Some(PathBuf::from(s.trim())))
                .collect();
            if files.len() != levels.len() {
                bail!(
                    "--gate-file gives {} files for {} sparsity levels",
                    files.len(),
                    levels.len()
                );
            }
            files
        }
    };
    let mut dep: LocalDeployment = share_in_process(&model)?;
    // Settings: (mode name, sparsity, engine mode).
    let mut settings: Vec<(String, f64, SessionMode)> = Vec::new();
    if modes.iter().any(|m| m == "dense") {
        settings.push(("dense".into(), 0.0, SessionMode::default()));
    }
    if modes.iter().any(|m| m == "sparse") {
        for (&level, gate_file) in levels.iter().zip(gate_files) {
            let opts = SecureSparsityArgs {
                sparsity: SparsitySpec {
                    ffn: Some(level),
                    heads: None,
                },
                gate: args.gate.clone(),
                gate_file,
                bits: args.bits,
                calib: args.calib.clone(),
                ..SecureSparsityArgs::dense()
            };
            let mode = session_mode(&opts, &model, &path, &tokenizer, &mut dep)?;
            settings.push(("sparse".into(), level, mode));
        }
    }
    if modes.iter().any(|m| m == "heads") {
        let heads = |opts: SecureSparsityArgs| SecureSparsityArgs {
            force_group_skip: args.force_group_skip,
            ..opts
        };
        for &k in &head_skips {
            let opts = heads(SecureSparsityArgs {
                force_head_skip: Some(k),
                ..SecureSparsityArgs::dense()
            });
            let mode = session_mode(&opts, &model, &path, &tokenizer, &mut dep)?;
            settings.push(("heads".into(), k as f64 / c.n_heads as f64, mode));
        }
        if let Some(file) = &args.head_gate_file {
            let hash = comet_engine::shares::file_sha256(&path)?;
            let trained = comet_model::heads::HeadPredictor::load(
                file, &hash, c.n_layers, c.d_model, c.n_heads,
            )?;
            let opts = heads(SecureSparsityArgs {
                sparsity: SparsitySpec {
                    ffn: None,
                    heads: Some(trained.mlp.sparsity),
                },
                head_gate_file: Some(file.clone()),
                ..SecureSparsityArgs::dense()
            });
            let mode = session_mode(&opts, &model, &path, &tokenizer, &mut dep)?;
            settings.push(("heads-mlp".into(), trained.mlp.sparsity, mode));
        }
    }
    drop(model);
    let neurons = (c.ffn_dim * c.n_layers) as f64;
    let mut rows = Vec::new();
    let mut texts = Vec::new();
    for (net_name, profile) in nets.iter().zip(&profiles) {
        for (mode, level, ffn) in &settings {
            eprintln!(
                "== {mode} sparsity {level} net {net_name}: {} prompt tokens, {} new",
                prompt.len(),
                args.max_tokens
            );
            let mut session = dep.session_with(
                capacity_for(prompt.len(), args.max_tokens),
                *profile,
                ffn.clone(),
            )?;
            let mut sampler = Sampler::new(SamplingParams::default());
            let generated = match secure_generate(
                session.client(),
                &prompt,
                args.max_tokens,
                &mut sampler,
                &[],
                net_name,
                |_| Ok(()),
            ) {
                Ok(g) => g,
                Err(e) => {
                    let _ = session.abort();
                    bail!("{mode} {level} {net_name}: secure generation failed: {e}");
                }
            };
            session.finish()?;
            let text = tokenizer.decode(&generated.tokens)?;
            eprintln!("   text: {text:?}");
            texts.push(
                serde_json::json!({"mode": mode, "sparsity": level, "net": net_name, "text": text}),
            );
            rows.extend(rows_of(
                &generated.report,
                mode,
                *level,
                neurons,
                (c.n_heads * c.n_layers) as f64,
            ));
        }
    }
    let snapshot = rows.clone();
    for r in &mut rows {
        if let Some(d) = snapshot
            .iter()
            .find(|d| d.mode == "dense" && d.net == r.net && d.phase == r.phase)
        {
            r.extra_rounds = r.rounds - d.rounds;
        }
    }
    print!("{}", table(&rows));
    let svg_path = args
        .svg
        .clone()
        .or_else(|| args.json.as_ref().map(|j| j.with_extension("svg")));
    if let Some(path) = &args.json {
        write_json(path, &serde_json::to_value(&rows)?)?;
        write_json(
            &path.with_extension("texts.json"),
            &serde_json::Value::Array(texts),
        )?;
    }
    if let Some(path) = &svg_path {
        std::fs::write(path, svg(&rows)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The results as a table, each sparse row with its ratios against dense (same net, phase).
pub fn table(rows: &[BenchRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>5} {:<5} {:<8} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>9} {:>11} {:>7} {:>6} {:>11} {:>22}",
        "mode",
        "spars",
        "net",
        "phase",
        "wall ms",
        "online ms",
        "online MB",
        "offline MB",
        "rounds",
        "ffn KB/tok",
        "gate KB",
        "attn KB/tok",
        "active",
        "heads",
        "holes/miss",
        "dense/this B|t|ffn|attn"
    );
    for r in rows {
        let dense = rows
            .iter()
            .find(|d| d.mode == "dense" && d.net == r.net && d.phase == r.phase);
        let ratio = match dense {
            Some(d) if r.mode != "dense" => format!(
                "{:.2}|{:.2}|{:.2}|{:.2}",
                d.online_bytes / r.online_bytes.max(1.0),
                d.online_ms / r.online_ms.max(1e-9),
                d.ffn_online_bytes / r.ffn_online_bytes.max(1.0),
                d.attn_online_bytes / r.attn_online_bytes.max(1.0)
            ),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<9} {:>5.2} {:<5} {:<8} {:>10.1} {:>10.1} {:>10.3} {:>10.1} {:>7.0} {:>10.1} {:>9.2} {:>11.1} {:>7.3} {:>6.3} {:>11} {:>22}",
            r.mode,
            r.sparsity,
            r.net,
            r.phase,
            r.time_ms,
            r.online_ms,
            r.online_bytes / 1e6,
            r.offline_bytes / 1e6,
            r.rounds,
            r.ffn_online_bytes / 1e3,
            r.gate_online_bytes / 1e3,
            r.attn_online_bytes / 1e3,
            r.active_fraction,
            r.heads_active_fraction,
            format!("{:.0}/{:.0}", r.kv_holes, r.kv_misses),
            ratio
        );
    }
    let first_net = rows.first().map(|r| r.net.as_str());
    for r in rows
        .iter()
        .filter(|r| r.session_offline_bytes > 0 && r.phase == "prefill")
        .filter(|r| Some(r.net.as_str()) == first_net)
    {
        let _ = writeln!(
            out,
            "per-session permuted weights of {} {:.2} (offline, both servers): {:.1} MB",
            r.mode,
            r.sparsity,
            r.session_offline_bytes as f64 / 1e6
        );
    }
    out
}

/// Two panels (decode online MB per token, decode online ms per token) against sparsity, one
/// line per network preset.
pub fn svg(rows: &[BenchRow]) -> String {
    let decode: Vec<&BenchRow> = rows.iter().filter(|r| r.phase == "decode").collect();
    let mut nets: Vec<&str> = decode.iter().map(|r| r.net.as_str()).collect();
    nets.dedup();
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
    let (w, h, pad) = (360.0, 260.0, 50.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        2.0 * w + 20.0,
        h + 40.0
    );
    type Metric = fn(&BenchRow) -> f64;
    let panels: [(&str, Metric); 2] = [
        ("online MB per decode token", |r| r.online_bytes / 1e6),
        ("online ms per decode token", |r| r.online_ms),
    ];
    for (p, (title, metric)) in panels.iter().enumerate() {
        let x0 = p as f64 * (w + 20.0);
        let ymax = decode
            .iter()
            .map(|r| metric(r))
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.1;
        let px = |s: f64| x0 + pad + s * (w - 1.5 * pad);
        let py = |v: f64| h - pad + 20.0 - v / ymax * (h - 1.5 * pad);
        let _ = writeln!(out, "<text x=\"{}\" y=\"15\">{title}</text>", x0 + pad);
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            px(0.0), py(0.0), px(1.0), py(0.0), px(0.0), py(0.0), px(0.0), py(ymax)
        );
        for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t}</text>",
                px(t),
                py(0.0) + 14.0
            );
            let v = ymax * t / 1.1;
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.1}</text>",
                px(0.0) - 4.0,
                py(v) + 4.0
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">FFN sparsity</text>",
            px(0.5),
            h + 30.0
        );
        for (i, net) in nets.iter().enumerate() {
            let color = colors[i % colors.len()];
            let mut pts: Vec<(f64, f64)> = decode
                .iter()
                .filter(|r| r.net == *net)
                .map(|r| (r.sparsity, metric(r)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let line: Vec<String> = pts
                .iter()
                .map(|(s, v)| format!("{:.1},{:.1}", px(*s), py(*v)))
                .collect();
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                line.join(" ")
            );
            for (s, v) in &pts {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    px(*s),
                    py(*v)
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{net}</text>",
                px(0.8),
                30.0 + 14.0 * i as f64
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
