//! llguidance's view of Ember's tokenizer: a `TokTrie` of every token's bytes (control tokens
//! marked with llguidance's 0xFF prefix, so grammars never produce them as text) and
//! tokenization through Ember's own BPE.

use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::text::tokenizer::Tokenizer;

/// Ember's tokenizer as an llguidance token environment.
pub(super) struct EmberTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl EmberTokEnv {
    /// The environment for a model whose logits rows have `vocab_size` entries (ids the
    /// tokenizer does not know get no bytes and are never allowed); `eos_token_id` is the id
    /// llguidance allows where the grammar accepts.
    pub(super) fn new_env(tokenizer: Arc<Tokenizer>, vocab_size: usize, eos_token_id: u32) -> TokEnv {
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_special(id) || id == eos_token_id {
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let info = TokRxInfo {
            tok_bos: tokenizer.bos_token_id(),
            tok_unk: tokenizer.unk_token_id(),
            tok_pad: tokenizer.pad_token_id(),
            ..TokRxInfo::new(vocab_size as u32, eos_token_id)
        };
        Arc::new(Self {
            trie: TokTrie::from(&info, &words),
            tokenizer,
        })
    }
}

impl TokenizerEnv for EmberTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode_with(text, false, false),
            // Not text (a cut in the middle of a character): llguidance's greedy fallback.
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
