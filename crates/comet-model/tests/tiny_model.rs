//! Fast tests on tiny random llama GGUF files written by the test itself: loading, every
//! loading error, tokenizer round trips, forward vs candle, KV cache, fixed point, generation.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use comet_model::testing::{self, TinyLlamaOptions};
use comet_model::{
    FfnActivations, ForwardOptions, GgufFile, KvCache, LogitsMode, ModelError, Sampler,
    SamplingParams, Tokenizer,
};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("comet-model-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn tiny(name: &str, opts: &TinyLlamaOptions) -> PathBuf {
    let path = temp_dir().join(name);
    testing::write_tiny_llama_gguf_with(&path, opts).expect("write tiny model");
    path
}

fn tiny_default() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| tiny("tiny-default.gguf", &TinyLlamaOptions::default()))
        .clone()
}

fn load_err(path: &Path) -> ModelError {
    match comet_model::load(path) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e,
    }
}

#[test]
fn loads_config_and_weights() {
    let (model, tokenizer) = comet_model::load(tiny_default()).expect("load");
    let c = model.config();
    assert_eq!(
        (
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_dim
        ),
        (2, 64, 4, 2, 16, 96)
    );
    assert_eq!(c.vocab_size, testing::tiny_vocabulary().len());
    assert_eq!(c.context_length, testing::TINY_CONTEXT);
    assert!(c.tied_lm_head && model.weights().lm_head.is_none());
    assert_eq!(model.weights().lm_head().shape(), [c.vocab_size, 64]);
    assert_eq!(model.weights().layers[1].w_down.shape(), [64, 96]);
    assert!((c.rope_base - 10_000.0).abs() < 1e-9 && (c.norm_eps - 1e-5).abs() < 1e-9);
    assert_eq!(tokenizer.vocab_size(), c.vocab_size);

    let untied = tiny(
        "tiny-untied.gguf",
        &TinyLlamaOptions {
            tied_lm_head: false,
            ..Default::default()
        },
    );
    let (model, _) = comet_model::load(untied).expect("load untied");
    assert!(!model.config().tied_lm_head && model.weights().lm_head.is_some());
}

#[test]
fn dequantizes_every_supported_type_within_its_error_bound() {
    let n = 4 * 64;
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 1.7)
        .collect();
    let tensor = Tensor::from_vec(values.clone(), (4, 64), &Device::Cpu).unwrap();
    let cases = [
        (GgmlDType::F32, 0.0f32),
        (GgmlDType::F16, 2e-3),
        (GgmlDType::Q8_0, 1.7 / 127.0 * 0.5 + 1e-3),
        (GgmlDType::Q4_1, 3.4 / 15.0 * 0.5 + 1e-2),
        (GgmlDType::Q4_0, 1.7 / 8.0 + 1e-2),
    ];
    let qs: Vec<(String, QTensor)> = cases
        .iter()
        .map(|(t, _)| (format!("{t:?}"), QTensor::quantize(&tensor, *t).unwrap()))
        .collect();
    let path = temp_dir().join("dtypes.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(n, q)| (n.as_str(), q)).collect();
    gguf_file::write(&mut f, &[], &refs).unwrap();
    drop(f);
    let gguf = GgufFile::open(&path).unwrap();
    for (dtype, bound) in cases {
        let got = gguf.read_f32(&format!("{dtype:?}"), &[4, 64]).unwrap();
        let err = common::max_abs_diff(&got, &values);
        assert!(err <= bound, "{dtype:?}: max error {err} > {bound}");
        if dtype == GgmlDType::F32 {
            assert_eq!(got, values);
        }
    }
    let summary = gguf.tensors();
    assert_eq!(
        summary.iter().map(|t| t.dtype).collect::<Vec<_>>(),
        ["F16", "F32", "Q4_0", "Q4_1", "Q8_0"]
    );
}

#[test]
fn missing_file_is_reported() {
    let err = load_err(&temp_dir().join("does-not-exist.gguf"));
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist.gguf"));
}

#[test]
fn non_gguf_files_are_reported() {
    let path = temp_dir().join("not-a-model.gguf");
    std::fs::write(&path, b"hello, this is text").unwrap();
    let err = load_err(&path);
    assert!(matches!(err, ModelError::NotGguf { .. }), "{err}");
    std::fs::write(&path, b"GG").unwrap();
    assert!(matches!(load_err(&path), ModelError::NotGguf { .. }));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(load_err(&path), ModelError::NotGguf { .. }));
}

