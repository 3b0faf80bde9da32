//! The engine's per-request output state: incremental detokenization, stop strings, and the
//! log-probabilities waiting to be reported, with their token texts.

use ember_core::{
    IncrementalDetokenizer, PromptLogprobs, SampledToken, SamplingParams, StopStrings, TokenLogprob,
};

use crate::engine::step_output::{LogprobEntry, TokenLogprobs};
use crate::text::tokenizer::Tokenizer;

/// Builds reported logprobs, decoding each token's text when the request detokenizes.
struct LogprobText<'a> {
    tokenizer: &'a Tokenizer,
    decode: bool,
}

impl LogprobText<'_> {
    fn entry(&self, token_id: u32, logprob: f32, rank: Option<u32>) -> LogprobEntry {
        LogprobEntry {
            token_id,
            logprob,
            rank,
            decoded_token: self.decode.then(|| self.tokenizer.decode(&[token_id], false)),
        }
    }

    /// The token's entry and its alternatives, ranked by their place in the list.
    fn position(&self, token: LogprobEntry, top: &[(u32, f32)]) -> TokenLogprobs {
        let top = top
            .iter()
            .zip(1u32..)
            .map(|(&(id, logprob), rank)| self.entry(id, logprob, Some(rank)))
            .collect();
        TokenLogprobs { token, top }
    }
}

/// What a request's new tokens produced in one step.
pub(crate) struct Absorbed {
    /// Text released this step.
    pub new_text: String,
    /// The stop string that matched, if one did.
    pub matched_stop: Option<String>,
    /// Per absorbed token: logprob, rank and top alternatives (when asked for).
    pub new_logprobs: Option<Vec<TokenLogprobs>>,
    /// Tokens absorbed: all of them, or up to the one that completed a stop string (the
    /// rest, which plain decoding would never have produced, are dropped).
    pub num_tokens: usize,
}

/// Output-side state of one live request.
pub(crate) struct OutputState {
    detokenizer: Option<IncrementalDetokenizer>,
    stop_strings: StopStrings,
    stop: Vec<String>,
    /// Prompt length in tokens.
    pub num_prompt_tokens: usize,
    want_logprobs: bool,
    /// Prompt logprobs received and not yet reported; `None` when not asked for.
    pending_prompt_logprobs: Option<Vec<TokenLogprob>>,
    /// Prompt logprobs received so far (positions `1..=num_prompt_logprobs`).
    num_prompt_logprobs: usize,
}

impl OutputState {
    /// The state of a new request.
    pub fn new(params: &SamplingParams, num_prompt_tokens: usize) -> Self {
        Self {
            detokenizer: params
                .detokenize
                .then(|| IncrementalDetokenizer::new(params.skip_special_tokens)),
            stop_strings: StopStrings::new(params.stop.clone(), params.include_stop_str_in_output),
            stop: params.stop.clone(),
            num_prompt_tokens,
            want_logprobs: params.logprobs.is_some(),
            pending_prompt_logprobs: params.prompt_logprobs.map(|_| Vec::new()),
            num_prompt_logprobs: 0,
        }
    }

    /// Takes one runner chunk of prompt logprobs; positions already received (a request
    /// recomputing its prompt after preemption) are skipped.
    pub fn add_prompt_logprobs(&mut self, chunk: PromptLogprobs) {
        let Some(pending) = self.pending_prompt_logprobs.as_mut() else {
            return;
        };
        let next_position = self.num_prompt_logprobs + 1;
        if chunk.first_position > next_position {
            log::warn!(
                "request {}: prompt logprobs from position {} while {} was expected",
                chunk.request_id,
                chunk.first_position,
                next_position
            );
            return;
        }
        let skip = next_position - chunk.first_position;
        let new = chunk.entries.into_iter().skip(skip);
        let before = pending.len();
        pending.extend(new);
        self.num_prompt_logprobs += pending.len() - before;
    }

