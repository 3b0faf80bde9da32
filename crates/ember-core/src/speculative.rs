//! Speculative decoding's host side: the n-gram proposer (prompt lookup), the per-request
//! acceptance record that adapts how many tokens are proposed, and the verification rule.
//!
//! The rule keeps outputs identical to plain decoding: row `i` of a verified sequence is
//! sampled with the ordinary sampler at token index `t + i`, with penalties seeing the tokens
//! accepted before it; drafts are accepted while they equal those samples, and the first
//! differing sample (or the bonus sample after the last draft) is emitted.

use thiserror::Error;

/// Where draft tokens come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeculativeMethod {
    /// Prompt lookup: the tokens after an earlier occurrence of the latest n-gram.
    Ngram {
        /// Shortest suffix (in tokens) the proposer matches.
        prompt_lookup_min: usize,
        /// Longest suffix (in tokens) the proposer tries first.
        prompt_lookup_max: usize,
    },
    /// A draft model run by the runner: the scheduler reserves the draft slots and the runner
    /// fills in the draft's greedy tokens before verification.
    DraftModel,
}

/// How a request's draft tokens are proposed and how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeculativeConfig {
    /// The proposer.
    pub method: SpeculativeMethod,
    /// Most draft tokens verified per step for one request.
    pub num_speculative_tokens: usize,
    /// Speculation is off in a step with more running sequences than this (verification then
    /// costs more than it saves); 0 never turns it off for the batch size.
    pub max_num_seqs_to_speculate: usize,
    /// Adapt each request's draft length to its measured acceptance rate.
    pub adaptive: bool,
}

/// Most draft tokens a request may verify per step.
pub const MAX_SPECULATIVE_TOKENS: usize = 32;

/// Longest suffix (in tokens) the n-gram proposer may be asked to match.
pub const MAX_PROMPT_LOOKUP: usize = 64;

/// Default batch size above which n-gram speculation is off: on the CPU's quantized kernels a
/// step's cost grows with its rows, and `bench/spec_decode.py` measured n-gram speculation
/// slower than plain decoding from 2 running sequences on (0.86x on a quiet 2-core machine, see
/// bench/RESULTS.md), so only a single stream speculates.
pub const DEFAULT_NGRAM_MAX_NUM_SEQS_TO_SPECULATE: usize = 1;

/// Default batch size above which draft-model speculation is off: a cheap draft (Q4_1 for a
/// float32 target) still won at 4 and 16 sequences in `bench/spec_decode.py`, but a draft as
/// costly as its target would not, so the default stays at 2.
pub const DEFAULT_DRAFT_MAX_NUM_SEQS_TO_SPECULATE: usize = 2;

/// A speculative config whose fields are out of range; names the field and the limit.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpeculativeConfigError(pub String);

impl SpeculativeConfig {
    /// An n-gram config proposing up to `num_speculative_tokens` tokens from suffixes of
    /// `prompt_lookup_min..=prompt_lookup_max` tokens, adaptive, off above
    /// [`DEFAULT_NGRAM_MAX_NUM_SEQS_TO_SPECULATE`] running sequences.
    pub fn ngram(num_speculative_tokens: usize, prompt_lookup_min: usize, prompt_lookup_max: usize) -> Self {
        Self {
            method: SpeculativeMethod::Ngram {
                prompt_lookup_min,
                prompt_lookup_max,
            },
            num_speculative_tokens,
            max_num_seqs_to_speculate: DEFAULT_NGRAM_MAX_NUM_SEQS_TO_SPECULATE,
            adaptive: true,
        }
    }

    /// A draft-model config proposing up to `num_speculative_tokens` tokens, adaptive, off
    /// above [`DEFAULT_DRAFT_MAX_NUM_SEQS_TO_SPECULATE`] running sequences.
    pub fn draft_model(num_speculative_tokens: usize) -> Self {
        Self {
            method: SpeculativeMethod::DraftModel,
            num_speculative_tokens,
            max_num_seqs_to_speculate: DEFAULT_DRAFT_MAX_NUM_SEQS_TO_SPECULATE,
            adaptive: true,
        }
    }

