//! What the engine reports per request and step.

use ember_core::{FinishReason, RequestId};

/// Why a request stopped, when a stop condition (not a length limit) ended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token id (EOS or one of `stop_token_ids`).
    Token(u32),
    /// A stop string.
    Text(String),
}

/// One token with its log-probability, as a request's output reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogprobEntry {
    /// The token.
    pub token_id: u32,
    /// Log-softmax of the raw logits at the token.
    pub logprob: f32,
    /// Rank among all tokens (1 = most likely); `None` when the request did not ask for
    /// logprobs (the sampled token's logprob is still reported).
    pub rank: Option<u32>,
    /// The token's text with special tokens kept; `None` when the request does not detokenize.
    pub decoded_token: Option<String>,
}

/// The log-probabilities at one position: the token there and the top alternatives, best
/// first (an alternative's rank is its place in the list).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The sampled (or prompt) token.
    pub token: LogprobEntry,
    /// The most likely tokens, best first.
    pub top: Vec<LogprobEntry>,
}

/// What one request gained in one step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// Which request.
    pub request_id: RequestId,
    /// Tokens appended this step.
    pub new_token_ids: Vec<u32>,
    /// Text those tokens completed (may be empty while a multi-byte character or a possible
    /// stop string is pending; always empty with `detokenize=false`).
    pub new_text: String,
    /// Set once the request finished.
    pub finish_reason: Option<FinishReason>,
    /// What stopped it, for `finish_reason == Stop`.
    pub stop_reason: Option<StopReason>,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    /// Prompt length in tokens.
    pub num_prompt_tokens: usize,
    /// Per new token: its logprob, rank and the top alternatives, when the request asked.
    pub new_logprobs: Option<Vec<TokenLogprobs>>,
    /// Prompt logprobs computed since the last output, one per prompt token from position 1
    /// on, in order; `None` when there are none new (or none were asked for).
    pub new_prompt_logprobs: Option<Vec<TokenLogprobs>>,
}
