//! Model sharing (DESIGN.md §4): every linear weight of a llama model becomes a fixed-point
//! `k × n` input-major matrix `W`, registered with the dealer, which hands each server
//! `F = W − B` and its share of the fixed mask `B`.
//!
//! RMSNorm gains are folded into the weights that consume the normalised vector (Q/K/V take
//! the attention norm's gain, gate/up the FFN norm's, the LM head the final norm's), so the
//! secure RMSNorm only normalises. The LM head is a separate registered weight even when it is
//! tied to the embedding, because it carries the final norm's gain.

use crate::error::{EngineError, Result};
use comet_core::{FixedPoint, PartyId};
use comet_dealer::kinds::sparse::{PlainAttn, PlainFfn, PlainPredictor};
use comet_dealer::{Dealer, FixedWeight};
use comet_model::heads::HeadPredictor;
use comet_model::predictor::Predictor;
use comet_model::{LlamaConfig, Matrix, Model};
use rayon::prelude::*;

/// One server's view of one transformer block.
#[derive(Clone, Debug)]
pub struct ServerLayer {
    /// Query projection (`d × q_dim`), attention-norm gain folded in.
    pub wq: FixedWeight,
    /// Key projection (`d × kv_dim`), attention-norm gain folded in.
    pub wk: FixedWeight,
    /// Value projection (`d × kv_dim`), attention-norm gain folded in.
    pub wv: FixedWeight,
    /// Output projection (`q_dim × d`).
    pub wo: FixedWeight,
    /// SwiGLU gate (`d × ffn_dim`), FFN-norm gain folded in.
    pub w_gate: FixedWeight,
    /// SwiGLU up (`d × ffn_dim`), FFN-norm gain folded in.
    pub w_up: FixedWeight,
    /// Down projection (`ffn_dim × d`).
    pub w_down: FixedWeight,
}

impl ServerLayer {
    /// The weights in registration order.
    pub fn weights(&self) -> [&FixedWeight; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

/// One server's share of a whole model: everything it needs to run the secure forward.
#[derive(Clone, Debug)]
pub struct ServerModel {
    /// Which server holds this view.
    pub party: PartyId,
    /// The model's hyper-parameters (public).
    pub config: LlamaConfig,
    /// Fixed-point format of the weights and activations.
    pub fp: FixedPoint,
    /// Token embedding (`vocab × d`): a one-hot row times this is the token's embedding.
    pub embedding: FixedWeight,
    /// The transformer blocks.
    pub layers: Vec<ServerLayer>,
    /// LM head (`d × vocab`), final-norm gain folded in.
    pub lm_head: FixedWeight,
}

impl ServerModel {
    /// All weights in registration order (embedding, layers, LM head).
    pub fn weights(&self) -> Vec<&FixedWeight> {
        let mut out = vec![&self.embedding];
        for layer in &self.layers {
            out.extend(layer.weights());
        }
        out.push(&self.lm_head);
        out
    }
}

/// Fixed-point, input-major (`cols × rows`) copy of a `[out, in]` matrix, each input row `i`
/// multiplied by `gain[i]` when given.
pub fn input_major(m: &Matrix, gain: Option<&[f32]>, fp: FixedPoint) -> Vec<u64> {
    let (n, k) = (m.rows, m.cols);
    let mut out = vec![0u64; k * n];
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let g = gain.map_or(1.0, |g| g[i] as f64);
        for (o, v) in row.iter_mut().enumerate() {
            *v = fp.encode(m.data[o * k + i] as f64 * g);
        }
    });
    out
}

/// Number of registered weights of a model with this configuration.
pub fn weight_count(config: &LlamaConfig) -> usize {
    2 + 7 * config.n_layers
}

