//! The secure forward of a llama model on one server (DESIGN.md §6), with a dense or a sparse
//! FFN (DESIGN.md §7, `crate::sparse`) and dense or head-sparse attention (`crate::heads`).
//!
//! Scales: activations carry `f` fractional bits; a product of two of them carries `2f`.
//! Per block: RMSNorm fused with the Q/K/V product (gain folded into the weights; the squares
//! reuse the product's opening, `nonlinear::rms_norm_matmul`) → RoPE as a public rotation at
//! `3f` truncated by `2f` in one round (`1/√head_dim` folded into the query rotation) → one
//! opening of the masked query together with the new key/value rows (against their fixed row
//! masks) [head-sparse: the predictor's bits first; only the active heads' queries, and the
//! refilled holes with the new rows] → scores `Q·Kᵀ` locally → truncation → causal softmax →
//! one opening of the masked probabilities → `P·V` locally at `2f` → `Wo` at `3f` →
//! truncation by `2f` → residual →
//! RMSNorm fused with gate/up → [sparse: self-gate, see `crate::sparse`] → SiLU(gate)·up from
//! the untruncated products in two rounds (`nonlinear::silu_mul_2f`) → down at `3f` →
//! truncation by `2f` → residual. The LM head's output stays at `2f` and goes to the client as
//! shares.
//!
//! Every truncation is faithful (floor or floor + 1 ulp, never a wrap-around in its range,
//! DESIGN.md §3) and opens only the ring width its values need (`trunc::truncate_many_narrow`,
//! widths in `crate::nl`): one ulp (2^-12) is far below the nonlinear gates' error.

use crate::error::{EngineError, Result};
use crate::heads::{HeadPlan, HeadSession, Hole};
use crate::kv::{kv_mask_id, LayerKv, SecureKvCache};
use crate::model::ServerModel;
use crate::nl;
use crate::sparse::{self, FfnSession, SparseGate};
use comet_core::{matmul, ring, FixedPoint};
use comet_dealer::kinds::attention::{AttnParams, AttnScoreMask, AttnValueMask};
use comet_dealer::kinds::matmul::MatmulMask;
use comet_model::LlamaConfig;
use comet_protocols::{arith, trunc, Party};

/// The token embedding of `m` tokens from the client's opened one-hots `E = X − A`
/// (`m × vocab`, X at scale 0), with this server's half of the product mask: shares of the
/// embeddings at scale `f`.
pub fn embed(
    p: &Party,
    model: &ServerModel,
    e: &[u64],
    mask: &MatmulMask,
    m: usize,
) -> Result<Vec<u64>> {
    let w = &model.embedding;
    if e.len() != m * w.k || mask.a.len() != m * w.k || mask.c.len() != 1 {
        return Err(EngineError::Session(format!(
            "masked one-hots of {} values for {m} tokens of a {}-token vocabulary",
            e.len(),
            w.k
        )));
    }
    Ok(arith::product_after_opening(
        p.is_p0(),
        e,
        &mask.a,
        &mask.c[0],
        w,
        m,
    ))
}

/// A server's per-session state of the FFN and, with head sparsity, of the attention.
#[derive(Debug)]
pub struct Sessions<'a> {
    /// The FFN (dense or sparse).
    pub ffn: &'a mut FfnSession,
    /// The head-sparse attention, if the session runs it.
    pub heads: Option<&'a mut HeadSession>,
}

