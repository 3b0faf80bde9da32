//! What the engine reports per request and step.

use ember_core::{FinishReason, RequestId, TokenLogprob};

/// Why a request stopped, when a stop condition (not a length limit) ended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token id (EOS or one of `stop_token_ids`).
    Token(u32),
    /// A stop string.
    Text(String),
}

/// One generated token's log-probability, its rank among all tokens (1 = most likely) and the
/// top alternatives `(token_id, logprob)`.
pub type TokenLogprobs = (f32, Option<u32>, Vec<(u32, f32)>);

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
    pub new_prompt_logprobs: Option<Vec<TokenLogprob>>,
}
