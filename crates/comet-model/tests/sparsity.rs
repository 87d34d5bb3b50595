//! FFN sparsity on tiny random models: calibration of the self-gate, its file binding, the
//! sparse forward (all-keep = dense, oracle kept fraction), block masks, and the MLP predictor.

use std::path::PathBuf;

use comet_model::predictor::{Predictor, TrainOptions};
use comet_model::sparsity::{
    gate_quality, parse_ffn_sparsity, threshold_keeping, CalibrationData, FfnMask, NeuronScore,
    SelfGate, SelfGateOptions, SparseFfn,
};
use comet_model::testing;
use comet_model::{FfnActivations, ForwardOptions, LogitsMode, Model, Tokenizer};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("comet-sparsity-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn tiny() -> (Model, Tokenizer) {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(|| {
        let p = temp_dir().join("tiny.gguf");
        testing::write_tiny_llama_gguf(&p, 7).expect("tiny model");
        p
    });
    comet_model::load(path).expect("load tiny")
}

/// Public calibration text shipped with the repository (its first part: the tiny tokenizer is
/// byte-level, so every character is about one token).
fn calib_tokens(tok: &Tokenizer, skip: usize, chars: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(comet_model::repo_root().join("data/calib.txt"))
        .expect("data/calib.txt");
    let part: String = text.chars().skip(skip).take(chars).collect();
    tok.encode(&part).expect("encode")
}

fn calibration(model: &Model, tok: &Tokenizer) -> CalibrationData {
    let tokens = calib_tokens(tok, 0, 3000);
    CalibrationData::collect(model, &tokens, 128, 4096, &mut |_| {}).expect("collect")
}

/// Runs `tokens` with a sparse hook and returns the logits.
fn sparse_logits(model: &Model, tokens: &[u32], sparse: &mut SparseFfn<'_>) -> Vec<f32> {
    let mut hook = |a: &mut FfnActivations<'_>| sparse.apply(a);
    model
        .forward_with(
            tokens,
            &mut model.new_cache(),
            ForwardOptions {
                logits: LogitsMode::All,
                ffn_hook: Some(&mut hook),
                ..Default::default()
            },
        )
        .expect("forward")
}

#[test]
fn threshold_keeps_the_requested_fraction_even_with_ties() {
    let v: Vec<f64> = (0..1000).map(|i| (i % 100) as f64).collect();
    for keep in [0.0, 0.1, 0.5, 0.73, 1.0] {
        let t = threshold_keeping(&mut v.clone(), keep);
        let kept = v.iter().filter(|&&x| x > t).count() as f64 / 1000.0;
        assert!((kept - keep).abs() <= 0.005 + 1e-9, "keep {keep}: {kept}");
    }
    // Half the values tie at zero: the closest achievable fraction is chosen.
    let mut ties: Vec<f64> = (0..100)
        .map(|i| if i < 60 { 0.0 } else { i as f64 })
        .collect();
    let t = threshold_keeping(&mut ties.clone(), 0.5);
    assert_eq!(ties.iter().filter(|&&x| x > t).count(), 40);
    let t = threshold_keeping(&mut ties.clone(), 0.8);
    assert_eq!(
        ties.iter().filter(|&&x| x > t).count(),
        100,
        "80%: keep all"
    );
    let t = threshold_keeping(&mut ties, 0.3);
    assert_eq!(ties.iter().filter(|&&x| x > t).count(), 30);
}

#[test]
fn sparsity_syntax_is_checked() {
    assert_eq!(parse_ffn_sparsity("0.5").unwrap(), 0.5);
    assert_eq!(parse_ffn_sparsity("ffn=0.7").unwrap(), 0.7);
    for bad in ["1.5", "-0.1", "ffn", "half", "heads=0.5", "off"] {
        let e = parse_ffn_sparsity(bad).unwrap_err().to_string();
        assert!(e.contains("sparsity"), "{bad}: {e}");
    }
}