/// Runs `m` new positions (shares of their embeddings `x`, `m × d` at scale `f`) through all
/// blocks (FFNs and attention dense or sparse as `sessions` says), appending their keys and
/// values to `cache`, and returns shares of the logits of the last `logits_rows` positions
/// (`logits_rows × vocab`, scale `2f`).
pub fn forward(
    p: &mut Party,
    model: &ServerModel,
    cache: &mut SecureKvCache,
    sessions: Sessions<'_>,
    mut x: Vec<u64>,
    m: usize,
    logits_rows: usize,
) -> Result<Vec<u64>> {
    let Sessions { ffn, mut heads } = sessions;
    let c = &model.config;
    if m == 0 || x.len() != m * c.d_model || logits_rows == 0 || logits_rows > m {
        return Err(EngineError::InvalidRequest(format!(
            "forward of {m} positions with {} values, {logits_rows} logit rows",
            x.len()
        )));
    }
    cache.check_room(m)?;
    let start = cache.len;
    let rope = Rope::new(c, model.fp, start, m);
    for (l, layer_kv) in cache.layers.iter_mut().enumerate() {
        let _layer = p.scope(&format!("layer.{l}"));
        block(
            p,
            model,
            l,
            layer_kv,
            ffn,
            heads.as_deref_mut(),
            &rope,
            start,
            &mut x,
            m,
        )?;
    }
    cache.len = start + m;
    let d = c.d_model;
    let last = &x[(m - logits_rows) * d..];
    let _s = p.scope("final.norm");
    let logits = nl::norm_matmul(p, last, logits_rows, d, c.norm_eps, &[&model.lm_head], 64)?;
    Ok(logits.into_iter().next().expect("one weight"))
}

#[allow(clippy::too_many_arguments)]
fn block(
    p: &mut Party,
    model: &ServerModel,
    l: usize,
    kv: &mut LayerKv,
    ffn: &mut FfnSession,
    heads: Option<&mut HeadSession>,
    rope: &Rope,
    start: usize,
    x: &mut [u64],
    m: usize,
) -> Result<()> {
    let out = attention(p, model, l, kv, heads, rope, start, x, m)?;
    ring::add_assign(x, &out);

    let down = feed_forward(p, model, l, ffn, x, m)?;
    ring::add_assign(x, &down);
    Ok(())
}

