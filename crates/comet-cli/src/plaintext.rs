//! Plaintext commands: `comet generate --plaintext`, `comet eval --plaintext`, `comet info`.
//!
//! They run the f32 reference forward of `comet-model`, the yardstick for the secure engine.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use comet_model::{GgufFile, Model, Sampler, SamplingParams, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `comet generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt.
    pub prompt: String,
    /// Run the plaintext reference forward (no secure computation).
    #[arg(long)]
    pub plaintext: bool,
    /// GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $COMET_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Wrap the prompt in the model's chat format (ChatML).
    #[arg(long)]
    pub chat: bool,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (used when temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling PRG (default: fresh randomness).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Simulate fixed point: round linear-layer weights, inputs and outputs to multiples of 2^-F.
    #[arg(long, value_name = "F")]
    pub fixed_point: Option<u32>,
    /// Print the prompt before the continuation (by default only generated text is printed).
    #[arg(long)]
    pub echo: bool,
    /// Secure mode: network shaping of every link (none, lan, wan, slow).
    #[arg(long, default_value = "none")]
    pub net: String,
    /// Secure mode: write the cost report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Secure mode: do not print the cost table to stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Secure mode with separate server processes: `p0=HOST:PORT,p1=HOST:PORT`.
    #[arg(long)]
    pub remote: Option<String>,
    /// Directory with ca.pem and the client's certificate (with --remote).
    #[arg(long, requires = "remote")]
    pub certs: Option<PathBuf>,
    /// Secure engine only: FFN sparsity and its gate.
    #[command(flatten)]
    pub sparse: crate::sparse_mode::SecureSparsityArgs,
}

/// Arguments of `comet eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run the plaintext reference forward (no secure computation).
    #[arg(long)]
    pub plaintext: bool,
    /// Run the secure engine on the first --max-tokens tokens (default 32) and compare its
    /// logits with the plaintext reference.
    #[arg(long, conflicts_with = "plaintext")]
    pub secure: bool,
    /// Secure mode: network shaping of every link (none, lan, wan, slow).
    #[arg(long, default_value = "none")]
    pub net: String,
    /// Secure mode: write the comparison as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// UTF-8 text file to score (required unless --prompts is given).
    #[arg(long, value_name = "FILE", required_unless_present = "prompts")]
    pub text: Option<PathBuf>,
    /// GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $COMET_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Score at most this many tokens of the file.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Window length in tokens (default: the model's context length); windows do not overlap.
    #[arg(long)]
    pub window: Option<usize>,
    /// Tokens per forward call inside a window (bounds the memory of the logits).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
    /// Simulate fixed point with F fractional bits (see `generate --fixed-point`).
    #[arg(long, value_name = "F")]
    pub fixed_point: Option<u32>,
    /// Activation sparsity: `off`, `ffn=F`, `heads=H` or `ffn=F,heads=H` (F = fraction of FFN
    /// neurons, H = fraction of attention query heads skipped per token, on average).
    #[arg(long, value_name = "SPEC")]
    pub sparsity: Option<comet_model::SparsitySpec>,
    /// Which gate picks the kept attention heads with `heads=H` (plaintext: oracle, oracle-topk,
    /// oracle-groups or mlp; default oracle, or mlp with --head-gate-file).
    #[arg(long, value_enum)]
    pub head_gate: Option<crate::sparsity::HeadGateKind>,
    /// Head predictor file from `comet train-predictor --target heads`.
    #[arg(long, value_name = "FILE")]
    pub head_gate_file: Option<PathBuf>,
    /// Which gate picks the kept neurons (plaintext: oracle, self or mlp).
    #[arg(long, value_enum, default_value_t = crate::sparsity::GateKind::SelfGate)]
    pub gate: crate::sparsity::GateKind,
    /// Gate file: a self-gate from `comet calibrate` or a predictor from `comet train-predictor`
    /// (without it, --gate self is calibrated on the fly from --calib).
    #[arg(long, value_name = "FILE")]
    pub gate_file: Option<PathBuf>,
    /// Self-gate code width when calibrating on the fly (default 8).
    #[arg(long)]
    pub bits: Option<u32>,
    /// Self-gate range margin over the calibrated maximum when calibrating on the fly.
    #[arg(long, default_value_t = comet_model::sparsity::DEFAULT_MARGIN)]
    pub margin: f64,
    /// Self-gate clip quantile when calibrating on the fly (1 = calibrated maximum).
    #[arg(long, default_value_t = 1.0)]
    pub clip_quantile: f64,
    /// Neurons per block: blocks of consecutive neurons are kept or skipped together (block
    /// score = sum of its neurons' scores, per-layer calibrated threshold).
    #[arg(long, default_value_t = 1)]
    pub block: usize,
    /// Public calibration text for thresholds and on-the-fly gates (default: data/calib.txt).
    #[arg(long, value_name = "FILE", default_value_os_t = crate::sparsity::default_calib())]
    pub calib: PathBuf,
    #[command(flatten)]
    pub calib_pass: crate::sparsity::CalibrationPassArgs,
    /// Prompts, one per line: the dense model continues each greedily by --gen-tokens tokens and
    /// the sparse model is scored teacher-forced on them (greedy agreement).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Greedy dense tokens per prompt (default 32; with --prompts and no --text, --max-tokens
    /// sets it too).
    #[arg(long)]
    pub gen_tokens: Option<usize>,
    /// Quality curve: every sparsity × gate (oracle, self-gate per code width, the MLP from
    /// --gate mlp --gate-file) × block size of the grid below.
    #[arg(long, alias = "curve")]
    pub quality_curve: bool,
    /// Write the sparse results (one row per gate) as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Quality-curve sparsities.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9")]
    pub curve_sparsities: Vec<f64>,
    /// Quality-curve self-gate code widths.
    #[arg(long, value_delimiter = ',', default_value = "4,5,6,7,8")]
    pub curve_bits: Vec<u32>,
    /// Quality-curve block sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub curve_blocks: Vec<usize>,
}

