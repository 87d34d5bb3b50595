//! Tiny random llama models written as real GGUF files, for fast tests of everything that
//! loads a model (here and in the crates above).

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use comet_core::Prg;

use crate::error::{ModelError, Result};

/// Hyper-parameters of the tiny model: 2 blocks, width 64, 4 query heads, 2 KV heads.
pub const TINY_LAYERS: usize = 2;
/// Width of the tiny model's residual stream.
pub const TINY_D_MODEL: usize = 64;
/// Query heads of the tiny model.
pub const TINY_HEADS: usize = 4;
/// Key/value heads of the tiny model.
pub const TINY_KV_HEADS: usize = 2;
/// Feed-forward width of the tiny model.
pub const TINY_FFN: usize = 96;
/// Context length of the tiny model.
pub const TINY_CONTEXT: usize = 128;

/// Control tokens of the tiny vocabulary (ids 0, 1, 2, like SmolLM2).
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// BPE merges of the tiny vocabulary, in priority order (byte-level alphabet, `Ġ` = space).
pub const TINY_MERGES: [&str; 11] = [
    "Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "a n", "r e", "Ġ Ġ",
];

/// The tiny model's chat template (ChatML with a default system prompt, as in SmolLM2).
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Knobs for writing deliberately broken or varied tiny models (error-path tests).
#[derive(Debug, Clone)]
pub struct TinyLlamaOptions {
    /// Seed of the random weights.
    pub seed: u64,
    /// Value of `general.architecture` (`"llama"` for a valid model).
    pub architecture: String,
    /// Leave out `output.weight` so the LM head is tied to the embedding.
    pub tied_lm_head: bool,
    /// A tensor to leave out of the file.
    pub omit_tensor: Option<String>,
    /// A tensor to write with a different (row-major) shape.
    pub reshape_tensor: Option<(String, Vec<usize>)>,
    /// A tensor to store in a different ggml type.
    pub dtype_override: Option<(String, GgmlDType)>,
    /// Metadata entries that replace (or add to) the defaults, by key.
    pub metadata_override: Vec<(String, gguf_file::Value)>,
    /// A metadata key to leave out.
    pub omit_metadata: Option<String>,
}

impl Default for TinyLlamaOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            architecture: "llama".into(),
            tied_lm_head: true,
            omit_tensor: None,
            reshape_tensor: None,
            dtype_override: None,
            metadata_override: Vec::new(),
            omit_metadata: None,
        }
    }
}

/// Writes a valid tiny random llama GGUF (tied LM head, mixed F32/F16/Q8_0/Q4_1 tensors,
/// byte-level BPE tokenizer with merges and ChatML control tokens) to `path`.
pub fn write_tiny_llama_gguf(path: impl AsRef<Path>, seed: u64) -> Result<()> {
    write_tiny_llama_gguf_with(
        path,
        &TinyLlamaOptions {
            seed,
            ..Default::default()
        },
    )
}

/// GPT-2's reversible byte → printable-character map used by byte-level BPE vocabularies.
pub fn byte_level_alphabet() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next_free = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next_free).unwrap_or('?');
                next_free += 1;
                c
            }
        })
        .collect()
}

/// The tiny vocabulary: control tokens, the 256 byte tokens, then one token per merge.
pub fn tiny_vocabulary() -> Vec<String> {
    let mut tokens: Vec<String> = TINY_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_level_alphabet().into_iter().map(String::from));
    tokens.extend(TINY_MERGES.iter().map(|m| m.replace(' ', "")));
    tokens
}