/// The attention block of residual `x` (`m` new rows at positions `start..`): RMSNorm fused with
/// the Q/K/V product (and the head predictor's first layer) → [head-sparse: the predictor's
/// bits, `crate::heads`] → RoPE and one truncation of the active queries, the written
/// key/value rows and the refilled holes → one opening of all of them → scores of the active
/// (row, head) pairs → truncation → causal softmax → one opening of the masked probabilities
/// → `P·V` → `Wo` over every head (zeros for the inactive ones) → truncation by `2f`.
#[allow(clippy::too_many_arguments)]
fn attention(
    p: &mut Party,
    model: &ServerModel,
    l: usize,
    kv: &mut LayerKv,
    heads: Option<&mut HeadSession>,
    rope: &Rope,
    start: usize,
    x: &[u64],
    m: usize,
) -> Result<Vec<u64>> {
    let c = &model.config;
    let f = model.fp.frac_bits;
    let (d, t, hd, qd, kvd) = (c.d_model, start + m, c.head_dim, c.q_dim(), c.kv_dim());
    let n_heads = c.n_heads;
    let (weights, predictor, mut state) = match heads {
        None => {
            let w = &model.layers[l];
            ([&w.wq, &w.wk, &w.wv, &w.wo], None, None)
        }
        Some(hs) => {
            let w = &hs.weights[l];
            let threshold = hs.state.policy.thresholds.as_ref().map(|t| t[l]);
            let gate = threshold.zip(w.predictor.as_ref());
            ([&w.wq, &w.wk, &w.wv, &w.wo], gate, Some(&mut hs.state))
        }
    };
    let mut products = weights[..3].to_vec();
    if let Some((_, pr)) = predictor {
        products.push(&pr.w1);
    }
    // RMSNorm fused with the Q/K/V product, whose opening and the RoPE truncation carry only
    // the bits the values need (`nl::QK_BITS`, `nl::V_BITS`).
    let mut qkv = {
        let _s = p.scope("attn.norm");
        nl::norm_matmul(p, x, m, d, c.norm_eps, &products, nl::QK_BITS)?
    };
    let plan = match state.as_deref_mut() {
        None => HeadPlan::dense(c, m),
        Some(state) => {
            let predicted = match predictor {
                Some((threshold, pr)) => {
                    let _s = p.scope("attn.gate");
                    let hidden_pre = qkv.pop().expect("four products");
                    Some(sparse::mlp_gate(p, &hidden_pre, pr, threshold, m)?)
                }
                None => None,
            };
            state.plan(c, l, m, predicted)
        }
    };
    let q_rot = rope.rotate(&qkv[0], m, n_heads, hd, true);
    let k_rot = rope.rotate(&qkv[1], m, c.n_kv_heads, hd, false);
    let v_raw = &qkv[2];
    // Rows of this step whose group runs nowhere in it become holes.
    let mut holes = Vec::new();
    for g in (0..c.n_kv_heads).filter(|&g| !plan.write[g]) {
        for i in 0..m {
            let at = i * kvd + g * hd;
            holes.push(Hole {
                position: start + i,
                group: g,
                key: k_rot[at..at + hd].to_vec(),
                value: v_raw[at..at + hd].to_vec(),
            });
        }
    }
    if let Some(state) = state {
        state.keep_holes(l, holes);
    }
    // Pairs in head-major order (the score layout), and each pair's query segment.
    let pairs: Vec<(usize, usize)> = (0..n_heads)
        .flat_map(|h| plan.rows_of(h, n_heads).into_iter().map(move |i| (h, i)))
        .collect();
    if pairs.is_empty() {
        // No head runs in any row: the block adds nothing and reads no cache row.
        kv.keys_open.resize(t * kvd, 0);
        kv.values_open.resize(t * kvd, 0);
        return Ok(vec![0; m * d]);
    }
    let q_at: Vec<usize> = (0..m)
        .flat_map(|i| {
            let active = &plan.active[i * n_heads..(i + 1) * n_heads];
            (0..n_heads)
                .filter(|&h| active[h])
                .map(move |h| i * qd + h * hd)
        })
        .collect();
    // Cache rows written now, as (position, group): this step's, then the refilled holes.
    let rows: Vec<(usize, usize)> = (0..m)
        .flat_map(|i| (0..c.n_kv_heads).map(move |g| (start + i, g)))
        .filter(|&(_, g)| plan.write[g])
        .chain(plan.refills.iter().map(|h| (h.position, h.group)))
        .collect();
    let cache_at: Vec<usize> = rows.iter().map(|&(pos, g)| pos * kvd + g * hd).collect();
    let fresh = |src: &[u64]| -> Vec<u64> {
        rows.iter()
            .filter(|&&(pos, _)| pos >= start)
            .flat_map(|&(pos, g)| {
                let at = (pos - start) * kvd + g * hd;
                src[at..at + hd].iter().copied()
            })
            .collect()
    };
    let mut k_sel = fresh(&k_rot);
    let mut v_sel = fresh(v_raw);
    for hole in &plan.refills {
        k_sel.extend_from_slice(&hole.key);
        v_sel.extend_from_slice(&hole.value);
    }
    let qkv = {
        let _s = p.scope("attn.rope");
        trunc::truncate_many_narrow(
            p,
            &[
                (&gather_segments(&q_rot, &q_at, hd), 2 * f, nl::QK_BITS),
                (&k_sel, 2 * f, nl::QK_BITS),
                (&v_sel, f, nl::V_BITS),
            ],
        )?
    };
    let params = AttnParams {
        m,
        n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: hd,
        cache: kv_mask_id(l, false),
        rows: t,
    };
    let scores = {
        let _s = p.scope("attn.scores");
        let mask: AttnScoreMask = p.correlation(&params)?;
        let e_share = ring::sub(&qkv[0], &gather_segments(&mask.a, &q_at, hd));
        let k_share = ring::sub(&qkv[1], &gather_segments(&kv.key_mask, &cache_at, hd));
        let v_share = ring::sub(&qkv[2], &gather_segments(&kv.value_mask, &cache_at, hd));
        let opened = arith::open_many(p, &[(&e_share, 64), (&k_share, 64), (&v_share, 64)])?;
        kv.keys_open.resize(t * kvd, 0);
        kv.values_open.resize(t * kvd, 0);
        for (r, &at) in cache_at.iter().enumerate() {
            kv.keys_open[at..at + hd].copy_from_slice(&opened[1][r * hd..(r + 1) * hd]);
            kv.values_open[at..at + hd].copy_from_slice(&opened[2][r * hd..(r + 1) * hd]);
        }
        // The opened query of pair (h, i), by its place in `q_at`'s row-major order.
        let e_of = |h: usize, i: usize| {
            let k = q_at.binary_search(&(i * qd + h * hd)).expect("active pair");
            &opened[0][k * hd..(k + 1) * hd]
        };
        let raw = attention_scores(p.is_p0(), c, &pairs, e_of, &mask, kv, m, t);
        let truncated = trunc::truncate_many_narrow(p, &[(&raw, f, nl::SCORE_BITS)])?;
        truncated.into_iter().next().expect("one part")
    };
    let probs = {
        let _s = p.scope("attn.softmax");
        let row_of: Vec<usize> = pairs.iter().map(|&(_, i)| i).collect();
        nl::causal_softmax(p, &scores, &row_of, start, t)?
    };
    let attn = {
        let _s = p.scope("attn.pv");
        let params = AttnParams {
            cache: kv_mask_id(l, true),
            ..params
        };
        let mask: AttnValueMask = p.correlation(&params)?;
        let a: Vec<u64> = pairs
            .iter()
            .flat_map(|&(h, i)| mask.a[(h * m + i) * t..(h * m + i + 1) * t].iter().copied())
            .collect();
        let e = arith::open(p, &ring::sub(&probs, &a))?;
        attention_values(p.is_p0(), c, &pairs, &e, &a, &mask.c, kv, m, t)
    };
    let _s = p.scope("attn.out");
    let o = arith::matmul_fixed_bits(p, &attn, m, &[weights[3]], nl::RESIDUAL_BITS)?;
    nl::truncate_residual(p, &o[0], 2 * f)
}

