//! The trained sparsity predictor (Deja Vu style, DESIGN.md §7.3): per layer a small MLP from
//! the FFN input `x` (d_model) through `hidden` ReLU units to one logit per FFN neuron,
//! trained with candle (AdamW, recall-weighted binary cross-entropy) to predict the exact set
//! (neurons whose |SiLU(gate)·up| exceeds the layer's calibrated threshold).
//!
//! The same file format and MLP also predict attention heads ([`crate::heads::HeadPredictor`],
//! header `target: "heads"`): then the input is the normed attention input and the outputs
//! are the query heads.
//!
//! File format (`comet train-predictor --out`): the 8 bytes `COMETMLP`, a little-endian u32
//! header length, a JSON header ([`PredictorHeader`]: version, target, model SHA-256, shapes,
//! per-layer thresholds), then per layer `w1 [hidden, d]`, `b1 [hidden]`, `w2 [outputs, hidden]`,
//! `b2 [outputs]` as little-endian f32 (`outputs` = the header's `ffn_dim`: FFN neurons for
//! target `ffn`, query heads for target `heads`).

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use comet_core::Prg;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::forward::Model;
use crate::linalg;
use crate::sparsity::{CalibrationData, FfnMask, NeuronScore};

/// Version of the predictor file format.
pub const PREDICTOR_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"COMETMLP";

/// What a predictor file predicts (its header's `target`; files without one are FFN predictors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictorTarget {
    /// FFN neurons, from the normed FFN input ([`Predictor`]).
    #[default]
    Ffn,
    /// Attention query heads, from the normed attention input
    /// ([`crate::heads::HeadPredictor`]).
    Heads,
}

impl PredictorTarget {
    /// What the outputs are, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            PredictorTarget::Ffn => "FFN neurons (target ffn)",
            PredictorTarget::Heads => "attention heads (target heads)",
        }
    }
}

impl std::fmt::Display for PredictorTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PredictorTarget::Ffn => "ffn",
            PredictorTarget::Heads => "heads",
        })
    }
}

/// One layer's predictor: `logits = W2 · ReLU(W1 · x + b1) + b2`; neuron `j` is kept when
/// `logits[j] > threshold`.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictorLayer {
    /// `[hidden, d_model]`, row-major.
    pub w1: Vec<f32>,
    /// `[hidden]`.
    pub b1: Vec<f32>,
    /// `[ffn_dim, hidden]`, row-major.
    pub w2: Vec<f32>,
    /// `[ffn_dim]`.
    pub b2: Vec<f32>,
    /// Logit threshold, calibrated so the kept fraction on the training rows is `1 − sparsity`.
    pub threshold: f64,
}

/// The JSON header of a predictor file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictorHeader {
    /// [`PREDICTOR_VERSION`].
    pub version: u32,
    /// What the outputs predict (absent in older files: FFN neurons).
    #[serde(default)]
    pub target: PredictorTarget,
    /// SHA-256 (hex) of the model file it was trained on.
    pub model_sha256: String,
    /// Input width.
    pub d_model: usize,
    /// Hidden ReLU units.
    pub hidden: usize,
    /// Outputs: FFN neurons (target `ffn`) or query heads (target `heads`).
    pub ffn_dim: usize,
    /// Target fraction skipped.
    pub sparsity: f64,
    /// One threshold per layer.
    pub thresholds: Vec<f64>,
}

/// A trained predictor for every layer of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictor {
    /// SHA-256 (hex) of the model file it was trained on.
    pub model_sha256: String,
    /// Input width.
    pub d_model: usize,
    /// Hidden ReLU units.
    pub hidden: usize,
    /// Outputs: FFN neurons here; query heads inside a [`crate::heads::HeadPredictor`].
    pub ffn_dim: usize,
    /// Target fraction skipped.
    pub sparsity: f64,
    /// One entry per block.
    pub layers: Vec<PredictorLayer>,
}

/// Training settings of [`Predictor::train`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainOptions {
    /// Hidden ReLU units.
    pub hidden: usize,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Rows per optimizer step.
    pub batch: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Weight of the positive (exact-set) term of the loss; > 1 favours recall.
    pub positive_weight: f64,
    /// Target fraction of entries skipped.
    pub sparsity: f64,
    /// Fraction of the sampled rows held out for the reported recall/precision.
    pub validation_fraction: f64,
    /// Seed of the initialisation and the batch order.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            hidden: 256,
            epochs: 4,
            batch: 256,
            learning_rate: 2e-3,
            positive_weight: 2.0,
            sparsity: 0.5,
            validation_fraction: 0.1,
            seed: 1,
        }
    }
}

impl TrainOptions {
    /// The training rows and the held-out validation rows among `rows` sampled rows (the
    /// validation rows are the last ones; empty when the validation fraction is 0).
    pub fn split(&self, rows: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let held_out = ((rows as f64 * self.validation_fraction).round() as usize).min(rows);
        (0..rows - held_out, rows - held_out..rows)
    }

