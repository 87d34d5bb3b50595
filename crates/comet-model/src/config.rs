//! Llama hyper-parameters read from GGUF metadata.

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Largest accepted size of any single dimension (layers, widths, heads, vocabulary, context).
pub const MAX_DIMENSION: usize = 1 << 24;

/// Shape and numeric constants of a llama-family decoder (everything the forward needs
/// besides the weights).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Number of transformer blocks (`llama.block_count`).
    pub n_layers: usize,
    /// Width of the residual stream (`llama.embedding_length`).
    pub d_model: usize,
    /// Number of query heads (`llama.attention.head_count`).
    pub n_heads: usize,
    /// Number of key/value heads; each serves `n_heads / n_kv_heads` query heads (GQA).
    pub n_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Hidden width of the SwiGLU feed-forward block (`llama.feed_forward_length`).
    pub ffn_dim: usize,
    /// Number of tokens in the vocabulary (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Longest sequence the model was trained for; the KV cache never grows beyond it.
    pub context_length: usize,
    /// RoPE base frequency θ (`llama.rope.freq_base`, 10000 when absent).
    pub rope_base: f64,
    /// ε of RMSNorm (`llama.attention.layer_norm_rms_epsilon`).
    pub norm_eps: f64,
    /// True when the file has no `output.weight` and the LM head reuses the token embedding.
    pub tied_lm_head: bool,
}

impl LlamaConfig {
    /// Reads and validates the configuration of a llama GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                found: arch.to_string(),
            });
        }
        let n_layers = gguf.get_usize("llama.block_count")?;
        let d_model = gguf.get_usize("llama.embedding_length")?;
        let n_heads = gguf.get_usize("llama.attention.head_count")?;
        let n_kv_heads = gguf
            .get_usize_opt("llama.attention.head_count_kv")?
            .unwrap_or(n_heads);
        let ffn_dim = gguf.get_usize("llama.feed_forward_length")?;
        let context_length = gguf.get_usize_opt("llama.context_length")?.unwrap_or(2048);
        let rope_base = gguf
            .get_f64_opt("llama.rope.freq_base")?
            .unwrap_or(10_000.0);
        let norm_eps = gguf
            .get_f64_opt("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5);
        // Every size must be positive and small enough that products of two cannot overflow.
        let positive = |key: &str, v: usize| {
            if v == 0 || v > MAX_DIMENSION {
                Err(ModelError::BadMetadata {
                    key: key.to_string(),
                    message: format!("{v} is not in 1..={MAX_DIMENSION}"),
                })
            } else {
                Ok(v)
            }
        };
        positive("llama.block_count", n_layers)?;
        positive("llama.embedding_length", d_model)?;
        positive("llama.attention.head_count", n_heads)?;
        positive("llama.attention.head_count_kv", n_kv_heads)?;
        positive("llama.feed_forward_length", ffn_dim)?;
        positive("llama.context_length", context_length)?;
        if n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadMetadata {
                key: "llama.attention.head_count_kv".into(),
                message: format!("{n_kv_heads} does not divide the head count {n_heads}"),
            });
        }
        let head_dim = match gguf.get_usize_opt("llama.attention.key_length")? {
            Some(k) => k,
            None => {
                if d_model % n_heads != 0 {
                    return Err(ModelError::BadMetadata {
                        key: "llama.attention.head_count".into(),
                        message: format!("{n_heads} heads do not divide the width {d_model}"),
                    });
                }
                d_model / n_heads
            }
        };
        positive("llama.attention.key_length", head_dim)?;
        if head_dim % 2 != 0 {
            return Err(ModelError::BadMetadata {
                key: "llama.attention.key_length".into(),
                message: format!("head width {head_dim} must be even and > 0"),
            });
        }
        if let Some(rope_dim) = gguf.get_usize_opt("llama.rope.dimension_count")? {
            if rope_dim != head_dim {
                return Err(ModelError::BadMetadata {
                    key: "llama.rope.dimension_count".into(),
                    message: format!(
                        "partial rotary embeddings ({rope_dim} of {head_dim} dims) are not supported"
                    ),
                });
            }
        }
        if !(rope_base.is_finite() && rope_base > 0.0) {
            return Err(ModelError::BadMetadata {
                key: "llama.rope.freq_base".into(),
                message: format!("{rope_base} is not a positive number"),
            });
        }
        if !(norm_eps.is_finite() && norm_eps >= 0.0) {
            return Err(ModelError::BadMetadata {
                key: "llama.attention.layer_norm_rms_epsilon".into(),
                message: format!("{norm_eps} is not a non-negative number"),
            });
        }
        let vocab_size = match gguf.get_usize_opt("llama.vocab_size")? {
            Some(v) => v,
            None => *gguf
                .tensor_shape("token_embd.weight")?
                .first()
                .ok_or_else(|| ModelError::TensorShape {
                    name: "token_embd.weight".into(),
                    expected: vec![0, d_model],
                    found: vec![],
                })?,
        };
        positive("llama.vocab_size", vocab_size)?;
        let tied_lm_head = !gguf.has_tensor("output.weight");
        Ok(Self {
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length,
            rope_base,
            norm_eps,
            tied_lm_head,
        })
    }

    /// Width of all query heads together (`n_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together (`n_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Number of parameters (the tied LM head counted once).
    pub fn n_params(&self) -> u128 {
        let [d, v, f, l] =
            [self.d_model, self.vocab_size, self.ffn_dim, self.n_layers].map(|x| x as u128);
        let q = self.n_heads as u128 * self.head_dim as u128;
        let kv = self.n_kv_heads as u128 * self.head_dim as u128;
        let per_layer = 2 * d + 2 * d * q + 2 * d * kv + 3 * d * f;
        let head = if self.tied_lm_head { 0 } else { v * d };
        v * d + l * per_layer + d + head
    }
}
