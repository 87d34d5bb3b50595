//! Attention-head sparsity end to end on a tiny random model: `comet train-predictor --target
//! heads` writes a head predictor bound to its target, and `comet eval --plaintext --sparsity
//! heads=H` (alone and with `ffn=F`) reports the head gate; bad flags and files of the wrong
//! target are clear errors.

mod common;

use common::{comet, repo_file};
use std::path::{Path, PathBuf};

struct Setup {
    _dir: tempfile::TempDir,
    model: String,
    calib: String,
    text: String,
    prompts: String,
    dir: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let model = path.join("tiny.gguf");
    comet_model::testing::write_tiny_llama_gguf(&model, 5).expect("tiny model");
    let slice = |rel: &str, name: &str, chars: usize| {
        let text = std::fs::read_to_string(repo_file(rel)).expect("data file");
        let p = path.join(name);
        std::fs::write(&p, text.chars().take(chars).collect::<String>()).expect("write");
        p.display().to_string()
    };
    let prompts = path.join("prompts.txt");
    std::fs::write(&prompts, "the end\nin the\n").unwrap();
    Setup {
        calib: slice("data/calib.txt", "calib.txt", 2500),
        text: slice("data/eval.txt", "eval.txt", 400),
        prompts: prompts.display().to_string(),
        model: model.display().to_string(),
        dir: path,
        _dir: dir,
    }
}

fn json_rows(path: &Path) -> Vec<serde_json::Value> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    report["rows"].as_array().unwrap().clone()
}

#[test]
fn head_predictor_trains_and_eval_reports_head_gates() {
    let s = setup();
    let heads = s.dir.join("heads.bin");
    let (ok, out, err) = comet(&[
        "train-predictor",
        "--model",
        &s.model,
        "--calib",
        &s.calib,
        "--target",
        "heads",
        "--sparsity",
        "0.25",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--out",
        heads.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("target heads") && out.contains("groups skipped"),
        "{out}"
    );
    let header = comet_model::Predictor::read_header(&heads).unwrap();
    assert_eq!(header.target, comet_model::PredictorTarget::Heads);
    assert_eq!(header.ffn_dim, comet_model::testing::TINY_HEADS);

    // Heads alone, with the trained predictor (its sparsity comes from the file).
    let json = s.dir.join("mlp.json");
    let (ok, out, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        &s.model,
        "--text",
        &s.text,
        "--calib",
        &s.calib,
        "--prompts",
        &s.prompts,
        "--gen-tokens",
        "4",
        "--head-gate-file",
        heads.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("head gate per layer"), "{out}");
    let rows = json_rows(&json);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["head_gate"], "mlp");
    assert!(row["gate"].is_null(), "dense FFN: {row}");
    assert_eq!(row["head_sparsity"], 0.25);
    let kept = row["head_kept_fraction"].as_f64().unwrap();
    assert!((kept - 0.75).abs() < 0.2, "{row}");
    assert_eq!(row["head_kept_per_layer"].as_array().unwrap().len(), 2);
    assert!(row["perplexity"].as_f64().unwrap().is_finite());

    // Combined with FFN sparsity, each oracle head gate.
    for (gate, exact_kept) in [
        ("oracle-topk", Some(0.75)),
        ("oracle-groups", None),
        ("oracle", None),
    ] {
        let json = s.dir.join(format!("{gate}.json"));
        let (ok, out, err) = comet(&[
            "eval",
            "--plaintext",
            "--model",
            &s.model,
            "--text",
            &s.text,
            "--calib",
            &s.calib,
            "--sparsity",
            "ffn=0.5,heads=0.25",
            "--gate",
            "oracle",
            "--head-gate",
            gate,
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(ok, "{gate}: {out}\n{err}");
        let row = &json_rows(&json)[0];
        assert_eq!(row["gate"], "oracle");
        assert_eq!(row["head_gate"], gate);
        let kept = row["head_kept_fraction"].as_f64().unwrap();
        match exact_kept {
            Some(k) => assert_eq!(kept, k, "{row}"),
            // Thresholds calibrated on other text: only roughly the target on a random model.
            None => assert!(kept > 0.0 && kept < 1.0, "{row}"),
        }
        if gate == "oracle" {
            assert_eq!(row["head_recall"].as_f64().unwrap(), 1.0, "{row}");
        }
        if gate == "oracle-groups" {
            let skipped = row["kv_group_skip_fraction"].as_f64().unwrap();
            assert!((skipped - (1.0 - kept)).abs() < 1e-9, "{row}");
        }
        assert!((row["kept_fraction"].as_f64().unwrap() - 0.5).abs() < 0.2);
    }

    // A head predictor is not an FFN gate file, and an FFN predictor is not a head gate file.
    let (ok, _, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        &s.model,
        "--text",
        &s.text,
        "--calib",
        &s.calib,
        "--sparsity",
        "ffn=0.5",
        "--gate",
        "mlp",
        "--gate-file",
        heads.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--gate-file") && err.contains("attention heads (target heads)"),
        "{err}"
    );
    let ffn = s.dir.join("ffn.bin");
    let (ok, out, err) = comet(&[
        "train-predictor",
        "--model",
        &s.model,
        "--calib",
        &s.calib,
        "--sparsity",
        "ffn=0.5",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--out",
        ffn.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let (ok, _, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        &s.model,
        "--text",
        &s.text,
        "--calib",
        &s.calib,
        "--sparsity",
        "heads=0.25",
        "--head-gate-file",
        ffn.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--head-gate-file") && err.contains("FFN neurons (target ffn)"),
        "{err}"
    );
}

#[test]
fn bad_head_flags_are_clear_errors() {
    let s = setup();
    let out_file = s.dir.join("x.bin");
    for (target, sparsity, want) in [
        (Some("ffn"), "heads=0.1", "--target is ffn"),
        (Some("heads"), "ffn=0.5", "--target is heads"),
        (None, "ffn=0.5,heads=0.1", "separately"),
        (Some("heads"), "1.2", "[0, 1)"),
    ] {
        let mut args = vec![
            "train-predictor",
            "--model",
            &s.model,
            "--calib",
            &s.calib,
            "--sparsity",
            sparsity,
            "--out",
            out_file.to_str().unwrap(),
        ];
        if let Some(t) = target {
            args.extend(["--target", t]);
        }
        let (ok, _, err) = comet(&args);
        assert!(!ok && err.contains(want), "{target:?} {sparsity}: {err}");
    }
    for (extra, want) in [
        (
            vec!["--head-gate", "mlp", "--sparsity", "heads=0.2"],
            "--head-gate-file",
        ),
        (vec!["--head-gate", "oracle"], "heads=H"),
        (
            vec!["--head-gate", "oracle-topk", "--head-gate-file", "x.bin"],
            "takes no --head-gate-file",
        ),
        (
            vec!["--sparsity", "heads=0.2", "--quality-curve"],
            "quality curve",
        ),
        (vec!["--sparsity", "heads=1"], "sparsity"),
    ] {
        let mut args = vec![
            "eval",
            "--plaintext",
            "--model",
            &s.model,
            "--text",
            &s.text,
            "--calib",
            &s.calib,
        ];
        args.extend(extra.iter().copied());
        let (ok, _, err) = comet(&args);
        assert!(!ok && err.contains(want), "{extra:?}: {err}");
    }
}
