//! Secure attention-head sparsity from the command line on a tiny random model: forced head
//! and group skips run, report holes and refills, and bad flags are clear errors.

mod common;

use common::comet;

use std::path::Path;

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json file")).expect("json")
}

#[test]
fn forced_head_and_group_skips_report_holes_and_refills() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    comet_model::testing::write_tiny_llama_gguf(&model, 5).unwrap();
    let model = model.to_str().unwrap();
    let report = dir.path().join("report.json");
    let (ok, _, err) = comet(&[
        "generate",
        "abcd",
        "--model",
        model,
        "--max-tokens",
        "4",
        "--force-head-skip",
        "1",
        "--force-group-skip",
        "2",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r = read_json(&report);
    let prefill = &r["prefill"];
    let decode = r["decode"].as_array().unwrap();
    let holes = prefill["kv_holes"].as_u64().unwrap();
    assert!(holes > 0, "{prefill}");
    assert_eq!(decode[0]["kv_refilled"].as_u64(), Some(holes));
    assert!(decode[1]["kv_holes"].as_u64().unwrap() > 0);
    let rounds: Vec<u64> = decode
        .iter()
        .map(|s| s["rounds"].as_u64().unwrap())
        .collect();
    assert!(rounds.iter().all(|&n| n == rounds[0]), "{rounds:?}");

    let json = dir.path().join("bench.json");
    let (ok, out, err) = comet(&[
        "bench",
        "generate",
        "--model",
        model,
        "--mode",
        "dense,heads",
        "--head-skips",
        "1,2",
        "--max-tokens",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("holes/miss"), "{out}");
    let rows = read_json(&json);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6, "3 settings × prefill and decode");
    for row in rows.iter().filter(|r| r["mode"] == "heads") {
        assert_eq!(row["extra_rounds"].as_f64(), Some(0.0), "{row}");
        assert!(row["heads_active_fraction"].as_f64().unwrap() < 1.0);
        for key in ["attn_online_bytes", "kv_holes", "kv_misses"] {
            assert!(row[key].is_number(), "{key} in {row}");
        }
    }
    let attn = |mode: &str, level: f64| {
        rows.iter()
            .find(|r| r["mode"] == mode && r["sparsity"] == level && r["phase"] == "decode")
            .unwrap()["attn_online_bytes"]
            .as_f64()
            .unwrap()
    };
    // Fewer heads, fewer attention bytes (holes of skipped groups are paid back in refills).
    assert!(attn("heads", 0.25) < attn("dense", 0.0));
    assert!(attn("heads", 0.5) < attn("dense", 0.0));
}

#[test]
fn bad_head_sparsity_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    comet_model::testing::write_tiny_llama_gguf(&model, 5).unwrap();
    let model = model.to_str().unwrap();
    let missing = dir.path().join("missing.bin");
    let missing = missing.to_str().unwrap();
    for (flags, want) in [
        (vec!["--sparsity", "heads=0.25"], "--head-gate-file"),
        (vec!["--head-gate-file", missing], "needs --sparsity heads"),
        (
            vec!["--sparsity", "heads=0.25", "--head-gate-file", missing],
            "missing.bin",
        ),
        (vec!["--force-head-skip", "4"], "4 heads"),
        (vec!["--force-group-skip", "0"], "at least 1"),
        (
            vec![
                "--force-head-skip",
                "1",
                "--remote",
                "p0=127.0.0.1:1,p1=127.0.0.1:2",
                "--certs",
                "/nonexistent",
            ],
            "one-process",
        ),
    ] {
        let mut args = vec!["generate", "abc", "--model", model, "--max-tokens", "2"];
        args.extend(flags.iter().copied());
        let (ok, _, err) = comet(&args);
        assert!(!ok && err.contains(want), "{flags:?}: {err}");
    }
}
