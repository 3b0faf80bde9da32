//! One generation request as the scheduler tracks it: its tokens, progress and status.

use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;

use crate::sampling_params::SamplingParams;
use crate::step::{FinishReason, RequestId};

/// Where a request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    /// Queued, never scheduled yet.
    Waiting,
    /// Holds cache blocks and is scheduled step after step.
    Running,
    /// Was running, lost its blocks to a higher-priority request; queued to recompute.
    Preempted,
    /// Done; no longer scheduled.
    Finished(FinishReason),
}

impl RequestStatus {
    /// True for [`RequestStatus::Finished`].
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Finished(_))
    }
}

/// A generation request: prompt, generated tokens, sampling controls and scheduling progress.
#[derive(Clone, Debug)]
pub struct Request {
    /// Unique id among live requests.
    pub request_id: RequestId,
    /// The prompt.
    pub prompt_token_ids: Vec<u32>,
    /// Tokens generated so far.
    pub output_token_ids: Vec<u32>,
    /// How to sample (shared with every step's `ScheduledSeq`).
    pub sampling_params: Arc<SamplingParams>,
    /// Tokens that end the request unless `ignore_eos` is set.
    pub eos_token_ids: Vec<u32>,
    /// The effective random seed (the request's own or one derived from the engine seed).
    pub seed: u64,
    /// Scheduling priority: lower values are served first and preempted last.
    pub priority: i32,
    /// When the request arrived, in seconds on any monotonic clock.
    pub arrival_time_s: f64,
    /// Tokens (prompt, then output) whose K/V is in the cache.
    pub num_computed_tokens: usize,
    /// Prompt tokens served from the prefix cache when the request was first scheduled.
    pub num_cached_tokens: usize,
    /// Life-cycle state.
    pub status: RequestStatus,
    /// Extra key mixed into every block hash (cache salt, adapter id); `None` for none.
    pub cache_salt: Option<u64>,
    /// A sibling with the same prompt (another completion of an `n > 1` request) whose prompt
    /// blocks this request shares by reference count instead of computing them again.
    pub fork_of: Option<RequestId>,
    /// The LoRA adapter the request runs with (its `lora_int_id`); `None` for the base model.
    /// Mixed into every block hash, so adapters never share KV.
    pub lora_id: Option<u32>,
}

impl Request {
    /// A new waiting request with no output tokens.
    pub fn new(
        request_id: impl Into<RequestId>,
        prompt_token_ids: Vec<u32>,
        sampling_params: Arc<SamplingParams>,
        eos_token_ids: Vec<u32>,
        seed: u64,
        priority: i32,
        arrival_time_s: f64,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            prompt_token_ids,
            output_token_ids: Vec::new(),
            sampling_params,
            eos_token_ids,
            seed,
            priority,
            arrival_time_s,
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            status: RequestStatus::Waiting,
            cache_salt: None,
            fork_of: None,
            lora_id: None,
        }
    }

    /// The same request, set to share the prompt blocks of sibling `fork_of` once that sibling
    /// has computed its prompt (see [`Request::fork_of`]).
    pub fn with_fork_of(mut self, fork_of: Option<RequestId>) -> Self {
        self.fork_of = fork_of;
        self
    }

    /// The same request with `cache_salt` mixed into its block hashes.
    pub fn with_cache_salt(mut self, cache_salt: Option<u64>) -> Self {
        self.cache_salt = cache_salt;
        self
    }

    /// The same request run with LoRA adapter `lora_id` (`None`: the base model).
    pub fn with_lora_id(mut self, lora_id: Option<u32>) -> Self {
        self.lora_id = lora_id;
        self
    }

    /// The extra key of the request's block hashes: its cache salt and adapter id together
    /// (`None` when it has neither).
    pub fn block_hash_extra_key(&self) -> Option<u64> {
        block_hash_extra_key(self.cache_salt, self.lora_id)
    }

    /// Number of prompt tokens.
    pub fn num_prompt_tokens(&self) -> usize {
        self.prompt_token_ids.len()
    }

    /// Number of generated tokens.
    pub fn num_output_tokens(&self) -> usize {
        self.output_token_ids.len()
    }

    /// Prompt plus generated tokens.
    pub fn num_tokens(&self) -> usize {
        self.prompt_token_ids.len() + self.output_token_ids.len()
    }

    /// The token at `position` in prompt-then-output order, if it exists.
    pub fn token_at(&self, position: usize) -> Option<u32> {
        let num_prompt = self.prompt_token_ids.len();
        if position < num_prompt {
            Some(self.prompt_token_ids[position])
        } else {
            self.output_token_ids.get(position - num_prompt).copied()
        }
    }

    /// Tokens `start..end` in prompt-then-output order (clamped to the known tokens).
    pub fn token_range(&self, start: usize, end: usize) -> Vec<u32> {
        let end = end.min(self.num_tokens());
        let start = start.min(end);
        let num_prompt = self.prompt_token_ids.len();
        let mut out = Vec::with_capacity(end - start);
        if start < num_prompt {
            out.extend_from_slice(&self.prompt_token_ids[start..end.min(num_prompt)]);
        }
        if end > num_prompt {
            out.extend_from_slice(
                &self.output_token_ids[start.max(num_prompt) - num_prompt..end - num_prompt],
            );
        }
        out
    }

    /// Most tokens this request may generate: `max_tokens`, or what is left of `max_model_len`.
    pub fn effective_max_tokens(&self, max_model_len: usize) -> usize {
        self.sampling_params
            .max_tokens
            .unwrap_or_else(|| max_model_len.saturating_sub(self.num_prompt_tokens()))
    }

    /// True once the request has finished.
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
}

