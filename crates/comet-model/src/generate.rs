//! Autoregressive generation on top of [`Model`]: prefill the prompt, then decode token by
//! token with the KV cache, stopping at a stop token or after a token budget.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::forward::Model;
use crate::sampling::Sampler;

/// Timing and size of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens processed by the prefill.
    pub prompt_tokens: usize,
    /// Tokens generated (the stop token included when one ended the run).
    pub generated_tokens: usize,
    /// Wall time of the prefill (the forward over the prompt).
    pub prefill_time: Duration,
    /// Wall time of all decode forwards.
    pub decode_time: Duration,
    /// Whether a stop token ended the run (rather than the token budget or the context length).
    pub stopped_at_stop_token: bool,
}

impl GenerationStats {
    /// Prompt tokens per second of the prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode forwards per second (the first generated token comes from the prefill).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let steps = self.generated_tokens.saturating_sub(1);
        steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generates up to `max_tokens` tokens after `prompt`, calling `on_token` with each new token
/// as soon as it is chosen; stops early at any of `stop_tokens` or at the context length.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    stop_tokens: &[u32],
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut out = Vec::new();
    if max_tokens == 0 {
        return Ok((out, stats));
    }
    let mut cache = model.new_cache();
    let started = Instant::now();
    let mut logits = model.forward(prompt, &mut cache)?;
    stats.prefill_time = started.elapsed();
    loop {
        let next = sampler.sample(&logits);
        out.push(next);
        on_token(next)?;
        if stop_tokens.contains(&next) {
            stats.stopped_at_stop_token = true;
            break;
        }
        if out.len() >= max_tokens || cache.len() >= model.config().context_length {
            break;
        }
        let step = Instant::now();
        logits = model.forward(&[next], &mut cache)?;
        stats.decode_time += step.elapsed();
    }
    stats.generated_tokens = out.len();
    Ok((out, stats))
}