    /// Checks the settings for training `what` on `rows` sampled rows; returns the number of
    /// training rows.
    pub(crate) fn training_rows(&self, what: &str, rows: usize) -> Result<usize> {
        if self.hidden == 0 || self.epochs == 0 || self.batch == 0 {
            return Err(ModelError::InvalidInput(format!(
                "{what}: hidden units, epochs and batch size must be at least 1"
            )));
        }
        if !(self.learning_rate > 0.0 && self.positive_weight > 0.0) {
            return Err(ModelError::InvalidInput(format!(
                "{what}: learning rate and positive weight must be positive"
            )));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(ModelError::InvalidInput(format!(
                "{what}: the validation fraction must be in [0, 1)"
            )));
        }
        let train_rows = self.split(rows).0.end;
        if train_rows == 0 {
            return Err(ModelError::InvalidInput(format!(
                "{what}: no calibration rows left for training"
            )));
        }
        Ok(train_rows)
    }
}

/// What training one layer left: the mean loss of the last epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerTraining {
    /// Mean weighted BCE over the last epoch's batches.
    pub final_loss: f64,
}

pub(crate) fn candle_err(e: candle_core::Error) -> ModelError {
    ModelError::InvalidInput(format!("predictor training: {e}"))
}

impl Predictor {
    /// Trainable parameters per layer.
    pub fn parameters_per_layer(&self) -> usize {
        self.hidden * (self.d_model + 1) + self.ffn_dim * (self.hidden + 1)
    }

    /// Estimated online bytes per token and layer, each way, of evaluating the predictor
    /// securely: the opened input of both products, 8 bytes per ring element.
    pub fn secure_bytes_per_token(&self) -> usize {
        8 * (self.d_model + self.hidden)
    }

    /// The logits of layer `l` for `rows` inputs `[rows, d_model]`, `[rows, ffn_dim]`.
    pub fn logits(&self, l: usize, input: &[f32], rows: usize) -> Vec<f32> {
        let p = &self.layers[l];
        let mut h = linalg::matmul_nt_many(input, rows, self.d_model, &[(&p.w1, self.hidden)])
            .pop()
            .unwrap_or_default();
        for row in h.chunks_exact_mut(self.hidden) {
            for (v, b) in row.iter_mut().zip(&p.b1) {
                *v = (*v + b).max(0.0);
            }
        }
        let mut out = linalg::matmul_nt_many(&h, rows, self.hidden, &[(&p.w2, self.ffn_dim)])
            .pop()
            .unwrap_or_default();
        for row in out.chunks_exact_mut(self.ffn_dim) {
            for (v, b) in row.iter_mut().zip(&p.b2) {
                *v += b;
            }
        }
        out
    }

    /// Keep decisions of layer `l` for one token's FFN input.
    pub fn keep(&self, l: usize, input: &[f32]) -> Vec<bool> {
        let t = self.layers[l].threshold;
        self.logits(l, input, 1)
            .into_iter()
            .map(|z| z as f64 > t)
            .collect()
    }

    /// The mask that applies the stored thresholds to single neurons.
    pub fn mask(&self) -> FfnMask {
        FfnMask {
            block: 1,
            thresholds: self.layers.iter().map(|l| l.threshold).collect(),
        }
    }

    /// Trains one predictor per layer on the sampled rows of `data`: labels are the exact set
    /// at `options.sparsity` (per-layer threshold on |SiLU(gate)·up| over the sampled rows);
    /// the last `validation_fraction` of the rows are left out of training. `progress` gets
    /// `(layer, epoch)` after each epoch.
    pub fn train(
        data: &CalibrationData,
        model: &Model,
        model_sha256: &str,
        options: &TrainOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Self, Vec<LayerTraining>)> {
        data.check(model)?;
        let train_rows = options.training_rows("predictor", data.rows())?;
        let exact = FfnMask::calibrate_rows(
            NeuronScore::Oracle,
            data,
            model,
            options.sparsity,
            1,
            0..train_rows,
        )?;
        let (d, f, hid) = (data.d_model, data.ffn_dim, options.hidden);
        let mut prg = Prg::from_seed(seed_bytes(options.seed));
        let mut layers = Vec::with_capacity(data.layers.len());
        let mut reports = Vec::with_capacity(data.layers.len());
        for l in 0..data.layers.len() {
            let (gate, up) = data.preactivations(model, l, 0..train_rows);
            let scores = NeuronScore::Oracle.scores(l, train_rows, &[], &gate, &up);
            let t = exact.thresholds[l];
            let labels: Vec<f32> = scores.iter().map(|&s| f32::from(u8::from(s > t))).collect();
            let inputs = data.inputs(l, 0..train_rows);
            let (layer, report) = train_layer(
                inputs,
                &labels,
                train_rows,
                (d, hid, f),
                options,
                &mut prg,
                &mut |e| progress(l, e),
            )
            .map_err(candle_err)?;
            layers.push(layer);
            reports.push(report);
        }
        let mut predictor = Predictor {
            model_sha256: model_sha256.to_string(),
            d_model: d,
            hidden: hid,
            ffn_dim: f,
            sparsity: options.sparsity,
            layers,
        };
        let mask = FfnMask::calibrate_rows(
            NeuronScore::Predictor(&predictor),
            data,
            model,
            options.sparsity,
            1,
            0..train_rows,
        )?;
        for (layer, t) in predictor.layers.iter_mut().zip(mask.thresholds) {
            layer.threshold = t;
        }
        Ok((predictor, reports))
    }

