//! The sparse FFN of the Comet method (DESIGN.md §7): per session the dealer hands each server
//! the FFN weights in a secret neuron order π under fresh masks; per token and layer the
//! self-gate opens one bit per neuron in π order, and truncation, SiLU and the product run only
//! on the active neurons. The servers learn how many neurons are active per layer and step and
//! the anonymous positions within the session's order, nothing about which neurons they are.

use crate::error::{EngineError, Result};
use comet_core::FixedPoint;
use comet_dealer::kinds::sparse::{PermutedFfn, PermutedFfnParams, MAX_GATE_BITS};
use comet_model::{LlamaConfig, SelfGate};
use comet_protocols::sparse::SelfGateTable;
use comet_protocols::Party;
use std::sync::Arc;

/// A calibrated self-gate converted to the protocol's per-layer tables.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseFfn {
    /// The fraction of neurons the thresholds were calibrated to skip.
    pub sparsity: f64,
    /// One table per layer.
    pub tables: Vec<SelfGateTable>,
    /// Draw a fresh neuron permutation (new permuted weights) every this many steps, which
    /// limits how long the servers can link positions across steps (`None`: once per session).
    pub repermute_every: Option<usize>,
}

impl SparseFfn {
    /// Ring width the gate/up product must be correct to in layer `l`: the SiLU·up input
    /// width, and enough for the self-gate's local codes (`shift + bits`), in whole bytes.
    pub fn product_bits(&self, l: usize) -> u32 {
        let t = &self.tables[l];
        (t.gate_shift.max(t.up_shift) + t.bits)
            .max(crate::nl::GATE_UP_BITS)
            .div_ceil(8)
            .saturating_mul(8)
            .min(64)
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
            tables,
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
                if gate.tables.len() != config.n_layers {
                    return Err(EngineError::InvalidRequest(format!(
                        "sparse FFN tables for {} layers, the model has {}",
                        gate.tables.len(),
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