/// Like [`write_tiny_llama_gguf`] with explicit options.
pub fn write_tiny_llama_gguf_with(path: impl AsRef<Path>, opts: &TinyLlamaOptions) -> Result<()> {
    let path = path.as_ref();
    let write_err = |message: String| ModelError::Write {
        path: path.to_path_buf(),
        message,
    };
    let tokens = tiny_vocabulary();
    let vocab = tokens.len();
    let (d, f) = (TINY_D_MODEL, TINY_FFN);
    let hd = d / TINY_HEADS;
    let kv = TINY_KV_HEADS * hd;

    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&opts.seed.to_le_bytes());
    seed[8..].copy_from_slice(b"tinyllam");
    let mut prg = Prg::from_seed(seed);

    // (name, shape, type, centre, scale): values are centre + scale * uniform(-1, 1).
    let mut plan: Vec<(String, Vec<usize>, GgmlDType, f32, f32)> = vec![
        (
            "token_embd.weight".into(),
            vec![vocab, d],
            GgmlDType::Q8_0,
            0.0,
            1.0,
        ),
        (
            "output_norm.weight".into(),
            vec![d],
            GgmlDType::F32,
            1.0,
            0.2,
        ),
    ];
    if !opts.tied_lm_head {
        plan.push((
            "output.weight".into(),
            vec![vocab, d],
            GgmlDType::F16,
            0.0,
            0.3,
        ));
    }
    let lin = |fan_in: usize| 1.5 / (fan_in as f32).sqrt();
    for l in 0..TINY_LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        plan.extend([
            (n("attn_norm"), vec![d], GgmlDType::F32, 1.0, 0.2),
            (n("attn_q"), vec![d, d], GgmlDType::F16, 0.0, lin(d)),
            (n("attn_k"), vec![kv, d], GgmlDType::Q8_0, 0.0, lin(d)),
            (n("attn_v"), vec![kv, d], GgmlDType::F32, 0.0, lin(d)),
            (n("attn_output"), vec![d, d], GgmlDType::Q4_1, 0.0, lin(d)),
            (n("ffn_norm"), vec![d], GgmlDType::F32, 1.0, 0.2),
            (n("ffn_gate"), vec![f, d], GgmlDType::Q8_0, 0.0, lin(d)),
            (n("ffn_up"), vec![f, d], GgmlDType::F16, 0.0, lin(d)),
            (n("ffn_down"), vec![d, f], GgmlDType::Q4_1, 0.0, lin(f)),
        ]);
    }
    let mut qtensors = Vec::new();
    for (name, mut shape, mut dtype, centre, scale) in plan {
        if let Some((_, new_shape)) = opts.reshape_tensor.as_ref().filter(|(n, _)| *n == name) {
            shape = new_shape.clone();
        }
        if let Some((_, new_dtype)) = opts.dtype_override.as_ref().filter(|(n, _)| *n == name) {
            dtype = *new_dtype;
        }
        let count: usize = shape.iter().product();
        let values: Vec<f32> = prg
            .gen_u64s(count)
            .into_iter()
            .map(|r| centre + scale * ((r >> 40) as f32 / (1u64 << 23) as f32 - 1.0))
            .collect();
        if opts.omit_tensor.as_deref() == Some(name.as_str()) {
            continue;
        }
        let tensor = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)
            .map_err(|e| write_err(format!("{name}: {e}")))?;
        let q = QTensor::quantize(&tensor, dtype).map_err(|e| write_err(format!("{name}: {e}")))?;
        qtensors.push((name, q));
    }

    use gguf_file::Value;
    let mut types = vec![Value::I32(3); TINY_SPECIAL_TOKENS.len()];
    types.resize(vocab, Value::I32(1));
    let metadata: Vec<(&str, Value)> = vec![
        (
            "general.architecture",
            Value::String(opts.architecture.clone()),
        ),
        (
            "general.name",
            Value::String("comet tiny random llama".into()),
        ),
        ("llama.block_count", Value::U32(TINY_LAYERS as u32)),
        ("llama.context_length", Value::U32(TINY_CONTEXT as u32)),
        ("llama.embedding_length", Value::U32(d as u32)),
        ("llama.feed_forward_length", Value::U32(f as u32)),
        ("llama.attention.head_count", Value::U32(TINY_HEADS as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(TINY_KV_HEADS as u32),
        ),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.rope.dimension_count", Value::U32(hd as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(
                TINY_MERGES
                    .iter()
                    .map(|m| Value::String(m.to_string()))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        (
            "tokenizer.chat_template",
            Value::String(TINY_CHAT_TEMPLATE.into()),
        ),
    ];
    let mut metadata: Vec<(&str, Value)> = metadata
        .into_iter()
        .filter(|(k, _)| opts.omit_metadata.as_deref() != Some(*k))
        .filter(|(k, _)| !opts.metadata_override.iter().any(|(o, _)| o == k))
        .collect();
    metadata.extend(
        opts.metadata_override
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone())),
    );
    let md_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| write_err(e.to_string()))?);
    gguf_file::write(&mut file, &md_refs, &t_refs).map_err(|e| write_err(e.to_string()))?;
    std::io::Write::flush(&mut file).map_err(|e| write_err(e.to_string()))?;
    Ok(())
}
