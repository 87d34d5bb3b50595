//! Secure commands: `comet generate` (client, P0, P1 and dealer in one process over in-memory
//! links), `comet eval --secure`, `comet bench generate`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comet_core::FixedPoint;
use comet_engine::local::{capacity_for, check_capacity, generate as secure_generate};
use comet_engine::{GenerationReport, LocalDeployment};
use comet_model::{Model, Sampler, SamplingParams, Tokenizer};
use comet_net::NetProfile;
use indicatif::ProgressBar;

use crate::sparse_mode::{session_mode, SecureSparsityArgs};

/// Fractional bits of the secure engine's fixed point (DESIGN.md §3).
const FRAC_BITS: u32 = 12;

/// What a secure generation needs besides the plaintext options.
#[derive(Debug, Clone)]
pub struct SecureGenerateOptions {
    /// The prompt text (already wrapped in the chat template when asked).
    pub text: String,
    /// Echo of the raw prompt printed before the continuation, if any.
    pub echo: Option<String>,
    /// GGUF model file.
    pub model: Option<PathBuf>,
    /// Token budget.
    pub max_tokens: usize,
    /// Sampling parameters (temperature 0 = greedy).
    pub sampling: SamplingParams,
    /// Shaping of every link.
    pub net: NetProfile,
    /// Name of the shaping preset for reports.
    pub net_name: String,
    /// Where to write the JSON cost report.
    pub report: Option<PathBuf>,
    /// Print the cost table to stderr.
    pub print_table: bool,
    /// FFN sparsity and its gate.
    pub sparse: SecureSparsityArgs,
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Loads the model and its tokenizer with a spinner.
pub fn load_model(path: Option<&Path>) -> anyhow::Result<(Model, Tokenizer, PathBuf)> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(comet_model::default_model_path);
    let bar = spinner(format!("loading {}", path.display()));
    let loaded = comet_model::load(&path);
    bar.finish_and_clear();
    let (model, tokenizer) = loaded.with_context(|| format!("loading {}", path.display()))?;
    Ok((model, tokenizer, path))
}

/// Shares the model between two in-process servers with a spinner.
pub fn share_in_process(model: &Model) -> anyhow::Result<LocalDeployment> {
    let bar = spinner("sharing the model (fixed-point weights, masks)".into());
    let started = Instant::now();
    let dep = LocalDeployment::share(model, FixedPoint::new(FRAC_BITS));
    bar.finish_and_clear();
    tracing::info!(elapsed = ?started.elapsed(), "model shared");
    Ok(dep?)
}

/// `comet generate` without `--plaintext`: streams the securely generated continuation.
pub fn generate(opts: SecureGenerateOptions) -> anyhow::Result<GenerationReport> {
    let (model, tokenizer, model_path) = load_model(opts.model.as_deref())?;
    let prompt = tokenizer
        .encode(&opts.text)
        .context("tokenizing the prompt")?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let context = model.config().context_length;
    let capacity = capacity_for(prompt.len(), opts.max_tokens);
    if prompt.len() > context {
        bail!(
            "the prompt has {} tokens, longer than the model's context of {context}",
            prompt.len()
        );
    }
    let capacity = capacity.min(context);
    check_capacity(model.config(), capacity)?;
    let mut dep = share_in_process(&model)?;
    let mode = session_mode(&opts.sparse, &model, &model_path, &tokenizer, &mut dep)?;
    drop(model);
    let mut session = dep.session_with(capacity, opts.net, mode)?;
    let mut sampler = Sampler::new(opts.sampling);
    let stops = tokenizer.stop_token_ids();
    let mut streamer = tokenizer.streamer();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(echo) = &opts.echo {
        write!(out, "{echo}")?;
        out.flush()?;
    }
    let bar = spinner(format!("secure prefill of {} tokens", prompt.len()));
    let mut first = true;
    let max_tokens = opts.max_tokens.min(context + 1 - prompt.len());
    let result = secure_generate(
        session.client(),
        &prompt,
        max_tokens,
        &mut sampler,
        &stops,
        &opts.net_name,
        |id| {
            if first {
                bar.finish_and_clear();
                first = false;
            }
            if !stops.contains(&id) {
                let piece = streamer.push(id)?;
                let _ = write!(out, "{piece}").and_then(|_| out.flush());
            }
            Ok(())
        },
    );
    bar.finish_and_clear();
    let generation = match result {
        Ok(g) => g,
        Err(e) => {
            let servers = session.abort();
            for (i, r) in servers.into_iter().enumerate() {
                if let Err(se) = r {
                    tracing::warn!("server P{i}: {se}");
                }
            }
            writeln!(out)?;
            bail!("secure generation failed: {e}");
        }
    };
    session.finish().context("closing the session")?;
    writeln!(out)?;
    let report = generation.report;
    if opts.print_table {
        eprint!("{}", report.table());
    }
    if let Some(path) = &opts.report {
        write_json(path, &report.to_json())?;
    }
    Ok(report)
}

