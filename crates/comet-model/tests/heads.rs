//! Attention-head sparsity on tiny random models: contribution norms against a direct
//! projection, oracle masks (exact counts, whole groups, calibrated fractions), zeroing heads
//! through the hook against models with the output projection cut, replay of recorded
//! decisions, and the head predictor (training above chance, file target and round trip).

use std::path::PathBuf;

use comet_model::heads::{
    head_gate_quality, FixedHeadMasks, HeadCalibration, HeadMask, HeadNorms, HeadPredictor,
    HeadScore, SparseHeads,
};
use comet_model::predictor::{Predictor, PredictorTarget, TrainOptions};
use comet_model::sparsity::CalibrationData;
use comet_model::{testing, AttnActivations, ForwardOptions, LogitsMode, Model, Tokenizer};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("comet-heads-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn tiny() -> (Model, Tokenizer) {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(|| {
        let p = temp_dir().join("tiny.gguf");
        testing::write_tiny_llama_gguf(&p, 11).expect("tiny model");
        p
    });
    comet_model::load(path).expect("load tiny")
}

fn text_tokens(tok: &Tokenizer, rel: &str, skip: usize, chars: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(comet_model::repo_root().join(rel)).expect("data file");
    let part: String = text.chars().skip(skip).take(chars).collect();
    tok.encode(&part).expect("encode")
}

