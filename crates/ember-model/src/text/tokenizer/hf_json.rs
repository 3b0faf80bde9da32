//! Building a [`Tokenizer`] from a Hugging Face `tokenizer.json` (model `BPE`, byte-level
//! or SentencePiece-style with byte fallback) and an optional `tokenizer_config.json`.

use std::path::Path;

use serde_json::Value;

use super::bpe::ByteLevelBpe;
use super::gguf_vocab::{byte_ids, pair_ids, word_ids};
use super::normalize::UnicodeForm;
use super::pretokenize::{self, PreTokenizer};
use super::spm::{self, PairRanks, SpacePrefix, SpmBpe};
use super::vocab::{byte_fallback_ids, parse_byte_token, TokenType, Vocab};
use super::{byte_level, checked_id, special_matcher, Model, Tokenizer, TokenizerError};

/// Most unused ids a vocabulary may have below its largest id.
const MAX_VOCAB_ID_GAP: usize = 1 << 16;

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Json {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn missing(key: &str) -> TokenizerError {
    TokenizerError::MissingKey(key.to_string())
}

/// Every component of a possibly nested `Sequence` (key `list_key`) as a flat list.
fn flatten<'a>(v: &'a Value, list_key: &str, out: &mut Vec<&'a Value>) {
    if v.get("type").and_then(Value::as_str) == Some("Sequence") {
        for item in v.get(list_key).and_then(Value::as_array).into_iter().flatten() {
            flatten(item, list_key, out);
        }
    } else if !v.is_null() {
        out.push(v);
    }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A special token given as a string or as `{"content": ...}` in tokenizer_config.json.
fn config_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        v => v.get("content").and_then(Value::as_str).map(str::to_string),
    }
}

/// An added token from `added_tokens`.
struct Added {
    id: u32,
    content: String,
    special: bool,
    lstrip: bool,
    rstrip: bool,
}

