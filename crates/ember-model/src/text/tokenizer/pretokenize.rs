//! Regex pre-tokenization for byte-level BPE: a list of regexes applied in turn, each
//! splitting every piece into its matches and the gaps between them (llama.cpp's
//! `unicode_regex_split`, HF's `Split(..., "isolated")`).

use fancy_regex::Regex;

use super::TokenizerError;

/// GPT-2's pattern (also HF `ByteLevel(use_regex=true)`).
pub(crate) const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's GPT-2 list omits the trailing `\s+`; with `(?!\S)` it only differs on a
/// lone whitespace run before a letter, which the next match then takes.
const GPT2_LLAMA_CPP: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DIGIT: &str = r"\p{N}";

/// The regex list and flags for a GGUF `tokenizer.ggml.pre` name.
pub(crate) struct PreSpec {
    /// Regexes applied in order.
    pub regexes: Vec<&'static str>,
    /// Whole words that are tokens skip merging.
    pub ignore_merges: bool,
    /// The model adds BOS by default.
    pub add_bos: bool,
}

/// Looks up a llama.cpp pre-tokenizer name; `None` when it is not supported.
pub(crate) fn spec_for(pre: &str) -> Option<PreSpec> {
    let spec = |regexes: Vec<&'static str>| PreSpec {
        regexes,
        ignore_merges: false,
        add_bos: false,
    };
    Some(match pre {
        "default" => spec(vec![
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_LLAMA_CPP,
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            PreSpec {
                regexes: vec![LLAMA3],
                ignore_merges: true,
                add_bos: true,
            }
        }
        "dbrx" | "smaug-bpe" | "chatglm-bpe" => spec(vec![LLAMA3]),
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "jina-es"
        | "jina-de" | "jina-v2-es" | "jina-v2-de" | "gigachat" | "a.x-4.0" | "mellum" | "modern-bert"
        | "roberta-bpe" | "jina-v1-en" | "jina-v2-code" => spec(vec![GPT2_LLAMA_CPP]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            spec(vec![DIGIT, GPT2_LLAMA_CPP])
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" | "kormo" | "f2llmv2" => spec(vec![QWEN2]),
        "qwen35" => spec(vec![QWEN35]),
        "falcon" => spec(vec![
            r"[\p{P}\$\+<=>\^~\|`]+",
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
            r"[0-9][0-9][0-9]",
        ]),
        "deepseek-coder" => spec(vec![
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            r"[一-龥ࠀ-一가-퟿]+",
            DIGIT,
        ]),
        "tekken" => PreSpec {
            regexes: vec![TEKKEN],
            ignore_merges: true,
            add_bos: true,
        },
        "gpt-4o" | "llama4" => spec(vec![GPT4O]),
        "poro-chat" | "bloom" | "gpt3-finnish" => spec(vec![r" ?[^(\s|.,!?…。，、।۔،)]+"]),
        "viking" => spec(vec![r" ?[^(\s|.,!?…。，、।۔،)]+", DIGIT]),
        _ => return None,
    })
}

/// A compiled list of splitting regexes.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// Compiles the regex list.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, TokenizerError> {
        let regexes = patterns
            .iter()
            .map(|p| {
                Regex::new(p.as_ref()).map_err(|e| TokenizerError::BadRegex {
                    pattern: p.as_ref().to_string(),
                    detail: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { regexes })
    }

    /// Splits `text` into word byte ranges, in order, covering all of it.
    pub fn split(&self, text: &str) -> Vec<(usize, usize)> {
        let mut pieces = vec![(0, text.len())];
        if text.is_empty() {
            return Vec::new();
        }
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for &(s, e) in &pieces {
                split_one(re, text, s, e, &mut next);
            }
            pieces = next;
        }
        pieces
    }
}

fn split_one(re: &Regex, text: &str, s: usize, e: usize, out: &mut Vec<(usize, usize)>) {
    let piece = &text[s..e];
    let mut last = 0;
    for m in re.find_iter(piece) {
        let Ok(m) = m else {
            // Backtracking limit: keep the rest as one piece rather than fail.
            break;
        };
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            out.push((s + last, s + m.start()));
        }
        out.push((s + m.start(), s + m.end()));
        last = m.end();
    }
    if last < piece.len() {
        out.push((s + last, e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let spec = spec_for(pre).unwrap();
        let p = PreTokenizer::new(&spec.regexes).unwrap();
        p.split(text)
            .into_iter()
            .map(|(s, e)| text[s..e].to_string())
            .collect()
    }

    #[test]
    fn gpt2_splits() {
        assert_eq!(
            words("gpt-2", "Hello world  it's 123"),
            ["Hello", " world", " ", " it", "'s", " 123"]
        );
    }

    #[test]
    fn llama3_groups_three_digits_and_newlines() {
        assert_eq!(
            words("llama-bpe", "12345 ab\n\nx"),
            ["123", "45", " ab", "\n\n", "x"]
        );
    }

    #[test]
    fn smollm_and_qwen2_split_single_digits() {
        assert_eq!(words("smollm", "a 123"), ["a", " ", "1", "2", "3"]);
        assert_eq!(words("qwen2", "a 12"), ["a", " ", "1", "2"]);
    }

    #[test]
    fn every_listed_pattern_compiles() {
        for pre in [
            "default",
            "llama3",
            "gpt-2",
            "smollm",
            "qwen2",
            "qwen35",
            "falcon",
            "deepseek-coder",
            "tekken",
            "gpt-4o",
            "bloom",
            "viking",
        ] {
            let spec = spec_for(pre).unwrap();
            PreTokenizer::new(&spec.regexes).unwrap();
        }
    }
}
