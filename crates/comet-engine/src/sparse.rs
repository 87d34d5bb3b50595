//! The sparse FFN of the Comet method (DESIGN.md §7): per session the dealer hands each server
//! the FFN weights in a secret neuron order π under fresh masks; per token and layer the
//! self-gate opens one bit per neuron in π order, and truncation, SiLU and the product run only
//! on the active neurons. The servers learn how many neurons are active per layer and step and
//! the anonymous positions within the session's order, nothing about which neurons they are.

use crate::error::{EngineError, Result};
use comet_core::FixedPoint;
use comet_dealer::kinds::sparse::{
    PermutedFfn, PermutedFfnParams, SessionPredictor, MAX_GATE_BITS,
};
use comet_model::predictor::Predictor;
use comet_model::{LlamaConfig, SelfGate};
use comet_protocols::sparse::SelfGateTable;
use comet_protocols::{arith, compare, Party};
use std::sync::Arc;

/// Which predictor decides the active neurons, in the form the servers use.
#[derive(Clone, Debug, PartialEq)]
pub enum SparseGate {
    /// The self-gate: one decision table per layer.
    SelfGate(Vec<SelfGateTable>),
    /// The trained MLP predictor (weights and biases come from the dealer per session):
    /// per layer the logit threshold at scale `3f`.
    Mlp(Vec<u64>),
}

/// The sparse FFN's gate and policy.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseFfn {
    /// The fraction of neurons the thresholds were calibrated to skip.
    pub sparsity: f64,
    /// The per-layer gate.
    pub gate: SparseGate,
    /// Draw a fresh neuron permutation (new permuted weights) every this many steps, which
    /// limits how long the servers can link positions across steps (`None`: once per session).
    pub repermute_every: Option<usize>,
}

impl SparseFfn {
    /// Ring width the gate/up product must be correct to in layer `l`: the SiLU·up input
    /// width, and enough for the self-gate's local codes (`shift + bits`), in whole bytes.
    pub fn product_bits(&self, l: usize) -> u32 {
        let needed = match &self.gate {
            SparseGate::SelfGate(tables) => {
                let t = &tables[l];
                t.gate_shift.max(t.up_shift) + t.bits
            }
            SparseGate::Mlp(_) => MLP_BITS,
        };
        needed
            .max(crate::nl::GATE_UP_BITS)
            .div_ceil(8)
            .saturating_mul(8)
            .min(64)
    }

    /// Number of layers the gate covers.
    pub fn layers(&self) -> usize {
        match &self.gate {
            SparseGate::SelfGate(t) => t.len(),
            SparseGate::Mlp(t) => t.len(),
        }
    }

    /// The trained predictor `p` as a secure gate (its weights go to the dealer through
    /// [`crate::LocalDeployment::enable_sparse_with`]).
    pub fn from_predictor(p: &Predictor, config: &LlamaConfig, fp: FixedPoint) -> Result<Self> {
        if p.layers.len() != config.n_layers
            || p.d_model != config.d_model
            || p.ffn_dim != config.ffn_dim
        {
            return Err(EngineError::InvalidRequest(format!(
                "the predictor is shaped for {} layers of {}→{} neurons, the model has {} of {}→{}",
                p.layers.len(),
                p.d_model,
                p.ffn_dim,
                config.n_layers,
                config.d_model,
                config.ffn_dim
            )));
        }
        Ok(Self {
            sparsity: p.sparsity,
            gate: SparseGate::Mlp(thresholds_at_3f(p, fp)),
            repermute_every: None,
        })
    }

