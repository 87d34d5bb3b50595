//! Sparsity commands (DESIGN.md §7): `comet calibrate` (the self-gate), `comet train-predictor`
//! (the Deja Vu style MLP, for FFN neurons or attention heads), and the sparse side of
//! `comet eval --plaintext`: perplexity and greedy agreement against dense for one FFN gate
//! and/or one head gate, or the quality curve over a grid of FFN gates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use comet_model::heads::{
    head_gate_quality, HeadCalibration, HeadMask, HeadNorms, HeadPredictor, HeadScore, HeadStats,
    SparseHeads,
};
use comet_model::predictor::{Predictor, PredictorTarget, TrainOptions};
use comet_model::sparsity::{
    gate_quality, self_gate_online_bytes, CalibrationData, FfnMask, GateStats, NeuronScore,
    SelfGate, SelfGateOptions, SparseFfn, DEFAULT_FRAC_BITS, DEFAULT_MARGIN,
};
use comet_model::{
    AttnActivations, FfnActivations, ForwardOptions, LogitsMode, Model, Sampler, SamplingParams,
    SparsitySpec, Tokenizer,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::plaintext::{load_with_progress, model_path, negative_log_likelihood, print_report};

/// Arguments of `comet calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $COMET_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Public calibration text (UTF-8).
    #[arg(long, value_name = "FILE", default_value_os_t = default_calib())]
    pub calib: PathBuf,
    /// Target fraction of FFN neurons skipped: `0.5` or `ffn=0.5`.
    #[arg(long)]
    pub sparsity: String,
    /// Code width of the quantized gate and up values (2..=8; 8 measured best, and every width
    /// up to 8 opens one byte per value in the secure gate).
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Quantizer range = margin × the calibrated maximum (values beyond it wrap in the secure gate).
    #[arg(long, default_value_t = DEFAULT_MARGIN)]
    pub margin: f64,
    /// Quantile of |gate| and |up| the range covers (times the margin); 1 = the maximum over
    /// the whole calibration text (below 1, rarer larger values wrap in the secure gate).
    #[arg(long, default_value_t = 1.0)]
    pub clip_quantile: f64,
    /// Where to write the self-gate file (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub pass: CalibrationPassArgs,
}

/// Arguments of `comet train-predictor`.
#[derive(Args, Debug)]
pub struct TrainPredictorArgs {
    /// GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $COMET_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Public calibration text (UTF-8).
    #[arg(long, value_name = "FILE", default_value_os_t = default_calib())]
    pub calib: PathBuf,
    /// What the predictor predicts: FFN neurons (`ffn`) or attention query heads (`heads`);
    /// default: `heads` when --sparsity is `heads=H`, else `ffn`.
    #[arg(long, value_enum)]
    pub target: Option<TargetArg>,
    /// Target fraction skipped: `0.5`, `ffn=0.5` or (target heads) `heads=0.11`.
    #[arg(long)]
    pub sparsity: String,
    /// Hidden ReLU units of each layer's predictor (default 256 for ffn, 64 for heads).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Passes over the training rows (default 4 for ffn, 16 for heads).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Rows per optimizer step.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Weight of the exact-set term of the BCE loss (> 1 favours recall; default 2 for ffn,
    /// 1 for heads).
    #[arg(long)]
    pub positive_weight: Option<f64>,
    /// Fraction of the sampled rows held out for the reported recall and precision.
    #[arg(long, default_value_t = 0.1)]
    pub validation: f64,
    /// Seed of the initialisation and batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the predictor file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub pass: CalibrationPassArgs,
}

/// How the dense calibration pass runs.
#[derive(Args, Debug, Clone)]
pub struct CalibrationPassArgs {
    /// Use at most this many tokens of the calibration text.
    #[arg(long)]
    pub calib_tokens: Option<usize>,
    /// Tokens whose FFN input is kept per layer (a sample spread over the text).
    #[arg(long, default_value_t = 2048)]
    pub calib_rows: usize,
    /// Window of the calibration pass in tokens (windows are independent).
    #[arg(long, default_value_t = 512)]
    pub calib_window: usize,
    /// Tokens whose attention input and head norms are kept per layer (head gates).
    #[arg(long, default_value_t = 8192)]
    pub head_calib_rows: usize,
}

/// `comet train-predictor --target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// FFN neurons, from the normed FFN input.
    Ffn,
    /// Attention query heads, from the normed attention input.
    Heads,
}

/// Which gate decides the kept attention heads in `comet eval --plaintext --sparsity heads=H`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadGateKind {
    /// Per-layer threshold on the true contribution norm ‖Wo_h·o_h‖ (an upper bound, not a
    /// predictor; the count per token varies, the mean skipped fraction is H).
    Oracle,
    /// Per token, the round(H·n_heads) heads of smallest true contribution.
    OracleTopk,
    /// Whole key/value groups: per-layer threshold on the group's summed true contributions.
    OracleGroups,
    /// A trained head predictor (`comet train-predictor --target heads`).
    Mlp,
}

impl std::fmt::Display for HeadGateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadGateKind::Oracle => "oracle",
            HeadGateKind::OracleTopk => "oracle-topk",
            HeadGateKind::OracleGroups => "oracle-groups",
            HeadGateKind::Mlp => "mlp",
        })
    }
}

/// The target and fraction of `train-predictor --target T --sparsity S`.
pub fn parse_target_sparsity(
    target: Option<TargetArg>,
    text: &str,
) -> anyhow::Result<(PredictorTarget, f64)> {
    if let Ok(v) = text.trim().parse::<f64>() {
        if !(0.0..1.0).contains(&v) {
            bail!("sparsity `{text}`: the fraction must be in [0, 1) (e.g. `0.5`, `ffn=0.5` or `heads=0.11`)");
        }
        let t = match target {
            Some(TargetArg::Heads) => PredictorTarget::Heads,
            _ => PredictorTarget::Ffn,
        };
        return Ok((t, v));
    }
    let spec: SparsitySpec = text.parse()?;
    match (spec.ffn, spec.heads, target) {
        (Some(_), Some(_), _) => bail!(
            "sparsity `{text}`: one predictor has one target; train `ffn=F` and `heads=H` separately"
        ),
        (Some(f), None, None | Some(TargetArg::Ffn)) => Ok((PredictorTarget::Ffn, f)),
        (None, Some(h), None | Some(TargetArg::Heads)) => Ok((PredictorTarget::Heads, h)),
        (Some(_), None, Some(TargetArg::Heads)) => {
            bail!("sparsity `{text}` is for FFN neurons but --target is heads (give `heads=H`)")
        }
        (None, Some(_), Some(TargetArg::Ffn)) => {
            bail!("sparsity `{text}` is for attention heads but --target is ffn (give `ffn=F`)")
        }
        (None, None, _) => bail!("sparsity `{text}`: nothing is skipped"),
    }
}

