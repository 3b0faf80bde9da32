//! Building a [`Tokenizer`] from GGUF `tokenizer.ggml.*` metadata, with llama.cpp's
//! defaults.

use std::collections::HashMap;

use super::bpe::ByteLevelBpe;
use super::pretokenize::{self, PreTokenizer};
use super::spm::{self, PairRanks, SpacePrefix, SpmBpe};
use super::vocab::{byte_fallback_ids, parse_byte_token, TokenType, Vocab};
use super::{byte_level, checked_id, special_matcher, Model, Tokenizer, TokenizerError};
use crate::formats::gguf::{GgufFile, GgufValue};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_MERGES: &str = "tokenizer.ggml.merges";

fn array<'a>(file: &'a GgufFile, key: &str) -> Option<&'a [GgufValue]> {
    file.get(key).and_then(GgufValue::as_array)
}

fn id_key(file: &GgufFile, key: &str) -> Option<Option<u32>> {
    file.get(key)
        .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
}

fn bool_key(file: &GgufFile, key: &str) -> Option<bool> {
    file.get(key).and_then(GgufValue::as_bool)
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.model`
    /// `"gpt2"`: byte-level BPE; `"llama"`: SentencePiece-style BPE).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file
            .get(KEY_MODEL)
            .and_then(GgufValue::as_str)
            .ok_or_else(|| TokenizerError::MissingKey(KEY_MODEL.into()))?;
        let spm = match model {
            "llama" => true,
            "gpt2" => false,
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        };
        let raw = array(file, KEY_TOKENS).ok_or_else(|| TokenizerError::MissingKey(KEY_TOKENS.into()))?;
        let mut texts = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let t = v
                .as_str()
                .ok_or_else(|| TokenizerError::MissingKey(format!("{KEY_TOKENS}[{i}]")))?;
            texts.push(if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.to_string()
            });
        }
        let n = texts.len();
        let types: Vec<TokenType> = match array(file, "tokenizer.ggml.token_type") {
            Some(a) => (0..n)
                .map(|i| {
                    a.get(i)
                        .and_then(GgufValue::as_u64)
                        .map_or(TokenType::Normal, TokenType::from_gguf)
                })
                .collect(),
            None => vec![TokenType::Normal; n],
        };
        let vocab = Vocab::new(texts, types, |text, ty| token_bytes(spm, text, ty));

        let (mut bos, mut eos, mut unk) = if spm {
            (Some(1), Some(2), Some(0))
        } else {
            (None, None, None)
        };
        if let Some(v) = id_key(file, "tokenizer.ggml.bos_token_id") {
            bos = v;
        }
        if let Some(v) = id_key(file, "tokenizer.ggml.eos_token_id") {
            eos = v;
        }
        if let Some(v) = id_key(file, "tokenizer.ggml.unknown_token_id") {
            unk = v;
        }
        let pad = id_key(file, "tokenizer.ggml.padding_token_id").flatten();

        let (model, default_add_bos) = if spm {
            let scores: Vec<f32> = match array(file, "tokenizer.ggml.scores") {
                Some(a) => (0..n)
                    .map(|i| a.get(i).and_then(GgufValue::as_f64).unwrap_or(0.0) as f32)
                    .collect(),
                None => vec![0.0; n],
            };
            let prefix = bool_key(file, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let model = Model::Spm(SpmBpe {
                ranks: PairRanks::from_scores(&scores),
                byte_ids: byte_fallback_ids(&vocab),
                unk: checked_id(unk, n),
                space_prefix: if prefix {
                    SpacePrefix::AfterSpecial
                } else {
                    SpacePrefix::Never
                },
            });
            (model, true)
        } else {
            let pre_name = file
                .get("tokenizer.ggml.pre")
                .and_then(GgufValue::as_str)
                .unwrap_or("default");
            let spec = pretokenize::spec_for(pre_name).unwrap_or_else(|| {
                log::warn!("unknown pre-tokenizer `{pre_name}`: using the GPT-2 pattern");
                pretokenize::spec_for("gpt-2").unwrap_or(pretokenize::PreSpec {
                    regexes: vec![pretokenize::GPT2],
                    ignore_merges: false,
                    add_bos: false,
                })
            });
            let merges_raw =
                array(file, KEY_MERGES).ok_or_else(|| TokenizerError::MissingKey(KEY_MERGES.into()))?;
            let merges = merges_raw.iter().filter_map(|m| merge_ids(&vocab, m.as_str()?));
            let bpe = ByteLevelBpe::new(merges, byte_ids(&vocab), spec.ignore_merges, word_ids(&vocab));
            let pre = PreTokenizer::new(&spec.regexes)?;
            (Model::ByteLevel { bpe, pre }, spec.add_bos)
        };
        let add_bos = bool_key(file, "tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos);
        let add_eos = bool_key(file, "tokenizer.ggml.add_eos_token").unwrap_or(false);
        let special = special_matcher(&vocab, |_| (false, false));
        Ok(Self {
            model,
            special,
            bos: checked_id(bos, n),
            eos: checked_id(eos, n),
            unk: checked_id(unk, n),
            pad: checked_id(pad, n),
            add_bos,
            add_eos,
            vocab,
            unicode_form: None,
        })
    }
}

/// Decoded bytes of a GGUF token.
fn token_bytes(spm: bool, text: &str, ty: TokenType) -> Vec<u8> {
    match ty {
        TokenType::Control | TokenType::UserDefined | TokenType::Unknown => text.as_bytes().to_vec(),
        TokenType::Byte if spm => {
            parse_byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b])
        }
        _ if spm => spm::unescape(text),
        _ => byte_level::decode_text(text),
    }
}

/// Parses a merge `"left right"` (split at the first space after the first byte) into
/// `(left, right, merged)` ids.
pub(crate) fn merge_ids(vocab: &Vocab, merge: &str) -> Option<(u32, u32, u32)> {
    let pos = merge.bytes().skip(1).position(|b| b == b' ')? + 1;
    let (left, right) = (&merge[..pos], &merge[pos + 1..]);
    pair_ids(vocab, left, right)
}

/// `(left, right, merged)` ids of a merge given as two token texts.
pub(crate) fn pair_ids(vocab: &Vocab, left: &str, right: &str) -> Option<(u32, u32, u32)> {
    let merged = format!("{left}{right}");
    Some((vocab.get(left)?, vocab.get(right)?, vocab.get(&merged)?))
}

/// The byte-level token of each single byte.
pub(crate) fn byte_ids(vocab: &Vocab) -> [Option<u32>; 256] {
    let mut ids = [None; 256];
    for (b, slot) in ids.iter_mut().enumerate() {
        *slot = vocab.get(&byte_level::byte_to_char(b as u8).to_string());
    }
    ids
}

/// Raw bytes of every token written in byte-level form -> id (later entries win).
pub(crate) fn word_ids(vocab: &Vocab) -> HashMap<Vec<u8>, u32> {
    vocab
        .texts
        .iter()
        .enumerate()
        .map(|(i, t)| (byte_level::decode_text(t), i as u32))
        .collect()
}
