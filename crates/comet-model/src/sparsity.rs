//! FFN activation sparsity definitions shared by the plaintext reference and the secure engine
//! (DESIGN.md §7): the sparsity setting, and the *self-gate*, which keeps neuron `j` of a token
//! when `|SiLU(g̃_j)·ũ_j|` exceeds a per-layer threshold, `g̃` and `ũ` being the gate and up
//! pre-activations quantized to a few bits.
//!
//! The quantization is defined on the fixed-point integer at `2f` fractional bits (what the
//! secure engine holds before truncation): `code = round(v·mult / 2^shift) mod 2^bits`, read as
//! a signed `bits`-bit number. On secret shares each server computes `((share·mult) mod 2^64)
//! >> shift` and keeps `bits` bits (P0 adds one): the sum is `v·mult / 2^shift` rounded up or
//! down at random with the probabilities of its fraction (stochastic rounding, never a
//! wrap-around, because `shift + bits ≤ 64`). That one-step rounding difference is the only
//! difference between the secure gate and [`SelfGate::keep`].

use crate::error::{ModelError, Result};
use crate::forward::{FfnActivations, ForwardOptions, LogitsMode, Model};
use crate::linalg;
use crate::predictor::Predictor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Fractional bits `f` of the secure engine's fixed point, which the self-gate's quantizers assume.
pub const DEFAULT_FRAC_BITS: u32 = 12;

/// Default factor between a quantizer's range and the calibrated maximum: held-out values
/// exceed the calibration maximum by up to ~1.34× (DESIGN.md §7), and values beyond the range
/// wrap around in the secure protocol.
pub const DEFAULT_MARGIN: f64 = 1.5;

/// Version of the self-gate file format written by `comet calibrate`.
pub const SELF_GATE_VERSION: u32 = 1;

/// Largest code width (the decision table has 2^(2·bits) entries).
pub const MAX_GATE_BITS: u32 = 8;

/// Smallest code width.
pub const MIN_GATE_BITS: u32 = 2;

/// What is skipped: `off`, or `ffn=F`, `heads=H` or both (`ffn=0.5,heads=0.11`), with F the
/// fraction of FFN neurons and H the fraction of attention heads dropped per token (the
/// calibration targets; the counts per token vary with the per-layer thresholds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SparsitySpec {
    /// Target fraction of FFN neurons skipped, in `[0, 1)`; `None` means dense.
    pub ffn: Option<f64>,
    /// Target fraction of attention heads skipped, in `[0, 1)`; `None` means dense.
    pub heads: Option<f64>,
}

impl SparsitySpec {
    /// Dense: nothing is skipped.
    pub fn off() -> Self {
        Self::default()
    }

    /// True when something is skipped.
    pub fn is_sparse(&self) -> bool {
        self.ffn.is_some() || self.heads.is_some()
    }
}

impl std::fmt::Display for SparsitySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ffn, self.heads) {
            (None, None) => write!(f, "off"),
            (Some(v), None) => write!(f, "ffn={v}"),
            (None, Some(h)) => write!(f, "heads={h}"),
            (Some(v), Some(h)) => write!(f, "ffn={v},heads={h}"),
        }
    }
}

impl std::str::FromStr for SparsitySpec {
    type Err = ModelError;

    /// Parses `off`, `ffn=0.5`, `heads=0.11` or `ffn=0.5,heads=0.11`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            ModelError::InvalidInput(format!(
                "sparsity `{s}`: {why} (expected `off`, `ffn=0.5`, `heads=0.11` or both)"
            ))
        };
        let s = s.trim();
        if s == "off" || s == "dense" {
            return Ok(Self::off());
        }
        let mut spec = Self::off();
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| bad("missing `=`"))?;
            let v: f64 = value.trim().parse().map_err(|_| bad("not a number"))?;
            if !(0.0..1.0).contains(&v) {
                return Err(bad("the fraction must be in [0, 1)"));
            }
            let slot = match key.trim() {
                "ffn" => &mut spec.ffn,
                "heads" => &mut spec.heads,
                other => return Err(bad(&format!("unknown part `{other}`"))),
            };
            if slot.replace(v).is_some() {
                return Err(bad(&format!("`{}` given twice", key.trim())));
            }
        }
        Ok(spec)
    }
}

/// Maps a pre-activation at `2f` fractional bits to a signed `bits`-bit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantizer {
    /// Integer multiplier (below 2^16).
    pub mult: u64,
    /// Right shift after the multiplication (`shift + bits ≤ 64`).
    pub shift: u32,
}

