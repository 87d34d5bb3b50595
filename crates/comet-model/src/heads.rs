//! Attention-head sparsity (issue 9, DESIGN.md §7): which query heads a token can skip.
//!
//! A head's importance for one token is the norm of what it adds to the residual stream,
//! `‖Wo[:, h·hd..(h+1)·hd] · o_h‖₂` ([`HeadNorms`]). The *oracle* keeps the heads whose true
//! contribution is large: per token the `n − k` largest ([`HeadMask::TopK`]), or per layer
//! those above a threshold calibrated so that the mean skipped fraction is the target
//! ([`HeadMask::Threshold`]; the count per token varies), or whole key/value groups
//! ([`HeadMask::Groups`]). The trained [`HeadPredictor`] (the Deja Vu MLP of
//! [`crate::predictor`], file target `heads`) predicts the threshold oracle's set from the
//! normed attention input, before any attention work, which is what the secure engine needs.
//! [`SparseHeads`] applies a gate through [`ForwardOptions::attn_hook`] by zeroing the skipped
//! heads' outputs (exactly what skipping a head's scores, softmax and value product does to
//! the layer's output), and [`FixedHeadMasks`] replays given decisions.

use std::path::Path;

use comet_core::Prg;
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::forward::{AttnActivations, FfnActivations, ForwardOptions, LogitsMode, Model};
use crate::predictor::{
    candle_err, seed_bytes, train_layer, LayerTraining, Predictor, PredictorTarget, TrainOptions,
};
use crate::sparsity::{threshold_keeping, CalibrationData, GateStats};

/// Per layer and head the Gram matrix `W_hᵀ·W_h` of the head's slice `W_h` of the output
/// projection, so that a head's contribution norm is `sqrt(o_hᵀ·G_h·o_h)` (9× cheaper than
/// projecting each head through `Wo` on SmolLM2).
#[derive(Clone, Debug)]
pub struct HeadNorms {
    n_heads: usize,
    head_dim: usize,
    /// Per layer `[n_heads, head_dim, head_dim]`, row-major.
    grams: Vec<Vec<f32>>,
}

impl HeadNorms {
    /// The Gram matrices of every layer of `model`.
    pub fn new(model: &Model) -> Self {
        let c = model.config();
        let (n, hd) = (c.n_heads, c.head_dim);
        let grams = model
            .weights()
            .layers
            .par_iter()
            .map(|layer| {
                let wo = &layer.wo;
                let mut g = vec![0.0f32; n * hd * hd];
                for h in 0..n {
                    let block = &mut g[h * hd * hd..(h + 1) * hd * hd];
                    for r in 0..wo.rows {
                        let row = &wo.row(r)[h * hd..(h + 1) * hd];
                        for (i, &a) in row.iter().enumerate() {
                            for (j, &b) in row.iter().enumerate() {
                                block[i * hd + j] += a * b;
                            }
                        }
                    }
                }
                g
            })
            .collect();
        Self {
            n_heads: n,
            head_dim: hd,
            grams,
        }
    }

    /// Query heads per layer.
    pub fn n_heads(&self) -> usize {
        self.n_heads
    }

    /// Contribution norms `‖W_h·o_h‖₂` of layer `l` for `tokens` rows of per-head attention
    /// outputs `heads` (`[tokens, n_heads·head_dim]`), `[tokens, n_heads]`.
    pub fn contributions(&self, l: usize, heads: &[f32], tokens: usize) -> Vec<f64> {
        let (n, hd) = (self.n_heads, self.head_dim);
        let gram = &self.grams[l];
        let width = n * hd;
        let mut out = vec![0.0f64; tokens * n];
        out.par_chunks_mut(n)
            .zip(heads[..tokens * width].par_chunks(width))
            .for_each(|(norms, row)| {
                for (h, norm) in norms.iter_mut().enumerate() {
                    let o = &row[h * hd..(h + 1) * hd];
                    let g = &gram[h * hd * hd..(h + 1) * hd * hd];
                    let mut q = 0.0f64;
                    for (i, &oi) in o.iter().enumerate() {
                        let gi = &g[i * hd..(i + 1) * hd];
                        let s: f32 = gi.iter().zip(o).map(|(a, b)| a * b).sum();
                        q += oi as f64 * s as f64;
                    }
                    *norm = q.max(0.0).sqrt();
                }
            });
        out
    }
}

