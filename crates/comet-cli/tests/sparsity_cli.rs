//! `comet calibrate`, `comet train-predictor` and the sparse `comet eval --plaintext` end to
//! end on a tiny random model: files are written, bound to the model, and bad input is a clear
//! error.

mod common;

use common::{comet, repo_file};
use std::path::PathBuf;

struct Setup {
    _dir: tempfile::TempDir,
    model: PathBuf,
    other_model: PathBuf,
    calib: PathBuf,
    text: PathBuf,
    dir: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let model = path.join("tiny.gguf");
    let other_model = path.join("other.gguf");
    comet_model::testing::write_tiny_llama_gguf(&model, 3).expect("tiny model");
    comet_model::testing::write_tiny_llama_gguf(&other_model, 4).expect("tiny model");
    // Short slices of the shipped texts (the tiny tokenizer is byte-level).
    let slice = |rel: &str, name: &str, chars: usize| {
        let text = std::fs::read_to_string(repo_file(rel)).expect("data file");
        let p = path.join(name);
        std::fs::write(&p, text.chars().take(chars).collect::<String>()).expect("write");
        p
    };
    Setup {
        calib: slice("data/calib.txt", "calib.txt", 2500),
        text: slice("data/eval.txt", "eval.txt", 400),
        model,
        other_model,
        dir: path,
        _dir: dir,
    }
}

#[test]
fn calibrate_writes_a_bound_file_and_eval_uses_it() {
    let s = setup();
    let gate = s.dir.join("gate.json");
    let (ok, out, err) = comet(&[
        "calibrate",
        "--model",
        s.model.to_str().unwrap(),
        "--calib",
        s.calib.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--bits",
        "6",
        "--out",
        gate.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("recall") && out.contains("bytes per token"),
        "{out}"
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gate).unwrap()).unwrap();
    assert_eq!(file["bits"], 6);
    assert_eq!(file["layers"].as_array().unwrap().len(), 2);

    // The same file evaluates on its model...
    let (ok, out, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        s.model.to_str().unwrap(),
        "--text",
        s.text.to_str().unwrap(),
        "--calib",
        s.calib.to_str().unwrap(),
        "--gate",
        "self",
        "--gate-file",
        gate.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let line = out.lines().find(|l| l.starts_with("self")).expect(&out);
    assert!(line.contains("0.50"), "{line}");
    // ...and is refused for another model.
    let (ok, _, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        s.other_model.to_str().unwrap(),
        "--text",
        s.text.to_str().unwrap(),
        "--gate-file",
        gate.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("calibrated for model"), "{err}");
}

#[test]
fn bad_sparsity_and_missing_gate_files_are_clear_errors() {
    let s = setup();
    for bad in ["1.5", "ffn", "heads=0.2"] {
        let (ok, _, err) = comet(&[
            "calibrate",
            "--model",
            s.model.to_str().unwrap(),
            "--calib",
            s.calib.to_str().unwrap(),
            "--sparsity",
            bad,
            "--out",
            s.dir.join("x.json").to_str().unwrap(),
        ]);
        assert!(!ok && err.contains("sparsity"), "{bad}: {err}");
    }
    let (ok, _, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        s.model.to_str().unwrap(),
        "--text",
        s.text.to_str().unwrap(),
        "--sparsity",
        "ffn=2",
    ]);
    assert!(!ok && err.contains("sparsity"), "{err}");
    let (ok, _, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        s.model.to_str().unwrap(),
        "--text",
        s.text.to_str().unwrap(),
        "--sparsity",
        "ffn=0.5",
        "--gate",
        "mlp",
    ]);
    assert!(!ok && err.contains("--gate-file"), "{err}");
}

#[test]
fn predictor_and_curve_on_the_tiny_model() {
    let s = setup();
    let mlp = s.dir.join("mlp.bin");
    let (ok, out, err) = comet(&[
        "train-predictor",
        "--model",
        s.model.to_str().unwrap(),
        "--calib",
        s.calib.to_str().unwrap(),
        "--sparsity",
        "ffn=0.5",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--out",
        mlp.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("parameters per layer"), "{out}");
    let prompts = s.dir.join("prompts.txt");
    std::fs::write(&prompts, "the end\nin the\n").unwrap();
    let json = s.dir.join("curve.json");
    let (ok, out, err) = comet(&[
        "eval",
        "--plaintext",
        "--model",
        s.model.to_str().unwrap(),
        "--text",
        s.text.to_str().unwrap(),
        "--calib",
        s.calib.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--gen-tokens",
        "4",
        "--quality-curve",
        "--curve-sparsities",
        "0.5,0.9",
        "--curve-bits",
        "4,8",
        "--curve-blocks",
        "1,4",
        "--gate",
        "mlp",
        "--gate-file",
        mlp.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    // (oracle + 2 self-gates + mlp) × 2 blocks × 2 sparsities.
    assert_eq!(rows.len(), 16);
    for row in rows {
        let kept = row["kept_fraction"].as_f64().unwrap();
        let s = row["sparsity"].as_f64().unwrap();
        assert!((kept - (1.0 - s)).abs() < 0.2, "{row}");
        let agree = row["prompt_agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agree));
        if row["gate"] == "oracle" && row["block"] == 1 {
            assert!(row["recall"].as_f64().unwrap() > 0.99, "{row}");
        }
    }
}