impl Quantizer {
    /// The quantizer whose largest positive code `2^(bits−1) − 1` is reached at `clip`
    /// (a positive value, e.g. a calibrated maximum with margin); larger values wrap.
    pub fn covering(clip: f64, bits: u32, frac_bits: u32) -> Result<Self> {
        check_bits(bits)?;
        if !(clip.is_finite() && clip > 0.0) {
            return Err(ModelError::InvalidInput(format!(
                "quantizer range {clip} must be a positive number"
            )));
        }
        // code = v·2^(2f)·mult/2^shift; want mult/2^shift = (2^(bits−1) − 1)/(clip·2^(2f)).
        let ratio = ((1u64 << (bits - 1)) - 1) as f64 / (clip * (2.0 * frac_bits as f64).exp2());
        // mult in [2^15, 2^16).
        let shift = (15.0 - ratio.log2()).ceil().max(0.0) as u32;
        if shift + bits > 64 {
            return Err(ModelError::InvalidInput(format!(
                "quantizer range {clip} is too small for {bits} bits at f = {frac_bits}"
            )));
        }
        let mult = (ratio * (shift as f64).exp2()).round().max(1.0) as u64;
        Ok(Self { mult, shift })
    }

    /// The value of one code step.
    pub fn step(&self, frac_bits: u32) -> f64 {
        (self.shift as f64).exp2() / (self.mult as f64 * (2.0 * frac_bits as f64).exp2())
    }

    /// The unsigned code (mod 2^bits) of a fixed-point integer `v` at `2f` fractional bits:
    /// `v·mult / 2^shift` rounded to the nearest integer.
    pub fn code_of_fixed(&self, v: i64, bits: u32) -> u32 {
        let scaled = (v as i128 * self.mult as i128 + (1i128 << self.shift >> 1)) >> self.shift;
        (scaled as u64 & ((1u64 << bits) - 1)) as u32
    }

    /// The unsigned code of a real value (rounded to `2f` fractional bits first).
    pub fn code_of(&self, v: f32, frac_bits: u32, bits: u32) -> u32 {
        let fixed = (v as f64 * (2.0 * frac_bits as f64).exp2()).round() as i64;
        self.code_of_fixed(fixed, bits)
    }
}

/// The signed value of an unsigned `bits`-bit code.
pub fn signed_code(code: u32, bits: u32) -> i64 {
    let c = code as i64;
    if c >= 1 << (bits - 1) {
        c - (1 << bits)
    } else {
        c
    }
}

fn check_bits(bits: u32) -> Result<()> {
    if !(MIN_GATE_BITS..=MAX_GATE_BITS).contains(&bits) {
        return Err(ModelError::InvalidInput(format!(
            "self-gate code width {bits} bits: supported {MIN_GATE_BITS}..={MAX_GATE_BITS}"
        )));
    }
    Ok(())
}

/// The self-gate of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfGateLayer {
    /// Quantizer of the gate pre-activation.
    pub gate: Quantizer,
    /// Quantizer of the up pre-activation.
    pub up: Quantizer,
    /// A neuron is kept when `|SiLU(g̃)·ũ| > threshold` on the dequantized codes.
    pub threshold: f64,
}

/// A calibrated self-gate for one model: per-layer quantizers and thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfGate {
    /// File format version ([`SELF_GATE_VERSION`]).
    pub version: u32,
    /// SHA-256 (hex) of the model file it was calibrated on.
    pub model_sha256: String,
    /// Fixed-point fractional bits `f` the quantizers assume (inputs at `2f`).
    pub frac_bits: u32,
    /// Code width of each of g̃ and ũ.
    pub bits: u32,
    /// The target fraction of neurons skipped that the thresholds were calibrated for.
    pub sparsity: f64,
    /// One entry per transformer block.
    pub layers: Vec<SelfGateLayer>,
}

