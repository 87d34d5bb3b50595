//! Attention-head sparsity with KV-cache holes (DESIGN.md §7 item 7, the second half of the
//! Comet method).
//!
//! Per session the dealer hands each server the attention weights in a secret head order
//! (`comet_dealer::kinds::sparse::PermutedAttn`: the key/value groups shuffled, then the query
//! heads inside each group). Per step and layer a trained MLP predicts, from the normed input,
//! which heads matter; its bits are opened in the secret order. An inactive head computes no
//! query truncation or opening, no scores, softmax or value product, and adds nothing to
//! `Wo`'s input. A group none of whose heads runs in a step writes no key/value rows: they
//! become *holes*.
//!
//! **Refilling without extra rounds.** In this engine the key/value product of a token is
//! local (it reuses the opening of the normed input that the query needs anyway); what writing
//! a row costs online is its truncation and its opening against the cache's row mask. A hole
//! therefore keeps this server's shares of the untruncated key (after RoPE) and value, and when
//! a later step activates the group, all its holes ride in that step's own RoPE-truncation
//! round and key/value opening: a refill adds bytes (exactly those the write skipped) and no
//! round, however many holes there are. Recomputing from the layer input, as the paper does
//! for engines whose linear layers are expensive, would cost one more product and opening.
//! Because no refill ever costs a round, there is nothing for a prefetch to save: writing a
//! hole early can only spend bytes on rows that may never be read.
//!
//! Leakage (docs/SECURITY.md): per layer and step the servers learn the opened head bits in the
//! secret order, so the count of active heads, which anonymous group each belongs to, and
//! hence which anonymous groups have holes. The head order stays fixed for a session, because
//! the cache's columns follow it.

use crate::error::{EngineError, Result};
use comet_core::FixedPoint;
use comet_dealer::kinds::sparse::{PermutedAttn, PermutedAttnParams};
use comet_model::heads::HeadPredictor;
use comet_model::LlamaConfig;
use comet_protocols::Party;
use std::sync::Arc;

/// The head-sparsity policy of a session (the default keeps every head).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseHeads {
    /// The fraction of heads the predictor's thresholds were calibrated to skip.
    pub sparsity: f64,
    /// The trained head predictor's per-layer logit thresholds at scale `3f` (its weights come
    /// from the dealer per session); `None` keeps every head the forced pattern leaves.
    pub thresholds: Option<Vec<u64>>,
    /// Testing and measurement: every this many steps (step 0, the prompt, included), each
    /// layer skips one whole group of the secret order, `(step / n + layer) mod groups`, so
    /// that holes appear and are refilled.
    pub forced_group_skip: Option<usize>,
    /// Measurement: each layer and row skips this many heads of the secret order (rotating
    /// with the step and layer), besides what the predictor skips.
    pub forced_head_skip: usize,
    /// Measurement: the first step (the prompt) runs no head at all, so its rows all become
    /// holes that the next step refills: decode steps at a long context without the prompt's
    /// quadratic softmax (the output is not the model's; the decode costs are).
    pub forced_prompt_skip: bool,
}

impl SparseHeads {
    /// The trained head predictor `p` as a secure gate (its weights go to the dealer through
    /// [`crate::LocalDeployment::enable_sparse_heads`]).
    pub fn from_predictor(
        predictor: &HeadPredictor,
        config: &LlamaConfig,
        fp: FixedPoint,
    ) -> Result<Self> {
        let p = &predictor.mlp;
        if p.layers.len() != config.n_layers
            || p.d_model != config.d_model
            || p.ffn_dim != config.n_heads
        {
            return Err(EngineError::InvalidRequest(format!(
                "the head predictor is shaped for {} layers of {}→{} heads, the model has {} of \
                 {}→{}",
                p.layers.len(),
                p.d_model,
                p.ffn_dim,
                config.n_layers,
                config.d_model,
                config.n_heads
            )));
        }
        Ok(Self {
            sparsity: p.sparsity,
            thresholds: Some(crate::sparse::thresholds_at_3f(p, fp)),
            ..Self::default()
        })
    }