/// Writes a JSON value to a file, naming the file on failure.
pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Arguments of `comet eval --secure` that the plaintext evaluation does not have.
#[derive(Debug, Clone)]
pub struct SecureEvalOptions {
    /// Text file to score.
    pub text: PathBuf,
    /// GGUF model file.
    pub model: Option<PathBuf>,
    /// Tokens to score (the secure run processes them in one prefill step).
    pub max_tokens: usize,
    /// Shaping of every link.
    pub net: NetProfile,
    /// JSON output file.
    pub report: Option<PathBuf>,
    /// FFN sparsity of the secure run (the reference is always the dense plaintext model).
    pub sparse: SecureSparsityArgs,
}

fn log_softmax_nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v)) as f64;
    let sum: f64 = row.iter().map(|v| (*v as f64 - max).exp()).sum();
    max + sum.ln() - row[target as usize] as f64
}

/// `comet eval --secure`: teacher-forced comparison of the secure logits with the plaintext
/// reference on the same tokens.
pub fn eval(opts: SecureEvalOptions) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&opts.text)
        .with_context(|| format!("reading {}", opts.text.display()))?;
    let (model, tokenizer, path) = load_model(opts.model.as_deref())?;
    let mut tokens = tokenizer.encode(&text).context("tokenizing the text")?;
    if opts.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    tokens.truncate((opts.max_tokens + 1).min(model.config().context_length));
    if tokens.len() < 2 {
        bail!("the text has fewer than 2 tokens; nothing to score");
    }
    let vocab = model.config().vocab_size;
    let reference = model.forward_all(&tokens, &mut model.new_cache())?;
    let mut dep = share_in_process(&model)?;
    let mode = session_mode(&opts.sparse, &model, &path, &tokenizer, &mut dep)?;
    let mut session = dep.session_with(tokens.len(), opts.net, mode)?;
    let bar = spinner(format!("secure forward of {} tokens", tokens.len()));
    let step = session.client().step(&tokens, true);
    bar.finish_and_clear();
    let step = match step {
        Ok(s) => s,
        Err(e) => {
            let _ = session.abort();
            bail!("secure evaluation failed: {e}");
        }
    };
    session.finish()?;
    let rows = tokens.len();
    let (mut agree, mut max_err, mut sum_err, mut nll_secure, mut nll_plain) =
        (0usize, 0f64, 0f64, 0f64, 0f64);
    for r in 0..rows {
        let s = &step.logits[r * vocab..(r + 1) * vocab];
        let p = &reference[r * vocab..(r + 1) * vocab];
        if comet_model::sampling::argmax(s) == comet_model::sampling::argmax(p) {
            agree += 1;
        }
        for (a, b) in s.iter().zip(p) {
            let e = (a - b).abs() as f64;
            max_err = max_err.max(e);
            sum_err += e;
        }
        if r + 1 < rows {
            nll_secure += log_softmax_nll(s, tokens[r + 1]);
            nll_plain += log_softmax_nll(p, tokens[r + 1]);
        }
    }
    let scored = (rows - 1) as f64;
    let summary = serde_json::json!({
        "model": path.display().to_string(),
        "text": opts.text.display().to_string(),
        "positions": rows,
        "greedy_agreement": agree as f64 / rows as f64,
        "max_abs_logit_error": max_err,
        "mean_abs_logit_error": sum_err / (rows * vocab) as f64,
        "secure_nll": nll_secure / scored,
        "secure_perplexity": (nll_secure / scored).exp(),
        "plaintext_nll": nll_plain / scored,
        "plaintext_perplexity": (nll_plain / scored).exp(),
        "costs": step.costs,
    });
    println!("model:               {}", path.display());
    println!("positions:           {rows} (teacher-forced, one secure prefill)");
    println!(
        "greedy agreement:    {agree}/{rows} ({:.2}%)",
        100.0 * agree as f64 / rows as f64
    );
    println!("max |logit error|:   {max_err:.4}");
    println!(
        "mean |logit error|:  {:.5}",
        sum_err / (rows * vocab) as f64
    );
    println!(
        "NLL secure / plain:  {:.4} / {:.4} nats (perplexity {:.3} / {:.3})",
        nll_secure / scored,
        nll_plain / scored,
        (nll_secure / scored).exp(),
        (nll_plain / scored).exp()
    );
    if let Some(path) = &opts.report {
        write_json(path, &summary)?;
    }
    Ok(())
}

/// Arguments of `comet eval --secure --prompts FILE`.
#[derive(Debug, Clone)]
pub struct SecurePromptsOptions {
    /// One prompt per line.
    pub prompts: PathBuf,
    /// GGUF model file.
    pub model: Option<PathBuf>,
    /// New tokens per prompt.
    pub max_tokens: usize,
    /// Shaping of every link.
    pub net: NetProfile,
    /// JSON output file.
    pub report: Option<PathBuf>,
    /// FFN sparsity of the secure run (the reference is always the dense plaintext model).
    pub sparse: SecureSparsityArgs,
}

