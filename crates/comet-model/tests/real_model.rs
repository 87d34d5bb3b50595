//! Tests on the real default model (SmolLM2-135M-Instruct, Q4_1). They skip with a note when
//! `scripts/setup` has not installed it; CI installs it first.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use comet_model::{Model, Tokenizer};

fn real_model() -> Option<&'static (PathBuf, Model, Tokenizer)> {
    static MODEL: OnceLock<Option<(PathBuf, Model, Tokenizer)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = comet_model::find_default_model()?;
            let (model, tokenizer) = comet_model::load(&path).expect("the installed model loads");
            Some((path, model, tokenizer))
        })
        .as_ref()
}

macro_rules! require_model {
    () => {
        match real_model() {
            Some(m) => m,
            None => {
                eprintln!(
                    "note: skipping, {} is not installed (run scripts/setup)",
                    comet_model::DEFAULT_MODEL_FILE
                );
                return;
            }
        }
    };
}

const PROMPT: &str =
    "The quick brown fox jumps over the lazy dog. In 2024, researchers found that \
    private inference with two servers can be practical:\tit needs 3 rounds.";

#[test]
fn real_config_is_smollm2_135m() {
    let (_, model, tok) = require_model!();
    let c = model.config();
    assert_eq!(
        (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim),
        (30, 576, 9, 3, 64)
    );
    assert_eq!(
        (c.ffn_dim, c.vocab_size, c.context_length),
        (1536, 49152, 8192)
    );
    assert!(c.tied_lm_head);
    assert_eq!(c.n_params(), 134_515_008);
    assert_eq!(tok.eos_token_id(), Some(2));
}

#[test]
fn real_tokenizer_round_trips() {
    let (_, _, tok) = require_model!();
    for text in [
        PROMPT,
        "digits 0123456789 and 3.14159, tabs\t\tand\nnewlines\n\n\nand    repeated     spaces  ",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|endoftext|>",
        "Ünïcödé — 日本語のテキスト 🙂🚀 emojis",
        " leading space and trailing space ",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // Digits are single tokens; no prefix space is added; special tokens are single ids.
    let digits = tok.encode("12345").unwrap();
    assert_eq!(digits.len(), 5);
    assert_eq!(tok.decode(&digits[..1]).unwrap(), "1");
    let hello = tok.encode("Hello").unwrap();
    assert_eq!(tok.token_text(hello[0]).as_deref(), Some("Hello"));
    assert_eq!(tok.encode("<|im_start|><|im_end|>").unwrap(), vec![1, 2]);
    let chat = tok.chat_prompt("Hi");
    assert!(chat.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    assert!(chat.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
}

#[test]
fn real_forward_matches_candle() {
    let (path, model, tok) = require_model!();
    let tokens = tok.encode(PROMPT).unwrap();
    let ours = model.forward(&tokens, &mut model.new_cache()).unwrap();
    let reference = common::candle_last_logits(path, &tokens);
    let diff = common::max_abs_diff(&ours, &reference);
    eprintln!(
        "real model, {} tokens: max |ours - candle| = {diff:e}",
        tokens.len()
    );
    assert!(diff <= 1e-3, "max |ours - candle| = {diff}");
}

#[test]
fn real_kv_cache_decode_equals_recompute() {
    let (_, model, tok) = require_model!();
    let tokens = tok.encode(PROMPT).unwrap();
    let split = tokens.len() - 6;
    let mut cache = model.new_cache();
    model.forward(&tokens[..split], &mut cache).unwrap();
    let mut worst = 0.0f32;
    for i in split..tokens.len() {
        let step = model.forward(&tokens[i..=i], &mut cache).unwrap();
        let fresh = model
            .forward(&tokens[..=i], &mut model.new_cache())
            .unwrap();
        worst = worst.max(common::max_abs_diff(&step, &fresh));
    }
    eprintln!("real model: max |decode - recompute| = {worst:e}");
    assert!(worst <= 1e-3, "{worst}");
}

#[test]
fn real_greedy_knows_the_capital_of_france() {
    let (_, model, tok) = require_model!();
    let prompt = tok.encode("The capital of France is").unwrap();
    let mut sampler = comet_model::Sampler::new(comet_model::SamplingParams::default());
    let (out, _) = comet_model::generate(
        model,
        &prompt,
        3,
        &mut sampler,
        &tok.stop_token_ids(),
        |_| Ok(()),
    )
    .unwrap();
    let text = tok.decode(&out).unwrap();
    assert!(text.starts_with(" Paris"), "continuation {text:?}");
}