/// Arguments of `comet info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $COMET_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// `comet generate`: streams the continuation of the prompt to stdout, speed to stderr.
pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    if !args.plaintext {
        return crate::secure::generate_command(args);
    }
    if args.sparse.sparsity.is_sparse() {
        bail!(
            "--sparsity applies to the secure engine; for the plaintext sparse model's quality \
             use `comet eval --plaintext --sparsity ...`"
        );
    }
    let temperature_ok = args.temperature.is_finite() && args.temperature >= 0.0;
    if !temperature_ok || args.top_p.is_nan() || args.top_p <= 0.0 || args.top_p > 1.0 {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    let (model, tokenizer) = load_with_progress(args.model.as_deref(), args.fixed_point)?;
    let text = if args.chat {
        tokenizer.chat_prompt(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let prompt = tokenizer.encode(&text).context("tokenizing the prompt")?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let seed = args.seed.unwrap_or_else(|| {
        let s = comet_core::prg::os_seed();
        u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]))
    });
    let mut sampler = Sampler::new(SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        seed,
    });
    let stops = tokenizer.stop_token_ids();
    let mut streamer = tokenizer.streamer();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.echo {
        write!(out, "{text}")?;
        out.flush()?;
    }
    let (_, stats) = comet_model::generate(
        &model,
        &prompt,
        args.max_tokens,
        &mut sampler,
        &stops,
        |id| {
            if !stops.contains(&id) {
                let piece = streamer.push(id)?;
                // A closed pipe (e.g. `| head`) must not turn into a model error; stop writing.
                let _ = write!(out, "{piece}").and_then(|_| out.flush());
            }
            Ok(())
        },
    )?;
    writeln!(out)?;
    eprintln!(
        "[prefill: {} tokens in {:.3} s = {:.1} tok/s; decode: {} tokens in {:.3} s = {:.1} tok/s{}]",
        stats.prompt_tokens,
        stats.prefill_time.as_secs_f64(),
        stats.prefill_tokens_per_second(),
        stats.generated_tokens.saturating_sub(1),
        stats.decode_time.as_secs_f64(),
        stats.decode_tokens_per_second(),
        if stats.stopped_at_stop_token { "; stopped at end-of-text" } else { "" },
    );
    Ok(())
}