/// The FFN fraction of `comet calibrate --sparsity` (`0.5` or `ffn=0.5`).
fn parse_ffn_sparsity(text: &str) -> anyhow::Result<f64> {
    match parse_target_sparsity(None, text)? {
        (PredictorTarget::Ffn, v) => Ok(v),
        (PredictorTarget::Heads, _) => {
            bail!("sparsity `{text}`: the self-gate is for FFN neurons (give `ffn=F`)")
        }
    }
}

/// Which gate decides the kept neurons in `comet eval --plaintext --sparsity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateKind {
    /// The exact threshold on the true |SiLU(gate)·up| (an upper bound, not a predictor).
    Oracle,
    /// The self-gate: low-bit gate and up values.
    #[value(name = "self")]
    #[serde(rename = "self")]
    SelfGate,
    /// A trained MLP predictor (`comet train-predictor`).
    Mlp,
}

impl std::fmt::Display for GateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GateKind::Oracle => "oracle",
            GateKind::SelfGate => "self",
            GateKind::Mlp => "mlp",
        })
    }
}

/// Everything the sparse `comet eval --plaintext` needs (built from its arguments).
#[derive(Debug, Clone)]
pub struct SparseEvalOptions {
    /// Model file (None: the default model).
    pub model: Option<PathBuf>,
    /// Text scored teacher-forced (perplexity, per-position agreement).
    pub text: Option<PathBuf>,
    /// Cap on scored text tokens.
    pub max_tokens: Option<usize>,
    /// Window of the text scoring in tokens.
    pub window: Option<usize>,
    /// Tokens per forward call.
    pub chunk: usize,
    /// Fraction of FFN neurons skipped (None: taken from the gate file, or dense FFN without one).
    pub sparsity: Option<f64>,
    /// Fraction of attention heads skipped (None: taken from the head gate file, or dense
    /// attention without one).
    pub head_sparsity: Option<f64>,
    /// The head gate (None: mlp with a head gate file, else oracle).
    pub head_gate: Option<HeadGateKind>,
    /// Head predictor file (`comet train-predictor --target heads`).
    pub head_gate_file: Option<PathBuf>,
    /// The FFN gate.
    pub gate: GateKind,
    /// Self-gate or predictor file.
    pub gate_file: Option<PathBuf>,
    /// Self-gate code width when calibrating on the fly.
    pub bits: Option<u32>,
    /// Self-gate range margin when calibrating on the fly.
    pub margin: f64,
    /// Self-gate clip quantile when calibrating on the fly.
    pub clip_quantile: f64,
    /// Block size.
    pub block: usize,
    /// Calibration text.
    pub calib: PathBuf,
    /// Calibration pass settings.
    pub pass: CalibrationPassArgs,
    /// One prompt per line, for greedy agreement.
    pub prompts: Option<PathBuf>,
    /// Tokens the dense model generates per prompt.
    pub gen_tokens: usize,
    /// Run the quality curve instead of one gate.
    pub curve: bool,
    /// Write the results as JSON.
    pub json: Option<PathBuf>,
    /// Curve grid: sparsities.
    pub curve_sparsities: Vec<f64>,
    /// Curve grid: self-gate code widths.
    pub curve_bits: Vec<u32>,
    /// Curve grid: block sizes.
    pub curve_blocks: Vec<usize>,
}

/// The repository's calibration text (`data/calib.txt`, here or in the repository root).
pub fn default_calib() -> PathBuf {
    let local = Path::new("data").join("calib.txt");
    if local.is_file() {
        return local;
    }
    comet_model::repo_root().join("data").join("calib.txt")
}

/// Model, tokenizer and the SHA-256 of the model file (which gate files are bound to).
fn load_model(model: Option<&Path>) -> anyhow::Result<(Model, Tokenizer, String)> {
    let path = model_path(model);
    let (model, tokenizer) = load_with_progress(Some(&path), None)?;
    let sha = comet_engine::shares::file_sha256(&path)
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok((model, tokenizer, sha))
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The calibration text's tokens (checked and capped).
fn calibration_tokens(
    tokenizer: &Tokenizer,
    calib: &Path,
    pass: &CalibrationPassArgs,
) -> anyhow::Result<Vec<u32>> {
    let text = std::fs::read_to_string(calib)
        .with_context(|| format!("reading calibration text {}", calib.display()))?;
    let mut tokens = tokenizer
        .encode(&text)
        .context("tokenizing the calibration text")?;
    if let Some(cap) = pass.calib_tokens {
        tokens.truncate(cap);
    }
    if tokens.is_empty() {
        bail!("the calibration text {} has no tokens", calib.display());
    }
    if pass.calib_rows == 0 || pass.calib_window == 0 {
        bail!("--calib-rows and --calib-window must be at least 1");
    }
    Ok(tokens)
}

/// Runs the dense model over the calibration text and keeps what gates are calibrated on.
fn collect_calibration(
    model: &Model,
    tokenizer: &Tokenizer,
    calib: &Path,
    pass: &CalibrationPassArgs,
) -> anyhow::Result<CalibrationData> {
    let tokens = calibration_tokens(tokenizer, calib, pass)?;
    let progress = bar(tokens.len(), "calibration pass (tokens)");
    let data = CalibrationData::collect(
        model,
        &tokens,
        pass.calib_window,
        pass.calib_rows,
        &mut |done| progress.set_position(done as u64),
    )?;
    progress.finish_and_clear();
    eprintln!(
        "calibration: {} tokens of {}, {} sampled rows per layer",
        data.tokens,
        calib.display(),
        data.rows()
    );
    Ok(data)
}

/// The per-layer table of a gate's quality: kept fraction, recall and precision of the exact set.
fn layer_table(stats: &[GateStats], extra_header: &str, extra: &dyn Fn(usize) -> String) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "layer    kept   recall  precision  {extra_header}");
    for (l, s) in stats.iter().enumerate() {
        let _ = writeln!(
            r,
            "{l:>5}  {:>6.1}%  {:>6.1}%  {:>8.1}%  {}",
            100.0 * s.kept_fraction(),
            100.0 * s.recall(),
            100.0 * s.precision(),
            extra(l)
        );
    }
    let mut all = GateStats::default();
    for s in stats {
        all.add(s);
    }
    let _ = writeln!(
        r,
        "  all  {:>6.1}%  {:>6.1}%  {:>8.1}%",
        100.0 * all.kept_fraction(),
        100.0 * all.recall(),
        100.0 * all.precision()
    );
    r
}