    /// Writes the predictor file (target `ffn`).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_as(path, PredictorTarget::Ffn)
    }

    /// Writes the predictor file with header target `target`.
    pub(crate) fn save_as(&self, path: &Path, target: PredictorTarget) -> Result<()> {
        let header = PredictorHeader {
            version: PREDICTOR_VERSION,
            target,
            model_sha256: self.model_sha256.clone(),
            d_model: self.d_model,
            hidden: self.hidden,
            ffn_dim: self.ffn_dim,
            sparsity: self.sparsity,
            thresholds: self.layers.iter().map(|l| l.threshold).collect(),
        };
        let json = serde_json::to_vec(&header).expect("predictor header serialises");
        let mut bytes = Vec::with_capacity(
            12 + json.len() + 4 * self.layers.len() * self.parameters_per_layer(),
        );
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&json);
        for layer in &self.layers {
            for v in [&layer.w1, &layer.b1, &layer.w2, &layer.b2] {
                for x in v.iter() {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        std::fs::write(path, bytes).map_err(|e| {
            ModelError::InvalidInput(format!(
                "cannot write predictor file {}: {e}",
                path.display()
            ))
        })
    }

    /// Reads an FFN predictor file (target `ffn`; a head predictor file is rejected) and
    /// checks that it belongs to the model with hash `model_sha256`, `n_layers` blocks, FFN
    /// input width `d_model` and `ffn_dim` neurons.
    pub fn load(
        path: &Path,
        model_sha256: &str,
        n_layers: usize,
        d_model: usize,
        ffn_dim: usize,
    ) -> Result<Self> {
        Self::load_as(
            path,
            PredictorTarget::Ffn,
            model_sha256,
            n_layers,
            d_model,
            ffn_dim,
        )
    }

    /// The header of a predictor file (to learn its target before loading it).
    pub fn read_header(path: &Path) -> Result<PredictorHeader> {
        let bytes = std::fs::read(path).map_err(|e| {
            ModelError::InvalidInput(format!(
                "predictor file {}: cannot read: {e}",
                path.display()
            ))
        })?;
        Ok(parse_header(path, &bytes)?.0)
    }

    /// Reads a predictor file whose header target must be `target`, with `outputs` outputs.
    pub(crate) fn load_as(
        path: &Path,
        target: PredictorTarget,
        model_sha256: &str,
        n_layers: usize,
        d_model: usize,
        ffn_dim: usize,
    ) -> Result<Self> {
        let bad = |why: String| {
            ModelError::InvalidInput(format!("predictor file {}: {why}", path.display()))
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let (header, header_len) = parse_header(path, &bytes)?;
        if header.target != target {
            return Err(bad(format!(
                "it predicts {}, but {} are needed here",
                header.target.describe(),
                target.describe()
            )));
        }
        if header.model_sha256 != model_sha256 {
            return Err(bad(format!(
                "trained for model {}, not for this model ({model_sha256})",
                header.model_sha256
            )));
        }
        if header.thresholds.len() != n_layers
            || header.d_model != d_model
            || header.ffn_dim != ffn_dim
            || header.hidden == 0
        {
            return Err(bad(format!(
                "shaped for {} layers, d_model {}, {} outputs (hidden {}); the model has {n_layers} layers, d_model {d_model}, {ffn_dim} {}",
                header.thresholds.len(),
                header.d_model,
                header.ffn_dim,
                header.hidden,
                target.describe()
            )));
        }
        if header.thresholds.iter().any(|t| t.is_nan()) {
            return Err(bad("a threshold is not a number".into()));
        }
        let hid = header.hidden;
        let per_layer = hid * (d_model + 1) + ffn_dim * (hid + 1);
        let data = &bytes[12 + header_len..];
        let expected = per_layer
            .checked_mul(n_layers)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| bad("sizes overflow".into()))?;
        if data.len() != expected {
            return Err(bad(format!(
                "{} bytes of weights, expected {expected}",
                data.len()
            )));
        }
        let mut floats = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut take = |n: usize| -> Vec<f32> { floats.by_ref().take(n).collect() };
        let mut layers = Vec::with_capacity(n_layers);
        for &threshold in &header.thresholds {
            layers.push(PredictorLayer {
                w1: take(hid * d_model),
                b1: take(hid),
                w2: take(ffn_dim * hid),
                b2: take(ffn_dim),
                threshold,
            });
        }
        Ok(Self {
            model_sha256: header.model_sha256,
            d_model,
            hidden: hid,
            ffn_dim,
            sparsity: header.sparsity,
            layers,
        })
    }
}

/// Checks the magic and version and parses the JSON header; returns it with its length.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(PredictorHeader, usize)> {
    let bad =
        |why: String| ModelError::InvalidInput(format!("predictor file {}: {why}", path.display()));
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(bad("not a comet predictor file (bad magic)".into()));
    }
    let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let body = bytes
        .get(12..12usize.saturating_add(header_len))
        .ok_or_else(|| bad("truncated header".into()))?;
    let header: PredictorHeader =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed header: {e}")))?;
    if header.version != PREDICTOR_VERSION {
        return Err(bad(format!(
            "version {} (this build reads version {PREDICTOR_VERSION})",
            header.version
        )));
    }
    Ok((header, header_len))
}