/// `comet eval --secure --prompts FILE`: greedy agreement with the plaintext reference. For
/// each prompt the plaintext model generates `max_tokens` greedily; the secure engine runs the
/// prompt and that continuation teacher-forced in one prefill, and each position counts as
/// agreeing when the secure argmax is the plaintext token (no cascade after one divergence).
pub fn eval_prompts(opts: SecurePromptsOptions) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&opts.prompts)
        .with_context(|| format!("reading {}", opts.prompts.display()))?;
    let prompts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if prompts.is_empty() {
        bail!("{} has no prompts", opts.prompts.display());
    }
    if opts.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let (model, tokenizer, path) = load_model(opts.model.as_deref())?;
    let mut dep = share_in_process(&model)?;
    let mode = session_mode(&opts.sparse, &model, &path, &tokenizer, &mut dep)?;
    let bar = ProgressBar::new(prompts.len() as u64);
    let (mut agree, mut total) = (0usize, 0usize);
    let mut per_prompt = Vec::new();
    for prompt in &prompts {
        let ids = tokenizer.encode(prompt)?;
        if ids.is_empty() {
            bail!("prompt {prompt:?} has no tokens");
        }
        let mut sampler = Sampler::new(SamplingParams::default());
        let (reference, _) =
            comet_model::generate(&model, &ids, opts.max_tokens, &mut sampler, &[], |_| Ok(()))?;
        let mut forced = ids.clone();
        forced.extend_from_slice(&reference[..reference.len() - 1]);
        check_capacity(model.config(), forced.len())?;
        let mut session = dep.session_with(forced.len(), opts.net, mode.clone())?;
        let step = match session.client().step(&forced, true) {
            Ok(s) => s,
            Err(e) => {
                let _ = session.abort();
                bail!("secure run of {prompt:?} failed: {e}");
            }
        };
        session.finish()?;
        let vocab = model.config().vocab_size;
        let hits = reference
            .iter()
            .enumerate()
            .filter(|(i, &t)| {
                let row = ids.len() - 1 + i;
                comet_model::sampling::argmax(&step.logits[row * vocab..(row + 1) * vocab]) as u32
                    == t
            })
            .count();
        agree += hits;
        total += reference.len();
        per_prompt.push(serde_json::json!({
            "prompt": prompt, "reference": tokenizer.decode(&reference)?, "agree": hits,
            "positions": reference.len(),
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let rate = agree as f64 / total as f64;
    println!(
        "greedy agreement (secure {} vs plaintext dense, teacher-forced): {agree}/{total} = {:.2}% over {} prompts × {} tokens",
        mode.name(),
        100.0 * rate,
        prompts.len(),
        opts.max_tokens
    );
    if let Some(path) = &opts.report {
        write_json(
            path,
            &serde_json::json!({"mode": mode.name(), "sparsity": opts.sparse.sparsity.ffn,
                "agreement": rate, "agree": agree, "positions": total, "prompts": per_prompt}),
        )?;
    }
    Ok(())
}

/// Parses a `--net` preset name.
pub fn parse_net(name: &str) -> anyhow::Result<NetProfile> {
    name.parse::<NetProfile>()
        .map_err(|e| anyhow::anyhow!("--net {name}: {e}"))
}

/// The secure branch of `comet generate`.
pub fn generate_command(args: crate::plaintext::GenerateArgs) -> anyhow::Result<()> {
    let temperature_ok = args.temperature.is_finite() && args.temperature >= 0.0;
    if !temperature_ok || args.top_p.is_nan() || args.top_p <= 0.0 || args.top_p > 1.0 {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    if args.fixed_point.is_some() {
        bail!("--fixed-point only applies to --plaintext (the secure engine uses f = 12)");
    }
    let text = if args.chat {
        let path = args
            .model
            .clone()
            .unwrap_or_else(comet_model::default_model_path);
        let gguf = comet_model::GgufFile::open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Tokenizer::from_gguf(&gguf)?.chat_prompt(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let seed = args.seed.unwrap_or_else(|| {
        let s = comet_core::prg::os_seed();
        u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]))
    });
    let options = SecureGenerateOptions {
        text,
        echo: (args.echo && !args.chat).then(|| args.prompt.clone()),
        model: args.model,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            seed,
        },
        net: parse_net(&args.net)?,
        net_name: args.net.clone(),
        report: args.report,
        print_table: !args.quiet,
        sparse: args.sparse,
    };
    if let Some(remote) = args.remote {
        if options.sparse.is_sparse() {
            bail!(
                "--sparsity runs in the one-process deployment only; --remote sessions are dense"
            );
        }
        let certs = args.certs.context("--remote needs --certs DIR")?;
        let net = options.net;
        return crate::party::remote_generate(
            crate::party::RemoteClientOptions { remote, certs, net },
            options,
        );
    }
    generate(options).map(|_| ())
}