    /// Checks every field against its range.
    pub fn validate(&self) -> Result<(), SpeculativeConfigError> {
        let err = |m: String| Err(SpeculativeConfigError(format!("speculative_config: {m}")));
        if !(1..=MAX_SPECULATIVE_TOKENS).contains(&self.num_speculative_tokens) {
            return err(format!(
                "num_speculative_tokens must be in [1, {MAX_SPECULATIVE_TOKENS}], got {}",
                self.num_speculative_tokens
            ));
        }
        let SpeculativeMethod::Ngram {
            prompt_lookup_min,
            prompt_lookup_max,
        } = self.method
        else {
            return Ok(());
        };
        if prompt_lookup_min == 0 {
            return err("prompt_lookup_min must be at least 1, got 0".into());
        }
        if prompt_lookup_max < prompt_lookup_min {
            return err(format!(
                "prompt_lookup_max ({prompt_lookup_max}) must be at least prompt_lookup_min ({prompt_lookup_min})"
            ));
        }
        if prompt_lookup_max > MAX_PROMPT_LOOKUP {
            return err(format!(
                "prompt_lookup_max must be at most {MAX_PROMPT_LOOKUP}, got {prompt_lookup_max}"
            ));
        }
        Ok(())
    }
}

/// The longest suffix of some tokens seen earlier in them: its length and where the tokens
/// that followed its latest earlier occurrence start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NgramMatch {
    /// Tokens in the matched suffix.
    pub num_matched_tokens: usize,
    /// Index of the first token after the earlier occurrence.
    pub next_index: usize,
}

/// The longest suffix of `token_ids` (between `min_n` and `max_n` tokens long) that occurs
/// earlier in them, at its latest earlier occurrence; none when no such suffix occurs.
pub fn find_ngram(token_ids: &[u32], min_n: usize, max_n: usize) -> Option<NgramMatch> {
    let len = token_ids.len();
    if min_n == 0 {
        return None;
    }
    for n in (min_n..=max_n.min(len.saturating_sub(1))).rev() {
        let suffix = &token_ids[len - n..];
        // Candidate starts end before the suffix itself, latest first.
        for start in (0..len - n).rev() {
            if &token_ids[start..start + n] == suffix {
                return Some(NgramMatch {
                    num_matched_tokens: n,
                    next_index: start + n,
                });
            }
        }
    }
    None
}

/// Most drafts worth verifying after a suffix match of `num_matched_tokens` tokens, for
/// adaptive speculation. Short matches are poor predictors of a copy (on bench/spec_decode.py's
/// prompts a 1-token match's drafts are mostly wrong) and every draft costs a verified row, so
/// a 1-token match proposes nothing, a 2-token match one draft, a 3-token match up to three.
pub fn max_drafts_for_match(num_matched_tokens: usize) -> usize {
    match num_matched_tokens {
        0 | 1 => 0,
        2 => 1,
        3 => 3,
        _ => MAX_SPECULATIVE_TOKENS,
    }
}

/// One request's proposals and acceptances, which set how many tokens it proposes next.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AcceptanceRecord {
    /// Exponential moving average of the accepted fraction per verification (starts at 1).
    rate: Option<f64>,
    /// Steps left to wait before proposing again after the rate fell too low.
    num_cooldown_steps: u32,
}

/// Weight of the latest verification in the moving acceptance rate.
const RATE_WEIGHT: f64 = 0.3;
/// Below this moving acceptance rate a request stops proposing for a while.
const MIN_RATE: f64 = 0.15;
/// Steps a request with a low acceptance rate waits before trying again.
const COOLDOWN_STEPS: u32 = 16;

impl AcceptanceRecord {
    /// How many of up to `max_draft` tokens to propose this step; 0 while cooling down.
    /// Counts one step of any cooldown.
    pub fn num_to_propose(&mut self, max_draft: usize, adaptive: bool) -> usize {
        if !adaptive {
            return max_draft;
        }
        if self.num_cooldown_steps > 0 {
            self.num_cooldown_steps -= 1;
            return 0;
        }
        let rate = self.rate.unwrap_or(1.0);
        // Expected accepted run at this rate, plus one to probe for longer runs.
        let wanted = (rate * max_draft as f64).ceil() as usize + 1;
        wanted.clamp(1, max_draft)
    }

    /// Records a verification of `num_proposed` drafts of which `num_accepted` were accepted.
    pub fn record(&mut self, num_proposed: usize, num_accepted: usize) {
        if num_proposed == 0 {
            return;
        }
        let fraction = num_accepted as f64 / num_proposed as f64;
        let rate = match self.rate {
            Some(rate) => rate + RATE_WEIGHT * (fraction - rate),
            None => fraction,
        };
        self.rate = Some(rate);
        if rate < MIN_RATE {
            self.num_cooldown_steps = COOLDOWN_STEPS;
            self.rate = Some(MIN_RATE * 2.0);
        }
    }
}