    /// Every head kept except the forced groups (`every` steps): holes without a predictor.
    pub fn forced(every: usize) -> Self {
        Self {
            forced_group_skip: Some(every.max(1)),
            ..Self::default()
        }
    }
}

/// A hole: one key/value row of one group that was not written, as this server's shares of
/// the untruncated key (after RoPE, scale `3f`) and value (scale `2f`).
#[derive(Clone, Debug)]
pub struct Hole {
    /// Sequence position of the row.
    pub position: usize,
    /// Group in the session's secret order.
    pub group: usize,
    /// `head_dim` key values, correct modulo `2^nl::QK_BITS`.
    pub key: Vec<u64>,
    /// `head_dim` value values, correct modulo `2^nl::V_BITS`.
    pub value: Vec<u64>,
}

/// What one layer of one step runs: which (row, head) pairs, which groups write their rows,
/// and which holes are refilled.
#[derive(Debug)]
pub struct HeadPlan {
    /// `m × n_heads`: head `h` of row `i` runs.
    pub active: Vec<bool>,
    /// Per group: the step's rows are written (else they become holes).
    pub write: Vec<bool>,
    /// Holes of earlier steps written in this step.
    pub refills: Vec<Hole>,
}

impl HeadPlan {
    /// Every head of every row, every row written: the dense attention.
    pub fn dense(c: &LlamaConfig, m: usize) -> Self {
        Self {
            active: vec![true; m * c.n_heads],
            write: vec![true; c.n_kv_heads],
            refills: Vec::new(),
        }
    }

    /// For head `h`, the rows in which it runs.
    pub fn rows_of(&self, h: usize, n_heads: usize) -> Vec<usize> {
        self.active
            .iter()
            .skip(h)
            .step_by(n_heads)
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Per-step counters of the head sparsity, reported with the step's costs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadStepStats {
    /// Per layer, active (row, head) pairs.
    pub active: Vec<u64>,
    /// Rows × groups left as holes in this step.
    pub holes: u64,
    /// Holes of earlier steps refilled in this step (the KV misses).
    pub refilled: u64,
}

/// One server's head-sparsity state in a session: the session's weights and the plan state
/// (apart, so that a step can read the weights while it updates the plan).
#[derive(Debug)]
pub struct HeadSession {
    /// Per layer, the attention weights in the session's secret head order.
    pub weights: Vec<PermutedAttn>,
    /// Holes, bits and counters.
    pub state: HeadState,
}

/// Label under which the per-session attention weights are fetched (offline).
pub const SESSION_ATTN_LABEL: &str = "session.attn_weights";

impl HeadSession {
    /// Fetches every layer's permuted attention weights for a session under `policy`.
    pub fn start(p: &mut Party, policy: &Arc<SparseHeads>, config: &LlamaConfig) -> Result<Self> {
        if let Some(t) = &policy.thresholds {
            if t.len() != config.n_layers {
                return Err(EngineError::InvalidRequest(format!(
                    "head gate for {} layers, the model has {}",
                    t.len(),
                    config.n_layers
                )));
            }
        }
        let _s = p.scope(SESSION_ATTN_LABEL);
        let weights = (0..config.n_layers)
            .map(|l| {
                let params = PermutedAttnParams {
                    layer: l as u32,
                    n_heads: config.n_heads as u32,
                };
                let w: PermutedAttn = p.correlation(&params)?;
                if w.wq.k != config.d_model || w.wq.n != config.q_dim() || w.wk.n != config.kv_dim()
                {
                    return Err(EngineError::ShareMismatch(format!(
                        "layer {l}: permuted attention of {}×{} and {}×{}, the model needs \
                         {}×{} and {}×{}",
                        w.wq.k,
                        w.wq.n,
                        w.wk.k,
                        w.wk.n,
                        config.d_model,
                        config.q_dim(),
                        config.d_model,
                        config.kv_dim()
                    )));
                }
                if policy.thresholds.is_some() && w.predictor.is_none() {
                    return Err(EngineError::InvalidRequest(
                        "the head gate needs a dealer that holds the head predictor".into(),
                    ));
                }
                Ok(w)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            weights,
            state: HeadState {
                policy: policy.clone(),
                holes: vec![Vec::new(); config.n_layers],
                step: 0,
                masks: vec![Vec::new(); config.n_layers],
                stats: HeadStepStats::default(),
            },
        })
    }
}

/// The per-step part of a head session: holes waiting for a refill, the step's opened bits
/// and counters.
#[derive(Debug)]
pub struct HeadState {
    /// The session's policy.
    pub policy: Arc<SparseHeads>,
    /// Per layer, the holes not refilled yet.
    holes: Vec<Vec<Hole>>,
    /// Steps run so far.
    step: usize,
    /// Per layer, the bits of the current step (`m × n_heads`, secret order).
    masks: Vec<Vec<bool>>,
    stats: HeadStepStats,
}

impl HeadState {
    /// Starts a step (resets the step's counters).
    pub fn begin_step(&mut self, n_layers: usize) {
        self.stats = HeadStepStats {
            active: vec![0; n_layers],
            ..HeadStepStats::default()
        };
    }

