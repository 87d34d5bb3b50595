//! Plaintext f32 reference forward of a llama model with a KV cache.
//!
//! Per block: RMSNorm → Q/K/V → interleaved RoPE (pairs (2i, 2i+1), as GGUF llama weights
//! expect) → causal GQA attention over the cache → Wo → residual → RMSNorm → SiLU(gate)·up →
//! down → residual. Then the final RMSNorm and the LM head. Every secure result is compared
//! with this forward.

use std::path::Path;

use rayon::prelude::*;

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::linalg::{self, matmul_nt_many};
use crate::weights::{LlamaWeights, Matrix};

/// Which positions the LM head is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitsMode {
    /// Only the last token of the call (generation).
    #[default]
    Last,
    /// Every token of the call (scoring, teacher forcing).
    All,
}

/// The feed-forward activations of one block, handed to [`ForwardOptions::ffn_hook`]. The hook
/// may change `hidden` (e.g. zero skipped neurons): what it leaves there goes into `w_down`.
#[derive(Debug)]
pub struct FfnActivations<'a> {
    /// Block index.
    pub layer: usize,
    /// Tokens in this call (rows of the matrices below).
    pub tokens: usize,
    /// The normed FFN input `x = RMSNorm(residual)`, `[tokens, d_model]` (what a trained
    /// sparsity predictor reads).
    pub input: &'a [f32],
    /// Pre-activation gate values `gate·x`, `[tokens, ffn_dim]`.
    pub gate: &'a [f32],
    /// Pre-activation up values `up·x`, `[tokens, ffn_dim]`.
    pub up: &'a [f32],
    /// Hidden values `SiLU(gate·x) ⊙ (up·x)`, `[tokens, ffn_dim]`, the input of `w_down`;
    /// the hook may mask them.
    pub hidden: &'a mut [f32],
}

/// The attention output of one block before `Wo`, handed to [`ForwardOptions::attn_hook`].
/// The hook may change `heads` (e.g. zero skipped heads): what it leaves there goes into `Wo`.
#[derive(Debug)]
pub struct AttnActivations<'a> {
    /// Block index.
    pub layer: usize,
    /// Tokens in this call (rows of the matrices below).
    pub tokens: usize,
    /// Position of the first token of this call in the sequence.
    pub start: usize,
    /// The normed attention input `x = RMSNorm(residual)`, `[tokens, d_model]` (what a head
    /// predictor reads).
    pub input: &'a [f32],
    /// Per-head attention outputs `softmax(q·Kᵀ)·V`, `[tokens, n_heads · head_dim]` (head `h`
    /// in columns `h·head_dim ..`), the input of `Wo`; the hook may mask them.
    pub heads: &'a mut [f32],
}

/// Per-call options of [`Model::forward_with`].
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// Positions that get logits.
    pub logits: LogitsMode,
    /// Called once per block with its feed-forward activations (sparsity statistics and
    /// masking of skipped neurons).
    pub ffn_hook: Option<&'a mut dyn FnMut(&mut FfnActivations<'_>)>,
    /// Called once per block with its attention output before `Wo` (head statistics and
    /// masking of skipped heads).
    pub attn_hook: Option<&'a mut dyn FnMut(&mut AttnActivations<'_>)>,
}

/// Keys and values of all processed tokens, per block and KV head.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// `layers[l].keys[h]` holds `len * head_dim` values: the RoPE-rotated keys, token after token.
    layers: Vec<LayerCache>,
    len: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
struct LayerCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvCache {
    /// An empty cache shaped for `config`.
    pub fn new(config: &LlamaConfig) -> Self {
        let layer = LayerCache {
            keys: vec![Vec::new(); config.n_kv_heads],
            values: vec![Vec::new(); config.n_kv_heads],
        };
        Self {
            layers: vec![layer; config.n_layers],
            len: 0,
            head_dim: config.head_dim,
        }
    }

    /// Number of tokens whose keys and values are cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops all cached tokens from position `len` on (no-op if the cache is shorter).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for layer in &mut self.layers {
            for h in layer.keys.iter_mut().chain(layer.values.iter_mut()) {
                h.truncate(len * self.head_dim);
            }
        }
        self.len = len;
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Cached keys of block `layer`, KV head `head`: `[len, head_dim]` row-major.
    /// Panics if `layer` or `head` is out of range.
    pub fn keys(&self, layer: usize, head: usize) -> &[f32] {
        &self.layers[layer].keys[head]
    }

    /// Cached values of block `layer`, KV head `head`: `[len, head_dim]` row-major.
    /// Panics if `layer` or `head` is out of range.
    pub fn values(&self, layer: usize, head: usize) -> &[f32] {
        &self.layers[layer].values[head]
    }
}

