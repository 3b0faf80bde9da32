//! Text <-> token ids: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM, ...) and
//! SentencePiece-style BPE (Llama 2, Mistral), loaded from GGUF metadata or from a Hugging
//! Face `tokenizer.json`. Matches llama.cpp's tokenization (checked against its test
//! vectors in `tests/tokenizer_vocab.rs`).

mod bpe;
mod byte_level;
mod gguf_vocab;
mod hf_json;
mod normalize;
mod pretokenize;
mod special;
mod spm;
#[cfg(test)]
pub(crate) mod tests;
mod vocab;

pub use vocab::TokenType;

use bpe::ByteLevelBpe;
use normalize::UnicodeForm;
use pretokenize::PreTokenizer;
use special::{Fragment, SpecialMatcher};
use spm::{SpacePrefix, SpmBpe};
use vocab::Vocab;

use crate::error::TokenizerError;

/// The token-producing algorithm.
#[derive(Debug)]
enum Model {
    /// Byte-level BPE behind a regex pre-tokenizer.
    ByteLevel { bpe: ByteLevelBpe, pre: PreTokenizer },
    /// SentencePiece-style BPE over the whole (escaped) text.
    Spm(SpmBpe),
}

/// A loaded tokenizer. Immutable, `Send + Sync`: share it across threads.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    special: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// The `tokenizer.json` normalizer's Unicode form, applied to text between special tokens.
    unicode_form: Option<UnicodeForm>,
}

impl Tokenizer {
    /// Encodes text. Special and added tokens written in the text become single tokens; BOS
    /// (and EOS) are added only when `add_special_tokens` and the model asks for them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        self.encode_with(text, add_special_tokens, true)
    }

    /// Like [`Tokenizer::encode`], choosing whether control tokens written in the text are
    /// recognized (`parse_special`; user-defined tokens always are), as llama.cpp's
    /// `llama_tokenize(..., add_special, parse_special)`.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool, parse_special: bool) -> Vec<u32> {
        let frags = self.special.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special_tokens && self.add_bos {
            out.extend(self.bos);
        }
        match &self.model {
            Model::ByteLevel { bpe, pre } => {
                for f in frags {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(s, e) => {
                            let piece = self.normalized(&text[s..e]);
                            let piece = piece.as_ref();
                            for (ws, we) in pre.split(piece) {
                                bpe.encode_word(&piece.as_bytes()[ws..we], &mut out);
                            }
                        }
                    }
                }
            }
            Model::Spm(spm) => {
                let mut prev_special = true;
                for f in frags {
                    match f {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(s, e) => {
                            let piece = self.normalized(&text[s..e]);
                            let piece = piece.as_ref();
                            let prefix = match spm.space_prefix {
                                SpacePrefix::Never => false,
                                SpacePrefix::First => s == 0 && !piece.starts_with(' '),
                                SpacePrefix::AfterSpecial => prev_special,
                                SpacePrefix::UnlessSpace => !piece.starts_with(' '),
                            };
                            let escaped = spm::escape(piece, prefix);
                            spm.encode(&self.vocab, &escaped, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special_tokens && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// `text` in the normalizer's Unicode form, if it has one.
    fn normalized<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match self.unicode_form {
            Some(form) => form.apply(text),
            None => std::borrow::Cow::Borrowed(text),
        }
    }

    /// Decodes ids to text (invalid UTF-8 replaced), optionally skipping control tokens.
    pub fn decode(&self, token_ids: &[u32], skip_special_tokens: bool) -> String {
        let mut bytes = Vec::with_capacity(token_ids.len() * 4);
        let mut first = true;
        for &id in token_ids {
            if skip_special_tokens && self.is_special(id) {
                continue;
            }
            let b = self.token_bytes(id);
            if first && self.strips_leading_space() && b.first() == Some(&b' ') {
                bytes.extend_from_slice(&b[1..]);
            } else {
                bytes.extend_from_slice(b);
            }
            first = false;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The exact bytes token `id` contributes to decoded text (empty for unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.vocab.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token (skipped by `skip_special_tokens`).
    pub fn is_special(&self, id: u32) -> bool {
        self.vocab.token_type(id) == Some(TokenType::Control)
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.vocab.token_type(id)
    }

    /// SentencePiece-style with a space prefix: decoding drops the first leading space.
    pub fn strips_leading_space(&self) -> bool {
        matches!(&self.model, Model::Spm(s) if s.space_prefix != SpacePrefix::Never)
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Beginning-of-sequence token id.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token id.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// Unknown-token id.
    pub fn unk_token_id(&self) -> Option<u32> {
        self.unk
    }

    /// Padding token id.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., true)` appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// The id of a token given its vocabulary text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token)
    }

    /// The vocabulary text of token `id`.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// BOS in text form, for chat templates.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.and_then(|id| self.id_to_token(id))
    }

    /// EOS in text form, for chat templates.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.and_then(|id| self.id_to_token(id))
    }
}

/// Checks an optional special-token id against the vocabulary size.
fn checked_id(id: Option<u32>, n: usize) -> Option<u32> {
    id.filter(|&i| (i as usize) < n)
}

/// The special-token matcher for a vocabulary: control, unknown and user-defined tokens.
fn special_matcher(vocab: &Vocab, strip: impl Fn(u32) -> (bool, bool)) -> SpecialMatcher {
    let tokens = vocab
        .types
        .iter()
        .enumerate()
        .filter_map(|(i, ty)| {
            let control = match ty {
                TokenType::Control | TokenType::Unknown => true,
                TokenType::UserDefined => false,
                _ => return None,
            };
            let (lstrip, rstrip) = strip(i as u32);
            Some(special::SpecialToken {
                text: vocab.texts[i].clone(),
                id: i as u32,
                control,
                lstrip,
                rstrip,
            })
        })
        .collect();
    SpecialMatcher::new(tokens)
}

impl ember_core::TokenVocab for Tokenizer {
    fn token_bytes(&self, id: u32) -> &[u8] {
        Tokenizer::token_bytes(self, id)
    }

    fn is_special(&self, id: u32) -> bool {
        Tokenizer::is_special(self, id)
    }
}