    /// Ends a step.
    pub fn end_step(&mut self) {
        self.step += 1;
    }

    /// The step's counters.
    pub fn stats(&self) -> &HeadStepStats {
        &self.stats
    }

    /// The current step's heads per layer (`m × n_heads`, secret order).
    pub fn masks(&self) -> &[Vec<bool>] {
        &self.masks
    }

    /// The heads layer `l` runs in this step's `m` rows: the predictor's opened bits
    /// (`predicted`, `m × n_heads`, or all heads without a predictor) minus the forced group,
    /// and the groups to write and holes to refill that follow from them. A group active in
    /// any row writes all the step's rows (a later row of the same step may read an earlier
    /// one) and takes back all its holes.
    pub fn plan(
        &mut self,
        c: &LlamaConfig,
        l: usize,
        m: usize,
        predicted: Option<Vec<bool>>,
    ) -> HeadPlan {
        let (heads, groups) = (c.n_heads, c.n_kv_heads);
        let group = c.group_size();
        let mut active = predicted.unwrap_or_else(|| vec![true; m * heads]);
        if self.step == 0 && self.policy.forced_prompt_skip {
            active.fill(false);
        }
        if let Some(every) = self.policy.forced_group_skip {
            if self.step.is_multiple_of(every) {
                let skipped = (self.step / every + l) % groups;
                for row in active.chunks_mut(heads) {
                    row[skipped * group..(skipped + 1) * group].fill(false);
                }
            }
        }
        let rotate = self.step + l;
        for row in active.chunks_mut(heads) {
            for k in 0..self.policy.forced_head_skip.min(heads) {
                row[(rotate + k) % heads] = false;
            }
        }
        let write: Vec<bool> = (0..groups)
            .map(|g| {
                active
                    .chunks(heads)
                    .any(|row| row[g * group..(g + 1) * group].iter().any(|a| *a))
            })
            .collect();
        let (refills, kept) = std::mem::take(&mut self.holes[l])
            .into_iter()
            .partition(|h: &Hole| write[h.group]);
        self.holes[l] = kept;
        self.stats.active[l] = active.iter().filter(|a| **a).count() as u64;
        self.stats.refilled += refills.len() as u64;
        self.masks[l] = active.clone();
        HeadPlan {
            active,
            write,
            refills,
        }
    }

    /// Keeps the unwritten rows of layer `l` as holes.
    pub fn keep_holes(&mut self, l: usize, holes: Vec<Hole>) {
        self.stats.holes += holes.len() as u64;
        self.holes[l].extend(holes);
    }
}
