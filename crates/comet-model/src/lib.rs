//! comet-model: GGUF loading, the tokenizer, and the plaintext f32 reference forward of
//! llama-family models. Every secure result of comet is checked against this crate.
//!
//! Quick tour: [`load`] opens a GGUF file and returns a [`Model`] and its [`Tokenizer`];
//! [`Model::forward`] runs tokens after a [`KvCache`]; [`generate()`] drives prefill + decode.
//! [`testing`] writes tiny random llama GGUF files for fast tests.
//!
//! Speed: `cargo run --release -p comet-model --example speed [MODEL] [PROMPT_TOKENS] [DECODE_TOKENS]`
//! prints prefill and decode tokens/s (wall clock and per CPU-second).

pub mod config;
pub mod error;
pub mod forward;
pub mod generate;
pub mod gguf;
pub mod heads;
pub mod linalg;
pub mod predictor;
pub mod sampling;
pub mod sparsity;
pub mod testing;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use forward::{
    AttnActivations, FfnActivations, ForwardOptions, KvCache, LogitsMode, Model, RopeTable,
};
pub use generate::{generate, GenerationStats};
pub use gguf::GgufFile;
pub use heads::HeadPredictor;
pub use predictor::{Predictor, PredictorTarget};
pub use sampling::{Sampler, SamplingParams};
pub use sparsity::{SelfGate, SparsitySpec};
pub use tokenizer::{TextStreamer, Tokenizer};
pub use weights::{LayerWeights, LlamaWeights, Matrix};

/// File name of the default model (SmolLM2-135M-Instruct, Q4_1), installed by `scripts/setup`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Environment variable that overrides the default model path.
pub const MODEL_ENV_VAR: &str = "COMET_MODEL";

/// Opens a GGUF file once and loads both the model and its tokenizer.
pub fn load(path: impl AsRef<Path>) -> Result<(Model, Tokenizer)> {
    let gguf = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let model = Model::from_gguf(&gguf)?;
    Ok((model, tokenizer))
}

/// The repository root this crate was built from (two levels above its manifest).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// Where the default model is looked for: `$COMET_MODEL` alone when it is set (an explicit
/// choice never falls back), else `./models/<file>` then `<repo root>/models/<file>`.
pub fn default_model_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(MODEL_ENV_VAR).filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    vec![
        Path::new("models").join(DEFAULT_MODEL_FILE),
        repo_root().join("models").join(DEFAULT_MODEL_FILE),
    ]
}

/// The first existing default-model candidate, if any.
pub fn find_default_model() -> Option<PathBuf> {
    default_model_candidates().into_iter().find(|p| p.is_file())
}

/// The default model path: the first existing candidate, else the last candidate (so that a
/// "not found" error names `$COMET_MODEL` or where `scripts/setup` installs the model).
pub fn default_model_path() -> PathBuf {
    find_default_model().unwrap_or_else(|| {
        let mut candidates = default_model_candidates();
        candidates
            .pop()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_FILE))
    })
}