/// Which heads a token keeps, per layer, given one score per head (larger = more worth keeping).
#[derive(Clone, Debug, PartialEq)]
pub enum HeadMask {
    /// Head `h` is kept when its score exceeds the layer's threshold (one per layer).
    Threshold(Vec<f64>),
    /// Every token skips exactly the `skip` heads of smallest score (ties: the higher index).
    TopK {
        /// Heads skipped per token.
        skip: usize,
    },
    /// Whole key/value groups of `group_size` consecutive query heads: a group is kept when the
    /// sum of its heads' scores exceeds the layer's threshold.
    Groups {
        /// Query heads per key/value group.
        group_size: usize,
        /// One threshold per layer.
        thresholds: Vec<f64>,
    },
}

impl HeadMask {
    /// Keeps every head of `n_layers` layers (the dense forward).
    pub fn keep_all(n_layers: usize) -> Self {
        Self::Threshold(vec![f64::NEG_INFINITY; n_layers])
    }

    /// The fixed-count rule skipping `round(sparsity · n_heads)` heads per token.
    pub fn top_k(n_heads: usize, sparsity: f64) -> Result<Self> {
        check_fraction(sparsity)?;
        Ok(Self::TopK {
            skip: ((sparsity * n_heads as f64).round() as usize).min(n_heads),
        })
    }

    /// Per-layer thresholds on `score` that keep a fraction `1 − sparsity` of the sampled
    /// (token, head) entries of `data` in the rows `rows`.
    pub fn calibrate_threshold(
        score: HeadScore<'_>,
        data: &HeadCalibration,
        sparsity: f64,
        rows: std::ops::Range<usize>,
    ) -> Result<Self> {
        check_fraction(sparsity)?;
        data.check_rows(&rows)?;
        let thresholds = (0..data.layers.len())
            .map(|l| {
                let mut s = data.scores(score, l, rows.clone());
                threshold_keeping(&mut s, 1.0 - sparsity)
            })
            .collect();
        Ok(Self::Threshold(thresholds))
    }

    /// Per-layer thresholds on group scores (sum over the group's heads) that keep a fraction
    /// `1 − sparsity` of the sampled (token, group) entries: whole groups are skipped, and the
    /// mean skipped fraction of heads is `sparsity`.
    pub fn calibrate_groups(
        score: HeadScore<'_>,
        data: &HeadCalibration,
        sparsity: f64,
        rows: std::ops::Range<usize>,
    ) -> Result<Self> {
        check_fraction(sparsity)?;
        data.check_rows(&rows)?;
        let g = data.group_size;
        let thresholds = (0..data.layers.len())
            .map(|l| {
                let s = data.scores(score, l, rows.clone());
                let mut groups: Vec<f64> = s.chunks(g).map(|c| c.iter().sum()).collect();
                threshold_keeping(&mut groups, 1.0 - sparsity)
            })
            .collect();
        Ok(Self::Groups {
            group_size: g,
            thresholds,
        })
    }

    /// Whether this mask keeps every head of layer `l` whatever the scores.
    pub fn keeps_all(&self, l: usize) -> bool {
        match self {
            Self::Threshold(t) => t.get(l).is_none_or(|&t| t == f64::NEG_INFINITY),
            Self::TopK { skip } => *skip == 0,
            Self::Groups { thresholds, .. } => {
                thresholds.get(l).is_none_or(|&t| t == f64::NEG_INFINITY)
            }
        }
    }

    /// Writes the keep decision of every head of one token of layer `l` into `keep`
    /// (`scores` and `keep` have one entry per head).
    pub fn keep_row(&self, l: usize, scores: &[f64], keep: &mut [bool]) {
        match self {
            Self::Threshold(t) => {
                let t = t.get(l).copied().unwrap_or(f64::NEG_INFINITY);
                for (k, &s) in keep.iter_mut().zip(scores) {
                    *k = s > t;
                }
            }
            Self::TopK { skip } => {
                let mut order: Vec<usize> = (0..scores.len()).collect();
                // Ascending score; among equal scores the higher index is dropped first.
                order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
                keep.fill(true);
                for &h in order.iter().take(*skip) {
                    keep[h] = false;
                }
            }
            Self::Groups {
                group_size,
                thresholds,
            } => {
                let t = thresholds.get(l).copied().unwrap_or(f64::NEG_INFINITY);
                for (k, s) in keep.chunks_mut(*group_size).zip(scores.chunks(*group_size)) {
                    k.fill(s.iter().sum::<f64>() > t);
                }
            }
        }
    }
}

