//! GGUF container access: metadata values and tensors dequantized to row-major f32.
//!
//! Parsing and dequantization use `candle_core::quantized::gguf_file`; this module adds checks
//! that turn every failure into a [`ModelError`] naming the file, key or tensor at fault.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Device;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Human-readable list of the ggml tensor types this crate dequantizes.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Whether tensors stored as `dtype` can be dequantized to f32 by this crate.
pub fn is_supported_type(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K)
}

/// Name of a ggml tensor type as llama.cpp prints it (e.g. `Q4_1`, `Q6_K`).
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// A metadata value, re-exported from candle's GGUF parser.
pub use gguf_file::Value as MetadataValue;

/// Shape and storage type of one tensor in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSummary {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major shape, outer dimension first (GGUF stores it innermost first; this is reversed).
    pub shape: Vec<usize>,
    /// Storage type (e.g. `Q4_1`).
    pub dtype: &'static str,
}

/// An opened GGUF file: parsed header plus the path to read tensor data from.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
}

impl GgufFile {
    /// Opens `path`, checks the GGUF magic and parses the header (metadata and tensor table).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile { path: path.clone() }
            } else {
                ModelError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(ModelError::Io {
                path,
                source: std::io::Error::other("is a directory"),
            });
        }
        let mut reader = BufReader::new(file);
        let mut magic = Vec::with_capacity(4);
        (&mut reader)
            .take(4)
            .read_to_end(&mut magic)
            .map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
        if magic != b"GGUF" {
            return Err(ModelError::NotGguf { path, found: magic });
        }
        std::io::Seek::rewind(&mut reader).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|err| header_error(&path, &err.to_string()))?;
        Ok(Self { path, content })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &HashMap<String, MetadataValue> {
        &self.content.metadata
    }

    /// The metadata value of `key`, or [`ModelError::MissingMetadata`].
    pub fn value(&self, key: &str) -> Result<&MetadataValue> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| ModelError::MissingMetadata {
                key: key.to_string(),
            })
    }

    /// An unsigned integer metadata value (any integer width, negative values rejected).
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        value_to_usize(key, self.value(key)?)
    }

    /// An unsigned integer metadata value, or `None` when the key is absent.
    pub fn get_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => value_to_usize(key, v).map(Some),
        }
    }

    /// A float metadata value (f32 or f64), or `None` when the key is absent.
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(MetadataValue::F32(v)) => Ok(Some(*v as f64)),
            Some(MetadataValue::F64(v)) => Ok(Some(*v)),
            Some(other) => Err(bad_type(key, "a float", other)),
        }
    }

    /// A boolean metadata value, or `None` when the key is absent.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(MetadataValue::Bool(v)) => Ok(Some(*v)),
            Some(other) => Err(bad_type(key, "a boolean", other)),
        }
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            MetadataValue::String(s) => Ok(s),
            other => Err(bad_type(key, "a string", other)),
        }
    }

    /// A string metadata value, or `None` when the key is absent.
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(MetadataValue::String(s)) => Ok(Some(s)),
            Some(other) => Err(bad_type(key, "a string", other)),
        }
    }

    /// An array-of-strings metadata value.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.value(key)? {
            MetadataValue::Array(items) => items
                .iter()
                .map(|v| match v {
                    MetadataValue::String(s) => Ok(s.as_str()),
                    other => Err(bad_type(key, "an array of strings", other)),
                })
                .collect(),
            other => Err(bad_type(key, "an array of strings", other)),
        }
    }

    /// An array-of-integers metadata value, widened to i64.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        match self.value(key)? {
            MetadataValue::Array(items) => items
                .iter()
                .map(|v| value_to_i64(v).ok_or_else(|| bad_type(key, "an array of integers", v)))
                .collect(),
            other => Err(bad_type(key, "an array of integers", other)),
        }
    }

    /// Names, shapes and types of all tensors, sorted by name with layer numbers in order.
    pub fn tensors(&self) -> Vec<TensorSummary> {
        let mut out: Vec<TensorSummary> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| TensorSummary {
                name: name.clone(),
                shape: info.shape.dims().to_vec(),
                dtype: type_name(info.ggml_dtype),
            })
            .collect();
        out.sort_by_key(|t| tensor_sort_key(&t.name));
        out
    }

    /// Whether a tensor called `name` exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Row-major shape of tensor `name` (outer dimension first).
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| info.shape.dims().to_vec())
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// Checks that tensor `name` exists, has a supported type and the `expected` shape.
    pub fn check_tensor(&self, name: &str, expected: &[usize]) -> Result<()> {
        let info =
            self.content
                .tensor_infos
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                })?;
        if !is_supported_type(info.ggml_dtype) {
            return Err(ModelError::UnsupportedTensorType {
                name: name.to_string(),
                dtype: type_name(info.ggml_dtype).to_string(),
            });
        }
        let found = info.shape.dims().to_vec();
        if found != expected {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        Ok(())
    }

    /// Reads tensor `name`, checks its type and `expected` shape, and dequantizes it to f32
    /// (row-major, outer dimension first).
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        self.check_tensor(name, expected)?;
        let file = File::open(&self.path).map_err(|source| ModelError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let malformed = |err: candle_core::Error| ModelError::Malformed {
            path: self.path.clone(),
            message: format!("tensor {name}: {err}"),
        };
        let qtensor = self
            .content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(malformed)?;
        let values = qtensor
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(malformed)?;
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Malformed {
                path: self.path.clone(),
                message: format!("tensor {name} holds a non-finite value at index {bad}"),
            });
        }
        Ok(values)
    }

    /// Reads several tensors in parallel (see [`GgufFile::read_f32`]); results keep the input order.
    pub fn read_many_f32(&self, requests: &[(String, Vec<usize>)]) -> Result<Vec<Vec<f32>>> {
        requests
            .par_iter()
            .map(|(name, shape)| self.read_f32(name, shape))
            .collect()
    }
}