/// The `width` values at each offset of `at`, concatenated.
fn gather_segments(src: &[u64], at: &[usize], width: usize) -> Vec<u64> {
    at.iter()
        .flat_map(|&o| src[o..o + width].iter().copied())
        .collect()
}

/// The SwiGLU block of residual `x`: RMSNorm fused with the gate/up product; in sparse mode
/// the self-gate's opened bits select the neurons whose SiLU·up runs (truncation folded in);
/// down over the full hidden vector (zeros at skipped neurons, DESIGN.md §7.2), truncated by
/// `2f`.
fn feed_forward(
    p: &mut Party,
    model: &ServerModel,
    l: usize,
    ffn: &mut FfnSession,
    x: &[u64],
    m: usize,
) -> Result<Vec<u64>> {
    let f = model.fp.frac_bits;
    let c = &model.config;
    let w = &model.layers[l];
    let width = m * model.config.ffn_dim;
    let (mut gu, active, down_w) = match ffn {
        FfnSession::Dense => {
            let _s = p.scope("ffn.norm");
            let ws = [&w.w_gate, &w.w_up];
            let gu = nl::norm_matmul(p, x, m, c.d_model, c.norm_eps, &ws, nl::GATE_UP_BITS)?;
            (gu, None, &w.w_down)
        }
        FfnSession::Sparse {
            gate,
            weights,
            last_masks,
        } => {
            let lw = &weights[l];
            let mut gu = {
                let _s = p.scope("ffn.norm");
                let mut ws = vec![&lw.gate, &lw.up];
                if let (SparseGate::Mlp(_), Some(pr)) = (&gate.gate, &lw.predictor) {
                    ws.push(&pr.w1);
                }
                let bits = gate.product_bits(l);
                nl::norm_matmul(p, x, m, c.d_model, c.norm_eps, &ws, bits)?
            };
            let bits = {
                let _s = p.scope("ffn.gate");
                match (&gate.gate, &lw.predictor) {
                    (SparseGate::SelfGate(tables), _) => {
                        comet_protocols::sparse::self_gate(p, &gu[0], &gu[1], &tables[l])?
                    }
                    (SparseGate::Mlp(thresholds), Some(pr)) => {
                        let hidden_pre = gu.pop().expect("three products");
                        sparse::mlp_gate(p, &hidden_pre, pr, thresholds[l], m)?
                    }
                    (SparseGate::Mlp(_), None) => {
                        return Err(EngineError::InvalidRequest(
                            "the MLP gate has no predictor weights".into(),
                        ))
                    }
                }
            };
            let idx: Vec<usize> = (0..width).filter(|&i| bits[i]).collect();
            last_masks[l] = bits;
            (gu, Some(idx), &lw.down)
        }
    };
    let (gate, up) = match &active {
        None => {
            let up = gu.pop().expect("two products");
            (gu.pop().expect("two products"), up)
        }
        Some(idx) => (sparse::gather(&gu[0], idx), sparse::gather(&gu[1], idx)),
    };
    let product = {
        let _s = p.scope("ffn.silu_mul");
        nl::silu_mul(p, &gate, &up)?
    };
    let hidden = match &active {
        None => product,
        Some(idx) => sparse::scatter(width, idx, &product),
    };
    let _s = p.scope("ffn.down");
    let o = arith::matmul_fixed_bits(p, &hidden, m, &[down_w], nl::RESIDUAL_BITS)?;
    nl::truncate_residual(p, &o[0], 2 * f)
}