/// `comet eval`: mean negative log-likelihood, perplexity and speed over a text file.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if args.secure {
        let sparse = crate::sparse_mode::SecureSparsityArgs {
            sparsity: args.sparsity.unwrap_or_default(),
            gate: args.gate.to_string(),
            gate_file: args.gate_file,
            bits: args.bits.unwrap_or(8),
            calib: Some(args.calib),
            head_gate_file: args.head_gate_file.clone(),
            ..crate::sparse_mode::SecureSparsityArgs::dense()
        };
        let net = crate::secure::parse_net(&args.net)?;
        if let Some(prompts) = args.prompts {
            return crate::secure::eval_prompts(crate::secure::SecurePromptsOptions {
                prompts,
                model: args.model,
                max_tokens: args.gen_tokens.or(args.max_tokens).unwrap_or(32),
                net,
                report: args.report,
                sparse,
            });
        }
        let text = args
            .text
            .context("--secure needs --text FILE or --prompts FILE")?;
        return crate::secure::eval(crate::secure::SecureEvalOptions {
            text,
            model: args.model,
            max_tokens: args.max_tokens.unwrap_or(32),
            net,
            report: args.report,
            sparse,
        });
    }
    if !args.plaintext {
        bail!("choose --plaintext or --secure");
    }
    let sparse = args.sparsity.is_some_and(|s| s.is_sparse());
    if sparse
        || args.gate_file.is_some()
        || args.head_gate_file.is_some()
        || args.head_gate.is_some()
        || args.prompts.is_some()
        || args.quality_curve
    {
        if args.fixed_point.is_some() {
            bail!("--fixed-point is not supported with sparsity, prompts or the quality curve");
        }
        let gen_tokens = args
            .gen_tokens
            .unwrap_or(match (&args.text, args.max_tokens) {
                (None, Some(n)) => n,
                _ => 32,
            });
        return crate::sparsity::sparse_eval(crate::sparsity::SparseEvalOptions {
            model: args.model,
            max_tokens: if args.text.is_some() {
                args.max_tokens
            } else {
                None
            },
            text: args.text,
            window: args.window,
            chunk: args.chunk,
            sparsity: args.sparsity.and_then(|s| s.ffn),
            head_sparsity: args.sparsity.and_then(|s| s.heads),
            head_gate: args.head_gate,
            head_gate_file: args.head_gate_file,
            gate: args.gate,
            gate_file: args.gate_file,
            bits: args.bits,
            margin: args.margin,
            clip_quantile: args.clip_quantile,
            block: args.block,
            calib: args.calib,
            pass: args.calib_pass,
            prompts: args.prompts,
            gen_tokens,
            curve: args.quality_curve,
            json: args.json,
            curve_sparsities: args.curve_sparsities,
            curve_bits: args.curve_bits,
            curve_blocks: args.curve_blocks,
        });
    }
    let text_path = args.text.context("give --text FILE")?;
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let (model, tokenizer) = load_with_progress(args.model.as_deref(), args.fixed_point)?;
    let tokens = tokenizer.encode(&text).context("tokenizing the text")?;
    let context = model.config().context_length;
    let window = args.window.unwrap_or(context).min(context);
    if window < 2 {
        bail!("--window must be at least 2 tokens");
    }
    if args.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    if tokens.len() < 2 {
        bail!("the text has fewer than 2 tokens; nothing to score");
    }
    // Non-overlapping windows; the first token of each is context only. `--max-tokens` caps
    // the number of scored tokens.
    let mut budget = args.max_tokens.unwrap_or(usize::MAX);
    let mut windows: Vec<&[u32]> = Vec::new();
    for w in tokens.chunks(window) {
        if w.len() < 2 || budget == 0 {
            continue;
        }
        let take = w.len().min(budget.saturating_add(1));
        budget -= take - 1;
        windows.push(&w[..take]);
    }
    let to_score: usize = windows.iter().map(|w| w.len() - 1).sum();
    if to_score == 0 {
        bail!("--max-tokens 0 leaves nothing to score");
    }
    let bar = ProgressBar::new(to_score as u64);
    bar.set_style(
        ProgressStyle::with_template("scoring {bar:40} {pos}/{len} tokens ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut nll_sum = 0.0f64;
    let mut scored = 0usize;
    let vocab = model.config().vocab_size;
    for w in windows {
        let mut cache = model.new_cache();
        for (c, chunk) in w.chunks(args.chunk).enumerate() {
            let logits = model.forward_all(chunk, &mut cache)?;
            let base = c * args.chunk;
            for (r, row) in logits.chunks_exact(vocab).enumerate() {
                let Some(&target) = w.get(base + r + 1) else {
                    continue;
                };
                nll_sum += negative_log_likelihood(row, target);
                scored += 1;
            }
            bar.set_position(scored as u64);
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let mean = nll_sum / scored as f64;
    let mut report = String::new();
    let model_file = model_path(args.model.as_deref());
    let _ = writeln!(report, "model:        {}", model_file.display());
    let _ = writeln!(
        report,
        "text:         {} ({} tokens, window {window})",
        text_path.display(),
        tokens.len()
    );
    let _ = writeln!(report, "scored:       {scored} tokens");
    let _ = writeln!(report, "mean NLL:     {mean:.4} nats/token");
    let _ = writeln!(report, "perplexity:   {:.3}", mean.exp());
    let _ = writeln!(
        report,
        "speed:        {:.1} tokens/s ({:.2} s)",
        scored as f64 / elapsed.as_secs_f64().max(1e-9),
        elapsed.as_secs_f64()
    );
    print_report(&report)
}

/// `comet info`: configuration, tokenizer summary and tensor table of a model file.
pub fn info(args: InfoArgs) -> anyhow::Result<()> {
    let path = model_path(args.model.as_deref());
    let gguf = GgufFile::open(&path)?;
    let config = comet_model::LlamaConfig::from_gguf(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let mut r = String::new();
    let _ = writeln!(r, "model file:       {}", path.display());
    if let Ok(Some(name)) = gguf.get_str_opt("general.name") {
        let _ = writeln!(r, "name:             {name}");
    }
    let _ = writeln!(r, "architecture:     llama");
    let _ = writeln!(r, "layers:           {}", config.n_layers);
    let _ = writeln!(r, "d_model:          {}", config.d_model);
    let _ = writeln!(
        r,
        "heads:            {} (KV heads {}, head dim {})",
        config.n_heads, config.n_kv_heads, config.head_dim
    );
    let _ = writeln!(r, "ffn dim:          {}", config.ffn_dim);
    let _ = writeln!(r, "vocab:            {}", config.vocab_size);
    let _ = writeln!(r, "context length:   {}", config.context_length);
    let _ = writeln!(r, "rope base:        {}", config.rope_base);
    let _ = writeln!(r, "rms norm eps:     {:e}", config.norm_eps as f32);
    let _ = writeln!(
        r,
        "lm head:          {}",
        if config.tied_lm_head {
            "tied to token embedding"
        } else {
            "output.weight"
        }
    );
    let _ = writeln!(r, "parameters:       {}", config.n_params());
    let name_of = |id: Option<u32>| {
        id.map(|i| format!("{i} {:?}", tokenizer.token_text(i).unwrap_or_default()))
            .unwrap_or_else(|| "none".into())
    };
    let _ = writeln!(
        r,
        "bos / eos:        {} / {}",
        name_of(tokenizer.bos_token_id()),
        name_of(tokenizer.eos_token_id())
    );
    let _ = writeln!(
        r,
        "special tokens:   {}",
        tokenizer.special_token_ids().len()
    );
    let _ = writeln!(
        r,
        "chat template:    {}",
        match (tokenizer.chat_template(), tokenizer.default_system_prompt()) {
            (None, _) => "none".to_string(),
            (Some(_), None) => "ChatML-style, no default system prompt".to_string(),
            (Some(_), Some(sys)) => format!("ChatML-style, default system prompt {sys:?}"),
        }
    );
    let tensors = gguf.tensors();
    let _ = writeln!(r, "\ntensors ({}):", tensors.len());
    let _ = writeln!(r, "  {:<32} {:>6} {:>16}", "name", "type", "shape");
    for t in tensors {
        let shape = t
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let _ = writeln!(r, "  {:<32} {:>6} {:>16}", t.name, t.dtype, shape);
    }
    print_report(&r)
}

pub(crate) fn model_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(comet_model::default_model_path)
}

/// Loads model and tokenizer with a spinner (loading takes about a second).
pub(crate) fn load_with_progress(
    explicit: Option<&Path>,
    fixed_point: Option<u32>,
) -> anyhow::Result<(Model, Tokenizer)> {
    let path = model_path(explicit);
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("loading {}", path.display()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let started = Instant::now();
    let loaded = comet_model::load(&path);
    spinner.finish_and_clear();
    let (mut model, tokenizer) = loaded?;
    if let Some(f) = fixed_point {
        if f > 30 {
            bail!("--fixed-point must be at most 30 fractional bits");
        }
        model = model.with_fixed_point(f);
    }
    tracing::info!(elapsed = ?started.elapsed(), path = %path.display(), "model loaded");
    Ok((model, tokenizer))
}

/// Prints `text` to stdout; a closed pipe (e.g. `comet info | head`) is not an error.
pub(crate) fn print_report(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// −log softmax(logits)[target], computed stably in f64.
pub(crate) fn negative_log_likelihood(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    log_sum - logits[target as usize] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_matches_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            let expected = z.ln() - l as f64;
            assert!((negative_log_likelihood(&logits, i as u32) - expected).abs() < 1e-12);
        }
        // Large logits do not overflow.
        assert!(negative_log_likelihood(&[1000.0, 1000.0], 0).is_finite());
    }
}
