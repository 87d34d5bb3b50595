//! `--sparsity ffn=F,heads=H --gate self [--gate-file FILE | --bits N --calib FILE]
//! [--head-gate-file FILE]` for the secure commands: turns the options into the engine's
//! [`SessionMode`], loading a calibrated self-gate or calibrating one on the fly (cached beside
//! the model, bound to its hash), and a trained head predictor.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use comet_core::FixedPoint;
use comet_engine::heads::SparseHeads;
use comet_engine::shares::file_sha256;
use comet_engine::sparse::{FfnMode, SessionMode, SparseFfn};
use comet_engine::LocalDeployment;
use comet_model::heads::HeadPredictor;
use comet_model::predictor::Predictor;
use comet_model::sparsity::{CalibrationData, SelfGateOptions};
use comet_model::{Model, SelfGate, SparsitySpec, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;

/// Fixed-point fractional bits of the secure engine.
const FRAC_BITS: u32 = 12;

/// Quantile of |gate| and |up| the on-the-fly self-gate's range covers (1 = the maximum,
/// times the default margin): at 8 bits the maximum's range measured best (BENCHMARKS.md,
/// "Sparsity: plaintext quality": +4.6% perplexity at 50%, against +6.7% for the 99.9th
/// percentile, whose wrapped outliers are the largest activations).
const ON_THE_FLY_CLIP_QUANTILE: f64 = 1.0;

/// Calibration tokens used when a self-gate is calibrated on the fly.
const ON_THE_FLY_CALIBRATION_TOKENS: usize = 4096;

/// Sparsity options of the secure commands.
#[derive(Args, Debug, Clone)]
pub struct SecureSparsityArgs {
    /// Sparsity: `off` (dense), `ffn=F`, `heads=H` or `ffn=F,heads=H`: the fraction of FFN
    /// neurons / attention heads skipped per token.
    #[arg(long, default_value = "off")]
    pub sparsity: SparsitySpec,
    /// Which predictor decides the active neurons: `self` (the layer's own low-bit gate and up
    /// values) or `mlp` (a trained predictor from `comet train-predictor`, via --gate-file).
    #[arg(long, default_value = "self")]
    pub gate: String,
    /// Self-gate file written by `comet calibrate` (bound to the model's hash). Without it the
    /// gate is calibrated on --calib and cached beside the model.
    #[arg(long)]
    pub gate_file: Option<PathBuf>,
    /// Code width of the self-gate when it is calibrated here (the secure gate takes 2–8).
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Calibration text for an on-the-fly self-gate (default: the repository's data/calib.txt).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Draw a fresh secret neuron order every N steps (each costs the permuted FFN weights
    /// again offline); by default one order serves the whole session.
    #[arg(long, value_name = "N")]
    pub repermute_every: Option<usize>,
    /// Head predictor for `heads=H`, from `comet train-predictor --target heads`.
    #[arg(long, value_name = "FILE")]
    pub head_gate_file: Option<PathBuf>,
    /// Measurement: skip exactly K heads per layer and token (in the secret head order,
    /// rotating), with or without a predictor.
    #[arg(long, value_name = "K")]
    pub force_head_skip: Option<usize>,
    /// Testing and measurement: every N steps each layer skips one whole key/value group,
    /// whose rows become holes that the next step refills.
    #[arg(long, value_name = "N")]
    pub force_group_skip: Option<usize>,
    /// Measurement: the prompt runs no attention head (all its rows become holes, refilled by
    /// the first decode step), so later decode steps run at a long context without the
    /// prompt's quadratic softmax; the generated text is not the model's.
    #[arg(long)]
    pub force_prompt_skip: bool,
}

impl SecureSparsityArgs {
    /// The dense engine with the defaults of every other option.
    pub fn dense() -> Self {
        Self {
            sparsity: SparsitySpec::off(),
            gate: "self".into(),
            gate_file: None,
            bits: 8,
            calib: None,
            repermute_every: None,
            head_gate_file: None,
            force_head_skip: None,
            force_group_skip: None,
            force_prompt_skip: false,
        }
    }

    /// True when the session runs anything but the dense engine.
    pub fn is_sparse(&self) -> bool {
        self.sparsity.is_sparse()
            || self.force_head_skip.is_some()
            || self.force_group_skip.is_some()
            || self.force_prompt_skip
    }
}

/// Resolves the options for `model` (loaded from `model_path`) into an engine mode (FFN and
/// heads), and gives the deployment's dealer what sparse sessions need.
pub fn session_mode(
    args: &SecureSparsityArgs,
    model: &Model,
    model_path: &Path,
    tokenizer: &Tokenizer,
    dep: &mut LocalDeployment,
) -> anyhow::Result<SessionMode> {
    let ffn = ffn_mode(args, model, model_path, tokenizer, dep)?;
    let heads = head_mode(args, model, model_path, dep)?;
    Ok(SessionMode { ffn, heads })
}

/// The head-sparsity policy the options ask for, if any.
fn head_mode(
    args: &SecureSparsityArgs,
    model: &Model,
    model_path: &Path,
    dep: &mut LocalDeployment,
) -> anyhow::Result<Option<Arc<SparseHeads>>> {
    let c = model.config();
    let forced =
        args.force_head_skip.is_some() || args.force_group_skip.is_some() || args.force_prompt_skip;
    let mut policy = match (args.sparsity.heads, &args.head_gate_file) {
        (Some(heads), Some(path)) => {
            let hash = file_sha256(model_path)?;
            let predictor = HeadPredictor::load(path, &hash, c.n_layers, c.d_model, c.n_heads)?;
            if (predictor.mlp.sparsity - heads).abs() > 1e-9 {
                bail!(
                    "the head predictor was trained for heads={}, not {heads}",
                    predictor.mlp.sparsity
                );
            }
            dep.enable_sparse_heads(model, Some(&predictor))?;
            SparseHeads::from_predictor(&predictor, c, FixedPoint::new(FRAC_BITS))?
        }
        (Some(_), None) => bail!(
            "--sparsity heads=H needs --head-gate-file FILE (from `comet train-predictor \
             --target heads`)"
        ),
        (None, Some(_)) => bail!("--head-gate-file needs --sparsity heads=H"),
        (None, None) if forced => {
            dep.enable_sparse_heads(model, None)?;
            SparseHeads::default()
        }
        (None, None) => return Ok(None),
    };
    if let Some(k) = args.force_head_skip {
        if k >= c.n_heads {
            bail!("--force-head-skip {k}: the model has {} heads", c.n_heads);
        }
        policy.forced_head_skip = k;
    }
    if let Some(n) = args.force_group_skip {
        if n == 0 {
            bail!("--force-group-skip must be at least 1");
        }
        policy.forced_group_skip = Some(n);
    }
    policy.forced_prompt_skip = args.force_prompt_skip;
    Ok(Some(Arc::new(policy)))
}

/// The FFN part of [`session_mode`]: gives the dealer the plaintext FFN and the predictor.
fn ffn_mode(
    args: &SecureSparsityArgs,
    model: &Model,
    model_path: &Path,
    tokenizer: &Tokenizer,
    dep: &mut LocalDeployment,
) -> anyhow::Result<FfnMode> {
    let Some(sparsity) = args.sparsity.ffn else {
        return Ok(FfnMode::Dense);
    };
    if args.repermute_every == Some(0) {
        bail!("--repermute-every must be at least 1");
    }
    let hash = file_sha256(model_path)?;
    let c = model.config();
    let n_layers = c.n_layers;
    match args.gate.as_str() {
        "self" => {}
        "mlp" => {
            let path = args
                .gate_file
                .as_ref()
                .context("--gate mlp needs --gate-file FILE (from `comet train-predictor`)")?;
            let predictor = Predictor::load(path, &hash, n_layers, c.d_model, c.ffn_dim)?;
            if (predictor.sparsity - sparsity).abs() > 1e-9 {
                bail!(
                    "the predictor was trained for sparsity {}, not {sparsity}",
                    predictor.sparsity
                );
            }
            let mut sparse = SparseFfn::from_predictor(&predictor, c, FixedPoint::new(FRAC_BITS))?;
            sparse.repermute_every = args.repermute_every;
            dep.enable_sparse_with(model, Some(&predictor))?;
            return Ok(FfnMode::Sparse(Arc::new(sparse)));
        }
        other => bail!("--gate {other}: the secure engine takes `self` or `mlp`"),
    }
    let gate = match &args.gate_file {
        Some(path) => SelfGate::load(path, &hash, n_layers)?,
        None => {
            let cache = model_path.with_file_name(format!(
                "selfgate-{}-ffn{sparsity}-b{}-q{ON_THE_FLY_CLIP_QUANTILE}.json",
                &hash[..12.min(hash.len())],
                args.bits
            ));
            match SelfGate::load(&cache, &hash, n_layers) {
                Ok(g) => g,
                Err(_) => {
                    let calib = args
                        .calib
                        .clone()
                        .unwrap_or_else(crate::sparsity::default_calib);
                    let g = calibrate(model, tokenizer, &hash, &calib, sparsity, args.bits)?;
                    if let Err(e) = g.save(&cache) {
                        tracing::warn!("cannot cache the self-gate: {e}");
                    }
                    g
                }
            }
        }
    };
    if (gate.sparsity - sparsity).abs() > 1e-9 {
        bail!(
            "the self-gate file was calibrated for sparsity {}, not {sparsity}",
            gate.sparsity
        );
    }
    let mut sparse = SparseFfn::from_self_gate(&gate, model.config(), FixedPoint::new(FRAC_BITS))?;
    sparse.repermute_every = args.repermute_every;
    dep.enable_sparse(model)?;
    Ok(FfnMode::Sparse(Arc::new(sparse)))
}

/// Calibrates a self-gate on the first tokens of `calib`.
fn calibrate(
    model: &Model,
    tokenizer: &Tokenizer,
    hash: &str,
    calib: &Path,
    sparsity: f64,
    bits: u32,
) -> anyhow::Result<SelfGate> {
    let text = std::fs::read_to_string(calib)
        .with_context(|| format!("reading the calibration text {}", calib.display()))?;
    let mut tokens = tokenizer
        .encode(&text)
        .context("tokenizing the calibration text")?;
    tokens.truncate(ON_THE_FLY_CALIBRATION_TOKENS);
    let bar = ProgressBar::new(tokens.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("calibrating the self-gate {bar:30} {pos}/{len} tokens")
            .expect("valid template"),
    );
    let data = CalibrationData::collect(model, &tokens, 512, 4096, &mut |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let gate = SelfGate::calibrate(
        &data?,
        model,
        hash,
        SelfGateOptions {
            bits,
            sparsity,
            frac_bits: FRAC_BITS,
            clip_quantile: ON_THE_FLY_CLIP_QUANTILE,
            ..SelfGateOptions::default()
        },
    )?;
    Ok(gate)
}