#[test]
fn calibrated_self_gate_round_trips_and_keeps_the_target_fraction() {
    let (model, tok) = tiny();
    let data = calibration(&model, &tok);
    assert_eq!(data.layers.len(), 2);
    assert!(data.rows() > 1000, "{} rows", data.rows());
    for layer in &data.layers {
        assert!(layer.max_abs_gate > 0.0 && layer.max_abs_up > 0.0);
    }
    for (bits, sparsity) in [(6, 0.5), (8, 0.7), (5, 0.3)] {
        let options = SelfGateOptions {
            bits,
            sparsity,
            ..Default::default()
        };
        let gate = SelfGate::calibrate(&data, &model, "tiny-hash", options).unwrap();
        gate.validate(2).unwrap();
        // The kept fraction over the calibration rows, by the gate's own keep().
        let mut kept = 0usize;
        let mut total = 0usize;
        for l in 0..2 {
            let (g, u) = data.preactivations(&model, l, 0..data.rows());
            for (&g, &u) in g.iter().zip(&u) {
                kept += usize::from(gate.keep(l, g, u));
                total += 1;
            }
        }
        let kept = kept as f64 / total as f64;
        assert!(
            (kept - (1.0 - sparsity)).abs() < 0.03,
            "{bits} bits, sparsity {sparsity}: kept {kept}"
        );
        let path = temp_dir().join(format!("gate-{bits}.json"));
        gate.save(&path).unwrap();
        assert_eq!(SelfGate::load(&path, "tiny-hash", 2).unwrap(), gate);
        let e = SelfGate::load(&path, "other-hash", 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("calibrated for model tiny-hash"), "{e}");
        assert!(SelfGate::load(&path, "tiny-hash", 3).is_err());
    }
    // More bits: the gate agrees better with the exact set.
    let exact = FfnMask::calibrate(NeuronScore::Oracle, &data, &model, 0.5, 1).unwrap();
    let recall = |bits| {
        let g = SelfGate::calibrate(
            &data,
            &model,
            "h",
            SelfGateOptions {
                bits,
                ..Default::default()
            },
        )
        .unwrap();
        let mask = FfnMask {
            block: 1,
            thresholds: g.layers.iter().map(|l| l.threshold).collect(),
        };
        let stats = gate_quality(
            NeuronScore::SelfGate(&g),
            &mask,
            &exact,
            &data,
            &model,
            0..data.rows(),
        );
        stats.iter().map(|s| s.recall()).sum::<f64>() / 2.0
    };
    let (r3, r8) = (recall(3), recall(8));
    assert!(r8 > r3 && r8 > 0.85, "recall 3 bits {r3}, 8 bits {r8}");
    // Bad options are rejected with a message.
    let bad = SelfGateOptions {
        margin: 0.5,
        ..Default::default()
    };
    assert!(SelfGate::calibrate(&data, &model, "h", bad)
        .unwrap_err()
        .to_string()
        .contains("margin"));
}