/// The tokens a verified sequence emits: `sampled[i]` is row `i`'s sample; drafts are accepted
/// while they equal the sample of their row, and the first differing sample (or the bonus
/// sample after the last draft) ends the run. Returns how many samples are emitted.
pub fn num_emitted(draft_ids: &[u32], sampled_ids: &[u32]) -> usize {
    let num_accepted = draft_ids
        .iter()
        .zip(sampled_ids)
        .take_while(|(draft, sampled)| draft == sampled)
        .count();
    (num_accepted + 1).min(sampled_ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_takes_the_longest_then_latest_match() {
        let at = |n, next| {
            Some(NgramMatch {
                num_matched_tokens: n,
                next_index: next,
            })
        };
        // Suffix [1, 2] occurs at 0 and 4; the latest earlier one (4) is followed by index 6.
        let tokens = [1, 2, 3, 7, 1, 2, 9, 5, 1, 2];
        assert_eq!(find_ngram(&tokens, 1, 3), at(2, 6));
        // The 3-token suffix [5, 1, 2] never occurs earlier.
        assert_eq!(find_ngram(&tokens, 3, 3), None);
        assert_eq!(find_ngram(&[4, 4], 1, 1), at(1, 1));
        assert_eq!(find_ngram(&[4], 1, 2), None);
        assert_eq!(find_ngram(&tokens, 0, 3), None);
    }

    #[test]
    fn short_matches_propose_few_drafts() {
        assert_eq!(max_drafts_for_match(1), 0);
        assert_eq!(max_drafts_for_match(2), 1);
        assert_eq!(max_drafts_for_match(3), 3);
        assert_eq!(max_drafts_for_match(4), MAX_SPECULATIVE_TOKENS);
    }

    #[test]
    fn emitted_tokens_stop_at_the_first_difference() {
        assert_eq!(num_emitted(&[5, 6, 7], &[5, 6, 7, 8]), 4);
        assert_eq!(num_emitted(&[5, 6, 7], &[5, 9, 7, 8]), 2);
        assert_eq!(num_emitted(&[5, 6, 7], &[1]), 1);
        assert_eq!(num_emitted(&[], &[3]), 1);
    }

    #[test]
    fn adaptive_length_follows_acceptance_and_cools_down() {
        let mut record = AcceptanceRecord::default();
        assert_eq!(record.num_to_propose(5, true), 5);
        record.record(5, 5);
        assert_eq!(record.num_to_propose(5, true), 5);
        record.record(5, 0);
        record.record(5, 0);
        let k = record.num_to_propose(5, true);
        assert!((1..5).contains(&k), "{k}");
        for _ in 0..4 {
            record.record(5, 0);
        }
        assert_eq!(record.num_to_propose(5, true), 0, "cooling down after misses");
        assert_eq!(
            record.num_to_propose(5, false),
            5,
            "fixed length when not adaptive"
        );
    }

    #[test]
    fn adaptive_length_grows_back_to_the_cap_when_every_draft_is_accepted() {
        let mut record = AcceptanceRecord::default();
        record.record(16, 4);
        let after_miss = record.num_to_propose(16, true);
        assert!(after_miss < 16, "{after_miss}");
        let mut k = after_miss;
        // The moving rate climbs back in six verifications (5, 9, 12, 13, 15, 15, then 16 drafts).
        for _ in 0..6 {
            record.record(k, k);
            k = record.num_to_propose(16, true);
        }
        assert_eq!(
            k, 16,
            "a draft accepted in full grows back to num_speculative_tokens"
        );
    }

    #[test]
    fn config_fields_are_range_checked_by_name() {
        assert_eq!(SpeculativeConfig::ngram(4, 1, 4).validate(), Ok(()));
        let err = SpeculativeConfig::ngram(0, 1, 4).validate().unwrap_err();
        assert!(
            err.0.contains("num_speculative_tokens must be in [1, 32], got 0"),
            "{err}"
        );
        let err = SpeculativeConfig::ngram(4, 3, 2).validate().unwrap_err();
        assert!(err.0.contains("prompt_lookup_max (2)"), "{err}");
        let err = SpeculativeConfig::ngram(4, 0, 2).validate().unwrap_err();
        assert!(err.0.contains("prompt_lookup_min"), "{err}");
    }
}