pub(crate) fn seed_bytes(seed: u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..].copy_from_slice(b"predictr");
    s
}

/// Uniform values in `[-bound, bound]` from the PRG (deterministic initialisation).
fn uniform(prg: &mut Prg, n: usize, bound: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let unit = (prg.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * bound
        })
        .collect()
}

/// `softplus(z) = log(1 + e^z)`, computed stably as `relu(z) + log(1 + e^(−|z|))`.
fn softplus(z: &Tensor) -> candle_core::Result<Tensor> {
    z.relu()? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?
}

pub(crate) fn train_layer(
    inputs: &[f32],
    labels: &[f32],
    rows: usize,
    (d, hid, f): (usize, usize, usize),
    options: &TrainOptions,
    prg: &mut Prg,
    progress: &mut dyn FnMut(usize),
) -> candle_core::Result<(PredictorLayer, LayerTraining)> {
    let dev = Device::Cpu;
    let x_all = Tensor::from_slice(inputs, (rows, d), &dev)?;
    let y_all = Tensor::from_slice(labels, (rows, f), &dev)?;
    let w1 = Var::from_tensor(&Tensor::from_vec(
        uniform(prg, hid * d, (1.0 / d as f32).sqrt()),
        (hid, d),
        &dev,
    )?)?;
    let b1 = Var::zeros(hid, DType::F32, &dev)?;
    let w2 = Var::from_tensor(&Tensor::from_vec(
        uniform(prg, f * hid, (1.0 / hid as f32).sqrt()),
        (f, hid),
        &dev,
    )?)?;
    // Start from the base rate's logit.
    let base = (1.0 - options.sparsity).clamp(1e-3, 1.0 - 1e-3);
    let b2 = Var::from_tensor(&Tensor::full((base / (1.0 - base)).ln() as f32, f, &dev)?)?;
    let mut opt = AdamW::new(
        vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()],
        ParamsAdamW {
            lr: options.learning_rate,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let mut final_loss = 0.0;
    for epoch in 0..options.epochs {
        let order = prg.gen_permutation(rows);
        let (mut sum, mut batches) = (0.0, 0usize);
        for batch in order.chunks(options.batch) {
            let idx: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
            let idx = Tensor::from_vec(idx, batch.len(), &dev)?;
            let x = x_all.index_select(&idx, 0)?;
            let y = y_all.index_select(&idx, 0)?;
            let h = x
                .matmul(&w1.as_tensor().t()?)?
                .broadcast_add(b1.as_tensor())?
                .relu()?;
            let z = h
                .matmul(&w2.as_tensor().t()?)?
                .broadcast_add(b2.as_tensor())?;
            // Weighted BCE: w·y·softplus(−z) + (1 − y)·softplus(z).
            let pos = (y.clone() * softplus(&z.neg()?)?)?.affine(options.positive_weight, 0.0)?;
            let neg = (y.affine(-1.0, 1.0)? * softplus(&z)?)?;
            let loss = (pos + neg)?.mean_all()?;
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()? as f64;
            batches += 1;
        }
        final_loss = sum / batches.max(1) as f64;
        progress(epoch + 1);
    }
    let flat = |v: &Var| v.as_tensor().flatten_all()?.to_vec1::<f32>();
    Ok((
        PredictorLayer {
            w1: flat(&w1)?,
            b1: flat(&b1)?,
            w2: flat(&w2)?,
            b2: flat(&b2)?,
            threshold: 0.0,
        },
        LayerTraining { final_loss },
    ))
}
