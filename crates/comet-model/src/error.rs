//! The error type of the model layer: every failure names the file, key or tensor at fault.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model, building its tokenizer or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file does not exist.
    #[error("model file {} not found (run scripts/setup to install the default model, or pass --model)", path.display())]
    MissingFile {
        /// The path that was looked up.
        path: PathBuf,
    },
    /// The model file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic bytes.
    #[error("{} is not a GGUF file (it starts with \"{}\", a GGUF file starts with \"GGUF\")", path.display(), found.escape_ascii())]
    NotGguf {
        /// The file that was opened.
        path: PathBuf,
        /// Its first (up to four) bytes.
        found: Vec<u8>,
    },
    /// The file has a GGUF header but its structure is broken (truncated, bad counts, ...).
    #[error("malformed GGUF file {}: {message}", path.display())]
    Malformed {
        /// The file that was parsed.
        path: PathBuf,
        /// What the parser found wrong.
        message: String,
    },
    /// The model architecture in `general.architecture` is not one this crate implements.
    #[error("unsupported model architecture {found:?} (supported: \"llama\")")]
    UnsupportedArchitecture {
        /// The architecture the file declares.
        found: String,
    },
    /// A tensor is stored in a ggml type this crate does not dequantize.
    #[error(
        "tensor {name} has unsupported type {dtype} (supported: {})",
        crate::gguf::SUPPORTED_TYPES
    )]
    UnsupportedTensorType {
        /// The tensor's name (or a description when the parser could not attach one).
        name: String,
        /// The ggml type the file declares.
        dtype: String,
    },
    /// A tensor the llama architecture needs is absent from the file.
    #[error("tensor {name} is missing from the model file")]
    MissingTensor {
        /// The tensor that was looked up.
        name: String,
    },
    /// A tensor has a shape other than the one the configuration implies.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// The shape implied by the model configuration (row-major, outer dimension first).
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A metadata key the configuration or tokenizer needs is absent.
    #[error("metadata key {key} is missing from the model file")]
    MissingMetadata {
        /// The key that was looked up.
        key: String,
    },
    /// A metadata value has the wrong type or an impossible value.
    #[error("metadata key {key} is invalid: {message}")]
    BadMetadata {
        /// The offending key.
        key: String,
        /// Why its value is not usable.
        message: String,
    },
    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A caller passed an input the model cannot process (token out of range, context overflow, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Writing a GGUF file failed.
    #[error("cannot write GGUF file {}: {message}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Result alias of the model layer.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