/// The mask that applies a self-gate's own thresholds to single neurons.
fn self_gate_mask(gate: &SelfGate) -> FfnMask {
    FfnMask {
        block: 1,
        thresholds: gate.layers.iter().map(|l| l.threshold).collect(),
    }
}

/// `comet calibrate`: calibrates the self-gate and writes its file.
pub fn calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let sparsity = parse_ffn_sparsity(&args.sparsity)?;
    let (model, tokenizer, sha) = load_model(args.model.as_deref())?;
    let data = collect_calibration(&model, &tokenizer, &args.calib, &args.pass)?;
    let gate = SelfGate::calibrate(
        &data,
        &model,
        &sha,
        SelfGateOptions {
            bits: args.bits,
            sparsity,
            margin: args.margin,
            frac_bits: DEFAULT_FRAC_BITS,
            clip_quantile: args.clip_quantile,
        },
    )?;
    let exact = FfnMask::calibrate(NeuronScore::Oracle, &data, &model, sparsity, 1)?;
    let stats = gate_quality(
        NeuronScore::SelfGate(&gate),
        &self_gate_mask(&gate),
        &exact,
        &data,
        &model,
        0..data.rows(),
    );
    gate.save(&args.out)?;
    let ffn = model.config().ffn_dim;
    let bytes = self_gate_online_bytes(ffn, args.bits);
    let mut r = format!(
        "self-gate: {} bits, sparsity {sparsity}, margin {}, f = {DEFAULT_FRAC_BITS}, on the {} sampled calibration rows\n",
        args.bits, args.margin, data.rows()
    );
    r += &layer_table(&stats, "  max|gate|  max|up|  threshold", &|l| {
        format!(
            "{:>9.2}  {:>7.2}  {:>9.4}",
            data.layers[l].max_abs_gate, data.layers[l].max_abs_up, gate.layers[l].threshold
        )
    });
    let _ = writeln!(
        r,
        "gate cost (secure, estimate): {bytes} bytes per token and layer each way \
         (2·{ffn}·⌈{}/8⌉ + {ffn}/8), {} bytes per token for {} layers",
        args.bits,
        bytes * model.config().n_layers,
        model.config().n_layers
    );
    let _ = writeln!(r, "model sha256: {sha}");
    let _ = writeln!(r, "wrote {}", args.out.display());
    print_report(&r)
}

/// `comet train-predictor`: trains the per-layer MLP predictor and writes its file.
pub fn train_predictor(args: TrainPredictorArgs) -> anyhow::Result<()> {
    let (target, sparsity) = parse_target_sparsity(args.target, &args.sparsity)?;
    let heads = target == PredictorTarget::Heads;
    let epochs = args.epochs.unwrap_or(if heads { 16 } else { 4 });
    let options = TrainOptions {
        hidden: args.hidden.unwrap_or(if heads { 64 } else { 256 }),
        epochs,
        batch: args.batch,
        learning_rate: args.lr,
        positive_weight: args
            .positive_weight
            .unwrap_or(if heads { 1.0 } else { 2.0 }),
        sparsity,
        validation_fraction: args.validation,
        seed: args.seed,
    };
    if heads {
        return train_head_predictor(args, options);
    }
    let (model, tokenizer, sha) = load_model(args.model.as_deref())?;
    let data = collect_calibration(&model, &tokenizer, &args.calib, &args.pass)?;
    let layers = model.config().n_layers;
    let progress = bar(layers * epochs, "training (layer epochs)");
    let (predictor, reports) = Predictor::train(&data, &model, &sha, &options, &mut |l, e| {
        progress.set_position((l * epochs + e) as u64)
    })?;
    progress.finish_and_clear();
    let (train, validation) = options.split(data.rows());
    let (rows, which) = if validation.is_empty() {
        (train, "training")
    } else {
        (validation, "held-out")
    };
    let exact = FfnMask::calibrate(NeuronScore::Oracle, &data, &model, sparsity, 1)?;
    let stats = gate_quality(
        NeuronScore::Predictor(&predictor),
        &predictor.mask(),
        &exact,
        &data,
        &model,
        rows.clone(),
    );
    predictor.save(&args.out)?;
    let mut r = format!(
        "MLP predictor d {} → {} (ReLU) → {}, sparsity {sparsity}, positive weight {}, {epochs} epochs; \
         quality on the {} {which} rows\n",
        predictor.d_model,
        predictor.hidden,
        predictor.ffn_dim,
        options.positive_weight,
        rows.len()
    );
    r += &layer_table(&stats, "  final loss", &|l| {
        format!("{:>11.4}", reports[l].final_loss)
    });
    let _ = writeln!(
        r,
        "gate cost: {} parameters per layer; secure estimate {} bytes per token and layer each way (8·(d + hidden))",
        predictor.parameters_per_layer(),
        predictor.secure_bytes_per_token()
    );
    let _ = writeln!(r, "model sha256: {sha}");
    let _ = writeln!(r, "wrote {}", args.out.display());
    print_report(&r)
}

/// Runs the dense model over the calibration text once and keeps what head gates (and, when
/// `ffn` is true, FFN gates) are calibrated on.
fn collect_head_calibration(
    model: &Model,
    tokenizer: &Tokenizer,
    calib: &Path,
    pass: &CalibrationPassArgs,
    ffn: bool,
) -> anyhow::Result<(HeadCalibration, Option<CalibrationData>)> {
    let tokens = calibration_tokens(tokenizer, calib, pass)?;
    if pass.head_calib_rows == 0 {
        bail!("--head-calib-rows must be at least 1");
    }
    let mut ffn_data =
        ffn.then(|| CalibrationData::new(model, tokens.len().div_ceil(pass.calib_rows.max(1))));
    let progress = bar(tokens.len(), "calibration pass (tokens)");
    let data = HeadCalibration::collect(
        model,
        &tokens,
        pass.calib_window,
        pass.head_calib_rows,
        ffn_data.as_mut(),
        &mut |done| progress.set_position(done as u64),
    )?;
    progress.finish_and_clear();
    eprintln!(
        "calibration: {} tokens of {}, {} sampled rows per layer for head gates{}",
        data.tokens,
        calib.display(),
        data.rows(),
        ffn_data
            .as_ref()
            .map_or(String::new(), |f| format!(", {} for FFN gates", f.rows()))
    );
    Ok((data, ffn_data))
}