/// The `index`-th plaintext fixed-point weight of a model in registration order (embedding,
/// then per layer Q, K, V, O, gate, up, down, then the LM head), with its shape `(values, k,
/// n)`: what the dealer masks. One at a time, so that sharing never holds two copies of the
/// whole model.
pub fn fixed_point_weight(model: &Model, fp: FixedPoint, index: usize) -> (Vec<u64>, usize, usize) {
    let c = model.config();
    let w = model.weights();
    if index == 0 {
        // Row v of the `[vocab, d]` embedding is token v's vector: the stored matrix already
        // is the input-major `vocab × d` weight of a one-hot product.
        let values = w
            .token_embedding
            .data
            .par_iter()
            .map(|v| fp.encode(*v as f64))
            .collect();
        return (values, c.vocab_size, c.d_model);
    }
    if index == weight_count(c) - 1 {
        return (
            input_major(w.lm_head(), Some(&w.output_norm), fp),
            c.d_model,
            c.vocab_size,
        );
    }
    let layer = &w.layers[(index - 1) / 7];
    let an = Some(layer.attn_norm.as_slice());
    let fnorm = Some(layer.ffn_norm.as_slice());
    match (index - 1) % 7 {
        0 => (input_major(&layer.wq, an, fp), c.d_model, c.q_dim()),
        1 => (input_major(&layer.wk, an, fp), c.d_model, c.kv_dim()),
        2 => (input_major(&layer.wv, an, fp), c.d_model, c.kv_dim()),
        3 => (input_major(&layer.wo, None, fp), c.q_dim(), c.d_model),
        4 => (input_major(&layer.w_gate, fnorm, fp), c.d_model, c.ffn_dim),
        5 => (input_major(&layer.w_up, fnorm, fp), c.d_model, c.ffn_dim),
        _ => (input_major(&layer.w_down, None, fp), c.ffn_dim, c.d_model),
    }
}

/// Layer `layer`'s plaintext fixed-point FFN (gain folded into gate and up), as the dealer
/// keeps it for per-session permutation.
pub fn plain_ffn(model: &Model, fp: FixedPoint, layer: usize) -> PlainFfn {
    let c = model.config();
    let base = 1 + 7 * layer;
    PlainFfn {
        d: c.d_model,
        ffn: c.ffn_dim,
        gate: fixed_point_weight(model, fp, base + 4).0,
        up: fixed_point_weight(model, fp, base + 5).0,
        down: fixed_point_weight(model, fp, base + 6).0,
        predictor: None,
    }
}

/// Layer `layer`'s plaintext fixed-point attention (gain folded into Q, K and V), as the dealer
/// keeps it for per-session head permutation.
pub fn plain_attn(model: &Model, fp: FixedPoint, layer: usize) -> PlainAttn {
    let c = model.config();
    let base = 1 + 7 * layer;
    PlainAttn {
        d: c.d_model,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        wq: fixed_point_weight(model, fp, base).0,
        wk: fixed_point_weight(model, fp, base + 1).0,
        wv: fixed_point_weight(model, fp, base + 2).0,
        wo: fixed_point_weight(model, fp, base + 3).0,
        predictor: None,
    }
}

/// Layer `layer` of a trained FFN predictor in the dealer's fixed-point form (see
/// [`predictor_at`]), reading the FFN norm's output.
pub fn plain_predictor(
    model: &Model,
    predictor: &Predictor,
    fp: FixedPoint,
    layer: usize,
) -> PlainPredictor {
    let gain = &model.weights().layers[layer].ffn_norm;
    predictor_at(predictor, gain, fp, layer)
}

/// Layer `layer` of a trained head predictor in the dealer's fixed-point form, reading the
/// attention norm's output; fails unless it has one output per head of every layer.
pub fn plain_head_predictor(
    model: &Model,
    predictor: &HeadPredictor,
    fp: FixedPoint,
    layer: usize,
) -> Result<PlainPredictor> {
    let predictor = &predictor.mlp;
    let c = model.config();
    if predictor.ffn_dim != c.n_heads || predictor.layers.len() != c.n_layers {
        return Err(EngineError::InvalidRequest(format!(
            "a head predictor needs {} outputs per layer for {} layers; this one has {} for {}",
            c.n_heads,
            c.n_layers,
            predictor.ffn_dim,
            predictor.layers.len()
        )));
    }
    let gain = &model.weights().layers[layer].attn_norm;
    Ok(predictor_at(predictor, gain, fp, layer))
}

