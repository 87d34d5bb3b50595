//! comet-model: GGUF loading, tokenizer, plaintext reference forward.