/// Columns `h·hd .. (h+1)·hd` of a `rows × width` matrix.
fn head_cols(x: &[u64], rows: usize, width: usize, h: usize, hd: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(rows * hd);
    for r in 0..rows {
        out.extend_from_slice(&x[r * width + h * hd..r * width + (h + 1) * hd]);
    }
    out
}

/// Shares of the raw scores `Q·Kᵀ` (scale `2f`) of the active `pairs` (head, row), each a row
/// of `t`, from the opened masked queries `e_of(h, i) = Q − A` and the opened key rows:
/// `[E·F_Kᵀ] + E·B_Kᵀ + A·F_Kᵀ + C`.
#[allow(clippy::too_many_arguments)]
fn attention_scores<'e>(
    is_p0: bool,
    c: &LlamaConfig,
    pairs: &[(usize, usize)],
    e_of: impl Fn(usize, usize) -> &'e [u64],
    mask: &AttnScoreMask,
    kv: &LayerKv,
    m: usize,
    t: usize,
) -> Vec<u64> {
    let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
    let group = c.group_size();
    let mut out = vec![0u64; pairs.len() * t];
    for g in 0..c.n_kv_heads {
        let mine: Vec<usize> = (0..pairs.len())
            .filter(|&k| pairs[k].0 / group == g)
            .collect();
        let (Some(&first), Some(&last)) = (mine.first(), mine.last()) else {
            continue;
        };
        let f_k = head_cols(&kv.keys_open, t, kvd, g, hd);
        let b_k = head_cols(&kv.key_mask[..t * kvd], t, kvd, g, hd);
        let e_side = if is_p0 { ring::add(&f_k, &b_k) } else { b_k };
        let rows = last + 1 - first;
        let mut e = Vec::with_capacity(rows * hd);
        let mut a = Vec::with_capacity(rows * hd);
        for &(h, i) in &pairs[first..=last] {
            e.extend_from_slice(e_of(h, i));
            a.extend_from_slice(&mask.a[i * qd + h * hd..i * qd + (h + 1) * hd]);
        }
        let dst = &mut out[first * t..(last + 1) * t];
        for (row, &(h, i)) in dst.chunks_exact_mut(t).zip(&pairs[first..=last]) {
            row.copy_from_slice(&mask.c[(h * m + i) * t..(h * m + i + 1) * t]);
        }
        matmul::matmul_transposed_b_acc(&e, &e_side, rows, hd, t, dst);
        matmul::matmul_transposed_b_acc(&a, &f_k, rows, hd, t, dst);
    }
    out
}