/// W1 input-major with the norm gain `gain` folded in (the predictor reads the normalised
/// input), biases at the scales of the products they join (`2f` for b1, `3f` for b2).
fn predictor_at(
    predictor: &Predictor,
    gain: &[f32],
    fp: FixedPoint,
    layer: usize,
) -> PlainPredictor {
    let (d, h, n) = (predictor.d_model, predictor.hidden, predictor.ffn_dim);
    let pl = &predictor.layers[layer];
    let f = fp.frac_bits as f64;
    let at = |v: f64, frac: f64| ((v * frac.exp2()).round() as i64) as u64;
    let mut w1 = vec![0u64; d * h];
    for i in 0..d {
        for k in 0..h {
            w1[i * h + k] = fp.encode(pl.w1[k * d + i] as f64 * gain[i] as f64);
        }
    }
    let mut w2 = vec![0u64; h * n];
    for k in 0..h {
        for j in 0..n {
            w2[k * n + j] = fp.encode(pl.w2[j * h + k] as f64);
        }
    }
    PlainPredictor {
        hidden: h,
        w1,
        b1: pl.b1.iter().map(|v| at(*v as f64, 2.0 * f)).collect(),
        w2,
        b2: pl.b2.iter().map(|v| at(*v as f64, 3.0 * f)).collect(),
    }
}

/// Assembles the two servers' models from registered views given in registration order.
pub fn assemble(
    config: &LlamaConfig,
    fp: FixedPoint,
    views: Vec<[FixedWeight; 2]>,
) -> Result<[ServerModel; 2]> {
    let expected = weight_count(config);
    if views.len() != expected {
        return Err(EngineError::ShareMismatch(format!(
            "{} weights for a {}-layer model, expected {expected}",
            views.len(),
            config.n_layers
        )));
    }
    let mut per_party: [Vec<FixedWeight>; 2] = [Vec::new(), Vec::new()];
    for [a, b] in views {
        per_party[0].push(a);
        per_party[1].push(b);
    }
    let build = |party: PartyId, ws: Vec<FixedWeight>| -> Result<ServerModel> {
        from_weights(party, config, fp, ws)
    };
    let [w0, w1] = per_party;
    Ok([build(PartyId::P0, w0)?, build(PartyId::P1, w1)?])
}

/// Builds one server's model from its weight views in registration order, checking shapes.
pub fn from_weights(
    party: PartyId,
    config: &LlamaConfig,
    fp: FixedPoint,
    ws: Vec<FixedWeight>,
) -> Result<ServerModel> {
    let c = config;
    let expected = weight_count(c);
    if ws.len() != expected {
        return Err(EngineError::ShareMismatch(format!(
            "{} weights, expected {expected}",
            ws.len()
        )));
    }
    let mut shapes = vec![(c.vocab_size, c.d_model)];
    for _ in 0..c.n_layers {
        shapes.extend([
            (c.d_model, c.q_dim()),
            (c.d_model, c.kv_dim()),
            (c.d_model, c.kv_dim()),
            (c.q_dim(), c.d_model),
            (c.d_model, c.ffn_dim),
            (c.d_model, c.ffn_dim),
            (c.ffn_dim, c.d_model),
        ]);
    }
    shapes.push((c.d_model, c.vocab_size));
    for (i, (w, (k, n))) in ws.iter().zip(&shapes).enumerate() {
        if w.k != *k || w.n != *n || w.masked.len() != k * n || w.mask_share.len() != k * n {
            return Err(EngineError::ShareMismatch(format!(
                "weight {i} is {}x{} ({} / {} values), the model needs {k}x{n}",
                w.k,
                w.n,
                w.masked.len(),
                w.mask_share.len()
            )));
        }
    }
    let mut it = ws.into_iter();
    let mut next = || it.next().expect("length checked above");
    let embedding = next();
    let layers = (0..c.n_layers)
        .map(|_| ServerLayer {
            wq: next(),
            wk: next(),
            wv: next(),
            wo: next(),
            w_gate: next(),
            w_up: next(),
            w_down: next(),
        })
        .collect();
    let lm_head = next();
    Ok(ServerModel {
        party,
        config: c.clone(),
        fp,
        embedding,
        layers,
        lm_head,
    })
}

/// Shares `model` through `dealer` (which keeps the masks): returns P0's and P1's views.
pub fn share_model(model: &Model, fp: FixedPoint, dealer: &mut Dealer) -> Result<[ServerModel; 2]> {
    let views = (0..weight_count(model.config()))
        .map(|i| {
            let (w, k, n) = fixed_point_weight(model, fp, i);
            dealer.register_weight(&w, k, n)
        })
        .collect();
    assemble(model.config(), fp, views)
}