/// Orders `blk.10.x` after `blk.9.x`, and global tensors before the blocks.
fn tensor_sort_key(name: &str) -> (usize, String) {
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((layer, tail)) = rest.split_once('.') {
            if let Ok(layer) = layer.parse::<usize>() {
                return (layer + 1, tail.to_string());
            }
        }
    }
    (0, name.to_string())
}

/// Turns a candle header-parsing error into the most specific [`ModelError`].
fn header_error(path: &Path, message: &str) -> ModelError {
    if let Some(rest) = message.split("unknown dtype for tensor").nth(1) {
        let id = rest.trim().trim_matches(|c: char| !c.is_ascii_digit());
        return ModelError::UnsupportedTensorType {
            name: "(a tensor in the header)".to_string(),
            dtype: format!("ggml type id {id}"),
        };
    }
    ModelError::Malformed {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn value_to_i64(v: &MetadataValue) -> Option<i64> {
    Some(match v {
        MetadataValue::U8(x) => *x as i64,
        MetadataValue::I8(x) => *x as i64,
        MetadataValue::U16(x) => *x as i64,
        MetadataValue::I16(x) => *x as i64,
        MetadataValue::U32(x) => *x as i64,
        MetadataValue::I32(x) => *x as i64,
        MetadataValue::U64(x) => i64::try_from(*x).ok()?,
        MetadataValue::I64(x) => *x,
        _ => return None,
    })
}

fn value_to_usize(key: &str, v: &MetadataValue) -> Result<usize> {
    let i = value_to_i64(v).ok_or_else(|| bad_type(key, "an integer", v))?;
    usize::try_from(i).map_err(|_| ModelError::BadMetadata {
        key: key.to_string(),
        message: format!("expected a non-negative integer, found {i}"),
    })
}

fn bad_type(key: &str, expected: &str, found: &MetadataValue) -> ModelError {
    ModelError::BadMetadata {
        key: key.to_string(),
        message: format!(
            "expected {expected}, found a value of type {:?}",
            found.value_type()
        ),
    }
}
