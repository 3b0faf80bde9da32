//! A snapshot of the scheduler's counters and gauges, for logs and `/metrics`.

/// Scheduler gauges (now) and counters (since start).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedulerStats {
    /// Requests holding cache blocks and being scheduled.
    pub num_running: usize,
    /// Requests queued (new or preempted).
    pub num_waiting: usize,
    /// Fraction of KV-cache blocks held by requests, in `[0, 1]`.
    pub kv_cache_usage: f32,
    /// Tokens looked up in the prefix cache when requests were admitted.
    pub prefix_cache_queries: u64,
    /// Of those, tokens found in the cache.
    pub prefix_cache_hits: u64,
    /// Prompt tokens a forked request (`n > 1`) shared from its sibling's blocks instead of
    /// computing them.
    pub num_forked_tokens: u64,
    /// Times a running request was preempted.
    pub num_preemptions: u64,
    /// Prompt tokens computed (prefix hits not counted; recomputation after preemption counted).
    pub num_prompt_tokens: u64,
    /// Tokens generated.
    pub num_generation_tokens: u64,
    /// Token masks computed for structured output (filled in by the engine).
    pub num_structured_masks: u64,
    /// Wall time of those mask computations, in seconds (each step's masks run in parallel).
    pub structured_mask_s: f64,
    /// KV-cache blocks released early because they fell wholly before a sliding window.
    pub num_window_freed_blocks: u64,
    /// Draft tokens proposed and verified (speculative decoding).
    pub num_spec_proposed_tokens: u64,
    /// Of those, drafts accepted (equal to the token plain decoding samples there).
    pub num_spec_accepted_tokens: u64,
    /// Verifications run: steps of one request with at least one draft.
    pub num_spec_verify_steps: u64,
}

impl SchedulerStats {
    /// `prefix_cache_hits / prefix_cache_queries`, or 0 before any query.
    pub fn prefix_cache_hit_rate(&self) -> f64 {
        ratio(self.prefix_cache_hits, self.prefix_cache_queries)
    }

    /// `num_spec_accepted_tokens / num_spec_proposed_tokens`, or 0 before any proposal.
    pub fn spec_acceptance_rate(&self) -> f64 {
        ratio(self.num_spec_accepted_tokens, self.num_spec_proposed_tokens)
    }

    /// Drafts accepted per verification (tokens emitted per verification are one more).
    pub fn spec_mean_accepted_len(&self) -> f64 {
        ratio(self.num_spec_accepted_tokens, self.num_spec_verify_steps)
    }
}

/// `part / whole`, or 0 when `whole` is 0.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
