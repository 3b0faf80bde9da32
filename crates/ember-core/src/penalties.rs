//! Logit adjustments that depend on a request's tokens, with vLLM's formulas: the
//! repetition penalty over prompt and output tokens, frequency and presence penalties over
//! output tokens, and the per-token `logit_bias`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::sampling_params::SamplingParams;

/// The tokens of one request that penalties and prompt logprobs look at.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenHistory {
    prompt_token_ids: Arc<[u32]>,
    /// Distinct prompt token ids, sorted.
    prompt_distinct_ids: Vec<u32>,
    /// How often each token occurs in the output.
    output_counts: HashMap<u32, u32>,
}

impl TokenHistory {
    /// The history of a request with this prompt that has generated `output_token_ids`.
    pub fn new(prompt_token_ids: Arc<[u32]>, output_token_ids: &[u32]) -> Self {
        let mut prompt_distinct_ids = prompt_token_ids.to_vec();
        prompt_distinct_ids.sort_unstable();
        prompt_distinct_ids.dedup();
        let mut history = Self {
            prompt_token_ids,
            prompt_distinct_ids,
            output_counts: HashMap::new(),
        };
        for &token_id in output_token_ids {
            history.push_output(token_id);
        }
        history
    }

    /// Records one generated token.
    pub fn push_output(&mut self, token_id: u32) {
        *self.output_counts.entry(token_id).or_insert(0) += 1;
    }

    /// The prompt.
    pub fn prompt_token_ids(&self) -> &[u32] {
        &self.prompt_token_ids
    }

    /// How often `token_id` was generated so far.
    pub fn output_count(&self, token_id: u32) -> u32 {
        self.output_counts.get(&token_id).copied().unwrap_or(0)
    }
}

/// Applies the repetition, frequency and presence penalties of `params` to one row of logits.
///
/// Repetition (`r`): a token seen in the prompt or the output gets `l / r` when `l > 0`, else
/// `l * r`. Then each output token gets `l -= frequency * count + presence`.
pub fn apply_penalties(logits: &mut [f32], params: &SamplingParams, history: &TokenHistory) {
    let r = params.repetition_penalty;
    let repeat = |l: &mut f32| {
        *l = if *l > 0.0 { *l / r } else { *l * r };
    };
    if r != 1.0 {
        for &id in &history.prompt_distinct_ids {
            if !history.output_counts.contains_key(&id) {
                if let Some(l) = logits.get_mut(id as usize) {
                    repeat(l);
                }
            }
        }
    }
    for (&id, &count) in &history.output_counts {
        let Some(l) = logits.get_mut(id as usize) else {
            continue;
        };
        if r != 1.0 {
            repeat(l);
        }
        *l -= params.frequency_penalty * count as f32 + params.presence_penalty;
    }
}

/// Adds `params.logit_bias` to one row of logits (ids outside the row are ignored).
pub fn apply_logit_bias(logits: &mut [f32], params: &SamplingParams) {
    for &(id, bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += bias;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn history(prompt: &[u32], output: &[u32]) -> TokenHistory {
        TokenHistory::new(Arc::from(prompt), output)
    }

    #[test]
    fn formulas_match_by_hand() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        // Token 0: prompt only; 1: output twice; 2: unseen; 3: prompt and output once (negative).
        let mut row = vec![4.0, 3.0, 1.0, -1.0];
        apply_penalties(&mut row, &params, &history(&[0, 3, 0], &[1, 3, 1]));
        assert_eq!(row, vec![2.0, 1.5 - 1.0 - 0.25, 1.0, -2.0 - 0.5 - 0.25]);
    }

    #[test]
    fn bias_adds_and_ignores_out_of_range_ids() {
        let params = SamplingParams {
            logit_bias: vec![(1, -3.0), (7, 100.0)],
            ..Default::default()
        };
        let mut row = vec![1.0, 1.0, 1.0];
        apply_logit_bias(&mut row, &params);
        assert_eq!(row, vec![1.0, -2.0, 1.0]);
    }

    #[test]
    fn history_counts_outputs() {
        let mut h = history(&[5, 5], &[1]);
        h.push_output(1);
        h.push_output(2);
        assert_eq!(
            (h.output_count(1), h.output_count(2), h.output_count(5)),
            (2, 1, 0)
        );
        assert_eq!(h.prompt_token_ids(), &[5, 5]);
    }

    fn tokens() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::vec(0u32..40, 0..30)
    }

    proptest! {
        /// Each logit is adjusted independently, exactly as the per-token formula says.
        #[test]
        fn penalties_follow_the_per_token_formula(
            row in prop::collection::vec(-10.0f32..10.0, 40),
            prompt in tokens(),
            output in tokens(),
            r in 0.1f32..3.0,
            freq in -2.0f32..2.0,
            pres in -2.0f32..2.0,
        ) {
            let params = SamplingParams {
                repetition_penalty: r,
                frequency_penalty: freq,
                presence_penalty: pres,
                ..Default::default()
            };
            let mut got = row.clone();
            apply_penalties(&mut got, &params, &history(&prompt, &output));
            for (id, (&before, &after)) in row.iter().zip(&got).enumerate() {
                let id = id as u32;
                let count = output.iter().filter(|&&t| t == id).count() as f32;
                let mut want = before;
                if prompt.contains(&id) || count > 0.0 {
                    want = if want > 0.0 { want / r } else { want * r };
                }
                if count > 0.0 {
                    want -= freq * count + pres;
                }
                prop_assert!((after - want).abs() <= 1e-5 * want.abs().max(1.0), "id {}: {} vs {}", id, after, want);
            }
        }

        /// A positive repetition penalty above 1 never raises a seen token's logit; unseen
        /// tokens never change.
        #[test]
        fn repetition_only_lowers_seen_tokens(
            row in prop::collection::vec(-10.0f32..10.0, 40),
            prompt in tokens(),
            r in 1.0f32..3.0,
        ) {
            let params = SamplingParams { repetition_penalty: r, ..Default::default() };
            let mut got = row.clone();
            apply_penalties(&mut got, &params, &history(&prompt, &[]));
            for (id, (&before, &after)) in row.iter().zip(&got).enumerate() {
                if prompt.contains(&(id as u32)) {
                    prop_assert!(after <= before);
                } else {
                    prop_assert_eq!(after, before);
                }
            }
        }

        /// Biases add exactly, leave other tokens alone, and +100 makes the token the argmax.
        #[test]
        fn bias_is_additive(row in prop::collection::vec(-10.0f32..10.0, 1..50), pick in any::<prop::sample::Index>()) {
            let id = pick.index(row.len()) as u32;
            let params = SamplingParams { logit_bias: vec![(id, 100.0)], ..Default::default() };
            let mut got = row.clone();
            apply_logit_bias(&mut got, &params);
            for (i, (&before, &after)) in row.iter().zip(&got).enumerate() {
                if i as u32 == id {
                    prop_assert_eq!(after, before + 100.0);
                } else {
                    prop_assert_eq!(after, before);
                }
            }
            let best = got.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(got[id as usize], best);
        }
    }
}
