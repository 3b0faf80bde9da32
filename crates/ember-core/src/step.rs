//! Plain data that crosses the step loop's boundaries:
//! scheduler -> model runner -> scheduler.

use std::sync::Arc;

use crate::logprobs::TokenLogprob;
use crate::sampling_params::SamplingParams;
use crate::token_mask::TokenMask;

/// A request's identity, unique among live requests.
pub type RequestId = Arc<str>;

/// One sequence's share of a step.
#[derive(Clone, Debug)]
pub struct ScheduledSeq {
    /// Which request.
    pub request_id: RequestId,
    /// Tokens to compute this step; the first sits at position `num_computed_tokens`. The
    /// last `num_draft_tokens` of them are speculative drafts, not yet part of the request.
    pub token_ids: Vec<u32>,
    /// Draft tokens at the end of `token_ids` to verify: the runner samples `1 + num_draft_tokens`
    /// rows and returns the accepted drafts and one more token (see [`crate::speculative`]).
    pub num_draft_tokens: usize,
    /// Tokens whose K/V is already in the cache (prefix hits and earlier steps).
    pub num_computed_tokens: usize,
    /// All cache blocks of the request, in sequence order.
    pub block_ids: Vec<u32>,
    /// True when this chunk ends at the request's last known token, so a new token is sampled.
    pub sample: bool,
    /// The request's sampling parameters (shared, not copied per step).
    pub sampling_params: Arc<SamplingParams>,
    /// Tokens generated so far; the token sampled this step gets index `num_output_tokens`.
    pub num_output_tokens: usize,
    /// The request's effective random seed (its own, or one derived from the engine seed).
    pub seed: u64,
    /// Prompt length in tokens.
    pub num_prompt_tokens: usize,
    /// Every token of the request (prompt, then output), sent only on the first step after
    /// the request is admitted or resumed after preemption, and only when its sampling needs
    /// the history (penalties, prompt logprobs); the runner keeps it until the id is released.
    pub all_token_ids: Option<Arc<[u32]>>,
    /// The tokens a constrained request may sample this step (set by the engine's structured
    /// output state after scheduling, only on sampled rows); `None` allows every token.
    pub token_mask: Option<Arc<TokenMask>>,
    /// The masks of the draft rows after the first (row `i + 1` uses entry `i`): the grammar's
    /// state after the drafts before it; set with `token_mask` on a constrained, drafting sequence.
    pub draft_token_masks: Vec<Arc<TokenMask>>,
    /// The LoRA adapter the sequence runs with; `None` for the base model.
    pub lora_id: Option<u32>,
}

/// What the scheduler decided for one step.
#[derive(Clone, Debug, Default)]
pub struct SchedulerOutput {
    /// Sequences to run, in batch order.
    pub seqs: Vec<ScheduledSeq>,
    /// Sum of `token_ids.len()` over `seqs`.
    pub num_batched_tokens: usize,
    /// Requests that ended (finished, aborted or preempted) since the last step: the runner
    /// drops per-request state it keeps for them.
    pub released_ids: Vec<RequestId>,
}

/// One sampled token with optional log-probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    /// Which request.
    pub request_id: RequestId,
    /// The chosen token.
    pub token_id: u32,
    /// Log-probability of the chosen token: log-softmax of the raw logits (vLLM's default);
    /// `None` when it was not computed (the request asks for no logprobs, or the token was forced).
    pub logprob: Option<f32>,
    /// Rank of the chosen token among the raw logits (1 = most likely), when logprobs are asked for.
    pub rank: Option<u32>,
    /// Top alternatives `(token_id, logprob)`, best first, when asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What the model runner produced for one step: for every sequence with `sample == true`, in
/// batch order, one token, or with drafts the accepted drafts and the token after them.
#[derive(Clone, Debug, Default)]
pub struct ModelRunnerOutput {
    /// Sampled tokens.
    pub sampled: Vec<SampledToken>,
    /// Prompt log-probabilities computed this step, for requests that asked for them.
    pub prompt_logprobs: Vec<PromptLogprobs>,
}

/// Log-probabilities of consecutive prompt tokens of one request, from one step's chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprobs {
    /// Which request.
    pub request_id: RequestId,
    /// Prompt position of the token `entries[0]` describes (at least 1: the first prompt
    /// token has no logprob).
    pub first_position: usize,
    /// One per prompt token, in order: its logprob, rank and the top alternatives.
    pub entries: Vec<TokenLogprob>,
}

/// Why a request stopped generating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop condition matched.
    Stop,
    /// `max_tokens` or `max_model_len` was reached.
    Length,
    /// The request was aborted.
    Abort,
}

impl FinishReason {
    /// The OpenAI / vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// What changed for one request in a step, as the scheduler reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestUpdate {
    /// Which request.
    pub request_id: RequestId,
    /// Tokens appended this step (several with speculative decoding or jump-forward).
    pub new_tokens: Vec<SampledToken>,
    /// Set when the request finished this step.
    pub finish_reason: Option<FinishReason>,
    /// The token id that stopped it, when it stopped on one.
    pub stop_token_id: Option<u32>,
    /// Prompt tokens that were served from the prefix cache.
    pub num_cached_tokens: usize,
}