impl SelfGate {
    /// Checks the structural invariants (version, widths, shifts) and the layer count.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        if self.version != SELF_GATE_VERSION {
            return Err(ModelError::InvalidInput(format!(
                "self-gate file version {} (this build reads version {SELF_GATE_VERSION})",
                self.version
            )));
        }
        check_bits(self.bits)?;
        if self.layers.len() != n_layers {
            return Err(ModelError::InvalidInput(format!(
                "self-gate file has {} layers, the model has {n_layers}",
                self.layers.len()
            )));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            for q in [layer.gate, layer.up] {
                if q.mult == 0 || q.mult >= 1 << 16 || q.shift + self.bits > 64 {
                    return Err(ModelError::InvalidInput(format!(
                        "self-gate layer {l}: quantizer {q:?} is out of range"
                    )));
                }
            }
            if !layer.threshold.is_finite() || layer.threshold < 0.0 {
                return Err(ModelError::InvalidInput(format!(
                    "self-gate layer {l}: threshold {} is not a non-negative number",
                    layer.threshold
                )));
            }
        }
        Ok(())
    }

    /// Reads a self-gate file and checks it belongs to the model with hash `model_sha256`
    /// and `n_layers` blocks.
    pub fn load(path: &Path, model_sha256: &str, n_layers: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ModelError::InvalidInput(format!(
                "cannot read self-gate file {}: {e}",
                path.display()
            ))
        })?;
        let gate: Self = serde_json::from_str(&text).map_err(|e| {
            ModelError::InvalidInput(format!(
                "self-gate file {} is malformed: {e}",
                path.display()
            ))
        })?;
        if gate.model_sha256 != model_sha256 {
            return Err(ModelError::InvalidInput(format!(
                "self-gate file {} was calibrated for model {}, not for this model ({model_sha256})",
                path.display(),
                gate.model_sha256
            )));
        }
        gate.validate(n_layers)?;
        Ok(gate)
    }

    /// Writes the file as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("self-gate serialises");
        std::fs::write(path, text).map_err(|e| {
            ModelError::InvalidInput(format!(
                "cannot write self-gate file {}: {e}",
                path.display()
            ))
        })
    }

    /// Whether `(g̃, ũ)` (unsigned codes) keeps the neuron in layer `l`.
    pub fn keep_codes(&self, l: usize, g_code: u32, u_code: u32) -> bool {
        self.score_codes(l, g_code, u_code) > self.layers[l].threshold
    }

    /// The gate's score `|SiLU(g̃·step_g)·ũ·step_u|` of unsigned codes in layer `l` (what
    /// [`SelfGate::keep_codes`] compares with the threshold).
    pub fn score_codes(&self, l: usize, g_code: u32, u_code: u32) -> f64 {
        let layer = &self.layers[l];
        let g = signed_code(g_code, self.bits) as f64 * layer.gate.step(self.frac_bits);
        let u = signed_code(u_code, self.bits) as f64 * layer.up.step(self.frac_bits);
        (silu(g) * u).abs()
    }

    /// The score of one neuron of layer `l` from its real pre-activations.
    pub fn score(&self, l: usize, gate: f32, up: f32) -> f64 {
        let layer = &self.layers[l];
        self.score_codes(
            l,
            layer.gate.code_of(gate, self.frac_bits, self.bits),
            layer.up.code_of(up, self.frac_bits, self.bits),
        )
    }

    /// The self-gate's quantizers from `data` (range = `margin ×` the largest |gate| and |up|
    /// per layer), with all thresholds 0; [`SelfGate::calibrate`] then sets the thresholds.
    pub fn with_ranges(
        data: &CalibrationData,
        model: &Model,
        model_sha256: &str,
        options: SelfGateOptions,
    ) -> Result<Self> {
        check_bits(options.bits)?;
        check_fraction(options.sparsity)?;
        if !(options.margin.is_finite() && options.margin >= 1.0) {
            return Err(ModelError::InvalidInput(format!(
                "self-gate margin {} must be a number >= 1",
                options.margin
            )));
        }
        data.check(model)?;
        if !(options.clip_quantile > 0.0 && options.clip_quantile <= 1.0) {
            return Err(ModelError::InvalidInput(format!(
                "self-gate clip quantile {} must be in (0, 1]",
                options.clip_quantile
            )));
        }
        let mut layers = Vec::with_capacity(data.layers.len());
        for (l, layer) in data.layers.iter().enumerate() {
            let (max_gate, max_up) = if options.clip_quantile < 1.0 {
                let (mut gate, mut up) = data.preactivations(model, l, 0..data.rows());
                (
                    abs_quantile(&mut gate, options.clip_quantile),
                    abs_quantile(&mut up, options.clip_quantile),
                )
            } else {
                (layer.max_abs_gate, layer.max_abs_up)
            };
            // An all-zero layer still needs a valid range.
            let clip = |m: f32| (m as f64).max(1e-3) * options.margin;
            layers.push(SelfGateLayer {
                gate: Quantizer::covering(clip(max_gate), options.bits, options.frac_bits)?,
                up: Quantizer::covering(clip(max_up), options.bits, options.frac_bits)?,
                threshold: 0.0,
            });
        }
        Ok(SelfGate {
            version: SELF_GATE_VERSION,
            model_sha256: model_sha256.to_string(),
            frac_bits: options.frac_bits,
            bits: options.bits,
            sparsity: options.sparsity,
            layers,
        })
    }

    /// Sets the thresholds from a mask of single neurons calibrated with this gate's score
    /// (negative thresholds become 0: scores are non-negative, so 0 drops only entries whose
    /// quantized score is exactly zero).
    pub fn set_thresholds(&mut self, mask: &FfnMask) -> Result<()> {
        if mask.block != 1 || mask.thresholds.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(
                "self-gate thresholds need a single-neuron mask with one threshold per layer"
                    .into(),
            ));
        }
        for (layer, t) in self.layers.iter_mut().zip(&mask.thresholds) {
            layer.threshold = t.max(0.0);
        }
        Ok(())
    }

    /// Calibrates a self-gate on `data` (collected from `model`): per layer the quantizers
    /// cover `margin ×` the largest |gate| and |up| seen, and the threshold keeps a fraction
    /// `1 − sparsity` of the sampled (token, neuron) entries by the quantized score.
    pub fn calibrate(
        data: &CalibrationData,
        model: &Model,
        model_sha256: &str,
        options: SelfGateOptions,
    ) -> Result<Self> {
        let mut gate = Self::with_ranges(data, model, model_sha256, options)?;
        let mask = FfnMask::calibrate(
            NeuronScore::SelfGate(&gate),
            data,
            model,
            options.sparsity,
            1,
        )?;
        gate.set_thresholds(&mask)?;
        gate.validate(data.layers.len())?;
        Ok(gate)
    }

    /// The plaintext decision for one neuron of layer `l` from its real pre-activations.
    pub fn keep(&self, l: usize, gate: f32, up: f32) -> bool {
        let layer = &self.layers[l];
        self.keep_codes(
            l,
            layer.gate.code_of(gate, self.frac_bits, self.bits),
            layer.up.code_of(up, self.frac_bits, self.bits),
        )
    }

    /// Words of 64 bits per row of [`SelfGate::table`].
    pub fn table_row_words(&self) -> usize {
        ((1usize << self.bits) / 64).max(1)
    }

    /// Layer `l`'s decision table: row `g̃` (unsigned code) is [`SelfGate::table_row_words`]
    /// words; bit `ũ` of the row (word `ũ / 64`, bit `ũ mod 64`) is set when kept.
    pub fn table(&self, l: usize) -> Vec<u64> {
        let size = 1u32 << self.bits;
        let words = self.table_row_words();
        let mut out = vec![0u64; size as usize * words];
        for g in 0..size {
            for u in 0..size {
                if self.keep_codes(l, g, u) {
                    out[g as usize * words + u as usize / 64] |= 1 << (u % 64);
                }
            }
        }
        out
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// What `comet calibrate` needs besides the data: code width, target sparsity, range margin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelfGateOptions {
    /// Code width of g̃ and ũ.
    pub bits: u32,
    /// Target fraction of (token, neuron) entries skipped.
    pub sparsity: f64,
    /// Quantizer range = margin × calibrated maximum (≥ 1).
    pub margin: f64,
    /// Fixed-point fractional bits of the secure engine.
    pub frac_bits: u32,
    /// Quantile of |gate| (resp. |up|) over the sampled rows that the range covers (times the
    /// margin); 1 = the maximum over every calibration token. Below 1, rarer larger values
    /// wrap around in the secure gate.
    pub clip_quantile: f64,
}