impl Tokenizer {
    /// Builds a tokenizer from a Hugging Face `tokenizer.json`; BOS/EOS and the
    /// `add_bos_token`/`add_eos_token` flags come from `tokenizer_config.json` when given.
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config_json: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        let root = read_json(tokenizer_json)?;
        let config = match tokenizer_config_json {
            Some(p) => read_json(p)?,
            None => Value::Null,
        };
        let model = root.get("model").ok_or_else(|| missing("model"))?;
        let model_type = type_of(model);
        if model_type != "BPE" && !(model_type.is_empty() && model.get("merges").is_some()) {
            return Err(TokenizerError::UnsupportedModel(format!(
                "tokenizer.json model `{model_type}`"
            )));
        }
        let vocab_map = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| missing("model.vocab"))?;
        let mut added = Vec::new();
        for t in root
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(content)) = (
                t.get("id").and_then(Value::as_u64),
                t.get("content").and_then(Value::as_str),
            ) else {
                return Err(missing("added_tokens[].id/content"));
            };
            let flag = |k: &str| t.get(k).and_then(Value::as_bool).unwrap_or(false);
            let id = u32::try_from(id).map_err(|_| TokenizerError::Invalid(format!("token id {id}")))?;
            added.push(Added {
                id,
                content: content.to_string(),
                special: flag("special"),
                lstrip: flag("lstrip"),
                rstrip: flag("rstrip"),
            });
        }

        // Which family: byte-level (a ByteLevel pre-tokenizer/decoder) or SentencePiece-style.
        let mut pres = Vec::new();
        flatten(
            root.get("pre_tokenizer").unwrap_or(&Value::Null),
            "pretokenizers",
            &mut pres,
        );
        let mut norms = Vec::new();
        flatten(
            root.get("normalizer").unwrap_or(&Value::Null),
            "normalizers",
            &mut norms,
        );
        let mut decs = Vec::new();
        flatten(root.get("decoder").unwrap_or(&Value::Null), "decoders", &mut decs);
        let byte_level_model =
            pres.iter().any(|p| type_of(p) == "ByteLevel") || decs.iter().any(|d| type_of(d) == "ByteLevel");
        let byte_fallback = model
            .get("byte_fallback")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let unk_text = model.get("unk_token").and_then(Value::as_str);

        // Vocabulary: model vocab plus added tokens, indexed by id.
        let max_vocab = vocab_map
            .values()
            .filter_map(Value::as_u64)
            .max()
            .map_or(0, |m| m.saturating_add(1));
        let max_added = added.iter().map(|a| u64::from(a.id) + 1).max().unwrap_or(0);
        let n = usize::try_from(max_vocab.max(max_added))
            .map_err(|_| TokenizerError::Invalid("vocab size".into()))?;
        // Ids index a table: refuse ids far beyond the number of tokens before sizing it.
        let num_entries = vocab_map.len() + added.len();
        if n > num_entries + MAX_VOCAB_ID_GAP {
            return Err(TokenizerError::Invalid(format!(
                "token ids go up to {} but there are only {num_entries} tokens",
                n - 1
            )));
        }
        if n > (1 << 26) {
            return Err(TokenizerError::Invalid(format!("vocabulary of {n} ids")));
        }
        let mut texts: Vec<Option<String>> = vec![None; n];
        let mut types = vec![TokenType::Normal; n];
        for (text, id) in vocab_map {
            let id = id.as_u64().ok_or_else(|| missing("model.vocab values"))? as usize;
            types[id] = if !byte_level_model && parse_byte_token(text).is_some() {
                TokenType::Byte
            } else if Some(text.as_str()) == unk_text {
                TokenType::Unknown
            } else {
                TokenType::Normal
            };
            texts[id] = Some(text.clone());
        }
        for a in &added {
            texts[a.id as usize] = Some(a.content.clone());
            types[a.id as usize] = if a.special {
                TokenType::Control
            } else {
                TokenType::UserDefined
            };
        }
        let texts: Vec<String> = texts
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[EMPTY_{i}]")))
            .collect();
        let vocab = Vocab::new(texts, types, |text, ty| match ty {
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown => text.as_bytes().to_vec(),
            TokenType::Byte => parse_byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
            _ if byte_level_model => byte_level::decode_text(text),
            _ => spm::unescape(text),
        });

        let merges = parse_merges(
            &vocab,
            model
                .get("merges")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice),
        );
        let ignore_merges = model
            .get("ignore_merges")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let unk = unk_text.and_then(|t| vocab.get(t));
        let model = if byte_level_model {
            let pre = PreTokenizer::new(&byte_level_regexes(&pres)?)?;
            Model::ByteLevel {
                bpe: ByteLevelBpe::new(merges, byte_ids(&vocab), ignore_merges, word_ids(&vocab)),
                pre,
            }
        } else if byte_fallback || !norms.is_empty() || !pres.is_empty() {
            Model::Spm(SpmBpe {
                ranks: PairRanks::from_merges(merges),
                byte_ids: byte_fallback_ids(&vocab),
                unk,
                space_prefix: spm_space_prefix(&norms, &pres)?,
            })
        } else {
            return Err(TokenizerError::UnsupportedPreTokenizer(
                "BPE without ByteLevel or SentencePiece normalization".into(),
            ));
        };

        // BOS/EOS: tokenizer_config.json first, then the post-processor template.
        let (tmpl_bos, tmpl_eos) = template_specials(root.get("post_processor").unwrap_or(&Value::Null));
        let id_of = |t: Option<String>| t.and_then(|t| vocab.get(&t));
        let bos = id_of(config_token(&config, "bos_token")).or_else(|| id_of(tmpl_bos.clone()));
        let eos = id_of(config_token(&config, "eos_token"))
            .or_else(|| id_of(tmpl_eos.clone()))
            .or_else(|| {
                ["</s>", "<|endoftext|>", "<|end_of_text|>"]
                    .iter()
                    .find_map(|t| vocab.get(t))
            });
        let pad = id_of(config_token(&config, "pad_token"));
        let add_bos = config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(tmpl_bos.is_some());
        let add_eos = config
            .get("add_eos_token")
            .and_then(Value::as_bool)
            .unwrap_or(tmpl_eos.is_some());
        let strips: std::collections::HashMap<u32, (bool, bool)> =
            added.iter().map(|a| (a.id, (a.lstrip, a.rstrip))).collect();
        let special = special_matcher(&vocab, |id| strips.get(&id).copied().unwrap_or((false, false)));
        Ok(Self {
            model,
            special,
            bos: checked_id(bos, n),
            eos: checked_id(eos, n),
            unk,
            pad: checked_id(pad, n),
            add_bos,
            add_eos,
            vocab,
            unicode_form: norms.iter().find_map(|n| UnicodeForm::from_type(type_of(n))),
        })
    }
}