    /// Checks that `gate` fits the model and the engine's fixed point, and builds its tables.
    pub fn from_self_gate(gate: &SelfGate, config: &LlamaConfig, fp: FixedPoint) -> Result<Self> {
        gate.validate(config.n_layers)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        if gate.frac_bits != fp.frac_bits {
            return Err(EngineError::InvalidRequest(format!(
                "the self-gate was calibrated for {} fractional bits, the engine runs {}",
                gate.frac_bits, fp.frac_bits
            )));
        }
        if gate.bits > MAX_GATE_BITS {
            return Err(EngineError::InvalidRequest(format!(
                "the secure self-gate supports codes of up to {MAX_GATE_BITS} bits, the file has {}",
                gate.bits
            )));
        }
        let tables = gate
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| SelfGateTable {
                bits: gate.bits,
                gate_mult: layer.gate.mult,
                gate_shift: layer.gate.shift,
                up_mult: layer.up.mult,
                up_shift: layer.up.shift,
                rows: gate.table(l),
            })
            .collect();
        Ok(Self {
            sparsity: gate.sparsity,
            gate: SparseGate::SelfGate(tables),
            repermute_every: None,
        })
    }
}

/// How a session runs its feed-forward blocks.
#[derive(Clone, Debug, Default)]
pub enum FfnMode {
    /// Every neuron, the model's fixed weights (the baseline).
    #[default]
    Dense,
    /// The self-gated sparse FFN on per-session permuted weights.
    Sparse(Arc<SparseFfn>),
}

impl FfnMode {
    /// Short name for reports: `dense` or `sparse`.
    pub fn name(&self) -> &'static str {
        match self {
            FfnMode::Dense => "dense",
            FfnMode::Sparse(_) => "sparse",
        }
    }
}

/// How a session runs: its FFN (dense or sparse) and, optionally, attention-head sparsity.
#[derive(Clone, Debug, Default)]
pub struct SessionMode {
    /// The FFN blocks.
    pub ffn: FfnMode,
    /// Head sparsity with KV holes (`crate::heads`); `None` runs every head.
    pub heads: Option<Arc<crate::heads::SparseHeads>>,
}

impl SessionMode {
    /// Short name for reports: `dense`, `sparse`, `heads` or `sparse+heads`.
    pub fn name(&self) -> &'static str {
        match (&self.ffn, &self.heads) {
            (FfnMode::Dense, None) => "dense",
            (FfnMode::Sparse(_), None) => "sparse",
            (FfnMode::Dense, Some(_)) => "heads",
            (FfnMode::Sparse(_), Some(_)) => "sparse+heads",
        }
    }
}

impl From<FfnMode> for SessionMode {
    fn from(ffn: FfnMode) -> Self {
        Self { ffn, heads: None }
    }
}

/// One server's FFN state in a session.
#[derive(Debug)]
pub enum FfnSession {
    /// Dense: the model's own weights.
    Dense,
    /// Sparse: the gate, this session's permuted weights, and the last step's opened bits.
    Sparse {
        /// The per-layer gate tables.
        gate: Arc<SparseFfn>,
        /// Per layer, the FFN weights in the session's secret order.
        weights: Vec<PermutedFfn>,
        /// Per layer, the bits opened in the last step (`tokens × ffn_dim`, permuted order).
        last_masks: Vec<Vec<bool>>,
    },
}

/// Label under which the per-session weights are fetched (offline).
pub const SESSION_WEIGHTS_LABEL: &str = "session.ffn_weights";