/// The per-head score a head gate thresholds.
#[derive(Clone, Copy, Debug)]
pub enum HeadScore<'a> {
    /// The true contribution norm (defines the exact set; needs the heads' outputs).
    Oracle(&'a HeadNorms),
    /// A trained head predictor's logits from the normed attention input.
    Predictor(&'a HeadPredictor),
}

impl HeadScore<'_> {
    /// Scores of `tokens` rows of layer `l`, `[tokens, n_heads]`, from the normed attention
    /// input (`[tokens, d_model]`) and the per-head outputs (`[tokens, n_heads·head_dim]`).
    pub fn scores(&self, l: usize, tokens: usize, input: &[f32], heads: &[f32]) -> Vec<f64> {
        match self {
            HeadScore::Oracle(norms) => norms.contributions(l, heads, tokens),
            HeadScore::Predictor(p) => p
                .logits(l, input, tokens)
                .into_iter()
                .map(f64::from)
                .collect(),
        }
    }
}

/// What a dense pass over calibration text leaves for head gates: per layer the normed
/// attention inputs and the true head contribution norms of a sample of tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadCalibration {
    /// Width of the attention input.
    pub d_model: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Query heads per key/value group.
    pub group_size: usize,
    /// Tokens that went through the model.
    pub tokens: usize,
    /// One entry per block.
    pub layers: Vec<HeadLayerCalibration>,
    sample_every: usize,
}

/// Head calibration data of one block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadLayerCalibration {
    /// Sampled normed attention inputs, `[rows, d_model]`.
    pub inputs: Vec<f32>,
    /// Their heads' contribution norms, `[rows, n_heads]`.
    pub contributions: Vec<f64>,
    seen: usize,
}

impl HeadCalibration {
    /// Empty data for `model`, keeping every `sample_every`-th token.
    pub fn new(model: &Model, sample_every: usize) -> Self {
        let c = model.config();
        Self {
            d_model: c.d_model,
            n_heads: c.n_heads,
            group_size: c.group_size(),
            tokens: 0,
            layers: vec![HeadLayerCalibration::default(); c.n_layers],
            sample_every: sample_every.max(1),
        }
    }

    /// Records one block's attention activations (the body of a
    /// [`ForwardOptions::attn_hook`]); `norms` must belong to the same model.
    pub fn observe(&mut self, norms: &HeadNorms, acts: &AttnActivations<'_>) {
        let (d, n) = (self.d_model, self.n_heads);
        let every = self.sample_every;
        let Some(layer) = self.layers.get_mut(acts.layer) else {
            return;
        };
        let picked: Vec<usize> = (0..acts.tokens)
            .filter(|r| (layer.seen + r) % every == 0)
            .collect();
        if !picked.is_empty() {
            let width = acts.heads.len() / acts.tokens.max(1);
            let mut heads = Vec::with_capacity(picked.len() * width);
            for &r in &picked {
                layer
                    .inputs
                    .extend_from_slice(&acts.input[r * d..(r + 1) * d]);
                heads.extend_from_slice(&acts.heads[r * width..(r + 1) * width]);
            }
            let c = norms.contributions(acts.layer, &heads, picked.len());
            debug_assert_eq!(c.len(), picked.len() * n);
            layer.contributions.extend(c);
        }
        layer.seen += acts.tokens;
        if acts.layer == 0 {
            self.tokens += acts.tokens;
        }
    }