/// Merges as `"a b"` strings or `["a", "b"]` pairs, to `(left, right, merged)` ids.
fn parse_merges(vocab: &Vocab, merges: &[Value]) -> Vec<(u32, u32, u32)> {
    merges
        .iter()
        .filter_map(|m| match m {
            Value::String(s) => super::gguf_vocab::merge_ids(vocab, s),
            Value::Array(p) if p.len() == 2 => pair_ids(vocab, p[0].as_str()?, p[1].as_str()?),
            _ => None,
        })
        .collect()
}

/// The split regexes of a byte-level pre-tokenizer sequence.
fn byte_level_regexes(pres: &[&Value]) -> Result<Vec<String>, TokenizerError> {
    let mut out = Vec::new();
    for p in pres {
        match type_of(p) {
            "ByteLevel" => {
                if p.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                    log::warn!("tokenizer.json ByteLevel add_prefix_space=true is ignored");
                }
                if p.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                    out.push(pretokenize::GPT2.to_string());
                }
            }
            "Split" => {
                let behavior = p.get("behavior").and_then(Value::as_str).unwrap_or("Isolated");
                let invert = p.get("invert").and_then(Value::as_bool).unwrap_or(false);
                if behavior != "Isolated" || invert {
                    return Err(TokenizerError::UnsupportedPreTokenizer(format!(
                        "Split behavior {behavior}, invert {invert}"
                    )));
                }
                let pat = p.get("pattern").ok_or_else(|| missing("pre_tokenizer.pattern"))?;
                if let Some(r) = pat.get("Regex").and_then(Value::as_str) {
                    out.push(r.to_string());
                } else if let Some(s) = pat.get("String").and_then(Value::as_str) {
                    out.push(fancy_regex::escape(s).into_owned());
                } else {
                    return Err(missing("pre_tokenizer.pattern.Regex"));
                }
            }
            "Digits" => {
                let single = p
                    .get("individual_digits")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                out.push(if single { r"\p{N}" } else { r"\p{N}+" }.to_string());
            }
            other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        }
    }
    Ok(out)
}

/// How a SentencePiece-style tokenizer.json prefixes `▁`.
fn spm_space_prefix(norms: &[&Value], pres: &[&Value]) -> Result<SpacePrefix, TokenizerError> {
    let mut prefix = SpacePrefix::Never;
    for n in norms {
        match type_of(n) {
            "Prepend" => prefix = SpacePrefix::AfterSpecial,
            "Replace" => {}
            "NFC" | "NFKC" | "NFD" | "NFKD" => {}
            other => {
                return Err(TokenizerError::UnsupportedPreTokenizer(format!(
                    "normalizer {other}"
                )))
            }
        }
    }
    for p in pres {
        match type_of(p) {
            "Metaspace" => {
                if p.get("split").and_then(Value::as_bool) == Some(true) {
                    log::warn!("tokenizer.json Metaspace split=true: merging across words instead");
                }
                let scheme = p.get("prepend_scheme").and_then(Value::as_str);
                let legacy = p.get("add_prefix_space").and_then(Value::as_bool);
                prefix = match (scheme, legacy) {
                    (Some("first"), _) => SpacePrefix::First,
                    (Some("never"), _) | (None, Some(false)) => SpacePrefix::Never,
                    _ => SpacePrefix::UnlessSpace,
                };
            }
            other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        }
    }
    Ok(prefix)
}

/// Special tokens a `TemplateProcessing` post-processor puts before/after a single sequence.
fn template_specials(post: &Value) -> (Option<String>, Option<String>) {
    let mut procs = Vec::new();
    flatten(post, "processors", &mut procs);
    let (mut bos, mut eos) = (None, None);
    for p in procs.into_iter().filter(|p| type_of(p) == "TemplateProcessing") {
        let mut seen_seq = false;
        for item in p.get("single").and_then(Value::as_array).into_iter().flatten() {
            if item.get("Sequence").is_some() {
                seen_seq = true;
            } else if let Some(id) = item
                .get("SpecialToken")
                .and_then(|s| s.get("id"))
                .and_then(Value::as_str)
            {
                if seen_seq {
                    eos = Some(id.to_string());
                } else {
                    bos = Some(id.to_string());
                }
            }
        }
    }
    (bos, eos)
}