#[test]
fn truncated_files_are_malformed() {
    let bytes = std::fs::read(tiny_default()).unwrap();
    let path = temp_dir().join("truncated.gguf");
    // Cut in the header, then in the tensor data.
    for cut in [100, bytes.len() - 1000] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_err(&path);
        assert!(
            matches!(err, ModelError::Malformed { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn unsupported_architecture_is_reported() {
    let path = tiny(
        "tiny-gpt2.gguf",
        &TinyLlamaOptions {
            architecture: "gpt2".into(),
            ..Default::default()
        },
    );
    let err = load_err(&path);
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture { found } if found == "gpt2"),
        "{err}"
    );
}

#[test]
fn unsupported_tensor_types_are_reported() {
    let name = "blk.0.attn_k.weight";
    let path = tiny(
        "tiny-q8_1.gguf",
        &TinyLlamaOptions {
            dtype_override: Some((name.into(), GgmlDType::Q8_1)),
            ..Default::default()
        },
    );
    let err = load_err(&path);
    assert!(
        matches!(&err, ModelError::UnsupportedTensorType { name: n, dtype } if n == name && dtype == "Q8_1"),
        "{err}"
    );

    // A type id no parser knows: patch the dtype field of one tensor-table entry.
    let mut bytes = std::fs::read(tiny_default()).unwrap();
    let needle = b"blk.0.attn_v.weight";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("tensor entry");
    let dtype_at = at + needle.len() + 4 + 2 * 8; // name, n_dims (u32), two u64 dims
    assert_eq!(
        u32::from_le_bytes(bytes[dtype_at..dtype_at + 4].try_into().unwrap()),
        0,
        "F32 id"
    );
    bytes[dtype_at..dtype_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let patched = temp_dir().join("tiny-type99.gguf");
    std::fs::write(&patched, bytes).unwrap();
    let err = load_err(&patched);
    assert!(
        matches!(&err, ModelError::UnsupportedTensorType { dtype, .. } if dtype.contains("99")),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_reported() {
    let name = "blk.1.ffn_down.weight";
    let path = tiny(
        "tiny-missing.gguf",
        &TinyLlamaOptions {
            omit_tensor: Some(name.into()),
            ..Default::default()
        },
    );
    let err = load_err(&path);
    assert!(
        matches!(&err, ModelError::MissingTensor { name: n } if n == name),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_is_reported() {
    let name = "blk.0.attn_k.weight";
    let path = tiny(
        "tiny-shape.gguf",
        &TinyLlamaOptions {
            reshape_tensor: Some((name.into(), vec![64, 64])),
            ..Default::default()
        },
    );
    let err = load_err(&path);
    assert!(
        matches!(&err, ModelError::TensorShape { name: n, expected, found }
            if n == name && expected == &vec![32, 64] && found == &vec![64, 64]),
        "{err}"
    );
}

#[test]
fn missing_and_mistyped_metadata_are_reported() {
    let path = tiny(
        "tiny-no-layers.gguf",
        &TinyLlamaOptions {
            omit_metadata: Some("llama.block_count".into()),
            ..Default::default()
        },
    );
    let err = load_err(&path);
    assert!(
        matches!(&err, ModelError::MissingMetadata { key } if key == "llama.block_count"),
        "{err}"
    );

    let cases: Vec<(&str, gguf_file::Value)> = vec![
        ("llama.block_count", gguf_file::Value::String("two".into())),
        ("llama.attention.head_count_kv", gguf_file::Value::U32(3)),
        ("llama.embedding_length", gguf_file::Value::U64(u64::MAX)),
        ("llama.attention.key_length", gguf_file::Value::U32(0)),
        ("llama.rope.dimension_count", gguf_file::Value::U32(8)),
        ("llama.rope.freq_base", gguf_file::Value::F32(-1.0)),
        (
            "tokenizer.ggml.model",
            gguf_file::Value::String("llama".into()),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            gguf_file::Value::U32(1_000_000),
        ),
        (
            "tokenizer.ggml.merges",
            gguf_file::Value::Array(vec![gguf_file::Value::String("nospace".into())]),
        ),
    ];
    for (i, (key, value)) in cases.into_iter().enumerate() {
        let path = tiny(
            &format!("tiny-bad-md-{i}.gguf"),
            &TinyLlamaOptions {
                metadata_override: vec![(key.into(), value)],
                ..Default::default()
            },
        );
        let err = load_err(&path);
        assert!(
            matches!(&err, ModelError::BadMetadata { key: k, .. } if k == key),
            "{key}: {err}"
        );
    }
    // A header claiming a million layers fails fast at the first layer that is not there.
    let path = tiny(
        "tiny-many-layers.gguf",
        &TinyLlamaOptions {
            metadata_override: vec![("llama.block_count".into(), gguf_file::Value::U32(1 << 20))],
            ..Default::default()
        },
    );
    let err = load_err(&path);
    assert!(
        matches!(&err, ModelError::MissingTensor { name } if name == "blk.2.attn_norm.weight"),
        "{err}"
    );
    // Merges naming tokens that are not in the vocabulary: a tokenizer error, not a panic.
    let path = tiny(
        "tiny-bad-merge.gguf",
        &TinyLlamaOptions {
            metadata_override: vec![(
                "tokenizer.ggml.merges".into(),
                gguf_file::Value::Array(vec![gguf_file::Value::String("zz qq".into())]),
            )],
            ..Default::default()
        },
    );
    assert!(matches!(load_err(&path), ModelError::Tokenizer(_)));
}

#[test]
fn bos_is_prepended_when_the_model_asks() {
    let path = tiny(
        "tiny-bos.gguf",
        &TinyLlamaOptions {
            metadata_override: vec![(
                "tokenizer.ggml.add_bos_token".into(),
                gguf_file::Value::Bool(true),
            )],
            ..Default::default()
        },
    );
    let (_, tok) = comet_model::load(path).unwrap();
    let ids = tok.encode("the").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids[1..]).unwrap(), "the");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (model, _) = comet_model::load(tiny_default()).unwrap();
    let mut cache = model.new_cache();
    let vocab = model.config().vocab_size as u32;
    assert!(matches!(
        model.forward(&[vocab], &mut cache),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(matches!(
        model.forward(&[], &mut cache),
        Err(ModelError::InvalidInput(_))
    ));
    let too_long = vec![5u32; testing::TINY_CONTEXT + 1];
    assert!(matches!(
        model.forward(&too_long, &mut cache),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(cache.is_empty(), "failed calls must not touch the cache");
    let other = comet_model::LlamaConfig {
        n_layers: 3,
        ..model.config().clone()
    };
    assert!(matches!(
        model.forward(&[1], &mut KvCache::new(&other)),
        Err(ModelError::InvalidInput(_))
    ));
}

fn tiny_tokenizer() -> Tokenizer {
    comet_model::load(tiny_default()).unwrap().1
}

#[test]
fn tiny_tokenizer_round_trips_and_applies_merges() {
    let tok = tiny_tokenizer();
    for text in [
        "the cat sat on the mat",
        "numbers 12345 and 3.14159\ttabs\t\tand\nnew\n\nlines",
        "   leading and    repeated   spaces   ",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
        "unicode: héllo wörld – 日本語 🙂",
        "",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "round trip of {text:?}");
    }
    let the = tok.encode(" the").unwrap();
    assert_eq!(the, vec![tok.token_id("Ġthe").unwrap()]);
    // Digits are split one by one even where a merge could join them.
    assert_eq!(tok.encode("2024").unwrap().len(), 4);
    let ids = tok.encode("<|im_start|>hi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(tok.eos_token_id(), Some(2));
    assert!(tok.stop_token_ids().contains(&0) && tok.stop_token_ids().contains(&2));
    assert_eq!(
        tok.default_system_prompt().as_deref(),
        Some("You are tiny.")
    );
    assert_eq!(
        tok.chat_prompt("hello"),
        "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(tok.decode(&[100_000]).is_err());
}

#[test]
fn streaming_decode_equals_full_decode() {
    let tok = tiny_tokenizer();
    let text = "héllo 🙂 world\n\t12 <|im_end|> x";
    let ids = tok.encode(text).unwrap();
    let mut streamer = tok.streamer();
    let mut streamed = String::new();
    for &id in &ids {
        let piece = streamer.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'));
        streamed.push_str(&piece);
    }
    assert_eq!(streamed, text);
}

#[test]
fn forward_matches_candle_on_tiny_model() {
    let path = tiny_default();
    let (model, tok) = comet_model::load(&path).unwrap();
    let tokens = tok.encode("the answer is 42, and then\tsome").unwrap();
    let ours = model.forward(&tokens, &mut model.new_cache()).unwrap();
    let reference = common::candle_last_logits(&path, &tokens);
    let diff = common::max_abs_diff(&ours, &reference);
    eprintln!(
        "tiny model, {} tokens: max |ours - candle| = {diff:e}",
        tokens.len()
    );
    assert!(diff <= 1e-4, "max |ours - candle| = {diff}");
}

#[test]
fn kv_cache_decode_equals_recomputing_the_prefix() {
    let (model, tok) = comet_model::load(tiny_default()).unwrap();
    let tokens = tok
        .encode("the quick brown fox jumps over 13 lazy dogs")
        .unwrap();
    assert!(tokens.len() > 12);
    let all = model.forward_all(&tokens, &mut model.new_cache()).unwrap();
    let vocab = model.config().vocab_size;
    // Prefill 5 tokens, then one at a time; each step must equal row i of the full pass
    // and the fresh forward over the same prefix.
    let mut cache = model.new_cache();
    let first = model.forward(&tokens[..5], &mut cache).unwrap();
    assert!(common::max_abs_diff(&first, &all[4 * vocab..5 * vocab]) < 1e-4);
    for i in 5..tokens.len() {
        let step = model.forward(&tokens[i..=i], &mut cache).unwrap();
        assert_eq!(cache.len(), i + 1);
        let fresh = model
            .forward(&tokens[..=i], &mut model.new_cache())
            .unwrap();
        assert!(common::max_abs_diff(&step, &fresh) < 1e-4, "position {i}");
        assert!(common::max_abs_diff(&step, &all[i * vocab..(i + 1) * vocab]) < 1e-4);
    }
    // Truncating the cache and replaying gives the same logits again.
    cache.truncate(7);
    let replay = model.forward(&tokens[7..9], &mut cache).unwrap();
    assert!(common::max_abs_diff(&replay, &all[8 * vocab..9 * vocab]) < 1e-4);
}

#[test]
fn ffn_hook_sees_every_layer() {
    let (model, tok) = comet_model::load(tiny_default()).unwrap();
    let tokens = tok.encode("in the end").unwrap();
    let mut seen = Vec::new();
    let mut hook = |a: &mut FfnActivations<'_>| {
        assert_eq!(a.gate.len(), a.tokens * 96);
        assert_eq!(a.up.len(), a.tokens * 96);
        assert_eq!(a.input.len(), a.tokens * 64);
        for ((g, u), h) in a.gate.iter().zip(a.up).zip(a.hidden.iter()) {
            // hidden = silu(gate) * up, computed from the very values the hook sees.
            let silu = g / (1.0 + (-g).exp());
            assert!(
                (silu * u - h).abs() <= 1e-6 * (1.0 + h.abs()),
                "{g} {u} {h}"
            );
        }
        seen.push((a.layer, a.tokens));
    };
    let opts = ForwardOptions {
        logits: LogitsMode::All,
        ffn_hook: Some(&mut hook),
        ..Default::default()
    };
    let logits = model
        .forward_with(&tokens, &mut model.new_cache(), opts)
        .unwrap();
    assert_eq!(logits.len(), tokens.len() * model.config().vocab_size);
    assert_eq!(seen, vec![(0, tokens.len()), (1, tokens.len())]);
}

#[test]
fn fixed_point_simulation_rounds_and_stays_close() {
    let (model, tok) = comet_model::load(tiny_default()).unwrap();
    let tokens = tok.encode("the other one").unwrap();
    let float = model.forward(&tokens, &mut model.new_cache()).unwrap();
    let fixed16 = model.clone().with_fixed_point(16);
    let fixed4 = model.clone().with_fixed_point(4);
    for w in &fixed16.weights().layers[0].wq.data {
        assert_eq!((*w as f64 * 65536.0).fract(), 0.0);
    }
    let l16 = fixed16.forward(&tokens, &mut fixed16.new_cache()).unwrap();
    let l4 = fixed4.forward(&tokens, &mut fixed4.new_cache()).unwrap();
    for l in &l16 {
        assert_eq!(
            (*l as f64 * 65536.0).fract(),
            0.0,
            "LM head output on the 2^-16 grid"
        );
    }
    let d16 = common::max_abs_diff(&float, &l16);
    let d4 = common::max_abs_diff(&float, &l4);
    assert!(d16 > 0.0 && d16 < 0.01, "16 fractional bits: {d16}");
    assert!(d4 > d16, "coarser grid, larger error: {d4} vs {d16}");
}

#[test]
fn generation_is_greedy_deterministic_and_stops() {
    let (model, tok) = comet_model::load(tiny_default()).unwrap();
    let prompt = tok.encode("the").unwrap();
    let mut greedy = Sampler::new(SamplingParams::default());
    let (out, stats) =
        comet_model::generate(&model, &prompt, 6, &mut greedy, &[], |_| Ok(())).unwrap();
    assert_eq!(
        (out.len(), stats.generated_tokens, stats.prompt_tokens),
        (6, 6, prompt.len())
    );
    // Greedy equals argmax of a fresh forward over each prefix.
    let mut seq = prompt.clone();
    for &id in &out {
        let logits = model.forward(&seq, &mut model.new_cache()).unwrap();
        assert_eq!(id, comet_model::sampling::argmax(&logits));
        seq.push(id);
    }
    // Stopping at the first generated token when it is a stop token.
    let (stopped, stats) =
        comet_model::generate(&model, &prompt, 6, &mut greedy, &[out[0]], |_| Ok(())).unwrap();
    assert_eq!(stopped, vec![out[0]]);
    assert!(stats.stopped_at_stop_token);
    // Sampling is reproducible from the seed.
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        seed: 42,
    };
    let run = || {
        comet_model::generate(&model, &prompt, 8, &mut Sampler::new(params), &[], |_| {
            Ok(())
        })
        .unwrap()
        .0
    };
    assert_eq!(run(), run());
}

#[test]
fn ffn_hook_masks_what_goes_into_down() {
    let (model, tok) = comet_model::load(tiny_default()).unwrap();
    let tokens = tok.encode("the other end").unwrap();
    let vocab = model.config().vocab_size;
    let run = |mask: &mut dyn FnMut(&mut FfnActivations<'_>)| {
        let opts = ForwardOptions {
            logits: LogitsMode::All,
            ffn_hook: Some(mask),
            ..Default::default()
        };
        model
            .forward_with(&tokens, &mut model.new_cache(), opts)
            .unwrap()
    };
    let dense = model.forward_all(&tokens, &mut model.new_cache()).unwrap();
    // Keeping every neuron (multiplying by one) is exactly the dense forward.
    let all_ones = run(&mut |a: &mut FfnActivations<'_>| {
        for h in a.hidden.iter_mut() {
            *h *= 1.0;
        }
    });
    assert_eq!(all_ones, dense);
    // Dropping every neuron equals a model whose down projections are zero.
    let all_zero = run(&mut |a: &mut FfnActivations<'_>| a.hidden.fill(0.0));
    let mut weights = model.weights().clone();
    for layer in &mut weights.layers {
        layer.w_down.data.fill(0.0);
    }
    let no_ffn = comet_model::Model::new(model.config().clone(), weights).unwrap();
    let reference = no_ffn
        .forward_all(&tokens, &mut no_ffn.new_cache())
        .unwrap();
    assert_eq!(all_zero.len(), tokens.len() * vocab);
    assert!(common::max_abs_diff(&all_zero, &reference) < 1e-5);
    assert!(
        common::max_abs_diff(&all_zero, &dense) > 1e-3,
        "the FFN matters"
    );
    // Masking only layer 1 changes the result less than masking both.
    let one_layer = run(&mut |a: &mut FfnActivations<'_>| {
        if a.layer == 1 {
            a.hidden.fill(0.0)
        }
    });
    assert!(common::max_abs_diff(&one_layer, &dense) > 0.0);
    assert!(common::max_abs_diff(&one_layer, &reference) > 0.0);
}