impl FfnSession {
    /// Starts a session in `mode`: for the sparse FFN, fetches every layer's permuted weights.
    pub fn start(p: &mut Party, mode: &FfnMode, config: &LlamaConfig) -> Result<Self> {
        match mode {
            FfnMode::Dense => Ok(Self::Dense),
            FfnMode::Sparse(gate) => {
                if gate.layers() != config.n_layers {
                    return Err(EngineError::InvalidRequest(format!(
                        "sparse FFN gate for {} layers, the model has {}",
                        gate.layers(),
                        config.n_layers
                    )));
                }
                let _s = p.scope(SESSION_WEIGHTS_LABEL);
                let weights = (0..config.n_layers)
                    .map(|l| {
                        let w: PermutedFfn =
                            p.correlation(&PermutedFfnParams { layer: l as u32 })?;
                        if w.gate.k != config.d_model || w.gate.n != config.ffn_dim {
                            return Err(EngineError::ShareMismatch(format!(
                                "layer {l}: permuted FFN of {}×{}, the model needs {}×{}",
                                w.gate.k, w.gate.n, config.d_model, config.ffn_dim
                            )));
                        }
                        if matches!(gate.gate, SparseGate::Mlp(_)) && w.predictor.is_none() {
                            return Err(EngineError::InvalidRequest(
                                "the MLP gate needs a dealer that holds the predictor".into(),
                            ));
                        }
                        Ok(w)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Self::Sparse {
                    gate: gate.clone(),
                    weights,
                    last_masks: vec![Vec::new(); config.n_layers],
                })
            }
        }
    }

    /// Active (token, neuron) pairs per layer in the last step (empty when dense).
    pub fn last_active_counts(&self) -> Vec<u64> {
        match self {
            FfnSession::Dense => Vec::new(),
            FfnSession::Sparse { last_masks, .. } => last_masks
                .iter()
                .map(|m| m.iter().filter(|b| **b).count() as u64)
                .collect(),
        }
    }

    /// True when the session's permutation is due to be replaced after `steps` steps.
    pub fn repermute_due(&self, steps: usize) -> bool {
        match self {
            FfnSession::Dense => false,
            FfnSession::Sparse { gate, .. } => gate
                .repermute_every
                .is_some_and(|n| n > 0 && steps > 0 && steps.is_multiple_of(n)),
        }
    }

    /// The last step's opened bits per layer (empty when dense).
    pub fn last_masks(&self) -> &[Vec<bool>] {
        match self {
            FfnSession::Dense => &[],
            FfnSession::Sparse { last_masks, .. } => last_masks,
        }
    }
}

/// A trained predictor's per-layer logit thresholds at scale `3f`, where the secure gate
/// compares its logits.
pub fn thresholds_at_3f(p: &Predictor, fp: FixedPoint) -> Vec<u64> {
    let scale = (3.0 * fp.frac_bits as f64).exp2();
    p.layers
        .iter()
        .map(|l| ((l.threshold * scale).round() as i64) as u64)
        .collect()
}

/// Ring width of the predictor's hidden pre-activations (scale `2f`) and logits (scale `3f`)
/// inside its ReLU and comparison: |h| < 2^22, |logit − threshold| < 2^10.
pub const MLP_BITS: u32 = 48;

/// The MLP gate on shares: `hidden_pre = x·W1` (scale `2f`, from the fused norm product) →
/// `+ b1` → ReLU → `·W2` (one opening) → `+ b2 − threshold` → DReLU → bits opened. Four
/// rounds after the product; the outputs are in the session's secret neuron order.
pub fn mlp_gate(
    p: &mut Party,
    hidden_pre: &[u64],
    predictor: &SessionPredictor,
    threshold: u64,
    m: usize,
) -> Result<Vec<bool>> {
    let h = predictor.b1.len();
    let n = predictor.b2.len();
    let mut x = hidden_pre.to_vec();
    for row in x.chunks_exact_mut(h) {
        comet_core::ring::add_assign(row, &predictor.b1);
    }
    let hidden = compare::relu(p, &x, MLP_BITS)?;
    let logits = arith::matmul_fixed_bits(p, &hidden, m, &[&predictor.w2], MLP_BITS)?;
    let mut z = logits.into_iter().next().expect("one weight");
    let is_p0 = p.is_p0();
    for row in z.chunks_exact_mut(n) {
        comet_core::ring::add_assign(row, &predictor.b2);
        if is_p0 {
            row.iter_mut().for_each(|v| *v = v.wrapping_sub(threshold));
        }
    }
    // DReLU(z) = 1{z ≥ 0}; a logit exactly at the threshold is a measure-zero tie.
    let keep = compare::drelu(p, &z, MLP_BITS)?;
    let bits = arith::open_bits(p, &keep, 1)?;
    Ok(bits.into_iter().map(|b| b == 1).collect())
}

/// The values of `x` at `idx`.
pub fn gather(x: &[u64], idx: &[usize]) -> Vec<u64> {
    idx.iter().map(|&i| x[i]).collect()
}

/// A zero vector of length `len` with `values` placed at `idx`.
pub fn scatter(len: usize, idx: &[usize], values: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; len];
    for (&i, &v) in idx.iter().zip(values) {
        out[i] = v;
    }
    out
}
