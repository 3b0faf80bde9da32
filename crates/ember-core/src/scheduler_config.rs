//! Limits and policies of the scheduler, and the errors for configs and requests that break them.

use thiserror::Error;

use crate::sampling_params::InvalidParam;
use crate::speculative::SpeculativeConfig;

/// Order in which waiting requests are admitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lowest `priority` value first, then earliest arrival.
    Priority,
}

impl SchedulingPolicy {
    /// The policy's name as users write it: "fcfs" or "priority" (vLLM's names).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fcfs => "fcfs",
            Self::Priority => "priority",
        }
    }
}

impl std::str::FromStr for SchedulingPolicy {
    type Err = String;

    /// Parses "fcfs" or "priority"; the error names the field and the accepted values.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "fcfs" => Ok(Self::Fcfs),
            "priority" => Ok(Self::Priority),
            other => Err(format!(
                "scheduling_policy must be \"fcfs\" or \"priority\", got {other:?}"
            )),
        }
    }
}

/// Limits of one scheduler.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step (prefill and decode tokens together).
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt plus output) the model accepts.
    pub max_model_len: usize,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// KV-cache blocks in total.
    pub num_blocks: usize,
    /// Reuse cached full blocks across requests with a common prefix.
    pub enable_prefix_caching: bool,
    /// Most prompt tokens one request may compute in a step (0 = no limit beyond the budget),
    /// so one long prompt cannot take a whole step from the others.
    pub long_prefill_token_threshold: usize,
    /// Admission order of waiting requests.
    pub policy: SchedulingPolicy,
    /// Every layer of the model attends to at most this many last positions, so blocks
    /// wholly before a request's window are released as it advances (`None`: keep all).
    pub sliding_window: Option<usize>,
    /// Most distinct LoRA adapters among running requests (`None`: no limit); a waiting
    /// request with another adapter waits until one finishes.
    pub max_loras: Option<usize>,
    /// Speculative decoding (n-gram drafts verified in the same step); `None` for none.
    pub speculative: Option<SpeculativeConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 2048,
            block_size: 16,
            num_blocks: 1024,
            enable_prefix_caching: true,
            long_prefill_token_threshold: 0,
            policy: SchedulingPolicy::Fcfs,
            sliding_window: None,
            max_loras: None,
            speculative: None,
        }
    }
}

/// A scheduler config that cannot work; the message names the field and the limit.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A field that must be positive is 0.
    #[error("{field} must be at least 1, got 0")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// More blocks than block ids can name.
    #[error("num_blocks must be below {limit}, got {num_blocks}")]
    TooManyBlocks {
        /// Configured blocks.
        num_blocks: usize,
        /// Largest allowed plus one.
        limit: usize,
    },
}

impl SchedulerConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_model_len", self.max_model_len),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        let limit = u32::MAX as usize;
        if self.num_blocks >= limit {
            return Err(ConfigError::TooManyBlocks {
                num_blocks: self.num_blocks,
                limit,
            });
        }
        Ok(())
    }
}

/// A request the scheduler refuses at once; the message names the field and the limit.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AddRequestError {
    /// The prompt has no tokens.
    #[error("prompt is empty: at least 1 token is required")]
    EmptyPrompt,
    /// The prompt alone leaves no room to generate.
    #[error("prompt has {prompt_len} tokens, max_model_len ({max_model_len}) leaves no room for output")]
    PromptTooLong {
        /// Prompt tokens.
        prompt_len: usize,
        /// The model's limit.
        max_model_len: usize,
    },
    /// Prompt plus `max_tokens` is longer than the model accepts.
    #[error(
        "prompt has {prompt_len} tokens and max_tokens is {max_tokens}: {} in all, more than max_model_len ({max_model_len})",
        prompt_len + max_tokens
    )]
    ExceedsModelLen {
        /// Prompt tokens.
        prompt_len: usize,
        /// Requested output tokens.
        max_tokens: usize,
        /// The model's limit.
        max_model_len: usize,
    },
    /// Prompt plus `max_tokens` needs more KV-cache blocks than exist.
    #[error(
        "prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) needs {num_blocks_needed} KV-cache blocks of {block_size} tokens, more than the cache holds ({num_blocks})"
    )]
    ExceedsKvCache {
        /// Prompt tokens.
        prompt_len: usize,
        /// Output tokens the request may generate.
        max_tokens: usize,
        /// Blocks the whole sequence needs.
        num_blocks_needed: usize,
        /// Tokens per block.
        block_size: usize,
        /// Blocks in the cache.
        num_blocks: usize,
    },
    /// A sampling parameter is out of range.
    #[error(transparent)]
    InvalidParams(InvalidParam),
    /// A live request already has this id.
    #[error("request_id '{0}' is already in use by a live request")]
    DuplicateId(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        assert_eq!(SchedulerConfig::default().validate(), Ok(()));
        let config = SchedulerConfig {
            block_size: 0,
            ..Default::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "block_size must be at least 1, got 0"
        );
    }

    #[test]
    fn policy_names_round_trip_and_bad_names_are_named() {
        for policy in [SchedulingPolicy::Fcfs, SchedulingPolicy::Priority] {
            assert_eq!(policy.as_str().parse(), Ok(policy));
        }
        let err = "lifo".parse::<SchedulingPolicy>().unwrap_err();
        assert!(
            err.contains("scheduling_policy") && err.contains("\"lifo\""),
            "{err}"
        );
    }

    #[test]
    fn messages_name_the_numbers() {
        let err = AddRequestError::ExceedsModelLen {
            prompt_len: 5000,
            max_tokens: 16,
            max_model_len: 4096,
        };
        assert!(
            err.to_string()
                .contains("5016 in all, more than max_model_len (4096)"),
            "{err}"
        );
    }
}
