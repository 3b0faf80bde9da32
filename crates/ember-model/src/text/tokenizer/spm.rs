//! SentencePiece-style BPE: spaces become `▁`, characters merge by token score (GGUF) or by
//! merge rank (HF `tokenizer.json`), and characters without a token fall back to `<0xXX>`.

use std::collections::HashMap;

use super::bpe::{merge, Symbol};
use super::vocab::Vocab;

/// The SentencePiece whitespace marker.
pub(crate) const SPACE_MARK: &str = "\u{2581}";

/// When a `▁` is put in front of a piece of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpacePrefix {
    /// Never.
    Never,
    /// Only for the text at the very start of the input, unless it already starts with a
    /// space (the Metaspace pre-tokenizer's `prepend_scheme: "first"`).
    First,
    /// For the first piece and every piece that follows a special token, always (llama.cpp,
    /// and the `Prepend` normalizer of Llama 2's `tokenizer.json`).
    AfterSpecial,
    /// For every piece that does not already start with a space (the Metaspace
    /// pre-tokenizer's `prepend_scheme: "always"`).
    UnlessSpace,
}

/// How pairs are ranked.
#[derive(Debug)]
pub(crate) enum PairRanks {
    /// GGUF: any adjacent pair whose concatenation is a token, best score first. Holds each
    /// token's dense rank in descending-score order.
    Scores(Vec<u32>),
    /// HF: explicit merges `(left, right) -> (rank, merged)`.
    Merges(HashMap<(u32, u32), (u32, u32)>),
}

impl PairRanks {
    /// Ranks from per-token scores: higher score merges first; equal scores tie.
    pub fn from_scores(scores: &[f32]) -> Self {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut ranks = vec![0u32; scores.len()];
        let mut rank = 0u32;
        for (k, &i) in order.iter().enumerate() {
            if k > 0 && scores[order[k - 1]] != scores[i] {
                rank += 1;
            }
            ranks[i] = rank;
        }
        Self::Scores(ranks)
    }

    /// Ranks from an ordered merge list of `(left, right, merged)` ids.
    pub fn from_merges(merges: impl IntoIterator<Item = (u32, u32, u32)>) -> Self {
        let mut map = HashMap::new();
        for (rank, (l, r, m)) in merges.into_iter().enumerate() {
            map.entry((l, r)).or_insert((rank as u32, m));
        }
        Self::Merges(map)
    }
}

/// The SentencePiece-style BPE model.
#[derive(Debug)]
pub(crate) struct SpmBpe {
    pub ranks: PairRanks,
    pub byte_ids: [Option<u32>; 256],
    pub unk: Option<u32>,
    pub space_prefix: SpacePrefix,
}

impl SpmBpe {
    /// Appends the tokens of `text` (already escaped: spaces are `▁`).
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let syms: Vec<Symbol> = text
            .char_indices()
            .map(|(i, c)| {
                let end = i + c.len_utf8();
                Symbol::new(i, end, vocab.get(&text[i..end]))
            })
            .collect();
        let merged = match &self.ranks {
            PairRanks::Scores(ranks) => merge(syms, |l, r| {
                let id = vocab.get(&text[l.start..r.end])?;
                Some((u64::from(*ranks.get(id as usize)?), id))
            }),
            PairRanks::Merges(map) => merge(syms, |l, r| {
                let (rank, id) = *map.get(&(l.id?, r.id?))?;
                Some((u64::from(rank), id))
            }),
        };
        for s in merged {
            match s.id {
                Some(id) => out.push(id),
                None => {
                    for &b in &text.as_bytes()[s.start..s.end] {
                        if let Some(id) = self.byte_ids[usize::from(b)].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}

/// Replaces spaces with `▁`, optionally putting one in front.
pub(crate) fn escape(text: &str, prefix: bool) -> String {
    let mut s = String::with_capacity(text.len() + 3);
    if prefix {
        s.push_str(SPACE_MARK);
    }
    for part in text.split(' ').enumerate() {
        if part.0 > 0 {
            s.push_str(SPACE_MARK);
        }
        s.push_str(part.1);
    }
    s
}

/// The bytes an SPM token text contributes to decoded text: `▁` becomes a space.
pub(crate) fn unescape(text: &str) -> Vec<u8> {
    text.replace(SPACE_MARK, " ").into_bytes()
}