impl Default for SelfGateOptions {
    fn default() -> Self {
        Self {
            bits: 6,
            sparsity: 0.5,
            margin: DEFAULT_MARGIN,
            frac_bits: DEFAULT_FRAC_BITS,
            clip_quantile: 1.0,
        }
    }
}

/// The `q`-quantile of `|values|` (reorders `values`).
fn abs_quantile(values: &mut [f32], q: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    for v in values.iter_mut() {
        *v = v.abs();
    }
    let k = ((values.len() - 1) as f64 * q).round() as usize;
    *values.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
}

/// Estimated online bytes per token and layer, each way, of the self-gate in the secure
/// engine: two opened `bits`-bit codes per neuron (rounded up to bytes) plus the opened keep bits.
pub fn self_gate_online_bytes(ffn_dim: usize, bits: u32) -> usize {
    2 * ffn_dim * (bits as usize).div_ceil(8) + ffn_dim.div_ceil(8)
}

fn check_fraction(sparsity: f64) -> Result<()> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(ModelError::InvalidInput(format!(
            "sparsity {sparsity}: the fraction must be in [0, 1)"
        )));
    }
    Ok(())
}

/// Parses a sparsity given either as a bare fraction (`0.5`) or as a spec (`ffn=0.5`).
pub fn parse_ffn_sparsity(text: &str) -> Result<f64> {
    if let Ok(v) = text.trim().parse::<f64>() {
        check_fraction(v)
            .map_err(|_| ModelError::InvalidInput(format!("sparsity `{text}`: the fraction must be in [0, 1) (expected e.g. `0.5` or `ffn=0.5`)")))?;
        return Ok(v);
    }
    let spec: SparsitySpec = text.parse()?;
    spec.ffn.ok_or_else(|| {
        ModelError::InvalidInput(format!(
            "sparsity `{text}`: nothing is skipped (expected e.g. `0.5` or `ffn=0.5`)"
        ))
    })
}

/// What a dense pass over calibration text leaves for calibrating gates: per layer the largest
/// |gate| and |up| over all tokens, and the normed FFN inputs of a sample of tokens (gate and up
/// of those tokens are recomputed from them on demand).
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationData {
    /// Width of the FFN input.
    pub d_model: usize,
    /// Neurons per layer.
    pub ffn_dim: usize,
    /// Tokens that went through the model.
    pub tokens: usize,
    /// One entry per block.
    pub layers: Vec<LayerCalibration>,
    sample_every: usize,
}