/// Logits of every token with an attention hook.
fn logits_with(
    model: &Model,
    tokens: &[u32],
    hook: &mut dyn FnMut(&mut AttnActivations<'_>),
) -> Vec<f32> {
    model
        .forward_with(
            tokens,
            &mut model.new_cache(),
            ForwardOptions {
                logits: LogitsMode::All,
                attn_hook: Some(hook),
                ..Default::default()
            },
        )
        .expect("forward")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The model with the output-projection columns of the heads `cut` (per layer) set to zero.
fn with_wo_columns_cut(model: &Model, cut: &dyn Fn(usize, usize) -> bool) -> Model {
    let c = model.config().clone();
    let mut w = model.weights().clone();
    for (l, layer) in w.layers.iter_mut().enumerate() {
        let cols = layer.wo.cols;
        for r in 0..layer.wo.rows {
            for h in 0..c.n_heads {
                if cut(l, h) {
                    layer.wo.data[r * cols + h * c.head_dim..r * cols + (h + 1) * c.head_dim]
                        .fill(0.0);
                }
            }
        }
    }
    Model::new(c, w).expect("model")
}

#[test]
fn contribution_norms_equal_the_projected_heads() {
    let (model, tok) = tiny();
    let c = model.config().clone();
    let norms = HeadNorms::new(&model);
    let tokens = text_tokens(&tok, "data/calib.txt", 0, 40);
    let mut checked = 0;
    let mut hook = |a: &mut AttnActivations<'_>| {
        let got = norms.contributions(a.layer, a.heads, a.tokens);
        let wo = &model.weights().layers[a.layer].wo;
        let width = c.n_heads * c.head_dim;
        for r in 0..a.tokens {
            for h in 0..c.n_heads {
                // Direct: ‖Σ_j Wo[:, h·hd + j] · o_h[j]‖ in f64.
                let o = &a.heads[r * width + h * c.head_dim..r * width + (h + 1) * c.head_dim];
                let mut sq = 0.0f64;
                for i in 0..wo.rows {
                    let row = &wo.row(i)[h * c.head_dim..(h + 1) * c.head_dim];
                    let y: f64 = row.iter().zip(o).map(|(&w, &x)| w as f64 * x as f64).sum();
                    sq += y * y;
                }
                let want = sq.sqrt();
                let g = got[r * c.n_heads + h];
                assert!(
                    (g - want).abs() <= 1e-4 * want.max(1e-3),
                    "layer {} token {r} head {h}: {g} vs {want}",
                    a.layer
                );
                checked += 1;
            }
        }
    };
    logits_with(&model, &tokens, &mut hook);
    assert_eq!(checked, c.n_layers * tokens.len() * c.n_heads);
}

#[test]
fn zeroing_heads_through_the_hook_equals_cutting_their_output_columns() {
    let (model, tok) = tiny();
    let c = model.config().clone();
    let tokens = text_tokens(&tok, "data/eval.txt", 0, 30);
    let dense = model
        .forward_all(&tokens, &mut model.new_cache())
        .expect("dense");
    // All heads of every layer: the same as a model without attention output.
    let n = c.n_heads;
    let all_off = FixedHeadMasks {
        n_heads: n,
        keep: vec![vec![false; tokens.len() * n]; c.n_layers],
    };
    let got = logits_with(&model, &tokens, &mut |a| all_off.apply(a));
    let reference = with_wo_columns_cut(&model, &|_, _| true)
        .forward_all(&tokens, &mut model.new_cache())
        .expect("reference");
    assert!(max_diff(&got, &reference) < 1e-4);
    assert!(max_diff(&got, &dense) > 1e-2, "attention matters");
    // One head per layer (a different one in each), at every position.
    let pick = |l: usize| (2 * l + 1) % n;
    let mut one_off = FixedHeadMasks::new(c.n_layers, n);
    for l in 0..c.n_layers {
        let keep: Vec<bool> = (0..tokens.len() * n).map(|i| i % n != pick(l)).collect();
        one_off.record(l, 0, &keep);
    }
    let got = logits_with(&model, &tokens, &mut |a| one_off.apply(a));
    let reference = with_wo_columns_cut(&model, &|l, h| h == pick(l))
        .forward_all(&tokens, &mut model.new_cache())
        .expect("reference");
    assert!(max_diff(&got, &reference) < 1e-4);
}

#[test]
fn oracle_top_k_skips_exactly_k_heads_and_decisions_replay() {
    let (model, tok) = tiny();
    let c = model.config().clone();
    let norms = HeadNorms::new(&model);
    let mut tokens = text_tokens(&tok, "data/eval.txt", 100, 80);
    assert!(tokens.len() >= 50);
    tokens.truncate(50);
    for skip in 0..=c.n_heads {
        let mask = HeadMask::TopK { skip };
        let mut sparse =
            SparseHeads::new(&model, &norms, HeadScore::Oracle(&norms), &mask, None).recording();
        // Prefill in two calls, then one decode step: decisions are keyed by position.
        let mut cache = model.new_cache();
        let mut logits = Vec::new();
        for part in [&tokens[..20], &tokens[20..49], &tokens[49..]] {
            let mut hook = |a: &mut AttnActivations<'_>| sparse.apply(a);
            logits.extend(
                model
                    .forward_with(
                        part,
                        &mut cache,
                        ForwardOptions {
                            logits: LogitsMode::All,
                            attn_hook: Some(&mut hook),
                            ..Default::default()
                        },
                    )
                    .expect("forward"),
            );
        }
        let decisions = sparse.decisions.clone().expect("recorded");
        for l in 0..c.n_layers {
            assert_eq!(decisions.keep[l].len(), tokens.len() * c.n_heads);
            for row in decisions.keep[l].chunks(c.n_heads) {
                assert_eq!(row.iter().filter(|&&k| !k).count(), skip, "layer {l}");
            }
        }
        let total = sparse.total();
        assert_eq!(
            total.gate.entries,
            (c.n_layers * tokens.len() * c.n_heads) as u64
        );
        assert_eq!(
            total.gate.kept,
            (c.n_layers * tokens.len() * (c.n_heads - skip)) as u64
        );
        // The skipped heads are the smallest contributions: replaying the decisions in one call
        // gives the same logits.
        let replay = logits_with(&model, &tokens, &mut |a| decisions.apply(a));
        assert!(max_diff(&logits, &replay) < 1e-3, "skip {skip}");
    }
    // The heads skipped are those of smallest norm: check one token by hand.
    let mask = HeadMask::TopK { skip: 1 };
    let mut sparse =
        SparseHeads::new(&model, &norms, HeadScore::Oracle(&norms), &mask, None).recording();
    let mut norms_seen = Vec::new();
    logits_with(&model, &tokens[..5], &mut |a| {
        if a.layer == 0 {
            norms_seen = norms.contributions(0, a.heads, a.tokens);
        }
        sparse.apply(a)
    });
    let d = sparse.decisions.expect("recorded");
    for r in 0..5 {
        let row = &norms_seen[r * c.n_heads..(r + 1) * c.n_heads];
        let min = (0..c.n_heads)
            .min_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert!(!d.kept(0, r, min));
    }
}

fn calibration(model: &Model, tok: &Tokenizer) -> HeadCalibration {
    let tokens = text_tokens(tok, "data/calib.txt", 0, 3000);
    HeadCalibration::collect(model, &tokens, 128, 4096, None, &mut |_| {}).expect("collect")
}

#[test]
fn thresholds_and_groups_reach_the_target_fraction() {
    let (model, tok) = tiny();
    let c = model.config().clone();
    let norms = HeadNorms::new(&model);
    // FFN data collected in the same pass is the FFN calibration's own.
    let tokens = text_tokens(&tok, "data/calib.txt", 0, 1500);
    let mut ffn = CalibrationData::new(&model, 1);
    let data = HeadCalibration::collect(&model, &tokens, 128, 4096, Some(&mut ffn), &mut |_| {})
        .expect("collect");
    let ffn_alone =
        CalibrationData::collect(&model, &tokens, 128, tokens.len(), &mut |_| {}).expect("ffn");
    assert_eq!(ffn, ffn_alone);
    assert_eq!(data.rows(), tokens.len());
    let rows = 0..data.rows();
    for sparsity in [0.25, 0.5] {
        let mask =
            HeadMask::calibrate_threshold(HeadScore::Oracle(&norms), &data, sparsity, rows.clone())
                .expect("threshold");
        let stats = head_gate_quality(HeadScore::Oracle(&norms), &mask, &mask, &data, rows.clone());
        for (l, s) in stats.iter().enumerate() {
            assert!(
                (s.gate.kept_fraction() - (1.0 - sparsity)).abs() < 0.01,
                "layer {l}"
            );
            assert_eq!(s.gate.recall(), 1.0);
        }
        // Whole groups: the mean head fraction matches on the calibration rows, and each group
        // is all kept or all skipped.
        let groups =
            HeadMask::calibrate_groups(HeadScore::Oracle(&norms), &data, sparsity, rows.clone())
                .expect("groups");
        let stats = head_gate_quality(
            HeadScore::Oracle(&norms),
            &groups,
            &mask,
            &data,
            rows.clone(),
        );
        let g = c.group_size() as u64;
        for (l, s) in stats.iter().enumerate() {
            assert!(
                (s.gate.kept_fraction() - (1.0 - sparsity)).abs() < 0.02,
                "layer {l}: {s:?}"
            );
            assert_eq!(s.gate.entries - s.gate.kept, g * s.groups_skipped);
        }
        let test = text_tokens(&tok, "data/eval.txt", 0, 120);
        let mut sparse = SparseHeads::new(
            &model,
            &norms,
            HeadScore::Oracle(&norms),
            &groups,
            Some(&mask),
        )
        .recording();
        logits_with(&model, &test, &mut |a| sparse.apply(a));
        let d = sparse.decisions.clone().expect("recorded");
        let g = c.group_size();
        for l in 0..c.n_layers {
            for group in d.keep[l].chunks(g) {
                assert!(group.iter().all(|&k| k) || group.iter().all(|&k| !k));
            }
        }
        let total = sparse.total();
        assert!(total.groups_skipped > 0 && total.groups_skipped < total.groups);
        let skipped_heads = total.gate.entries - total.gate.kept;
        assert_eq!(skipped_heads, total.groups_skipped * g as u64);
    }
    // Keep-all keeps everything and changes nothing.
    let all = HeadMask::keep_all(c.n_layers);
    let test = text_tokens(&tok, "data/eval.txt", 0, 60);
    let mut sparse = SparseHeads::new(&model, &norms, HeadScore::Oracle(&norms), &all, None);
    let got = logits_with(&model, &test, &mut |a| sparse.apply(a));
    let dense = model.forward_all(&test, &mut model.new_cache()).unwrap();
    assert_eq!(got, dense);
    assert_eq!(sparse.total().gate.kept_fraction(), 1.0);
    assert!(HeadMask::top_k(9, 0.11).unwrap() == HeadMask::TopK { skip: 1 });
    assert!(HeadMask::top_k(9, 1.0).is_err());
    assert!(HeadMask::calibrate_threshold(
        HeadScore::Oracle(&norms),
        &data,
        0.2,
        0..data.rows() + 1
    )
    .is_err());
}

#[test]
fn head_predictor_trains_above_chance_and_its_file_is_bound_to_its_target() {
    let (model, tok) = tiny();
    let c = model.config().clone();
    let norms = HeadNorms::new(&model);
    let data = calibration(&model, &tok);
    let sparsity = 0.25;
    let options = TrainOptions {
        hidden: 32,
        epochs: 8,
        batch: 64,
        learning_rate: 1e-2,
        positive_weight: 1.0,
        sparsity,
        ..Default::default()
    };
    let mut epochs_seen = 0;
    let (predictor, reports) =
        HeadPredictor::train(&data, &model, "tiny-hash", &options, &mut |_, _| {
            epochs_seen += 1
        })
        .expect("train");
    assert_eq!(epochs_seen, c.n_layers * options.epochs);
    assert!(reports.iter().all(|r| r.final_loss.is_finite()));
    assert_eq!(predictor.n_heads(), c.n_heads);
    let (train, validation) = options.split(data.rows());
    assert!(!validation.is_empty());
    let exact =
        HeadMask::calibrate_threshold(HeadScore::Oracle(&norms), &data, sparsity, train.clone())
            .unwrap();
    // On the training rows the thresholds give the target fraction exactly (up to ties).
    let on_train = head_gate_quality(
        HeadScore::Predictor(&predictor),
        &predictor.mask(),
        &exact,
        &data,
        train,
    );
    for s in &on_train {
        assert!((s.gate.kept_fraction() - (1.0 - sparsity)).abs() < 0.01);
    }
    // Held out: the kept heads are in the exact set more often than chance (a random gate's
    // precision is the exact set's share of all entries).
    let held_out = head_gate_quality(
        HeadScore::Predictor(&predictor),
        &predictor.mask(),
        &exact,
        &data,
        validation,
    );
    for (l, s) in held_out.iter().enumerate() {
        let base = s.gate.exact as f64 / s.gate.entries as f64;
        assert!(
            s.gate.precision() > base + 0.03,
            "layer {l}: precision {} vs base rate {base}",
            s.gate.precision()
        );
    }
    // keep() matches the logits and thresholds.
    let input = data.inputs(1, 3..4);
    let logits = predictor.logits(1, input, 1);
    for (z, k) in logits.iter().zip(predictor.keep(1, input)) {
        assert_eq!(*z as f64 > predictor.mlp.layers[1].threshold, k);
    }
    // The file round-trips with target heads; an FFN loader rejects it and vice versa.
    let dir = temp_dir();
    let path = dir.join("heads.bin");
    predictor.save(&path).unwrap();
    assert_eq!(
        Predictor::read_header(&path).unwrap().target,
        PredictorTarget::Heads
    );
    let loaded = HeadPredictor::load(&path, "tiny-hash", c.n_layers, c.d_model, c.n_heads).unwrap();
    assert_eq!(loaded, predictor);
    let e = Predictor::load(&path, "tiny-hash", c.n_layers, c.d_model, c.n_heads)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attention heads") && e.contains("FFN neurons"),
        "{e}"
    );
    let e = HeadPredictor::load(&path, "other", c.n_layers, c.d_model, c.n_heads)
        .unwrap_err()
        .to_string();
    assert!(e.contains("trained for model tiny-hash"), "{e}");
    let e = HeadPredictor::load(&path, "tiny-hash", c.n_layers, c.d_model, c.n_heads + 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outputs"), "{e}");
    let ffn_path = dir.join("ffn.bin");
    predictor.mlp.save(&ffn_path).unwrap();
    let e = HeadPredictor::load(&ffn_path, "tiny-hash", c.n_layers, c.d_model, c.n_heads)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("predicts FFN neurons")
            && e.contains("attention heads (target heads) are needed"),
        "{e}"
    );
    // A file written before the target field existed is an FFN predictor.
    let bytes = std::fs::read(&ffn_path).unwrap();
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[12..12 + len]).unwrap();
    assert_eq!(header["target"], "ffn");
    header.as_object_mut().unwrap().remove("target");
    let json = serde_json::to_vec(&header).unwrap();
    let mut old = b"COMETMLP".to_vec();
    old.extend_from_slice(&(json.len() as u32).to_le_bytes());
    old.extend_from_slice(&json);
    old.extend_from_slice(&bytes[12 + len..]);
    let old_path = dir.join("old.bin");
    std::fs::write(&old_path, old).unwrap();
    assert_eq!(
        Predictor::read_header(&old_path).unwrap().target,
        PredictorTarget::Ffn
    );
    assert_eq!(
        Predictor::load(&old_path, "tiny-hash", c.n_layers, c.d_model, c.n_heads).unwrap(),
        predictor.mlp
    );
    // Bad training settings are errors.
    for bad in [
        TrainOptions {
            hidden: 0,
            ..options
        },
        TrainOptions {
            sparsity: 1.0,
            ..options
        },
        TrainOptions {
            validation_fraction: 1.0,
            ..options
        },
    ] {
        assert!(HeadPredictor::train(&data, &model, "x", &bad, &mut |_, _| {}).is_err());
    }
}
