//! Log-probabilities under the raw logits of one row: the log-softmax, a token's rank and
//! the best alternatives. Used for sampled tokens and for prompt tokens.

use crate::sampler_ops::{sanitize_and_argmax, sum_exp, top_indices};

/// One token's log-probability, rank and the best alternatives, all under the raw logits.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token_id: u32,
    /// Its log-softmax value.
    pub logprob: f32,
    /// 1 + the number of tokens with a strictly larger logit (1 = most likely).
    pub rank: u32,
    /// The `k` best tokens `(token_id, logprob)`, best first (ties: lower id first).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Log-softmax statistics of one row of logits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowStats {
    /// Index of the first maximum.
    pub max_idx: usize,
    /// The maximum (`-inf` when every entry is `-inf` or NaN).
    pub max: f32,
    /// `log(sum(exp(l)))`, or `max` when that is not finite.
    pub lse: f32,
}

impl RowStats {
    /// Replaces NaNs in `row` by `-inf` and measures it; `None` when the row is empty.
    pub fn of(row: &mut [f32]) -> Option<Self> {
        let (max_idx, max) = sanitize_and_argmax(row)?;
        let lse = if max.is_finite() {
            max + sum_exp(row, max).ln() as f32
        } else {
            max
        };
        Some(Self { max_idx, max, lse })
    }

    /// The log-probability of a token whose raw logit is `raw`.
    pub fn logprob(&self, raw: f32) -> f32 {
        if self.max.is_finite() {
            raw - self.lse
        } else {
            f32::NEG_INFINITY
        }
    }

    /// The `k` best tokens of `row` with their log-probabilities, best first.
    pub fn top_logprobs(&self, row: &[f32], k: usize) -> Vec<(u32, f32)> {
        top_indices(row, k)
            .into_iter()
            .map(|i| (i, self.logprob(row[i as usize])))
            .collect()
    }
}

/// 1 + the number of entries of `row` strictly greater than `value`.
pub fn rank_of(row: &[f32], value: f32) -> u32 {
    1 + row.iter().filter(|&&l| l > value).count() as u32
}

/// Log-probability, rank and `k` best alternatives of `token_id` under one row of raw logits
/// (NaNs in the row become `-inf`). `None` when the row is empty or too short for the token.
pub fn token_logprob(row: &mut [f32], token_id: u32, k: usize) -> Option<TokenLogprob> {
    let stats = RowStats::of(row)?;
    let raw = *row.get(token_id as usize)?;
    Some(TokenLogprob {
        token_id,
        logprob: stats.logprob(raw),
        rank: rank_of(row, raw),
        top_logprobs: stats.top_logprobs(row, k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprob_rank_and_top_of_a_small_row() {
        let mut row = vec![1.0f32, 3.0, f32::NAN, 2.0, 3.0];
        let lse = (1.0f32.exp() + 2.0 * 3.0f32.exp() + 2.0f32.exp()).ln();
        let t = token_logprob(&mut row, 3, 2).unwrap();
        assert_eq!(t.rank, 3);
        assert!((t.logprob - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(t.top_logprobs.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(token_logprob(&mut row, 2, 0).unwrap().rank, 5);
        assert_eq!(token_logprob(&mut row, 1, 0).unwrap().rank, 1);
        assert!(token_logprob(&mut row, 9, 0).is_none());
        assert!(token_logprob(&mut [], 0, 0).is_none());
    }
}
