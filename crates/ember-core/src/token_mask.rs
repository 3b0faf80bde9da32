//! The set of tokens a constrained request may sample next: a packed bitmask (bit `id % 32`
//! of word `id / 32`), applied to a row of logits before any sampling transform.

/// Allowed next tokens of one sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    /// `ceil(vocab_size / 32)` words; a set bit allows the token.
    pub words: Vec<u32>,
}

impl TokenMask {
    /// True when token `id` may be sampled.
    pub fn allows(&self, id: u32) -> bool {
        self.words
            .get(id as usize / 32)
            .is_some_and(|w| w >> (id % 32) & 1 == 1)
    }

    /// Allows token `id` (ids beyond the mask's words are ignored).
    pub fn allow(&mut self, id: u32) {
        if let Some(w) = self.words.get_mut(id as usize / 32) {
            *w |= 1 << (id % 32);
        }
    }

    /// The lowest allowed token id, if any.
    pub fn first_allowed(&self) -> Option<u32> {
        let (index, word) = self.words.iter().enumerate().find(|(_, w)| **w != 0)?;
        Some(index as u32 * 32 + word.trailing_zeros())
    }

    /// Number of allowed tokens.
    pub fn num_allowed(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Sets the logit of every token the mask does not allow to `-inf` (`logits`: `[vocab]`).
    pub fn apply(&self, logits: &mut [f32]) {
        for (chunk, &word) in logits
            .chunks_mut(32)
            .zip(self.words.iter().chain(std::iter::repeat(&0)))
        {
            if word == u32::MAX {
                continue;
            }
            for (bit, logit) in chunk.iter_mut().enumerate() {
                if word >> bit & 1 == 0 {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_keeps_only_allowed_ids() {
        let mut mask = TokenMask { words: vec![0; 2] };
        mask.allow(3);
        mask.allow(40);
        mask.allow(99); // beyond the words: ignored
        assert_eq!(mask.num_allowed(), 2);
        let mut logits = vec![1.0f32; 70];
        mask.apply(&mut logits);
        for (id, l) in logits.iter().enumerate() {
            assert_eq!(l.is_finite(), id == 3 || id == 40, "id {id}");
        }
        assert!(mask.allows(40) && !mask.allows(41) && !mask.allows(1000));
        assert_eq!(mask.first_allowed(), Some(3));
        assert_eq!(TokenMask { words: vec![0; 3] }.first_allowed(), None);
    }
}
