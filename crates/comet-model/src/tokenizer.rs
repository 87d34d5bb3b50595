//! Byte-level BPE tokenizer built from GGUF metadata (`tokenizer.ggml.*`), plus the ChatML
//! prompt format and a streaming decoder.
//!
//! Pre-tokenization is `Sequence[Digits(individual), ByteLevel(no prefix space, GPT-2 regex)]`,
//! the SmolLM2/GPT-2 scheme; control tokens (`token_type == 3`) are special tokens that are
//! recognised verbatim in input text.

use ahash::AHashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::AddedToken;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// GGUF `token_type` of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
pub const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `token_type` of user-defined tokens (added to the vocabulary, matched verbatim).
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token texts that end a generation when they are control tokens.
const END_MARKERS: [&str; 5] = [
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<|eot_id|>",
    "<|end_of_text|>",
];

/// The tokenizer of a GGUF model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    special_ids: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("special_tokens", &self.special_ids.len())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.{model,tokens,token_type,merges,...}`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::BadMetadata {
                key: "tokenizer.ggml.model".into(),
                message: format!("tokenizer model {model:?} is not supported (supported: \"gpt2\" byte-level BPE)"),
            });
        }
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let types = match gguf.metadata().get("tokenizer.ggml.token_type") {
            Some(_) => gguf.get_int_array("tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(ModelError::BadMetadata {
                key: "tokenizer.ggml.token_type".into(),
                message: format!("{} types for {} tokens", types.len(), tokens.len()),
            });
        }
        let merges_raw = gguf.get_str_array("tokenizer.ggml.merges")?;
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| ModelError::BadMetadata {
                key: "tokenizer.ggml.merges".into(),
                message: format!("merge {i} ({m:?}) is not two tokens separated by a space"),
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let id_of = |key: &str| -> Result<Option<u32>> {
            match gguf.get_usize_opt(key)? {
                None => Ok(None),
                Some(id) if id < tokens.len() => Ok(Some(id as u32)),
                Some(id) => Err(ModelError::BadMetadata {
                    key: key.into(),
                    message: format!(
                        "token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    ),
                }),
            }
        };
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let add_bos = gguf
            .get_bool_opt("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false)
            && bos.is_some();
        let chat_template = gguf
            .get_str_opt("tokenizer.chat_template")?
            .map(str::to_string);
        Self::from_parts(&tokens, &types, merges, bos, eos, add_bos, chat_template)
    }

    /// Builds the tokenizer from a vocabulary (`tokens[id]`), GGUF token types, BPE merges and
    /// the special-token settings.
    pub fn from_parts(
        tokens: &[&str],
        types: &[i64],
        merges: Vec<(String, String)>,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let mut vocab: AHashMap<String, u32> = AHashMap::with_capacity(tokens.len());
        for (id, tok) in tokens.iter().enumerate() {
            if vocab.insert(tok.to_string(), id as u32).is_some() {
                return Err(ModelError::BadMetadata {
                    key: "tokenizer.ggml.tokens".into(),
                    message: format!("token {tok:?} appears twice"),
                });
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("cannot build the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        let mut special_ids = Vec::new();
        for (id, (tok, ty)) in tokens.iter().zip(types).enumerate() {
            match *ty {
                TOKEN_TYPE_CONTROL => {
                    special.push(AddedToken::from(tok.to_string(), true));
                    special_ids.push(id as u32);
                }
                TOKEN_TYPE_USER_DEFINED => {
                    user_defined.push(AddedToken::from(tok.to_string(), false))
                }
                _ => {}
            }
        }
        inner
            .add_special_tokens(special)
            .map_err(|e| ModelError::Tokenizer(format!("cannot add special tokens: {e}")))?;
        inner
            .add_tokens(user_defined)
            .map_err(|e| ModelError::Tokenizer(format!("cannot add user-defined tokens: {e}")))?;
        Ok(Self {
            inner,
            bos,
            eos,
            add_bos,
            chat_template,
            special_ids,
            vocab_size: tokens.len(),
        })
    }

    /// Token ids of `text` (special tokens written in the text are recognised; a BOS token is
    /// prepended when the model asks for one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode: {e}")))
    }

    /// The vocabulary string of token `id` (byte-level encoded, e.g. `Ġthe`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of vocabulary string `token`, if present.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Beginning-of-sequence token, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token, if the model has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// Ids of the control (special) tokens.
    pub fn special_token_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// Tokens that end a generation: EOS plus control tokens that mark an end of turn or text.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut stops: Vec<u32> = self.eos.into_iter().collect();
        for marker in END_MARKERS {
            if let Some(id) = self.token_id(marker) {
                if self.special_ids.contains(&id) && !stops.contains(&id) {
                    stops.push(id);
                }
            }
        }
        stops
    }

    /// The chat template stored in the model (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The default system prompt the chat template inserts when none is given, if it has one.
    pub fn default_system_prompt(&self) -> Option<String> {
        let template = self.chat_template.as_deref()?.replace("\\n", "\n");
        let start = "<|im_start|>system\n";
        let at = template.find(start)? + start.len();
        let rest = &template[at..];
        let end = rest.find("<|im_end|>")?;
        let prompt = &rest[..end];
        // Only a literal text counts; a template that splices in message content has no default.
        if prompt.contains(['\'', '"', '{', '}', '+']) || prompt.is_empty() {
            return None;
        }
        Some(prompt.to_string())
    }

    /// The ChatML prompt for one user turn, with the template's default system prompt if it has one:
    /// `[<|im_start|>system\n{sys}<|im_end|>\n]<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n`.
    pub fn chat_prompt(&self, user_prompt: &str) -> String {
        let mut out = String::new();
        if let Some(system) = self.default_system_prompt() {
            out.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
        }
        out.push_str(&format!(
            "<|im_start|>user\n{user_prompt}<|im_end|>\n<|im_start|>assistant\n"
        ));
        out
    }

    /// A decoder that turns generated ids into text pieces as soon as they form valid UTF-8.
    pub fn streamer(&self) -> TextStreamer<'_> {
        TextStreamer {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }
}

/// Incremental decoder: feed ids one by one, get the new text once it is complete UTF-8.
#[derive(Debug)]
pub struct TextStreamer<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStreamer<'_> {
    /// Adds one token; returns the text it completes (empty while a multi-byte character is split).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let piece = match now.strip_prefix(before.as_str()) {
            Some(tail) => tail.to_string(),
            // Decoding the longer run changed earlier text; emit from the first byte that differs.
            None => {
                let common = now
                    .char_indices()
                    .zip(before.chars())
                    .take_while(|((_, a), b)| a == b);
                let at = common
                    .last()
                    .map(|((i, c), _)| i + c.len_utf8())
                    .unwrap_or(0);
                now[at..].to_string()
            }
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(piece)
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn tiny_with_template(template: Option<&str>) -> Tokenizer {
        let vocab = testing::tiny_vocabulary();
        let tokens: Vec<&str> = vocab.iter().map(String::as_str).collect();
        let mut types = vec![TOKEN_TYPE_CONTROL; 3];
        types.resize(tokens.len(), 1);
        let merges = testing::TINY_MERGES
            .iter()
            .filter_map(|m| m.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Tokenizer::from_parts(
            &tokens,
            &types,
            merges,
            Some(1),
            Some(2),
            false,
            template.map(String::from),
        )
        .expect("tiny tokenizer")
    }

    #[test]
    fn chat_prompt_without_a_default_system_prompt() {
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        for tok in [tiny_with_template(Some(plain)), tiny_with_template(None)] {
            assert_eq!(tok.default_system_prompt(), None);
            assert_eq!(
                tok.chat_prompt("2+2?"),
                "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
            );
        }
        // An escaped "\n" in the stored template is understood as a newline.
        let escaped = "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}";
        assert_eq!(
            tiny_with_template(Some(escaped))
                .default_system_prompt()
                .as_deref(),
            Some("Be brief.")
        );
    }

    #[test]
    fn duplicate_tokens_are_rejected() {
        let err = Tokenizer::from_parts(&["a", "a"], &[1, 1], vec![], None, None, false, None);
        assert!(matches!(err, Err(ModelError::BadMetadata { .. })));
    }
}