/// A llama model ready to run: configuration, f32 weights, and the optional fixed-point simulation.
#[derive(Debug, Clone)]
pub struct Model {
    config: LlamaConfig,
    weights: LlamaWeights,
    fixed_point: Option<u32>,
}

impl Model {
    /// Builds a model from its parts; checks that the weights have the configured shapes.
    pub fn new(config: LlamaConfig, weights: LlamaWeights) -> Result<Self> {
        check_shapes(&config, &weights)?;
        Ok(Self {
            config,
            weights,
            fixed_point: None,
        })
    }

    /// Opens a GGUF file and loads the configuration and all weights.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        Self::from_gguf(&gguf)
    }

    /// Loads configuration and weights from an opened GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let weights = LlamaWeights::from_gguf(gguf, &config)?;
        Self::new(config, weights)
    }

    /// Turns on the fixed-point simulation: linear-layer weights (embedding/LM head included),
    /// inputs and outputs are rounded to multiples of 2^-`frac_bits`; RMSNorm gains, attention
    /// and SiLU stay in f32. Isolates quantization error from protocol error.
    pub fn with_fixed_point(mut self, frac_bits: u32) -> Self {
        self.weights.round_linear_weights(frac_bits);
        self.fixed_point = Some(frac_bits);
        self
    }

    /// The fractional bits of the fixed-point simulation, if on.
    pub fn fixed_point(&self) -> Option<u32> {
        self.fixed_point
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The model's weights.
    pub fn weights(&self) -> &LlamaWeights {
        &self.weights
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config)
    }

    /// Runs `tokens` after the tokens already in `cache` and returns the logits of the last
    /// token (`vocab_size` values). A prompt is one call; each decode step is one more.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, ForwardOptions::default())
    }

    /// Like [`Model::forward`] but returns logits for every token, `[tokens.len(), vocab_size]`.
    pub fn forward_all(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_with(
            tokens,
            cache,
            ForwardOptions {
                logits: LogitsMode::All,
                ..ForwardOptions::default()
            },
        )
    }

    /// The forward with explicit options; returns `[rows, vocab_size]` logits where rows is 1
    /// for [`LogitsMode::Last`] and `tokens.len()` for [`LogitsMode::All`].
    pub fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        mut options: ForwardOptions<'_>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let t = tokens.len();
        if t == 0 {
            return Err(ModelError::InvalidInput(
                "forward needs at least one token".into(),
            ));
        }
        if let Some(bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        if cache.layers.len() != c.n_layers
            || cache.head_dim != c.head_dim
            || cache.layers.first().map(|l| l.keys.len()) != Some(c.n_kv_heads)
        {
            return Err(ModelError::InvalidInput(
                "the KV cache belongs to another model".into(),
            ));
        }
        let start = cache.len;
        if start + t > c.context_length {
            return Err(ModelError::InvalidInput(format!(
                "{} cached + {t} new tokens exceed the context length {}",
                start, c.context_length
            )));
        }
        let d = c.d_model;
        let mut x = vec![0.0f32; t * d];
        for (row, &id) in x.chunks_exact_mut(d).zip(tokens) {
            row.copy_from_slice(self.weights.token_embedding.row(id as usize));
        }
        let rope = RopeTable::new(c, start, t);
        let mut normed = vec![0.0f32; t * d];
        for (l, layer) in self.weights.layers.iter().enumerate() {
            linalg::rms_norm(&x, &layer.attn_norm, c.norm_eps, &mut normed);
            let [mut q, mut k, v] = self.linear_many(&normed, t, [&layer.wq, &layer.wk, &layer.wv]);
            rope.apply(&mut q, c.n_heads, c.head_dim);
            rope.apply(&mut k, c.n_kv_heads, c.head_dim);
            let lc = &mut cache.layers[l];
            for h in 0..c.n_kv_heads {
                for r in 0..t {
                    let src = r * c.kv_dim() + h * c.head_dim;
                    lc.keys[h].extend_from_slice(&k[src..src + c.head_dim]);
                    lc.values[h].extend_from_slice(&v[src..src + c.head_dim]);
                }
            }
            let mut attn = attention(c, &q, t, start, lc);
            if let Some(hook) = options.attn_hook.as_mut() {
                hook(&mut AttnActivations {
                    layer: l,
                    tokens: t,
                    start,
                    input: &normed,
                    heads: &mut attn,
                });
            }
            let o = self.linear(&attn, t, &layer.wo);
            add_in_place(&mut x, &o);

            linalg::rms_norm(&x, &layer.ffn_norm, c.norm_eps, &mut normed);
            let [gate, up] = self.linear_many(&normed, t, [&layer.w_gate, &layer.w_up]);
            let mut hidden: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| linalg::silu(*g) * u)
                .collect();
            if let Some(hook) = options.ffn_hook.as_mut() {
                hook(&mut FfnActivations {
                    layer: l,
                    tokens: t,
                    input: &normed,
                    gate: &gate,
                    up: &up,
                    hidden: &mut hidden,
                });
            }
            let down = self.linear(&hidden, t, &layer.w_down);
            add_in_place(&mut x, &down);
        }
        cache.len = start + t;
        let rows = match options.logits {
            LogitsMode::Last => 1,
            LogitsMode::All => t,
        };
        let last = &x[(t - rows) * d..];
        let mut final_normed = vec![0.0f32; rows * d];
        linalg::rms_norm(
            last,
            &self.weights.output_norm,
            c.norm_eps,
            &mut final_normed,
        );
        Ok(self.linear(&final_normed, rows, self.weights.lm_head()))
    }

    /// `rows` inputs through linear layer `w` (`y = W x`), with fixed-point rounding of the
    /// input and the output when the simulation is on.
    fn linear(&self, input: &[f32], rows: usize, w: &Matrix) -> Vec<f32> {
        let [out] = self.linear_many(input, rows, [w]);
        out
    }

    /// The same input through several linear layers in one parallel pass.
    fn linear_many<const N: usize>(
        &self,
        input: &[f32],
        rows: usize,
        ws: [&Matrix; N],
    ) -> [Vec<f32>; N] {
        let cols = ws[0].cols;
        let weights: Vec<(&[f32], usize)> =
            ws.iter().map(|w| (w.data.as_slice(), w.rows)).collect();
        let mut outs = match self.fixed_point {
            None => matmul_nt_many(input, rows, cols, &weights),
            Some(f) => {
                let mut rounded = input.to_vec();
                linalg::round_to_fixed_point(&mut rounded, f);
                let mut outs = matmul_nt_many(&rounded, rows, cols, &weights);
                for out in &mut outs {
                    linalg::round_to_fixed_point(out, f);
                }
                outs
            }
        };
        std::array::from_fn(|i| std::mem::take(&mut outs[i]))
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Causal GQA attention of `t` new query rows (positions `start..start+t`) over the cache.
/// Returns `[t, n_heads*head_dim]`.
fn attention(c: &LlamaConfig, q: &[f32], t: usize, start: usize, lc: &LayerCache) -> Vec<f32> {
    let hd = c.head_dim;
    let q_dim = c.q_dim();
    let scale = 1.0 / (hd as f32).sqrt();
    let group = c.group_size();
    let per_head: Vec<Vec<f32>> = (0..c.n_heads)
        .into_par_iter()
        .map(|h| {
            let keys = &lc.keys[h / group];
            let values = &lc.values[h / group];
            let mut out = vec![0.0f32; t * hd];
            let mut scores = Vec::with_capacity(start + t);
            for r in 0..t {
                let qr = &q[r * q_dim + h * hd..r * q_dim + (h + 1) * hd];
                let visible = start + r + 1;
                scores.clear();
                scores.extend(
                    keys[..visible * hd]
                        .chunks_exact(hd)
                        .map(|kr| linalg::dot(qr, kr) * scale),
                );
                linalg::softmax(&mut scores);
                let o = &mut out[r * hd..(r + 1) * hd];
                for (p, vr) in scores.iter().zip(values.chunks_exact(hd)) {
                    linalg::axpy(o, *p, vr);
                }
            }
            out
        })
        .collect();
    let mut out = vec![0.0f32; t * q_dim];
    for (h, head) in per_head.iter().enumerate() {
        for r in 0..t {
            out[r * q_dim + h * hd..r * q_dim + (h + 1) * hd]
                .copy_from_slice(&head[r * hd..(r + 1) * hd]);
        }
    }
    out
}

/// cos/sin of the rotary embedding for a run of positions: `[t, head_dim/2]` each. Pair i of
/// a head at position p rotates by angle `p · base^(-2i/head_dim)` (GGUF llama: interleaved pairs).
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    /// The table for positions `start..start + t` of a model with configuration `c`.
    pub fn new(c: &LlamaConfig, start: usize, t: usize) -> Self {
        let half = c.head_dim / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in start..start + t {
            for i in 0..half {
                let freq = c.rope_base.powf(-((2 * i) as f64) / c.head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { cos, sin, half }
    }

    /// cos of the angle of pair `i` at the `row`-th position of the table.
    pub fn cos(&self, row: usize, i: usize) -> f32 {
        self.cos[row * self.half + i]
    }

    /// sin of the angle of pair `i` at the `row`-th position of the table.
    pub fn sin(&self, row: usize, i: usize) -> f32 {
        self.sin[row * self.half + i]
    }

    /// Rotates pairs (2i, 2i+1) of every head of every row of `x` (`[t, heads*head_dim]`).
    pub fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize) {
        let width = heads * head_dim;
        for (r, row) in x.chunks_exact_mut(width).enumerate() {
            let cos = &self.cos[r * self.half..(r + 1) * self.half];
            let sin = &self.sin[r * self.half..(r + 1) * self.half];
            for head in row.chunks_exact_mut(head_dim) {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * cos[i] - b * sin[i];
                    pair[1] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}

/// Checks that every weight has the shape `config` implies.
fn check_shapes(c: &LlamaConfig, w: &LlamaWeights) -> Result<()> {
    let expect_m = |name: &str, m: &Matrix, rows: usize, cols: usize| {
        if m.rows != rows || m.cols != cols || m.data.len() != rows * cols {
            Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: vec![rows, cols],
                found: vec![m.rows, m.cols],
            })
        } else {
            Ok(())
        }
    };
    let expect_v = |name: &str, v: &[f32], len: usize| {
        if v.len() != len {
            Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: vec![len],
                found: vec![v.len()],
            })
        } else {
            Ok(())
        }
    };
    let d = c.d_model;
    expect_m("token_embd.weight", &w.token_embedding, c.vocab_size, d)?;
    expect_v("output_norm.weight", &w.output_norm, d)?;
    if let Some(head) = &w.lm_head {
        expect_m("output.weight", head, c.vocab_size, d)?;
    }
    if w.layers.len() != c.n_layers {
        return Err(ModelError::InvalidInput(format!(
            "{} layers of weights for a {}-layer configuration",
            w.layers.len(),
            c.n_layers
        )));
    }
    for (l, layer) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        expect_v(&n("attn_norm"), &layer.attn_norm, d)?;
        expect_m(&n("attn_q"), &layer.wq, c.q_dim(), d)?;
        expect_m(&n("attn_k"), &layer.wk, c.kv_dim(), d)?;
        expect_m(&n("attn_v"), &layer.wv, c.kv_dim(), d)?;
        expect_m(&n("attn_output"), &layer.wo, d, c.q_dim())?;
        expect_v(&n("ffn_norm"), &layer.ffn_norm, d)?;
        expect_m(&n("ffn_gate"), &layer.w_gate, c.ffn_dim, d)?;
        expect_m(&n("ffn_up"), &layer.w_up, c.ffn_dim, d)?;
        expect_m(&n("ffn_down"), &layer.w_down, d, c.ffn_dim)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        LlamaConfig {
            n_layers: 1,
            d_model: 8,
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 8,
            ffn_dim: 8,
            vocab_size: 4,
            context_length: 64,
            rope_base: 10_000.0,
            norm_eps: 1e-5,
            tied_lm_head: true,
        }
    }

    fn rotated(x: &[f32], pos: usize) -> Vec<f32> {
        let mut y = x.to_vec();
        RopeTable::new(&config(), pos, 1).apply(&mut y, 1, 8);
        y
    }

    #[test]
    fn rope_is_identity_at_zero_and_relative_elsewhere() {
        let q = [0.3, -1.2, 0.5, 2.0, -0.7, 0.1, 1.1, -0.4];
        let k = [1.0, 0.2, -0.3, 0.8, 0.6, -1.5, 0.05, 0.9];
        assert_eq!(rotated(&q, 0), q.to_vec());
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        // Attention scores depend only on the distance between positions.
        let d1 = dot(&rotated(&q, 7), &rotated(&k, 3));
        let d2 = dot(&rotated(&q, 20), &rotated(&k, 16));
        assert!((d1 - d2).abs() < 1e-4, "{d1} vs {d2}");
        // Interleaved pairs: pair 0 = (x0, x1) rotates by angle `pos` (frequency 1).
        let r = rotated(&q, 1);
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((r[0] - (q[0] * c - q[1] * s)).abs() < 1e-6);
        assert!((r[1] - (q[0] * s + q[1] * c)).abs() < 1e-6);
        let table = RopeTable::new(&config(), 5, 2);
        assert!((table.cos(1, 0) - 6f32.cos()).abs() < 1e-6);
        assert!((table.sin(0, 1) - (5.0 * 10_000f64.powf(-0.25)).sin() as f32).abs() < 1e-6);
    }
}