    /// Runs `model` densely over `tokens` in independent windows of `window` tokens and keeps
    /// about `max_rows` sampled rows per layer; when `ffn` is given, its FFN calibration data is
    /// collected in the same pass. `progress` gets the tokens done after each window.
    pub fn collect(
        model: &Model,
        tokens: &[u32],
        window: usize,
        max_rows: usize,
        mut ffn: Option<&mut CalibrationData>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidInput(
                "the calibration text has no tokens".into(),
            ));
        }
        let norms = HeadNorms::new(model);
        let window = window.clamp(1, model.config().context_length);
        let sample_every = tokens.len().div_ceil(max_rows.max(1));
        let mut data = Self::new(model, sample_every);
        let mut done = 0;
        for w in tokens.chunks(window) {
            let mut attn = |a: &mut AttnActivations<'_>| data.observe(&norms, a);
            let mut ffn_hook = ffn
                .as_deref_mut()
                .map(|f| move |a: &mut FfnActivations<'_>| f.observe(a));
            model.forward_with(
                w,
                &mut model.new_cache(),
                ForwardOptions {
                    logits: LogitsMode::Last,
                    attn_hook: Some(&mut attn),
                    ffn_hook: ffn_hook
                        .as_mut()
                        .map(|h| h as &mut dyn FnMut(&mut FfnActivations<'_>)),
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
        if self.d_model != c.d_model
            || self.n_heads != c.n_heads
            || self.layers.len() != c.n_layers
            || self.group_size != c.group_size()
        {
            return Err(ModelError::InvalidInput(
                "head calibration data belongs to another model".into(),
            ));
        }
        self.check_rows(&(0..self.rows()))
    }

    fn check_rows(&self, rows: &std::ops::Range<usize>) -> Result<()> {
        if rows.is_empty() || rows.end > self.rows() {
            return Err(ModelError::InvalidInput(format!(
                "head calibration rows {rows:?} out of the {} sampled",
                self.rows()
            )));
        }
        Ok(())
    }

    /// Sampled attention inputs of rows `rows` of layer `l`, `[n, d_model]`.
    pub fn inputs(&self, l: usize, rows: std::ops::Range<usize>) -> &[f32] {
        &self.layers[l].inputs[rows.start * self.d_model..rows.end * self.d_model]
    }

    /// True contribution norms of rows `rows` of layer `l`, `[n, n_heads]`.
    pub fn contributions(&self, l: usize, rows: std::ops::Range<usize>) -> &[f64] {
        &self.layers[l].contributions[rows.start * self.n_heads..rows.end * self.n_heads]
    }

    /// `score` of rows `rows` of layer `l`, `[n, n_heads]` (the oracle reads the stored norms).
    pub fn scores(&self, score: HeadScore<'_>, l: usize, rows: std::ops::Range<usize>) -> Vec<f64> {
        match score {
            HeadScore::Oracle(_) => self.contributions(l, rows).to_vec(),
            HeadScore::Predictor(p) => p
                .logits(l, self.inputs(l, rows.clone()), rows.len())
                .into_iter()
                .map(f64::from)
                .collect(),
        }
    }
}

/// A trained head predictor: the [`Predictor`] MLP of every layer from the normed attention
/// input (RMSNorm gain `attn_norm` applied, `d_model` values) to one logit per query head
/// (`mlp.ffn_dim` = `n_heads`); head `h` is kept when `logit_h > threshold` of its layer.
/// Stored in the predictor file format with header target `heads`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadPredictor {
    /// The per-layer MLPs and thresholds (`ffn_dim` holds the number of heads).
    pub mlp: Predictor,
}

impl HeadPredictor {
    /// Query heads predicted per layer.
    pub fn n_heads(&self) -> usize {
        self.mlp.ffn_dim
    }

    /// The logits of layer `l` for `rows` attention inputs `[rows, d_model]`, `[rows, n_heads]`.
    pub fn logits(&self, l: usize, input: &[f32], rows: usize) -> Vec<f32> {
        self.mlp.logits(l, input, rows)
    }

    /// Keep decisions of layer `l` for one token's normed attention input.
    pub fn keep(&self, l: usize, input: &[f32]) -> Vec<bool> {
        self.mlp.keep(l, input)
    }

    /// The mask that applies the stored per-layer thresholds to the logits.
    pub fn mask(&self) -> HeadMask {
        HeadMask::Threshold(self.mlp.layers.iter().map(|l| l.threshold).collect())
    }

    /// Estimated online bytes per token and layer, each way, of the secure predictor beyond
    /// the attention input's opening (shared with Q/K/V): the opened hidden ReLU outputs,
    /// 8 bytes per ring element.
    pub fn secure_bytes_per_token(&self) -> usize {
        8 * self.mlp.hidden
    }

    /// Trains one MLP per layer on the sampled rows of `data`: labels are the threshold
    /// oracle's set at `options.sparsity` (heads whose contribution norm exceeds the layer's
    /// threshold over the training rows); then each layer's logit threshold is set so that
    /// the mean skipped fraction on the training rows is `options.sparsity`. The last
    /// `validation_fraction` of the rows are left out. `progress` gets `(layer, epoch)`.
    pub fn train(
        data: &HeadCalibration,
        model: &Model,
        model_sha256: &str,
        options: &TrainOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Self, Vec<LayerTraining>)> {
        data.check(model)?;
        check_fraction(options.sparsity)?;
        let train_rows = options.training_rows("head predictor", data.rows())?;
        let norms = HeadNorms::new(model);
        let exact = exact_thresholds(&norms, data, options.sparsity, 0..train_rows)?;
        let (d, n, hid) = (data.d_model, data.n_heads, options.hidden);
        let mut prg = Prg::from_seed(seed_bytes(options.seed));
        let mut layers = Vec::with_capacity(data.layers.len());
        let mut reports = Vec::with_capacity(data.layers.len());
        for (l, &t) in exact.iter().enumerate() {
            let labels: Vec<f32> = data
                .contributions(l, 0..train_rows)
                .iter()
                .map(|&s| f32::from(u8::from(s > t)))
                .collect();
            let (layer, report) = train_layer(
                data.inputs(l, 0..train_rows),
                &labels,
                train_rows,
                (d, hid, n),
                options,
                &mut prg,
                &mut |e| progress(l, e),
            )
            .map_err(candle_err)?;
            layers.push(layer);
            reports.push(report);
        }
        let mut predictor = HeadPredictor {
            mlp: Predictor {
                model_sha256: model_sha256.to_string(),
                d_model: d,
                hidden: hid,
                ffn_dim: n,
                sparsity: options.sparsity,
                layers,
            },
        };
        let HeadMask::Threshold(thresholds) = HeadMask::calibrate_threshold(
            HeadScore::Predictor(&predictor),
            data,
            options.sparsity,
            0..train_rows,
        )?
        else {
            unreachable!("calibrate_threshold returns a threshold mask")
        };
        for (layer, t) in predictor.mlp.layers.iter_mut().zip(thresholds) {
            layer.threshold = t;
        }
        Ok((predictor, reports))
    }

    /// Writes the predictor file (header target `heads`).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.mlp.save_as(path, PredictorTarget::Heads)
    }

    /// Reads a head predictor file (an FFN predictor file is rejected) and checks that it
    /// belongs to the model with hash `model_sha256`, `n_layers` blocks, attention input
    /// width `d_model` and `n_heads` query heads.
    pub fn load(
        path: &Path,
        model_sha256: &str,
        n_layers: usize,
        d_model: usize,
        n_heads: usize,
    ) -> Result<Self> {
        Ok(Self {
            mlp: Predictor::load_as(
                path,
                PredictorTarget::Heads,
                model_sha256,
                n_layers,
                d_model,
                n_heads,
            )?,
        })
    }
}

/// The threshold oracle's per-layer thresholds on the true contribution norms.
fn exact_thresholds(
    norms: &HeadNorms,
    data: &HeadCalibration,
    sparsity: f64,
    rows: std::ops::Range<usize>,
) -> Result<Vec<f64>> {
    match HeadMask::calibrate_threshold(HeadScore::Oracle(norms), data, sparsity, rows)? {
        HeadMask::Threshold(t) => Ok(t),
        _ => unreachable!("calibrate_threshold returns a threshold mask"),
    }
}

fn check_fraction(sparsity: f64) -> Result<()> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(ModelError::InvalidInput(format!(
            "head sparsity {sparsity}: the fraction must be in [0, 1)"
        )));
    }
    Ok(())
}

