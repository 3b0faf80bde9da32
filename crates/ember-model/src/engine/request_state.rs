//! The engine's per-request output state: incremental detokenization, stop strings, and the
//! log-probabilities waiting to be reported.

use ember_core::{
    IncrementalDetokenizer, PromptLogprobs, SampledToken, SamplingParams, StopStrings, TokenLogprob,
};

use crate::engine::step_output::TokenLogprobs;
use crate::text::tokenizer::Tokenizer;

/// What a request's new tokens produced in one step.
pub(crate) struct Absorbed {
    /// Text released this step.
    pub new_text: String,
    /// The stop string that matched, if one did.
    pub matched_stop: Option<String>,
    /// Per absorbed token: logprob, rank and top alternatives (when asked for).
    pub new_logprobs: Option<Vec<TokenLogprobs>>,
}

/// Output-side state of one live request.
pub(crate) struct RequestState {
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

impl RequestState {
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

    /// Prompt logprobs received since the last call, if any.
    pub fn take_prompt_logprobs(&mut self) -> Option<Vec<TokenLogprob>> {
        self.pending_prompt_logprobs
            .as_mut()
            .filter(|p| !p.is_empty())
            .map(std::mem::take)
    }

    /// Detokenizes new tokens and checks stop strings, stopping at the first match.
    pub fn absorb(&mut self, tokenizer: &Tokenizer, tokens: &[SampledToken]) -> Absorbed {
        let mut out = Absorbed {
            new_text: String::new(),
            matched_stop: None,
            new_logprobs: self.want_logprobs.then(Vec::new),
        };
        for token in tokens {
            if let Some(logprobs) = out.new_logprobs.as_mut() {
                logprobs.push((token.logprob, token.rank, token.top_logprobs.clone()));
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
                    top_logprobs: Vec::new(),
                })
                .collect(),
        }
    }

    fn ids(entries: Option<Vec<TokenLogprob>>) -> Vec<u32> {
        entries.unwrap_or_default().iter().map(|e| e.token_id).collect()
    }

    #[test]
    fn recomputed_prompt_logprobs_are_reported_once() {
        let params = SamplingParams {
            prompt_logprobs: Some(0),
            ..Default::default()
        };
        let mut state = RequestState::new(&params, 6);
        state.add_prompt_logprobs(chunk(1, &[11, 12]));
        assert_eq!(ids(state.take_prompt_logprobs()), vec![11, 12]);
        assert!(state.take_prompt_logprobs().is_none());
        // Preempted and recomputed from the start: only positions 3.. are new.
        state.add_prompt_logprobs(chunk(1, &[11, 12, 13]));
        state.add_prompt_logprobs(chunk(4, &[14, 15]));
        assert_eq!(ids(state.take_prompt_logprobs()), vec![13, 14, 15]);
        // A gap is refused rather than misplaced.
        state.add_prompt_logprobs(chunk(9, &[19]));
        assert!(state.take_prompt_logprobs().is_none());
    }

    #[test]
    fn prompt_logprobs_are_dropped_when_not_asked_for() {
        let mut state = RequestState::new(&SamplingParams::default(), 3);
        state.add_prompt_logprobs(chunk(1, &[1, 2]));
        assert!(state.take_prompt_logprobs().is_none());
    }
}