/// Calibration data of one block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerCalibration {
    /// Largest |gate pre-activation| over all calibration tokens.
    pub max_abs_gate: f32,
    /// Largest |up pre-activation| over all calibration tokens.
    pub max_abs_up: f32,
    /// Sampled normed FFN inputs, `[rows, d_model]`.
    pub inputs: Vec<f32>,
    seen: usize,
}

impl CalibrationData {
    /// Empty data for `model`, keeping the FFN input of every `sample_every`-th token.
    pub fn new(model: &Model, sample_every: usize) -> Self {
        let c = model.config();
        Self {
            d_model: c.d_model,
            ffn_dim: c.ffn_dim,
            tokens: 0,
            layers: vec![LayerCalibration::default(); c.n_layers],
            sample_every: sample_every.max(1),
        }
    }

    /// Records one block's activations (use as the body of a [`ForwardOptions::ffn_hook`]).
    pub fn observe(&mut self, acts: &FfnActivations<'_>) {
        let d = self.d_model;
        let Some(layer) = self.layers.get_mut(acts.layer) else {
            return;
        };
        let max_abs = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        layer.max_abs_gate = layer.max_abs_gate.max(max_abs(acts.gate));
        layer.max_abs_up = layer.max_abs_up.max(max_abs(acts.up));
        for r in 0..acts.tokens {
            if (layer.seen + r) % self.sample_every == 0 {
                layer
                    .inputs
                    .extend_from_slice(&acts.input[r * d..(r + 1) * d]);
            }
        }
        layer.seen += acts.tokens;
        if acts.layer == 0 {
            self.tokens += acts.tokens;
        }
    }

    /// Runs `model` densely over `tokens` in independent windows of `window` tokens and
    /// collects at most about `max_rows` sampled rows per layer; `progress` gets the number
    /// of tokens done after each window.
    pub fn collect(
        model: &Model,
        tokens: &[u32],
        window: usize,
        max_rows: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidInput(
                "the calibration text has no tokens".into(),
            ));
        }
        let window = window.clamp(1, model.config().context_length);
        let sample_every = tokens.len().div_ceil(max_rows.max(1));
        let mut data = Self::new(model, sample_every);
        let mut done = 0;
        for w in tokens.chunks(window) {
            let mut hook = |a: &mut FfnActivations<'_>| data.observe(a);
            model.forward_with(
                w,
                &mut model.new_cache(),
                ForwardOptions {
                    logits: LogitsMode::Last,
                    ffn_hook: Some(&mut hook),
                    ..Default::default()
                },
            )?;
            done += w.len();
            progress(done);
        }
        Ok(data)
    }

    /// Number of sampled rows (the same in every layer).
    pub fn rows(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |l| l.inputs.len() / self.d_model.max(1))
    }

    /// Checks that the data was collected from a model shaped like `model`.
    pub fn check(&self, model: &Model) -> Result<()> {
        let c = model.config();
        if self.d_model != c.d_model || self.ffn_dim != c.ffn_dim || self.layers.len() != c.n_layers
        {
            return Err(ModelError::InvalidInput(
                "calibration data belongs to another model".into(),
            ));
        }
        if self.rows() == 0 {
            return Err(ModelError::InvalidInput(
                "calibration data has no sampled tokens".into(),
            ));
        }
        Ok(())
    }

    /// Gate and up pre-activations of the sampled rows `rows` of layer `l`, `[n, ffn_dim]` each.
    pub fn preactivations(
        &self,
        model: &Model,
        l: usize,
        rows: std::ops::Range<usize>,
    ) -> (Vec<f32>, Vec<f32>) {
        let d = self.d_model;
        let inputs = &self.layers[l].inputs[rows.start * d..rows.end * d];
        let w = &model.weights().layers[l];
        let mut out = linalg::matmul_nt_many(
            inputs,
            rows.len(),
            d,
            &[(&w.w_gate.data, w.w_gate.rows), (&w.w_up.data, w.w_up.rows)],
        );
        let up = out.pop().unwrap_or_default();
        let gate = out.pop().unwrap_or_default();
        (gate, up)
    }

    /// Sampled FFN inputs of rows `rows` of layer `l`, `[n, d_model]`.
    pub fn inputs(&self, l: usize, rows: std::ops::Range<usize>) -> &[f32] {
        &self.layers[l].inputs[rows.start * self.d_model..rows.end * self.d_model]
    }
}