/// Counts of a head gate over (token, head) entries, and of whole key/value groups skipped
/// (the K/V rows the secure engine would not write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadStats {
    /// Kept fraction, recall and precision against the exact set.
    pub gate: GateStats,
    /// (token, group) entries seen.
    pub groups: u64,
    /// (token, group) entries whose query heads were all skipped.
    pub groups_skipped: u64,
}

impl HeadStats {
    /// Adds another count.
    pub fn add(&mut self, other: &HeadStats) {
        self.gate.add(&other.gate);
        self.groups += other.groups;
        self.groups_skipped += other.groups_skipped;
    }

    /// Fraction of (token, group) entries fully skipped.
    pub fn group_skip_fraction(&self) -> f64 {
        self.groups_skipped as f64 / self.groups.max(1) as f64
    }
}

/// Zeroes the outputs of the heads not kept: `heads` is `[tokens, n_heads·head_dim]`, `keep`
/// is `[tokens, n_heads]`.
pub fn zero_skipped_heads(heads: &mut [f32], keep: &[bool], n_heads: usize) {
    let tokens = keep.len() / n_heads.max(1);
    let width = heads.len() / tokens.max(1);
    let hd = width / n_heads.max(1);
    for (row, k) in heads
        .chunks_exact_mut(width)
        .zip(keep.chunks_exact(n_heads))
    {
        for (o, &kept) in row.chunks_exact_mut(hd).zip(k) {
            if !kept {
                o.fill(0.0);
            }
        }
    }
}

