//! Unit tests over tiny hand-made vocabularies.

use std::path::PathBuf;

use super::byte_level::encode_bytes;
use super::spm::{PairRanks, SpacePrefix, SpmBpe};
use super::vocab::{byte_fallback_ids, TokenType, Vocab};
use super::*;
use crate::formats::safetensors::tests::temp_dir;

/// A byte-level tokenizer: 256 byte tokens, then the merged tokens, then added tokens
/// `(text, is_special)`.
pub(crate) fn byte_level_tokenizer(merges: &[(&str, &str)], added: &[(&str, bool)]) -> Tokenizer {
    let (path, _) = byte_level_json(merges, added, false);
    Tokenizer::from_hf_files(&path, None).unwrap()
}

/// Byte-level tokenizer.json: 256 byte tokens, then the merged tokens, then added tokens.
fn byte_level_json(
    merges: &[(&str, &str)],
    added: &[(&str, bool)],
    ignore_merges: bool,
) -> (PathBuf, Vec<String>) {
    let mut vocab: Vec<String> = (0..=255u8).map(|b| encode_bytes(&[b])).collect();
    for (l, r) in merges {
        let (l, r) = (encode_bytes(l.as_bytes()), encode_bytes(r.as_bytes()));
        vocab.push(format!("{l}{r}"));
    }
    let vocab_obj: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let merges_json: Vec<String> = merges
        .iter()
        .map(|(l, r)| format!("{} {}", encode_bytes(l.as_bytes()), encode_bytes(r.as_bytes())))
        .collect();
    let added_json: Vec<serde_json::Value> = added
        .iter()
        .enumerate()
        .map(|(i, (t, special))| serde_json::json!({"id": vocab.len() + i, "content": t, "special": special}))
        .collect();
    let json = serde_json::json!({
        "added_tokens": added_json,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "post_processor": {"type": "ByteLevel"},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab_obj, "merges": merges_json, "ignore_merges": ignore_merges},
    });
    let dir = temp_dir("tok-byte-level");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    (path, vocab)
}

#[test]
fn byte_level_merges_follow_rank_order() {
    // "ab" outranks "bc": "abc" -> ["ab", "c"]; then "ab c" merges to "abc".
    let (path, vocab) = byte_level_json(&[("a", "b"), ("b", "c"), ("ab", "c")], &[], false);
    let tok = Tokenizer::from_hf_files(&path, None).unwrap();
    let id = |t: &str| vocab.iter().position(|v| v == t).unwrap() as u32;
    assert_eq!(tok.encode("abc", false), [id("abc")]);
    assert_eq!(tok.encode("abbc", false), [id("ab"), id("bc")]);
    assert_eq!(tok.encode("aab", false), [u32::from(b'a'), id("ab")]);
    // Pre-tokenization keeps merges inside words: " ab" is one word with a leading space.
    assert_eq!(
        tok.encode("x ab", false),
        [u32::from(b'x'), encode_id(&vocab, " "), id("ab")]
    );
    assert_eq!(tok.decode(&tok.encode("x ab", false), false), "x ab");
}

fn encode_id(vocab: &[String], raw: &str) -> u32 {
    let t = encode_bytes(raw.as_bytes());
    vocab.iter().position(|v| *v == t).unwrap() as u32
}

#[test]
fn byte_level_round_trips_multibyte_text() {
    let (path, _) = byte_level_json(&[], &[], false);
    let tok = Tokenizer::from_hf_files(&path, None).unwrap();
    for text in ["naïve café", "日本語 🦙\r\n\ttabs", ""] {
        let ids = tok.encode(text, true);
        assert_eq!(ids.len(), text.len(), "one token per byte without merges");
        assert_eq!(tok.decode(&ids, false), text);
        let joined: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).to_vec()).collect();
        assert_eq!(joined, text.as_bytes());
    }
}

#[test]
fn special_tokens_split_and_decode() {
    let (path, vocab) = byte_level_json(&[("h", "i")], &[("<|im_start|>", true), ("[tool]", false)], false);
    let tok = Tokenizer::from_hf_files(&path, None).unwrap();
    let start = vocab.len() as u32;
    let hi = start - 1;
    assert_eq!(tok.encode("<|im_start|>hi[tool]", false), [start, hi, start + 1]);
    assert!(tok.is_special(start) && !tok.is_special(start + 1));
    assert_eq!(tok.decode(&[start, hi, start + 1], true), "hi[tool]");
    assert_eq!(tok.decode(&[start, hi], false), "<|im_start|>hi");
    // Without special parsing, control text is ordinary bytes.
    assert_eq!(
        tok.encode_with("<|im_start|>", false, false).len(),
        "<|im_start|>".len()
    );
    assert_eq!(tok.token_bytes(start), b"<|im_start|>");
}