#[test]
fn all_keep_is_dense_and_the_oracle_keeps_one_minus_s() {
    let (model, tok) = tiny();
    let data = calibration(&model, &tok);
    // Held-out tokens: another part of the text.
    let tokens = calib_tokens(&tok, 20_000, 120);
    let dense = model.forward_all(&tokens, &mut model.new_cache()).unwrap();
    let keep_all = FfnMask::keep_all(2);
    let mut hook = SparseFfn::new(NeuronScore::Oracle, &keep_all, None);
    assert_eq!(sparse_logits(&model, &tokens, &mut hook), dense);
    assert_eq!(hook.total().kept_fraction(), 1.0);
    for s in [0.3, 0.5, 0.9] {
        let mask = FfnMask::calibrate(NeuronScore::Oracle, &data, &model, s, 1).unwrap();
        let mut hook = SparseFfn::new(NeuronScore::Oracle, &mask, Some(&mask));
        let logits = sparse_logits(&model, &tokens, &mut hook);
        let total = hook.total();
        assert!(
            (total.kept_fraction() - (1.0 - s)).abs() < 0.05,
            "sparsity {s}: kept {}",
            total.kept_fraction()
        );
        assert_eq!((total.recall(), total.precision()), (1.0, 1.0));
        assert_ne!(logits, dense);
        // The masked entries are exactly the ones below the threshold: recompute one block's
        // output by hand through the activations the hook saw.
        let mut checked = 0;
        let mut check = |a: &mut FfnActivations<'_>| {
            let before: Vec<f32> = a.hidden.to_vec();
            let mut h = SparseFfn::new(NeuronScore::Oracle, &mask, None);
            h.apply(a);
            let f = a.gate.len() / a.tokens;
            for (i, (&b, &after)) in before.iter().zip(a.hidden.iter()).enumerate() {
                let score = (b as f64).abs();
                let t = mask.thresholds[a.layer];
                // Scores are computed in f64 from gate and up; allow for f32 rounding of h.
                if score > t * 1.0001 {
                    assert_eq!(after, b, "entry {i} of {f}");
                } else if score < t * 0.9999 {
                    assert_eq!(after, 0.0, "entry {i}");
                }
            }
            checked += 1;
        };
        model
            .forward_with(
                &tokens,
                &mut model.new_cache(),
                ForwardOptions {
                    logits: LogitsMode::Last,
                    ffn_hook: Some(&mut check),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(checked, 2);
    }
}

#[test]
fn blocks_keep_whole_blocks() {
    let (model, tok) = tiny();
    let data = calibration(&model, &tok);
    let tokens = calib_tokens(&tok, 20_000, 80);
    for block in [4, 8] {
        let mask = FfnMask::calibrate(NeuronScore::Oracle, &data, &model, 0.5, block).unwrap();
        let mut hook = SparseFfn::new(NeuronScore::Oracle, &mask, None);
        let mut pattern_ok = true;
        let mut apply = |a: &mut FfnActivations<'_>| {
            hook.apply(a);
            for row in a.hidden.chunks(96) {
                for b in row.chunks(block) {
                    // A kept block of 4+ random neurons has no exact zero.
                    let zeros = b.iter().filter(|&&x| x == 0.0).count();
                    pattern_ok &= zeros == 0 || zeros == b.len();
                }
            }
        };
        model
            .forward_with(
                &tokens,
                &mut model.new_cache(),
                ForwardOptions {
                    logits: LogitsMode::Last,
                    ffn_hook: Some(&mut apply),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(pattern_ok, "block {block}: partially kept block");
        let kept = hook.total().kept_fraction();
        assert!((kept - 0.5).abs() < 0.1, "block {block}: kept {kept}");
    }
}

#[test]
fn predictor_trains_beats_chance_and_round_trips() {
    let (model, tok) = tiny();
    let data = calibration(&model, &tok);
    let options = TrainOptions {
        hidden: 32,
        epochs: 3,
        batch: 128,
        learning_rate: 1e-2,
        sparsity: 0.5,
        ..Default::default()
    };
    let mut epochs_seen = 0;
    let (predictor, reports) =
        Predictor::train(&data, &model, "tiny-hash", &options, &mut |_, _| {
            epochs_seen += 1
        })
        .unwrap();
    assert_eq!(epochs_seen, 2 * 3);
    assert!(reports.iter().all(|r| r.final_loss.is_finite()));
    let (_, validation) = options.split(data.rows());
    assert!(!validation.is_empty());
    let exact = FfnMask::calibrate(NeuronScore::Oracle, &data, &model, 0.5, 1).unwrap();
    let stats = gate_quality(
        NeuronScore::Predictor(&predictor),
        &predictor.mask(),
        &exact,
        &data,
        &model,
        validation,
    );
    for (l, s) in stats.iter().enumerate() {
        // Chance: a random gate keeping the same fraction has recall = kept fraction.
        assert!(
            s.recall() > s.kept_fraction() + 0.05,
            "layer {l}: recall {} at kept {}",
            s.recall(),
            s.kept_fraction()
        );
        assert!(
            (s.kept_fraction() - 0.5).abs() < 0.1,
            "layer {l}: kept {}",
            s.kept_fraction()
        );
    }
    // keep() agrees with the mask on one input.
    let input = data.inputs(0, 0..1);
    let logits = predictor.logits(0, input, 1);
    let keep = predictor.keep(0, input);
    for (z, k) in logits.iter().zip(&keep) {
        assert_eq!(*z as f64 > predictor.layers[0].threshold, *k);
    }
    // The file round-trips and is bound to the model.
    let path = temp_dir().join("predictor.bin");
    predictor.save(&path).unwrap();
    assert_eq!(
        Predictor::load(&path, "tiny-hash", 2, 64, 96).unwrap(),
        predictor
    );
    let e = Predictor::load(&path, "other", 2, 64, 96)
        .unwrap_err()
        .to_string();
    assert!(e.contains("trained for model tiny-hash"), "{e}");
    assert!(Predictor::load(&path, "tiny-hash", 3, 64, 96).is_err());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let e = Predictor::load(&path, "tiny-hash", 2, 64, 96)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bytes of weights"), "{e}");
    std::fs::write(&path, b"not a predictor").unwrap();
    assert!(Predictor::load(&path, "tiny-hash", 2, 64, 96)
        .unwrap_err()
        .to_string()
        .contains("magic"));
}