/// The cache salt a request passed as text (vLLM's `cache_salt`) as the `u64` mixed into its
/// block hashes: the one place the text is hashed, so an engine and a router in front of several
/// engines key the same salt alike. SipHash with fixed keys over the UTF-8 bytes: stable within a
/// build, not across Rust versions (the prefix cache lives only as long as its process anyway).
/// Requests with different salts never share cached blocks, whatever their prompts.
pub fn cache_salt_key(cache_salt: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(b"ember cache_salt");
    hasher.write(cache_salt.as_bytes());
    hasher.finish()
}

/// The extra key of a request's block hashes from its cache salt and adapter id (`None` when
/// it has neither); a router computes the same keys with it.
pub fn block_hash_extra_key(cache_salt: Option<u64>, lora_id: Option<u32>) -> Option<u64> {
    match (cache_salt, lora_id) {
        (salt, None) => salt,
        (salt, Some(lora_id)) => {
            let adapter_key = crate::sampler::splitmix64(u64::from(lora_id) | (1 << 40));
            Some(crate::sampler::splitmix64(salt.unwrap_or(0) ^ adapter_key))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: Vec<u32>, max_tokens: Option<usize>) -> Request {
        let params = SamplingParams {
            max_tokens,
            ..Default::default()
        };
        Request::new("r", prompt, Arc::new(params), vec![2], 7, 0, 0.0)
    }

    #[test]
    fn token_accessors_span_prompt_and_output() {
        let mut req = request(vec![10, 11, 12], Some(4));
        req.output_token_ids = vec![20, 21];
        assert_eq!(req.num_tokens(), 5);
        assert_eq!(req.token_at(2), Some(12));
        assert_eq!(req.token_at(3), Some(20));
        assert_eq!(req.token_at(5), None);
        assert_eq!(req.token_range(1, 4), vec![11, 12, 20]);
        assert_eq!(req.token_range(3, 9), vec![20, 21]);
        assert_eq!(req.token_range(0, 2), vec![10, 11]);
        assert!(req.token_range(4, 2).is_empty());
    }

    #[test]
    fn effective_max_tokens_falls_back_to_model_len() {
        assert_eq!(request(vec![1; 10], Some(4)).effective_max_tokens(100), 4);
        assert_eq!(request(vec![1; 10], None).effective_max_tokens(100), 90);
    }

    #[test]
    fn adapter_and_salt_give_distinct_hash_keys() {
        let base = request(vec![1], None);
        let keys = [
            base.block_hash_extra_key(),
            base.clone().with_lora_id(Some(1)).block_hash_extra_key(),
            base.clone().with_lora_id(Some(2)).block_hash_extra_key(),
            base.clone().with_cache_salt(Some(5)).block_hash_extra_key(),
            base.clone()
                .with_cache_salt(Some(5))
                .with_lora_id(Some(1))
                .block_hash_extra_key(),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(keys[1], base.with_lora_id(Some(1)).block_hash_extra_key());
    }

    #[test]
    fn cache_salt_keys_are_stable_and_distinct() {
        assert_eq!(cache_salt_key("tenant-a"), cache_salt_key("tenant-a"));
        assert_ne!(cache_salt_key("tenant-a"), cache_salt_key("tenant-b"));
        assert_ne!(cache_salt_key("a"), cache_salt_key("a\0"));
    }
}