    /// Prompt logprobs received since the last call, if any, with their token texts.
    pub fn take_prompt_logprobs(&mut self, tokenizer: &Tokenizer) -> Option<Vec<TokenLogprobs>> {
        let pending = self
            .pending_prompt_logprobs
            .as_mut()
            .filter(|p| !p.is_empty())
            .map(std::mem::take)?;
        let text = self.text(tokenizer);
        let entries = pending
            .into_iter()
            .map(|t| text.position(text.entry(t.token_id, t.logprob, Some(t.rank)), &t.top_logprobs))
            .collect();
        Some(entries)
    }

    fn text<'a>(&self, tokenizer: &'a Tokenizer) -> LogprobText<'a> {
        LogprobText {
            tokenizer,
            decode: self.detokenizer.is_some(),
        }
    }

    /// Detokenizes new tokens and checks stop strings, stopping at the first match.
    pub fn absorb(&mut self, tokenizer: &Tokenizer, tokens: &[SampledToken]) -> Absorbed {
        let mut out = Absorbed {
            new_text: String::new(),
            matched_stop: None,
            new_logprobs: self.want_logprobs.then(Vec::new),
            num_tokens: 0,
        };
        let text = self.text(tokenizer);
        for token in tokens {
            out.num_tokens += 1;
            if let Some(logprobs) = out.new_logprobs.as_mut() {
                // The host sampler computes one for every request that asks; device sampling and
                // forced tokens (jump-forward) serve only requests that ask for none. A missing one
                // is a bookkeeping bug: tests fail on it, a release build reports no entry.
                debug_assert!(
                    token.logprob.is_some(),
                    "token {} came without the logprob its request asked for",
                    token.token_id
                );
                if let Some(logprob) = token.logprob {
                    let entry = text.entry(token.token_id, logprob, token.rank);
                    logprobs.push(text.position(entry, &token.top_logprobs));
                }
            }
            let Some(detokenizer) = self.detokenizer.as_mut() else {
                continue;
            };
            let delta = detokenizer.push(tokenizer, token.token_id);
            let released = self.stop_strings.update(detokenizer.text(), delta.len());
            out.new_text.push_str(&released.text);
            if let Some(matched) = released.matched {
                out.matched_stop = Some(self.stop[matched.stop_index].clone());
                break;
            }
        }
        out
    }

    /// The text held back at the end of a request (pending bytes, a possible stop string).
    pub fn flush(&mut self) -> String {
        let Some(detokenizer) = self.detokenizer.as_mut() else {
            return String::new();
        };
        let tail = detokenizer.flush();
        let released = self.stop_strings.update(detokenizer.text(), tail.len());
        let mut text = released.text;
        text.push_str(&self.stop_strings.flush(detokenizer.text()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokenizer::tests::spm_tokenizer;

    fn chunk(first_position: usize, token_ids: &[u32]) -> PromptLogprobs {
        PromptLogprobs {
            request_id: "r".into(),
            first_position,
            entries: token_ids
                .iter()
                .map(|&token_id| TokenLogprob {
                    token_id,
                    logprob: -1.0,
                    rank: 1,
                    top_logprobs: vec![(token_id + 1, -0.5)],
                })
                .collect(),
        }
    }

    fn ids(entries: Option<Vec<TokenLogprobs>>) -> Vec<u32> {
        entries
            .unwrap_or_default()
            .iter()
            .map(|e| e.token.token_id)
            .collect()
    }

    #[test]
    fn recomputed_prompt_logprobs_are_reported_once() {
        let tokenizer = spm_tokenizer();
        let params = SamplingParams {
            prompt_logprobs: Some(0),
            ..Default::default()
        };
        let mut state = OutputState::new(&params, 6);
        state.add_prompt_logprobs(chunk(1, &[11, 12]));
        assert_eq!(ids(state.take_prompt_logprobs(&tokenizer)), vec![11, 12]);
        assert!(state.take_prompt_logprobs(&tokenizer).is_none());
        // Preempted and recomputed from the start: only positions 3.. are new.
        state.add_prompt_logprobs(chunk(1, &[11, 12, 13]));
        state.add_prompt_logprobs(chunk(4, &[14, 15]));
        assert_eq!(ids(state.take_prompt_logprobs(&tokenizer)), vec![13, 14, 15]);
        // A gap is refused rather than misplaced.
        state.add_prompt_logprobs(chunk(9, &[19]));
        assert!(state.take_prompt_logprobs(&tokenizer).is_none());
    }

    #[test]
    fn prompt_logprobs_are_dropped_when_not_asked_for() {
        let tokenizer = spm_tokenizer();
        let mut state = OutputState::new(&SamplingParams::default(), 3);
        state.add_prompt_logprobs(chunk(1, &[1, 2]));
        assert!(state.take_prompt_logprobs(&tokenizer).is_none());
    }

    #[test]
    fn logprob_entries_carry_token_texts_unless_the_request_skips_detokenizing() {
        let tokenizer = spm_tokenizer();
        // Byte tokens start at id 3: "a" is 3 + 0x61, "b" the next one.
        let (a, b) = (3 + 0x61, 3 + 0x62);
        let token = SampledToken {
            request_id: "r".into(),
            token_id: a,
            logprob: Some(-0.25),
            rank: Some(2),
            top_logprobs: vec![(b, -0.1), (a, -0.25)],
        };
        let params = SamplingParams {
            logprobs: Some(2),
            prompt_logprobs: Some(1),
            ..Default::default()
        };
        let mut state = OutputState::new(&params, 3);
        let logprobs = state
            .absorb(&tokenizer, std::slice::from_ref(&token))
            .new_logprobs
            .expect("asked for");
        let position = &logprobs[0];
        assert_eq!(position.token.decoded_token.as_deref(), Some("a"));
        assert_eq!((position.token.rank, position.token.logprob), (Some(2), -0.25));
        let top: Vec<(u32, Option<u32>, Option<&str>)> = position
            .top
            .iter()
            .map(|e| (e.token_id, e.rank, e.decoded_token.as_deref()))
            .collect();
        assert_eq!(top, vec![(b, Some(1), Some("b")), (a, Some(2), Some("a"))]);
        state.add_prompt_logprobs(chunk(1, &[a]));
        let prompt = state.take_prompt_logprobs(&tokenizer).expect("prompt logprobs");
        assert_eq!(prompt[0].token.decoded_token.as_deref(), Some("a"));
        assert_eq!(prompt[0].top[0].decoded_token.as_deref(), Some("b"));

        let silent = SamplingParams {
            detokenize: false,
            ..params
        };
        let mut state = OutputState::new(&silent, 3);
        let logprobs = state
            .absorb(&tokenizer, &[token])
            .new_logprobs
            .expect("asked for");
        assert!(logprobs[0].token.decoded_token.is_none() && logprobs[0].top[1].decoded_token.is_none());
    }

    fn token_with(logprob: Option<f32>) -> SampledToken {
        SampledToken {
            request_id: "r".into(),
            token_id: 3 + 0x61,
            logprob,
            rank: None,
            top_logprobs: Vec::new(),
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "without the logprob its request asked for")]
    fn a_token_without_the_logprob_its_request_asked_for_fails_in_debug_builds() {
        let params = SamplingParams {
            logprobs: Some(0),
            ..Default::default()
        };
        let mut state = OutputState::new(&params, 3);
        state.absorb(&spm_tokenizer(), &[token_with(Some(-0.5)), token_with(None)]);
    }

    #[test]
    fn tokens_without_logprobs_are_fine_when_none_were_asked_for() {
        let tokenizer = spm_tokenizer();
        let mut unasked = OutputState::new(&SamplingParams::default(), 3);
        let absorbed = unasked.absorb(&tokenizer, &[token_with(None), token_with(None)]);
        assert!(absorbed.new_logprobs.is_none());
        assert_eq!(absorbed.num_tokens, 2);
    }
}
