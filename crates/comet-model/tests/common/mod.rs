//! Helpers shared by the integration tests: candle's `quantized_llama` as an independent
//! reference forward (run with every weight dequantized to f32).

#![allow(dead_code)]

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

/// Last-position logits of candle's llama forward over `tokens`, all weights dequantized to f32.
pub fn candle_last_logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    // Read by candle's QMatMul (per thread, at first use): make it dequantize to plain f32.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let mut file = std::fs::File::open(path).expect("open model");
    let content = gguf_file::Content::read(&mut file).expect("parse gguf");
    let device = Device::Cpu;
    let mut model = ModelWeights::from_gguf(content, &mut file, &device).expect("candle model");
    let input = Tensor::new(tokens, &device)
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    let logits = model.forward(&input, 0).expect("candle forward");
    logits
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("logits")
}

/// Largest absolute difference of two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
