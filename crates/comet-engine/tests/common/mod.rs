//! Helpers shared by the engine's integration tests: the tiny random model, a deterministic
//! deployment of it, and the secure-versus-plaintext logit comparison.

#![allow(dead_code)]

use comet_core::{FixedPoint, Prg};
use comet_dealer::Dealer;
use comet_engine::LocalDeployment;
use comet_model::Model;

/// A tiny random llama model written to a temporary GGUF file (kept alive by the directory).
pub fn tiny_model(seed: u64) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    comet_model::testing::write_tiny_llama_gguf(&path, seed).unwrap();
    let model = Model::load(&path).unwrap();
    (dir, model)
}

/// `model` shared at f = 12 with a dealer and session PRG seeded from `seed`.
pub fn deployment(model: &Model, seed: u8) -> LocalDeployment {
    LocalDeployment::share_with(
        model,
        FixedPoint::new(12),
        Dealer::with_prg(Prg::from_seed([seed; 16])),
        Prg::from_seed([seed.wrapping_add(1); 16]),
    )
    .unwrap()
}

/// Every secure logit row is within 1% of the plaintext row's scale, with the same argmax.
pub fn assert_close(secure: &[Vec<f32>], plain: &[Vec<f32>]) {
    assert_eq!(secure.len(), plain.len());
    for (s, p) in secure.iter().zip(plain) {
        let scale = p.iter().fold(1f32, |a, v| a.max(v.abs()));
        let err = s
            .iter()
            .zip(p)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            err < 0.01 * scale,
            "secure vs plaintext: {err} (scale {scale})"
        );
        assert_eq!(
            comet_model::sampling::argmax(s),
            comet_model::sampling::argmax(p)
        );
    }
}