/// Head decisions per layer and absolute position, replayed through the attention hook
/// (e.g. the plaintext reference of a secure run with given head masks). Positions without a
/// decision keep every head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FixedHeadMasks {
    /// Query heads per layer.
    pub n_heads: usize,
    /// Per layer `[positions, n_heads]`: `true` = head kept.
    pub keep: Vec<Vec<bool>>,
}

impl FixedHeadMasks {
    /// No decisions yet for `n_layers` layers of `n_heads` heads.
    pub fn new(n_layers: usize, n_heads: usize) -> Self {
        Self {
            n_heads,
            keep: vec![Vec::new(); n_layers],
        }
    }

    /// The decision of layer `l`, position `pos`, head `h` (kept when never decided).
    pub fn kept(&self, l: usize, pos: usize, h: usize) -> bool {
        self.keep
            .get(l)
            .and_then(|k| k.get(pos * self.n_heads + h))
            .copied()
            .unwrap_or(true)
    }

    /// Stores the decisions `keep` (`[tokens, n_heads]`) of layer `l` from position `start` on.
    pub fn record(&mut self, l: usize, start: usize, keep: &[bool]) {
        let n = self.n_heads;
        let Some(layer) = self.keep.get_mut(l) else {
            return;
        };
        let end = start * n + keep.len();
        if layer.len() < end {
            layer.resize(end, true);
        }
        layer[start * n..end].copy_from_slice(keep);
    }

    /// Zeroes the heads this replay skips (the body of a [`ForwardOptions::attn_hook`]).
    pub fn apply(&self, acts: &mut AttnActivations<'_>) {
        let n = self.n_heads;
        let keep: Vec<bool> = (0..acts.tokens * n)
            .map(|i| self.kept(acts.layer, acts.start + i / n, i % n))
            .collect();
        zero_skipped_heads(acts.heads, &keep, n);
    }
}

/// A head gate as a forward hook: zeroes the heads its mask drops (by `score`) and counts the
/// decisions against the exact set (the oracle threshold mask `exact`) when one is given.
pub struct SparseHeads<'a> {
    norms: &'a HeadNorms,
    score: HeadScore<'a>,
    mask: &'a HeadMask,
    exact: Option<&'a HeadMask>,
    group_size: usize,
    /// Counts per layer.
    pub stats: Vec<HeadStats>,
    /// The decisions taken, when recording (see [`SparseHeads::recording`]).
    pub decisions: Option<FixedHeadMasks>,
}