/// Shares of `P·V` (scale `2f`), `m × q_dim` with zeros for inactive heads, from the opened
/// masked probabilities `e = P − A` of the active `pairs` (`pairs × t`, mask `a`) and the
/// opened value rows: `[E·F_V] + E·B_V + A·F_V + C`.
#[allow(clippy::too_many_arguments)]
fn attention_values(
    is_p0: bool,
    c: &LlamaConfig,
    pairs: &[(usize, usize)],
    e: &[u64],
    a: &[u64],
    mask_c: &[u64],
    kv: &LayerKv,
    m: usize,
    t: usize,
) -> Vec<u64> {
    let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
    let group = c.group_size();
    let mut out = vec![0u64; m * qd];
    for g in 0..c.n_kv_heads {
        let mine: Vec<usize> = (0..pairs.len())
            .filter(|&k| pairs[k].0 / group == g)
            .collect();
        let (Some(&first), Some(&last)) = (mine.first(), mine.last()) else {
            continue;
        };
        let f_v = head_cols(&kv.values_open, t, kvd, g, hd);
        let b_v = head_cols(&kv.value_mask[..t * kvd], t, kvd, g, hd);
        let e_side = if is_p0 { ring::add(&f_v, &b_v) } else { b_v };
        let rows = last + 1 - first;
        let span = first * t..(last + 1) * t;
        let mut o = matmul::matmul(&e[span.clone()], &e_side, rows, t, hd);
        matmul::matmul_acc(&a[span], &f_v, rows, t, hd, &mut o);
        for (r, &(h, i)) in pairs[first..=last].iter().enumerate() {
            let at = i * qd + h * hd;
            let dst = &mut out[at..at + hd];
            dst.copy_from_slice(&mask_c[at..at + hd]);
            ring::add_assign(dst, &o[r * hd..(r + 1) * hd]);
        }
    }
    out
}

/// Rotary embedding for positions `start..start+m` as public fixed-point constants (GGUF
/// llama: interleaved pairs `(2i, 2i+1)` of each head, frequency `base^(−2i/head_dim)`).
struct Rope {
    /// `[m, half]` cos and sin at scale `f` for keys.
    cos: Vec<u64>,
    sin: Vec<u64>,
    /// The same multiplied by `1/√head_dim`, for queries.
    cos_q: Vec<u64>,
    sin_q: Vec<u64>,
    half: usize,
}

impl Rope {
    fn new(c: &LlamaConfig, fp: FixedPoint, start: usize, m: usize) -> Self {
        let half = c.head_dim / 2;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let mut r = Rope {
            cos: vec![],
            sin: vec![],
            cos_q: vec![],
            sin_q: vec![],
            half,
        };
        for pos in start..start + m {
            for i in 0..half {
                let freq = c.rope_base.powf(-((2 * i) as f64) / c.head_dim as f64);
                let angle = pos as f64 * freq;
                r.cos.push(fp.encode(angle.cos()));
                r.sin.push(fp.encode(angle.sin()));
                r.cos_q.push(fp.encode(angle.cos() * scale));
                r.sin_q.push(fp.encode(angle.sin() * scale));
            }
        }
        r
    }

    /// Rotates shares `x` (`m × heads·head_dim`): a linear map with public coefficients at
    /// scale `f`, so the result has `f` more fractional bits than `x`.
    fn rotate(&self, x: &[u64], m: usize, heads: usize, head_dim: usize, query: bool) -> Vec<u64> {
        let (cos, sin) = if query {
            (&self.cos_q, &self.sin_q)
        } else {
            (&self.cos, &self.sin)
        };
        let width = heads * head_dim;
        let mut out = vec![0u64; x.len()];
        for r in 0..m {
            let cr = &cos[r * self.half..(r + 1) * self.half];
            let sr = &sin[r * self.half..(r + 1) * self.half];
            for h in 0..heads {
                let base = r * width + h * head_dim;
                for i in 0..self.half {
                    let (a, b) = (x[base + 2 * i], x[base + 2 * i + 1]);
                    out[base + 2 * i] = a.wrapping_mul(cr[i]).wrapping_sub(b.wrapping_mul(sr[i]));
                    out[base + 2 * i + 1] =
                        a.wrapping_mul(sr[i]).wrapping_add(b.wrapping_mul(cr[i]));
                }
            }
        }
        out
    }
}