/// The per-layer table of a head gate: kept fraction, recall and precision of the exact set,
/// and the fraction of (token, key/value group) entries skipped whole.
fn head_table(stats: &[HeadStats], extra_header: &str, extra: &dyn Fn(usize) -> String) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "layer  heads kept  recall  precision  groups skipped  {extra_header}"
    );
    let line = |name: &str, s: &HeadStats, x: String| {
        format!(
            "{name:>5}  {:>9.1}%  {:>6.1}%  {:>8.1}%  {:>13.2}%  {x}\n",
            100.0 * s.gate.kept_fraction(),
            100.0 * s.gate.recall(),
            100.0 * s.gate.precision(),
            100.0 * s.group_skip_fraction()
        )
    };
    let mut all = HeadStats::default();
    for (l, s) in stats.iter().enumerate() {
        r += &line(&l.to_string(), s, extra(l));
        all.add(s);
    }
    r += &line("all", &all, String::new());
    r
}

/// `comet train-predictor --target heads`: trains the per-layer head predictor.
fn train_head_predictor(args: TrainPredictorArgs, options: TrainOptions) -> anyhow::Result<()> {
    let (model, tokenizer, sha) = load_model(args.model.as_deref())?;
    let (data, _) = collect_head_calibration(&model, &tokenizer, &args.calib, &args.pass, false)?;
    let c = model.config().clone();
    let progress = bar(c.n_layers * options.epochs, "training (layer epochs)");
    let (predictor, reports) = HeadPredictor::train(&data, &model, &sha, &options, &mut |l, e| {
        progress.set_position((l * options.epochs + e) as u64)
    })?;
    progress.finish_and_clear();
    let (train, validation) = options.split(data.rows());
    let (rows, which) = if validation.is_empty() {
        (train.clone(), "training")
    } else {
        (validation, "held-out")
    };
    let norms = HeadNorms::new(&model);
    let exact =
        HeadMask::calibrate_threshold(HeadScore::Oracle(&norms), &data, options.sparsity, train)?;
    let stats = head_gate_quality(
        HeadScore::Predictor(&predictor),
        &predictor.mask(),
        &exact,
        &data,
        rows.clone(),
    );
    predictor.save(&args.out)?;
    let p = &predictor.mlp;
    let mut r = format!(
        "head predictor (target heads): normed attention input d {} → {} (ReLU) → {} heads, \
         sparsity {} (mean skipped fraction on the training rows), positive weight {}, {} epochs; \
         quality on the {} {which} rows against the oracle (per-layer threshold on ‖Wo_h·o_h‖)\n",
        p.d_model,
        p.hidden,
        p.ffn_dim,
        options.sparsity,
        options.positive_weight,
        options.epochs,
        rows.len()
    );
    r += &head_table(&stats, "final loss  threshold", &|l| {
        format!(
            "{:>10.4}  {:>9.4}",
            reports[l].final_loss, p.layers[l].threshold
        )
    });
    let _ = writeln!(
        r,
        "gate cost: {} parameters per layer; secure estimate {} bytes per token and layer each way \
         beyond the attention input's opening (8·hidden: the ReLU outputs opened for W2)",
        p.parameters_per_layer(),
        predictor.secure_bytes_per_token()
    );
    let _ = writeln!(r, "model sha256: {sha}");
    let _ = writeln!(r, "wrote {}", args.out.display());
    print_report(&r)
}

/// A gate with what its score borrows.
enum Gate {
    Oracle,
    SelfGate(SelfGate),
    Mlp(Predictor),
}

impl Gate {
    fn score(&self) -> NeuronScore<'_> {
        match self {
            Gate::Oracle => NeuronScore::Oracle,
            Gate::SelfGate(g) => NeuronScore::SelfGate(g),
            Gate::Mlp(p) => NeuronScore::Predictor(p),
        }
    }
}

/// The dense reference: text windows with their dense NLL and argmax, prompt continuations.
struct Dense {
    windows: Vec<Vec<u32>>,
    nll: f64,
    argmax: Vec<u32>,
    prompts: Vec<PromptCase>,
}

/// One prompt followed by the dense model's greedy continuation.
struct PromptCase {
    tokens: Vec<u32>,
    prompt_len: usize,
}

/// One setting's figures against dense (a line of the report, a row of the curve). The FFN
/// fields describe the FFN gate (`gate` None: dense FFN); the `head_*` fields the head gate
/// (`head_gate` None: dense attention).
#[derive(Debug, Clone, Serialize)]
struct SparseRow {
    gate: Option<GateKind>,
    bits: Option<u32>,
    block: usize,
    sparsity: Option<f64>,
    perplexity: Option<f64>,
    perplexity_change_percent: Option<f64>,
    text_agreement: Option<f64>,
    prompt_agreement: Option<f64>,
    kept_fraction: f64,
    recall: f64,
    precision: f64,
    gate_bytes_per_token_layer: Option<usize>,
    head_gate: Option<HeadGateKind>,
    head_sparsity: Option<f64>,
    head_kept_fraction: Option<f64>,
    head_recall: Option<f64>,
    head_precision: Option<f64>,
    /// Fraction of (token, layer, key/value group) entries whose query heads were all skipped.
    kv_group_skip_fraction: Option<f64>,
    /// Mean kept fraction of heads per layer.
    head_kept_per_layer: Vec<f64>,
    head_gate_bytes_per_token_layer: Option<usize>,
    /// Per-layer counts on the text (or the prompts when there is no text).
    #[serde(skip)]
    layer_stats: Vec<GateStats>,
    #[serde(skip)]
    head_layer_stats: Vec<HeadStats>,
}

/// The sparse hooks of one pass: FFN gate and/or head gate.
struct Hooks<'s, 'f, 'h> {
    ffn: Option<&'s mut SparseFfn<'f>>,
    heads: Option<&'s mut SparseHeads<'h>>,
}

impl<'f, 'h> Hooks<'_, 'f, 'h> {
    fn reborrow(&mut self) -> Hooks<'_, 'f, 'h> {
        Hooks {
            ffn: self.ffn.as_deref_mut(),
            heads: self.heads.as_deref_mut(),
        }
    }
}