/// The per-neuron score a gate thresholds: larger means "more worth keeping".
#[derive(Clone, Copy, Debug)]
pub enum NeuronScore<'a> {
    /// The true `|SiLU(gate)·up|` (not a predictor: defines the exact set).
    Oracle,
    /// The self-gate's quantized `|SiLU(g̃)·ũ|`.
    SelfGate(&'a SelfGate),
    /// A trained predictor's logit from the FFN input.
    Predictor(&'a Predictor),
}

impl NeuronScore<'_> {
    /// Scores of `rows` tokens of layer `l`, `[rows, ffn_dim]`, from the FFN input
    /// `[rows, d_model]` and the gate and up pre-activations `[rows, ffn_dim]`.
    pub fn scores(
        &self,
        l: usize,
        rows: usize,
        input: &[f32],
        gate: &[f32],
        up: &[f32],
    ) -> Vec<f64> {
        match self {
            NeuronScore::Oracle => gate
                .par_iter()
                .zip(up)
                .map(|(&g, &u)| (silu(g as f64) * u as f64).abs())
                .collect(),
            NeuronScore::SelfGate(sg) => gate
                .par_iter()
                .zip(up)
                .map(|(&g, &u)| sg.score(l, g, u))
                .collect(),
            NeuronScore::Predictor(p) => p
                .logits(l, input, rows)
                .into_iter()
                .map(f64::from)
                .collect(),
        }
    }
}

/// Per-layer thresholds on block scores: a block of `block` consecutive neurons (score = sum
/// of its neurons' scores) is kept, for one token, when its score exceeds the layer's threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct FfnMask {
    /// Neurons per block (1 = single neurons).
    pub block: usize,
    /// One threshold per layer.
    pub thresholds: Vec<f64>,
}

impl FfnMask {
    /// Keeps every neuron of `n_layers` layers (the dense forward).
    pub fn keep_all(n_layers: usize) -> Self {
        Self {
            block: 1,
            thresholds: vec![f64::NEG_INFINITY; n_layers],
        }
    }

    /// Per-layer thresholds that keep a fraction `1 − sparsity` of the sampled (token, block)
    /// entries of `data` by `score`.
    pub fn calibrate(
        score: NeuronScore<'_>,
        data: &CalibrationData,
        model: &Model,
        sparsity: f64,
        block: usize,
    ) -> Result<Self> {
        Self::calibrate_rows(score, data, model, sparsity, block, 0..data.rows())
    }

