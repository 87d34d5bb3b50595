//! Plaintext f32 weights of a llama model, laid out as stored in GGUF (row-major, y = W x).

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// A dense row-major f32 matrix; for a linear layer, `rows` = output features and
/// `cols` = input features, so `y[r] = Σ_c data[r * cols + c] · x[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows (output features of a linear layer).
    pub rows: usize,
    /// Number of columns (input features of a linear layer).
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Wraps `data` as a `rows × cols` matrix; errors when the lengths disagree.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(ModelError::InvalidInput(format!(
                "matrix of {rows}x{cols} needs {} values, got {}",
                rows * cols,
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    /// Row `r` as a slice of `cols` values.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Shape as `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
}

/// Weights of one transformer block. Shapes use `d = d_model`, `q = n_heads*head_dim`,
/// `kv = n_kv_heads*head_dim`, `f = ffn_dim`; matrices are `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// RMSNorm gain before attention, `[d]` (`blk.N.attn_norm.weight`).
    pub attn_norm: Vec<f32>,
    /// Query projection `[q, d]` (`attn_q`); rows of each head are in GGUF's interleaved RoPE order.
    pub wq: Matrix,
    /// Key projection `[kv, d]` (`attn_k`), interleaved RoPE order like `wq`.
    pub wk: Matrix,
    /// Value projection `[kv, d]` (`attn_v`).
    pub wv: Matrix,
    /// Attention output projection `[d, q]` (`attn_output`).
    pub wo: Matrix,
    /// RMSNorm gain before the feed-forward block, `[d]` (`ffn_norm`).
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate projection `[f, d]` (`ffn_gate`); hidden = SiLU(gate·x) ⊙ (up·x).
    pub w_gate: Matrix,
    /// SwiGLU up projection `[f, d]` (`ffn_up`).
    pub w_up: Matrix,
    /// Down projection `[d, f]` (`ffn_down`).
    pub w_down: Matrix,
}

/// All weights of a llama model in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaWeights {
    /// Token embedding `[vocab, d]` (`token_embd.weight`); row t is the embedding of token t.
    pub token_embedding: Matrix,
    /// The transformer blocks, first to last.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm gain `[d]` (`output_norm.weight`).
    pub output_norm: Vec<f32>,
    /// LM head `[vocab, d]` (`output.weight`); `None` when tied to `token_embedding`.
    pub lm_head: Option<Matrix>,
}

impl LlamaWeights {
    /// The LM head matrix `[vocab, d]` (the token embedding when tied).
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.token_embedding)
    }

    /// Checks every tensor's presence, type and shape against `config`, then reads and
    /// dequantizes all of them (in parallel).
    pub fn from_gguf(gguf: &GgufFile, config: &LlamaConfig) -> Result<Self> {
        // Check layer by layer before building the whole plan, so that a header claiming
        // absurdly many layers fails at the first missing tensor instead of allocating a plan.
        for l in 0..config.n_layers {
            gguf.check_tensor(&format!("blk.{l}.attn_norm.weight"), &[config.d_model])?;
        }
        let names = tensor_plan(config);
        for (name, shape) in &names {
            gguf.check_tensor(name, shape)?;
        }
        let mut values = gguf.read_many_f32(&names)?.into_iter();
        let mut next_matrix = |shape: &[usize]| -> Matrix {
            let data = values.next().unwrap_or_default();
            Matrix {
                rows: shape[0],
                cols: shape[1],
                data,
            }
        };
        let d = config.d_model;
        let token_embedding = next_matrix(&[config.vocab_size, d]);
        let output_norm = next_matrix(&[1, d]).data;
        let lm_head = if config.tied_lm_head {
            None
        } else {
            Some(next_matrix(&[config.vocab_size, d]))
        };
        let (q, kv, f) = (config.q_dim(), config.kv_dim(), config.ffn_dim);
        let layers = (0..config.n_layers)
            .map(|_| LayerWeights {
                attn_norm: next_matrix(&[1, d]).data,
                wq: next_matrix(&[q, d]),
                wk: next_matrix(&[kv, d]),
                wv: next_matrix(&[kv, d]),
                wo: next_matrix(&[d, q]),
                ffn_norm: next_matrix(&[1, d]).data,
                w_gate: next_matrix(&[f, d]),
                w_up: next_matrix(&[f, d]),
                w_down: next_matrix(&[d, f]),
            })
            .collect();
        Ok(Self {
            token_embedding,
            layers,
            output_norm,
            lm_head,
        })
    }

    /// Rounds every linear-layer weight (embedding, projections, LM head) to the nearest
    /// multiple of 2^-`frac_bits`, as a fixed-point encoding with that many fractional bits would.
    pub fn round_linear_weights(&mut self, frac_bits: u32) {
        let mut matrices: Vec<&mut Matrix> = vec![&mut self.token_embedding];
        if let Some(head) = self.lm_head.as_mut() {
            matrices.push(head);
        }
        for layer in &mut self.layers {
            matrices.extend([
                &mut layer.wq,
                &mut layer.wk,
                &mut layer.wv,
                &mut layer.wo,
                &mut layer.w_gate,
                &mut layer.w_up,
                &mut layer.w_down,
            ]);
        }
        for m in matrices {
            crate::linalg::round_to_fixed_point(&mut m.data, frac_bits);
        }
    }
}

/// The GGUF tensor names a llama model needs with their row-major shapes, in the order
/// [`LlamaWeights::from_gguf`] consumes them.
pub fn tensor_plan(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let d = config.d_model;
    let (q, kv, f) = (config.q_dim(), config.kv_dim(), config.ffn_dim);
    let mut plan = vec![
        ("token_embd.weight".to_string(), vec![config.vocab_size, d]),
        ("output_norm.weight".to_string(), vec![d]),
    ];
    if !config.tied_lm_head {
        plan.push(("output.weight".to_string(), vec![config.vocab_size, d]));
    }
    for l in 0..config.n_layers {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        plan.extend([
            (p("attn_norm"), vec![d]),
            (p("attn_q"), vec![q, d]),
            (p("attn_k"), vec![kv, d]),
            (p("attn_v"), vec![kv, d]),
            (p("attn_output"), vec![d, q]),
            (p("ffn_norm"), vec![d]),
            (p("ffn_gate"), vec![f, d]),
            (p("ffn_up"), vec![f, d]),
            (p("ffn_down"), vec![d, f]),
        ]);
    }
    plan
}