/// Teacher-forced pass over the windows: (NLL sum, argmax per scored position).
fn score_windows(
    model: &Model,
    windows: &[Vec<u32>],
    chunk: usize,
    mut hooks: Hooks<'_, '_, '_>,
) -> anyhow::Result<(f64, Vec<u32>)> {
    let vocab = model.config().vocab_size;
    let mut nll = 0.0;
    let mut argmax = Vec::new();
    for w in windows {
        let mut cache = model.new_cache();
        for (c, part) in w.chunks(chunk).enumerate() {
            let logits = forward_all(model, part, &mut cache, hooks.reborrow())?;
            for (r, row) in logits.chunks_exact(vocab).enumerate() {
                let Some(&target) = w.get(c * chunk + r + 1) else {
                    continue;
                };
                nll += negative_log_likelihood(row, target);
                argmax.push(comet_model::sampling::argmax(row));
            }
        }
    }
    Ok((nll, argmax))
}

fn forward_all(
    model: &Model,
    tokens: &[u32],
    cache: &mut comet_model::KvCache,
    hooks: Hooks<'_, '_, '_>,
) -> anyhow::Result<Vec<f32>> {
    let Hooks { ffn, heads } = hooks;
    let mut ffn_hook = ffn.map(|s| move |a: &mut FfnActivations<'_>| s.apply(a));
    let mut attn_hook = heads.map(|s| move |a: &mut AttnActivations<'_>| s.apply(a));
    Ok(model.forward_with(
        tokens,
        cache,
        ForwardOptions {
            logits: LogitsMode::All,
            ffn_hook: ffn_hook
                .as_mut()
                .map(|h| h as &mut dyn FnMut(&mut FfnActivations<'_>)),
            attn_hook: attn_hook
                .as_mut()
                .map(|h| h as &mut dyn FnMut(&mut AttnActivations<'_>)),
        },
    )?)
}

/// Agreeing positions and positions of the teacher-forced sparse pass over prompt + dense
/// continuation.
fn prompt_agreement(
    model: &Model,
    cases: &[PromptCase],
    mut hooks: Hooks<'_, '_, '_>,
) -> anyhow::Result<(usize, usize)> {
    let vocab = model.config().vocab_size;
    let (mut agree, mut total) = (0, 0);
    for case in cases {
        let logits = forward_all(
            model,
            &case.tokens,
            &mut model.new_cache(),
            hooks.reborrow(),
        )?;
        for pos in case.prompt_len - 1..case.tokens.len() - 1 {
            let predicted = comet_model::sampling::argmax(&logits[pos * vocab..(pos + 1) * vocab]);
            agree += usize::from(predicted == case.tokens[pos + 1]);
            total += 1;
        }
    }
    Ok((agree, total))
}

fn dense_reference(
    model: &Model,
    tokenizer: &Tokenizer,
    options: &SparseEvalOptions,
) -> anyhow::Result<Dense> {
    let mut windows = Vec::new();
    if let Some(path) = &options.text {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let tokens = tokenizer.encode(&text).context("tokenizing the text")?;
        let context = model.config().context_length;
        let window = options.window.unwrap_or(512).min(context);
        if window < 2 {
            bail!("--window must be at least 2 tokens");
        }
        let mut budget = options.max_tokens.unwrap_or(usize::MAX);
        for w in tokens.chunks(window) {
            if w.len() < 2 || budget == 0 {
                continue;
            }
            let take = w.len().min(budget.saturating_add(1));
            budget -= take - 1;
            windows.push(w[..take].to_vec());
        }
        if windows.is_empty() {
            bail!("the text {} leaves nothing to score", path.display());
        }
    }
    let to_score: usize = windows.iter().map(|w| w.len() - 1).sum();
    let progress = bar(to_score, "dense text pass (tokens)");
    let (nll, argmax) = score_windows(
        model,
        &windows,
        options.chunk,
        Hooks {
            ffn: None,
            heads: None,
        },
    )?;
    progress.finish_and_clear();
    let mut prompts = Vec::new();
    if let Some(path) = &options.prompts {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading prompts {}", path.display()))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            bail!("the prompts file {} has no prompts", path.display());
        }
        if options.gen_tokens == 0 {
            bail!("--gen-tokens must be at least 1");
        }
        let progress = bar(lines.len(), "dense greedy continuations (prompts)");
        for line in lines {
            let prompt = tokenizer
                .encode(line.trim())
                .context("tokenizing a prompt")?;
            if prompt.is_empty() {
                continue;
            }
            let mut greedy = Sampler::new(SamplingParams::default());
            let (continuation, _) = comet_model::generate(
                model,
                &prompt,
                options.gen_tokens,
                &mut greedy,
                &[],
                |_| Ok(()),
            )?;
            let mut tokens = prompt.clone();
            tokens.extend(continuation);
            prompts.push(PromptCase {
                tokens,
                prompt_len: prompt.len(),
            });
            progress.inc(1);
        }
        progress.finish_and_clear();
    }
    Ok(Dense {
        windows,
        nll,
        argmax,
        prompts,
    })
}

/// The FFN side of one measured setting.
struct FfnSetting<'a> {
    gate: &'a Gate,
    mask: &'a FfnMask,
    exact: &'a FfnMask,
    kind: GateKind,
    bits: Option<u32>,
    sparsity: f64,
    cost: Option<usize>,
}

/// The attention-head side of one measured setting.
struct HeadSetting<'a> {
    norms: &'a HeadNorms,
    score: HeadScore<'a>,
    mask: &'a HeadMask,
    exact: &'a HeadMask,
    kind: HeadGateKind,
    sparsity: f64,
    cost: Option<usize>,
}

/// Runs one setting (FFN gate and/or head gate) against the dense reference.
fn measure(
    model: &Model,
    dense: &Dense,
    chunk: usize,
    ffn: Option<&FfnSetting<'_>>,
    heads: Option<&HeadSetting<'_>>,
) -> anyhow::Result<SparseRow> {
    let mut sparse = ffn.map(|f| SparseFfn::new(f.gate.score(), f.mask, Some(f.exact)));
    let mut sparse_heads =
        heads.map(|h| SparseHeads::new(model, h.norms, h.score, h.mask, Some(h.exact)));
    let (mut perplexity, mut change, mut text_agreement) = (None, None, None);
    if !dense.windows.is_empty() {
        let hooks = Hooks {
            ffn: sparse.as_mut(),
            heads: sparse_heads.as_mut(),
        };
        let (nll, argmax) = score_windows(model, &dense.windows, chunk, hooks)?;
        let n = argmax.len().max(1) as f64;
        let ppl = (nll / n).exp();
        perplexity = Some(ppl);
        change = Some(100.0 * (ppl / (dense.nll / n).exp() - 1.0));
        let same = argmax
            .iter()
            .zip(&dense.argmax)
            .filter(|(a, b)| a == b)
            .count();
        text_agreement = Some(same as f64 / n);
    }
    let on_text = !dense.windows.is_empty();
    let text_ffn = sparse.as_ref().map(|s| s.stats.clone());
    let text_heads = sparse_heads.as_ref().map(|s| s.stats.clone());
    let mut prompt_agreement_value = None;
    if !dense.prompts.is_empty() {
        let hooks = Hooks {
            ffn: sparse.as_mut(),
            heads: sparse_heads.as_mut(),
        };
        let (agree, total) = prompt_agreement(model, &dense.prompts, hooks)?;
        prompt_agreement_value = Some(agree as f64 / total.max(1) as f64);
    }
    // Kept fractions and recall on the text when there is one, else on the prompts.
    let layer_stats = if on_text {
        text_ffn.unwrap_or_default()
    } else {
        sparse.as_ref().map(|s| s.stats.clone()).unwrap_or_default()
    };
    let head_layer_stats = if on_text {
        text_heads.unwrap_or_default()
    } else {
        sparse_heads
            .as_ref()
            .map(|s| s.stats.clone())
            .unwrap_or_default()
    };
    let mut stats = GateStats::default();
    for s in &layer_stats {
        stats.add(s);
    }
    let mut head_stats = HeadStats::default();
    for s in &head_layer_stats {
        head_stats.add(s);
    }
    let dense_ffn = ffn.is_none();
    let on_heads = |v: f64| heads.map(|_| v);
    Ok(SparseRow {
        gate: ffn.map(|f| f.kind),
        bits: ffn.and_then(|f| f.bits),
        block: ffn.map_or(1, |f| f.mask.block),
        sparsity: ffn.map(|f| f.sparsity),
        perplexity,
        perplexity_change_percent: change,
        text_agreement,
        prompt_agreement: prompt_agreement_value,
        kept_fraction: if dense_ffn {
            1.0
        } else {
            stats.kept_fraction()
        },
        recall: if dense_ffn { 1.0 } else { stats.recall() },
        precision: if dense_ffn { 1.0 } else { stats.precision() },
        gate_bytes_per_token_layer: ffn.and_then(|f| f.cost),
        head_gate: heads.map(|h| h.kind),
        head_sparsity: heads.map(|h| h.sparsity),
        head_kept_fraction: on_heads(head_stats.gate.kept_fraction()),
        head_recall: on_heads(head_stats.gate.recall()),
        head_precision: on_heads(head_stats.gate.precision()),
        kv_group_skip_fraction: on_heads(head_stats.group_skip_fraction()),
        head_kept_per_layer: head_layer_stats
            .iter()
            .map(|s| s.gate.kept_fraction())
            .collect(),
        head_gate_bytes_per_token_layer: heads.and_then(|h| h.cost),
        layer_stats,
        head_layer_stats,
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn pct1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn row_line(r: &SparseRow) -> String {
    let ffn = r.gate.is_some();
    let mut line = format!(
        "{:<6} {:>4} {:>5} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9}",
        r.gate.map_or("dense".into(), |g| g.to_string()),
        r.bits.map_or("-".into(), |b| b.to_string()),
        r.block,
        r.sparsity.map_or("-".into(), |s| format!("{s:.2}")),
        r.perplexity.map_or("-".into(), |p| format!("{p:.3}")),
        r.perplexity_change_percent
            .map_or("-".into(), |c| format!("{c:+.2}%")),
        pct(r.text_agreement),
        pct(r.prompt_agreement),
        pct1(ffn.then_some(r.kept_fraction)),
        pct1(ffn.then_some(r.recall)),
        pct1(ffn.then_some(r.precision)),
    );
    if let Some(g) = r.head_gate {
        let _ = write!(
            line,
            " | {:<13} {:>6} {:>7} {:>7} {:>9} {:>9}",
            g.to_string(),
            r.head_sparsity.map_or("-".into(), |s| format!("{s:.2}")),
            pct1(r.head_kept_fraction),
            pct1(r.head_recall),
            pct1(r.head_precision),
            pct(r.kv_group_skip_fraction),
        );
    }
    line
}

const ROW_HEADER: &str =
    "gate   bits block sparsity perplexity    change  agree(T)  agree(P)     kept  recall precision";

const HEAD_HEADER: &str = " | head gate     hsparse   hkept hrecall hprecision kv skipped";

#[derive(Serialize)]
struct JsonReport<'a> {
    model: String,
    model_sha256: &'a str,
    calib: String,
    calib_tokens: usize,
    text: Option<String>,
    scored_tokens: usize,
    prompts: Option<String>,
    prompt_count: usize,
    gen_tokens: usize,
    dense_perplexity: Option<f64>,
    rows: &'a [SparseRow],
}

/// `comet eval --plaintext` with a gate, prompts or the quality curve.
pub fn sparse_eval(options: SparseEvalOptions) -> anyhow::Result<()> {
    if options.text.is_none() && options.prompts.is_none() {
        bail!("give --text FILE and/or --prompts FILE");
    }
    if options.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    if options.block == 0 {
        bail!("--block must be at least 1");
    }
    // Head gate flags before loading anything.
    let head_kind = match (options.head_gate, &options.head_gate_file) {
        (None | Some(HeadGateKind::Mlp), Some(_)) => Some(HeadGateKind::Mlp),
        (Some(k), Some(_)) => bail!("--head-gate {k} takes no --head-gate-file"),
        (Some(HeadGateKind::Mlp), None) => bail!(
            "--head-gate mlp needs --head-gate-file (written by `comet train-predictor --target heads`)"
        ),
        (k, None) => k,
    };
    if options.head_sparsity.is_none() && options.head_gate_file.is_none() && head_kind.is_some() {
        bail!("--head-gate needs --sparsity heads=H (e.g. `--sparsity heads=0.11`)");
    }
    if options.curve && (options.head_sparsity.is_some() || options.head_gate_file.is_some()) {
        bail!("the quality curve covers FFN gates only; evaluate `--sparsity heads=H` without --quality-curve");
    }
    let (model, tokenizer, sha) = load_model(options.model.as_deref())?;
    let c = model.config().clone();
    // Gate files first: a mismatch is reported before any long pass.
    let file_gate = match (options.gate, &options.gate_file) {
        (GateKind::SelfGate, Some(f)) => {
            let g = SelfGate::load(f, &sha, c.n_layers)?;
            if let Some(b) = options.bits.filter(|&b| b != g.bits) {
                bail!(
                    "--bits {b} differs from the {} bits of {}",
                    g.bits,
                    f.display()
                );
            }
            Some(Gate::SelfGate(g))
        }
        (GateKind::Mlp, Some(f)) => Some(Gate::Mlp(
            Predictor::load(f, &sha, c.n_layers, c.d_model, c.ffn_dim)
                .context("--gate-file (a head predictor goes to --head-gate-file)")?,
        )),
        (GateKind::Mlp, None) if !options.curve => {
            bail!("--gate mlp needs --gate-file (written by `comet train-predictor`)")
        }
        (GateKind::Oracle, Some(_)) => bail!("--gate oracle takes no --gate-file"),
        _ => None,
    };
    let file_sparsity = match &file_gate {
        Some(Gate::SelfGate(g)) => Some(g.sparsity),
        Some(Gate::Mlp(p)) => Some(p.sparsity),
        _ => None,
    };
    let head_predictor = match &options.head_gate_file {
        Some(f) => Some(
            HeadPredictor::load(f, &sha, c.n_layers, c.d_model, c.n_heads)
                .context("--head-gate-file")?,
        ),
        None => None,
    };
    let ffn_sparsity = options.sparsity.or(file_sparsity);
    let head_sparsity = options
        .head_sparsity
        .or(head_predictor.as_ref().map(|p| p.mlp.sparsity));
    let ffn_on = options.curve || ffn_sparsity.is_some();
    if !ffn_on && head_sparsity.is_none() {
        bail!("give --sparsity ffn=F and/or heads=H (or a --gate-file / --head-gate-file, whose sparsity is used)");
    }
    let (head_data, ffn_data) = match head_sparsity {
        Some(_) => {
            let (h, f) = collect_head_calibration(
                &model,
                &tokenizer,
                &options.calib,
                &options.pass,
                ffn_on,
            )?;
            (Some(h), f)
        }
        None => (
            None,
            Some(collect_calibration(
                &model,
                &tokenizer,
                &options.calib,
                &options.pass,
            )?),
        ),
    };
    let calib_tokens = head_data
        .as_ref()
        .map(|d| d.tokens)
        .or(ffn_data.as_ref().map(|d| d.tokens))
        .unwrap_or(0);
    let dense = dense_reference(&model, &tokenizer, &options)?;
    let scored = dense.argmax.len();
    let dense_ppl = (!dense.windows.is_empty()).then(|| (dense.nll / scored.max(1) as f64).exp());
    let mut report = String::new();
    let _ = writeln!(
        report,
        "model:        {}",
        model_path(options.model.as_deref()).display()
    );
    if let Some(t) = &options.text {
        let _ = writeln!(
            report,
            "text:         {} ({scored} tokens scored, window {})",
            t.display(),
            options.window.unwrap_or(512).min(c.context_length)
        );
    }
    if let Some(p) = &options.prompts {
        let _ = writeln!(
            report,
            "prompts:      {} ({} prompts × {} greedy dense tokens)",
            p.display(),
            dense.prompts.len(),
            options.gen_tokens
        );
    }
    let _ = writeln!(
        report,
        "calibration:  {} ({calib_tokens} tokens)",
        options.calib.display(),
    );
    if let Some(p) = dense_ppl {
        let _ = writeln!(report, "dense perplexity: {p:.3}");
    }
    // The head setting (norms, masks and the predictor outlive the measurement).
    let norms = HeadNorms::new(&model);
    let head_masks = match (head_sparsity, &head_data, head_kind) {
        (Some(hs), Some(hd), kind) => {
            let kind = kind.unwrap_or(HeadGateKind::Oracle);
            let all = 0..hd.rows();
            let exact =
                HeadMask::calibrate_threshold(HeadScore::Oracle(&norms), hd, hs, all.clone())?;
            let mask = match (kind, &head_predictor) {
                (HeadGateKind::Oracle, _) => exact.clone(),
                (HeadGateKind::OracleTopk, _) => HeadMask::top_k(c.n_heads, hs)?,
                (HeadGateKind::OracleGroups, _) => {
                    HeadMask::calibrate_groups(HeadScore::Oracle(&norms), hd, hs, all)?
                }
                // The file's own thresholds when they match the request.
                (HeadGateKind::Mlp, Some(p)) if p.mlp.sparsity == hs => p.mask(),
                (HeadGateKind::Mlp, Some(p)) => {
                    HeadMask::calibrate_threshold(HeadScore::Predictor(p), hd, hs, all)?
                }
                (HeadGateKind::Mlp, None) => unreachable!("checked above"),
            };
            Some((kind, hs, exact, mask))
        }
        _ => None,
    };
    let head_setting = head_masks
        .as_ref()
        .map(|(kind, hs, exact, mask)| HeadSetting {
            norms: &norms,
            score: match &head_predictor {
                Some(p) if *kind == HeadGateKind::Mlp => HeadScore::Predictor(p),
                _ => HeadScore::Oracle(&norms),
            },
            mask,
            exact,
            kind: *kind,
            sparsity: *hs,
            cost: head_predictor
                .as_ref()
                .filter(|_| *kind == HeadGateKind::Mlp)
                .map(|p| p.secure_bytes_per_token()),
        });
    let rows = match (&ffn_data, ffn_sparsity) {
        (Some(data), _) if options.curve => {
            let predictor = match file_gate {
                Some(Gate::Mlp(p)) => Some(p),
                _ => None,
            };
            quality_curve(&model, data, &dense, &options, &sha, predictor.as_ref())?
        }
        (Some(data), Some(sparsity)) => {
            let gate = match file_gate {
                Some(g) => g,
                None => match options.gate {
                    GateKind::Oracle => Gate::Oracle,
                    GateKind::SelfGate => Gate::SelfGate(SelfGate::calibrate(
                        data,
                        &model,
                        &sha,
                        SelfGateOptions {
                            bits: options.bits.unwrap_or(8),
                            sparsity,
                            margin: options.margin,
                            frac_bits: DEFAULT_FRAC_BITS,
                            clip_quantile: options.clip_quantile,
                        },
                    )?),
                    GateKind::Mlp => unreachable!("checked above"),
                },
            };
            let exact = FfnMask::calibrate(NeuronScore::Oracle, data, &model, sparsity, 1)?;
            // A file's own thresholds are used as they are when they match the request.
            let mask = match &gate {
                Gate::SelfGate(g) if options.block == 1 && g.sparsity == sparsity => {
                    self_gate_mask(g)
                }
                Gate::Mlp(p) if options.block == 1 && p.sparsity == sparsity => p.mask(),
                _ => FfnMask::calibrate(gate.score(), data, &model, sparsity, options.block)?,
            };
            let (bits, cost) = match &gate {
                Gate::SelfGate(g) => (
                    Some(g.bits),
                    Some(self_gate_online_bytes(c.ffn_dim, g.bits)),
                ),
                Gate::Mlp(p) => (None, Some(p.secure_bytes_per_token())),
                Gate::Oracle => (None, None),
            };
            let ffn = FfnSetting {
                gate: &gate,
                mask: &mask,
                exact: &exact,
                kind: options.gate,
                bits,
                sparsity,
                cost,
            };
            vec![measure(
                &model,
                &dense,
                options.chunk,
                Some(&ffn),
                head_setting.as_ref(),
            )?]
        }
        _ => vec![measure(
            &model,
            &dense,
            options.chunk,
            None,
            head_setting.as_ref(),
        )?],
    };
    if let [only] = rows.as_slice() {
        if only.gate.is_some() {
            let _ = writeln!(report, "FFN gate per layer, on the scored tokens:");
            report += &layer_table(&only.layer_stats, "", &|_| String::new());
        }
        if only.head_gate.is_some() {
            let _ = writeln!(
                report,
                "head gate per layer, on the scored tokens (mean over tokens):"
            );
            report += &head_table(&only.head_layer_stats, "", &|_| String::new());
        }
    }
    let heads_on = head_setting.is_some();
    let _ = writeln!(
        report,
        "{ROW_HEADER}{}",
        if heads_on { HEAD_HEADER } else { "" }
    );
    for r in &rows {
        let _ = writeln!(report, "{}", row_line(r));
    }
    let _ = writeln!(
        report,
        "agree(T): sparse argmax = dense argmax over the text; agree(P): sparse argmax = dense \
         greedy token over the prompt continuations; recall/precision against the exact set \
         (|SiLU(gate)·up| above the calibrated threshold)"
    );
    if heads_on {
        let _ = writeln!(
            report,
            "heads: hkept = kept (token, head) fraction; hrecall/hprecision against the oracle set \
             (contribution ‖Wo_h·o_h‖ above the layer's calibrated threshold); kv skipped = \
             (token, layer, key/value group) entries with every query head skipped"
        );
    }
    if let Some(path) = &options.json {
        let json = JsonReport {
            model: model_path(options.model.as_deref()).display().to_string(),
            model_sha256: &sha,
            calib: options.calib.display().to_string(),
            calib_tokens,
            text: options.text.as_ref().map(|p| p.display().to_string()),
            scored_tokens: scored,
            prompts: options.prompts.as_ref().map(|p| p.display().to_string()),
            prompt_count: dense.prompts.len(),
            gen_tokens: options.gen_tokens,
            dense_perplexity: dense_ppl,
            rows: &rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let _ = writeln!(report, "wrote {}", path.display());
    }
    print_report(&report)
}

/// The quality curve: every sparsity × gate (oracle, self-gate at each code width, the MLP
/// predictor when given) × block size, each calibrated on the calibration text.
fn quality_curve(
    model: &Model,
    data: &CalibrationData,
    dense: &Dense,
    options: &SparseEvalOptions,
    sha: &str,
    predictor: Option<&Predictor>,
) -> anyhow::Result<Vec<SparseRow>> {
    let ffn = model.config().ffn_dim;
    let mut gates: Vec<(GateKind, Option<u32>, Gate)> =
        vec![(GateKind::Oracle, None, Gate::Oracle)];
    for &bits in &options.curve_bits {
        let g = SelfGate::with_ranges(
            data,
            model,
            sha,
            SelfGateOptions {
                bits,
                sparsity: 0.5,
                margin: options.margin,
                frac_bits: DEFAULT_FRAC_BITS,
                clip_quantile: options.clip_quantile,
            },
        )?;
        gates.push((GateKind::SelfGate, Some(bits), Gate::SelfGate(g)));
    }
    if let Some(p) = predictor {
        gates.push((GateKind::Mlp, None, Gate::Mlp(p.clone())));
    } else {
        eprintln!("quality curve: no MLP predictor (--gate mlp --gate-file F adds it)");
    }
    for &s in &options.curve_sparsities {
        if !(0.0..1.0).contains(&s) {
            bail!("curve sparsity {s} must be in [0, 1)");
        }
    }
    if options.curve_blocks.contains(&0) {
        bail!("curve block sizes must be at least 1");
    }
    // All thresholds in one calibration pass: exact sets first, then gate × block × sparsity.
    let mut requests: Vec<(NeuronScore<'_>, usize, f64)> = options
        .curve_sparsities
        .iter()
        .map(|&s| (NeuronScore::Oracle, 1, s))
        .collect();
    let mut configs = Vec::new();
    for (g, (kind, bits, gate)) in gates.iter().enumerate() {
        for &block in &options.curve_blocks {
            for &s in &options.curve_sparsities {
                requests.push((gate.score(), block, s));
                configs.push((g, block, s, *kind, *bits));
            }
        }
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("calibrating {} thresholds", requests.len()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let masks = FfnMask::calibrate_many(&requests, data, model, 0..data.rows())?;
    spinner.finish_and_clear();
    let n_s = options.curve_sparsities.len();
    let progress = bar(configs.len(), "quality curve (configurations)");
    let mut rows = Vec::with_capacity(configs.len());
    for (i, &(g, _block, s, kind, bits)) in configs.iter().enumerate() {
        let exact = &masks[options
            .curve_sparsities
            .iter()
            .position(|&x| x == s)
            .unwrap_or(0)];
        let mut mask = masks[n_s + i].clone();
        if let Gate::SelfGate(_) = gates[g].2 {
            if mask.block == 1 {
                // The same clamping the self-gate file applies.
                for t in &mut mask.thresholds {
                    *t = t.max(0.0);
                }
            }
        }
        let cost = match &gates[g].2 {
            Gate::SelfGate(sg) => Some(self_gate_online_bytes(ffn, sg.bits)),
            Gate::Mlp(p) => Some(p.secure_bytes_per_token()),
            Gate::Oracle => None,
        };
        let setting = FfnSetting {
            gate: &gates[g].2,
            mask: &mask,
            exact,
            kind,
            bits,
            sparsity: s,
            cost,
        };
        let row = measure(model, dense, options.chunk, Some(&setting), None)?;
        progress.suspend(|| eprintln!("{}", row_line(&row)));
        rows.push(row);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(rows)
}