#[test]
fn ignore_merges_takes_whole_words() {
    // "abc" is a token reachable only through a merge ("a" "bc") that is ranked after "ab".
    let (path, vocab) = byte_level_json(&[("a", "b"), ("b", "c"), ("a", "bc")], &[], true);
    let tok = Tokenizer::from_hf_files(&path, None).unwrap();
    let id = |t: &str| vocab.iter().position(|v| v == t).unwrap() as u32;
    assert_eq!(tok.encode("abc", false), [id("abc")]);
}

/// A SentencePiece-style tokenizer built directly, GGUF style (scores).
pub(crate) fn spm_tokenizer() -> Tokenizer {
    let mut texts: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    for b in 0..=255u8 {
        texts.push(format!("<0x{b:02X}>"));
        types.push(TokenType::Byte);
    }
    let words = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "▁hell", "▁hello", "lo", "▁w", "or",
    ];
    let mut scores = vec![0.0f32; texts.len()];
    for (k, w) in words.iter().enumerate() {
        texts.push((*w).to_string());
        types.push(TokenType::Normal);
        scores.push(-(k as f32));
    }
    let vocab = Vocab::new(texts, types, |t, ty| match ty {
        TokenType::Byte => vec![vocab::parse_byte_token(t).unwrap()],
        TokenType::Normal => spm::unescape(t),
        _ => t.as_bytes().to_vec(),
    });
    let model = Model::Spm(SpmBpe {
        ranks: PairRanks::from_scores(&scores),
        byte_ids: byte_fallback_ids(&vocab),
        unk: Some(0),
        space_prefix: SpacePrefix::AfterSpecial,
    });
    let special = special_matcher(&vocab, |_| (false, false));
    Tokenizer {
        vocab,
        model,
        special,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        pad: None,
        add_bos: true,
        add_eos: false,
        unicode_form: None,
    }
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let tok = spm_tokenizer();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    // "▁hello" is the best-scoring reachable token path: ▁ + hell (he+ll) + o... -> ▁hello.
    assert_eq!(tok.encode("hello", false), [id("▁hello")]);
    assert_eq!(tok.encode("hello", true), [1, id("▁hello")]);
    // "é" is not in the vocabulary: its two UTF-8 bytes fall back to <0xC3> <0xA9>.
    assert_eq!(
        tok.encode("hé", false),
        [id("▁"), id("h"), id("<0xC3>"), id("<0xA9>")]
    );
    let ids = tok.encode("hello world é", true);
    assert_eq!(tok.decode(&ids, true), "hello world é");
    assert!(tok.strips_leading_space());
}

#[test]
fn spm_prefixes_space_after_special_tokens() {
    let tok = spm_tokenizer();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(
        tok.encode("hello</s>hello", false),
        [id("▁hello"), 2, id("▁hello")]
    );
    assert_eq!(tok.bos_token(), Some("<s>"));
    assert_eq!(tok.eos_token(), Some("</s>"));
}

#[test]
fn hf_spm_json_with_merges_and_template() {
    let mut vocab = serde_json::Map::new();
    let toks = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab"];
    for (i, t) in toks.iter().enumerate() {
        vocab.insert((*t).to_string(), serde_json::json!(i));
    }
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), serde_json::json!(8 + b));
    }
    let json = serde_json::json!({
        "added_tokens": [
            {"id": 0, "content": "<unk>", "special": true},
            {"id": 1, "content": "<s>", "special": true},
            {"id": 2, "content": "</s>", "special": true}
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}
        ]},
        "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "vocab": vocab,
                  "merges": [["a", "b"], ["▁", "ab"]]}
    });
    let dir = temp_dir("tok-spm");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let tok = Tokenizer::from_hf_files(&path, None).unwrap();
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_id(), Some(2));
    assert_eq!(tok.encode("ab ab", true), [1, 7, 7]);
    assert_eq!(tok.encode("c", false), [3, 8 + 0x63]);
    assert_eq!(tok.decode(&[1, 7, 7], true), "ab ab");
    assert_eq!(tok.decode(&[1, 7, 7], false), "<s> ab ab");
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

#[test]
fn missing_file_is_an_error() {
    let err = Tokenizer::from_hf_files(std::path::Path::new("/nonexistent/tokenizer.json"), None);
    assert!(matches!(err, Err(TokenizerError::Io { .. })));
}