impl<'a> SparseHeads<'a> {
    /// A hook for `model` keeping what `mask` keeps by `score`; `exact` defines the exact set.
    pub fn new(
        model: &Model,
        norms: &'a HeadNorms,
        score: HeadScore<'a>,
        mask: &'a HeadMask,
        exact: Option<&'a HeadMask>,
    ) -> Self {
        let c = model.config();
        Self {
            norms,
            score,
            mask,
            exact,
            group_size: c.group_size(),
            stats: vec![HeadStats::default(); c.n_layers],
            decisions: None,
        }
    }

    /// Also records every decision into [`SparseHeads::decisions`].
    pub fn recording(mut self) -> Self {
        self.decisions = Some(FixedHeadMasks::new(self.stats.len(), self.norms.n_heads()));
        self
    }

    /// Masks one block's head outputs (the body of a [`ForwardOptions::attn_hook`]).
    pub fn apply(&mut self, acts: &mut AttnActivations<'_>) {
        let l = acts.layer;
        if l >= self.stats.len() {
            return;
        }
        let (t, n) = (acts.tokens, self.norms.n_heads());
        let needs_oracle = self.exact.is_some() || matches!(self.score, HeadScore::Oracle(_));
        let oracle = needs_oracle.then(|| self.norms.contributions(l, acts.heads, t));
        let all_kept = self.mask.keeps_all(l);
        let scores = match (&self.score, &oracle) {
            _ if all_kept => Vec::new(),
            (HeadScore::Oracle(_), Some(o)) => o.clone(),
            _ => self.score.scores(l, t, acts.input, acts.heads),
        };
        let mut keep = vec![true; t * n];
        let mut exact = vec![false; n];
        let stats = &mut self.stats[l];
        for r in 0..t {
            let k = &mut keep[r * n..(r + 1) * n];
            if !all_kept {
                self.mask.keep_row(l, &scores[r * n..(r + 1) * n], k);
            }
            if let (Some(mask), Some(o)) = (self.exact, &oracle) {
                mask.keep_row(l, &o[r * n..(r + 1) * n], &mut exact);
                stats.gate.exact += exact.iter().filter(|&&e| e).count() as u64;
                stats.gate.hits += k.iter().zip(&exact).filter(|(&a, &b)| a && b).count() as u64;
            }
            stats.gate.entries += n as u64;
            stats.gate.kept += k.iter().filter(|&&x| x).count() as u64;
            for group in k.chunks(self.group_size.max(1)) {
                stats.groups += 1;
                stats.groups_skipped += u64::from(group.iter().all(|&x| !x));
            }
        }
        zero_skipped_heads(acts.heads, &keep, n);
        if let Some(d) = &mut self.decisions {
            d.record(l, acts.start, &keep);
        }
    }

    /// All layers' counts together.
    pub fn total(&self) -> HeadStats {
        let mut all = HeadStats::default();
        for s in &self.stats {
            all.add(s);
        }
        all
    }
}

/// Per-layer counts of a head gate against the exact set on the sampled calibration rows
/// `rows` of `data`, without running the model (the oracle reads the stored norms).
pub fn head_gate_quality(
    score: HeadScore<'_>,
    mask: &HeadMask,
    exact: &HeadMask,
    data: &HeadCalibration,
    rows: std::ops::Range<usize>,
) -> Vec<HeadStats> {
    let n = data.n_heads;
    (0..data.layers.len())
        .map(|l| {
            let scores = data.scores(score, l, rows.clone());
            let oracle = data.contributions(l, rows.clone());
            let mut s = HeadStats::default();
            let (mut keep, mut ex) = (vec![true; n], vec![true; n]);
            for (row, orow) in scores.chunks_exact(n).zip(oracle.chunks_exact(n)) {
                mask.keep_row(l, row, &mut keep);
                exact.keep_row(l, orow, &mut ex);
                s.gate.entries += n as u64;
                s.gate.kept += keep.iter().filter(|&&k| k).count() as u64;
                s.gate.exact += ex.iter().filter(|&&e| e).count() as u64;
                s.gate.hits += keep.iter().zip(&ex).filter(|(&a, &b)| a && b).count() as u64;
                for g in keep.chunks(data.group_size.max(1)) {
                    s.groups += 1;
                    s.groups_skipped += u64::from(g.iter().all(|&k| !k));
                }
            }
            s
        })
        .collect()
}