    /// Like [`FfnMask::calibrate`] on the sampled rows `rows` only.
    pub fn calibrate_rows(
        score: NeuronScore<'_>,
        data: &CalibrationData,
        model: &Model,
        sparsity: f64,
        block: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<Self> {
        let mut masks = Self::calibrate_many(&[(score, block, sparsity)], data, model, rows)?;
        Ok(masks.remove(0))
    }

    /// Several masks `(score, block, sparsity)` calibrated on the sampled rows `rows` in one
    /// pass (gate and up are recomputed once per layer for all of them).
    pub fn calibrate_many(
        requests: &[(NeuronScore<'_>, usize, f64)],
        data: &CalibrationData,
        model: &Model,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<Self>> {
        data.check(model)?;
        for &(_, block, sparsity) in requests {
            check_fraction(sparsity)?;
            if block == 0 {
                return Err(ModelError::InvalidInput(
                    "block size must be at least 1".into(),
                ));
            }
        }
        if rows.is_empty() || rows.end > data.rows() {
            return Err(ModelError::InvalidInput(format!(
                "calibration rows {rows:?} out of the {} sampled",
                data.rows()
            )));
        }
        let mut masks: Vec<Self> = requests
            .iter()
            .map(|&(_, block, _)| Self {
                block,
                thresholds: Vec::with_capacity(data.layers.len()),
            })
            .collect();
        for l in 0..data.layers.len() {
            let (gate, up) = data.preactivations(model, l, rows.clone());
            let input = data.inputs(l, rows.clone());
            for (mask, &(score, block, sparsity)) in masks.iter_mut().zip(requests) {
                let scores = score.scores(l, rows.len(), input, &gate, &up);
                let mut blocks: Vec<f64> = scores
                    .chunks_exact(data.ffn_dim)
                    .flat_map(|row| row.chunks(block).map(|b| b.iter().sum::<f64>()))
                    .collect();
                mask.thresholds
                    .push(threshold_keeping(&mut blocks, 1.0 - sparsity));
            }
        }
        Ok(masks)
    }

    /// Writes the keep decision of every neuron of one token of layer `l` into `keep`.
    pub fn keep_row(&self, l: usize, scores: &[f64], keep: &mut [bool]) {
        let t = self.thresholds[l];
        for (s, k) in scores.chunks(self.block).zip(keep.chunks_mut(self.block)) {
            k.fill(s.iter().sum::<f64>() > t);
        }
    }
}

/// The threshold `t` such that the fraction of `scores` strictly above `t` is as close as
/// possible to `keep` (ties can make an exact fraction impossible). Reorders `scores`.
pub fn threshold_keeping(scores: &mut [f64], keep: f64) -> f64 {
    let n = scores.len();
    if n == 0 {
        return 0.0;
    }
    let target = (((1.0 - keep) * n as f64).round() as usize).min(n);
    let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
    if target == 0 {
        return min - 1.0_f64.max(min.abs());
    }
    let (_, v, _) = scores.select_nth_unstable_by(target - 1, |a, b| a.total_cmp(b));
    let v = *v;
    // Dropping everything <= v, or everything < v: pick the count closer to the target.
    let (mut below, mut at_most) = (0usize, 0usize);
    let (mut prev, mut next) = (f64::NEG_INFINITY, f64::INFINITY);
    for &x in scores.iter() {
        if x < v {
            below += 1;
            prev = prev.max(x);
        } else if x == v {
            at_most += 1;
        } else {
            next = next.min(x);
        }
    }
    at_most += below;
    let between = |a: f64, b: f64| {
        let m = a + (b - a) / 2.0;
        if m > a && m < b {
            m
        } else {
            a
        }
    };
    if at_most.abs_diff(target) <= below.abs_diff(target) {
        if next.is_finite() {
            between(v, next)
        } else {
            v
        }
    } else if prev.is_finite() {
        between(prev, v)
    } else {
        v - 1.0_f64.max(v.abs())
    }
}

/// Counts of one gate against the exact set, summed over tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// (token, neuron) entries seen.
    pub entries: u64,
    /// Entries the gate kept.
    pub kept: u64,
    /// Entries in the exact set.
    pub exact: u64,
    /// Entries both kept and in the exact set.
    pub hits: u64,
}

impl GateStats {
    /// Fraction of entries kept.
    pub fn kept_fraction(&self) -> f64 {
        self.kept as f64 / self.entries.max(1) as f64
    }

    /// Fraction of the exact set that was kept.
    pub fn recall(&self) -> f64 {
        self.hits as f64 / self.exact.max(1) as f64
    }

    /// Fraction of the kept entries that are in the exact set.
    pub fn precision(&self) -> f64 {
        self.hits as f64 / self.kept.max(1) as f64
    }

    /// Adds another count.
    pub fn add(&mut self, other: &GateStats) {
        self.entries += other.entries;
        self.kept += other.kept;
        self.exact += other.exact;
        self.hits += other.hits;
    }
}

/// A sparse FFN as a forward hook: zeroes the hidden entries its gate drops, and counts them
/// against the exact set when one is given.
pub struct SparseFfn<'a> {
    score: NeuronScore<'a>,
    mask: &'a FfnMask,
    exact: Option<&'a FfnMask>,
    /// Counts per layer.
    pub stats: Vec<GateStats>,
}

impl<'a> SparseFfn<'a> {
    /// A hook that keeps what `mask` keeps by `score`; `exact` (an oracle mask of single
    /// neurons) defines the exact set for recall and precision.
    pub fn new(score: NeuronScore<'a>, mask: &'a FfnMask, exact: Option<&'a FfnMask>) -> Self {
        Self {
            score,
            mask,
            exact,
            stats: vec![GateStats::default(); mask.thresholds.len()],
        }
    }

    /// Masks one block's hidden values (the body of a [`ForwardOptions::ffn_hook`]).
    pub fn apply(&mut self, acts: &mut FfnActivations<'_>) {
        let l = acts.layer;
        if l >= self.mask.thresholds.len() {
            return;
        }
        let t = acts.tokens;
        let f = acts.gate.len() / t.max(1);
        let all_kept = self.mask.thresholds[l] == f64::NEG_INFINITY;
        let scores = if all_kept {
            Vec::new()
        } else {
            self.score.scores(l, t, acts.input, acts.gate, acts.up)
        };
        let exact_scores = self
            .exact
            .map(|_| NeuronScore::Oracle.scores(l, t, acts.input, acts.gate, acts.up));
        let mut keep = vec![true; f];
        let mut exact = vec![false; f];
        let stats = &mut self.stats[l];
        for r in 0..t {
            if !all_kept {
                self.mask
                    .keep_row(l, &scores[r * f..(r + 1) * f], &mut keep);
            }
            if let (Some(mask), Some(es)) = (self.exact, &exact_scores) {
                mask.keep_row(l, &es[r * f..(r + 1) * f], &mut exact);
            }
            for (j, &k) in keep.iter().enumerate() {
                if !k {
                    acts.hidden[r * f + j] = 0.0;
                }
            }
            stats.entries += f as u64;
            stats.kept += keep.iter().filter(|&&k| k).count() as u64;
            if self.exact.is_some() {
                stats.exact += exact.iter().filter(|&&e| e).count() as u64;
                stats.hits += keep.iter().zip(&exact).filter(|(&k, &e)| k && e).count() as u64;
            }
        }
    }

    /// All layers' counts together.
    pub fn total(&self) -> GateStats {
        let mut all = GateStats::default();
        for s in &self.stats {
            all.add(s);
        }
        all
    }
}

/// Per-layer counts of a gate (`score` + `mask`) against the exact set (`exact`) on the sampled
/// calibration rows `rows`, without running the model.
pub fn gate_quality(
    score: NeuronScore<'_>,
    mask: &FfnMask,
    exact: &FfnMask,
    data: &CalibrationData,
    model: &Model,
    rows: std::ops::Range<usize>,
) -> Vec<GateStats> {
    let mut hook = SparseFfn::new(score, mask, Some(exact));
    for l in 0..data.layers.len() {
        let (gate, up) = data.preactivations(model, l, rows.clone());
        let mut hidden = vec![0.0f32; gate.len()];
        hook.apply(&mut FfnActivations {
            layer: l,
            tokens: rows.len(),
            input: data.inputs(l, rows.clone()),
            gate: &gate,
            up: &up,
            hidden: &mut hidden,
        });
    }
    hook.stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_rejects() {
        assert_eq!("off".parse::<SparsitySpec>().unwrap(), SparsitySpec::off());
        assert_eq!("ffn=0.5".parse::<SparsitySpec>().unwrap().ffn, Some(0.5));
        let both: SparsitySpec = "ffn=0.5, heads=0.11".parse().unwrap();
        assert_eq!((both.ffn, both.heads), (Some(0.5), Some(0.11)));
        assert_eq!(both.to_string().parse::<SparsitySpec>().unwrap(), both);
        for bad in [
            "ffn",
            "ffn=x",
            "ffn=1.5",
            "head=0.1",
            "heads=0.1,heads=0.2",
            "ffn=0.5,ffn=0.2",
            "",
        ] {
            let e = bad.parse::<SparsitySpec>().unwrap_err().to_string();
            assert!(e.contains("sparsity"), "{bad}: {e}");
        }
    }

    #[test]
    fn quantizer_covers_its_range_and_wraps_beyond() {
        let f = 12;
        for bits in MIN_GATE_BITS..=MAX_GATE_BITS {
            let q = Quantizer::covering(49.0, bits, f).unwrap();
            assert!(q.mult < 1 << 16 && q.mult >= 1 << 14, "{q:?}");
            let top = signed_code(q.code_of(49.0, f, bits), bits);
            assert!(
                (top - ((1 << (bits - 1)) - 1)).abs() <= 1,
                "bits {bits}: {top}"
            );
            let bottom = signed_code(q.code_of(-49.0, f, bits), bits);
            assert!(bottom <= -(1 << (bits - 1)) + 1, "bits {bits}: {bottom}");
            assert_eq!(q.code_of(0.0, f, bits), 0);
            // Exactly the floor of v·mult/2^shift.
            let v = -123_456_789i64;
            let want = ((v as i128 * q.mult as i128 + (1 << (q.shift - 1))) >> q.shift) as i64;
            assert_eq!(q.code_of_fixed(v, bits) as i64, want.rem_euclid(1 << bits));
        }
        assert!(Quantizer::covering(0.0, 6, f).is_err());
        assert!(Quantizer::covering(1.0, 9, f).is_err());
        assert!(Quantizer::covering(1.0, 1, f).is_err());
    }

    #[test]
    fn table_matches_the_decision() {
        let f = 12;
        let bits = 5;
        let layer = SelfGateLayer {
            gate: Quantizer::covering(8.0, bits, f).unwrap(),
            up: Quantizer::covering(4.0, bits, f).unwrap(),
            threshold: 0.5,
        };
        let gate = SelfGate {
            version: SELF_GATE_VERSION,
            model_sha256: "x".into(),
            frac_bits: f,
            bits,
            sparsity: 0.5,
            layers: vec![layer],
        };
        gate.validate(1).unwrap();
        let table = gate.table(0);
        for g in 0..32 {
            for u in 0..32 {
                assert_eq!(table[g as usize] >> u & 1 == 1, gate.keep_codes(0, g, u));
                assert_eq!(gate.table_row_words(), 1);
            }
        }
        assert!(gate.keep(0, 6.0, 3.0));
        assert!(!gate.keep(0, 0.01, 0.01));
        assert!(gate.validate(2).is_err());
    }

    #[test]
    fn load_checks_the_model_hash() {
        let dir = std::env::temp_dir().join(format!("comet-gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gate.json");
        let gate = SelfGate {
            version: SELF_GATE_VERSION,
            model_sha256: "abc".into(),
            frac_bits: 12,
            bits: 6,
            sparsity: 0.5,
            layers: vec![],
        };
        gate.save(&path).unwrap();
        assert_eq!(SelfGate::load(&path, "abc", 0).unwrap(), gate);
        let e = SelfGate::load(&path, "def", 0).unwrap_err().to_string();
        assert!(e.contains("calibrated for model abc"), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(SelfGate::load(&path, "abc", 0)
            .unwrap_err()
            .to_string()
            .contains("malformed"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
