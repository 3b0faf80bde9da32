//! Ember's engine core: request bookkeeping, sampling parameters, the paged KV-cache
//! block pool and manager, the continuous-batching scheduler, and the [`Backend`] trait
//! that model code is written against. No device code and no model formats live here.

pub mod backend;
pub mod backend_stats;
pub mod block_pool;
pub mod detokenizer;
pub mod device_sampling;
pub mod dtype;
pub mod engine_stats;
pub mod kv_cache_manager;
pub mod layer_params;
pub mod logprobs;
pub mod memory;
pub mod penalties;
pub mod request;
pub mod request_histories;
pub mod sampler;
mod sampler_ops;
pub mod sampling_params;
pub mod scheduler;
pub mod scheduler_config;
pub mod scheduler_stats;
pub mod speculative;
pub mod step;
pub mod step_batch;
pub mod structured_outputs;
pub mod token_mask;
pub mod waiting_queue;
pub mod weight;

pub use backend::{panic_message, Backend, BackendError, BackendResult, ForwardFn, LoraSegment};
pub use backend_stats::BackendStats;
pub use block_pool::{prefix_block_hashes, BlockHash, BlockPool};
pub use detokenizer::{IncrementalDetokenizer, StopStringMatch, StopStrings, StopUpdate, TokenVocab};
pub use device_sampling::{device_sample_row, DeviceSampleRow};
pub use dtype::WeightDType;
pub use engine_stats::{EngineStats, LoraStats, StatKind, StatSpec, STAT_SPECS};
pub use kv_cache_manager::{KvCacheManager, NULL_BLOCK};
pub use layer_params::{AttentionParams, AttentionShape, Rope, RopeStyle};
pub use logprobs::{token_logprob, TokenLogprob};
pub use memory::{KvCacheSpec, LayerKv, MemoryLimits, ModelShape};
pub use penalties::TokenHistory;
pub use request::{block_hash_extra_key, cache_salt_key, Request, RequestStatus};
pub use request_histories::RequestHistories;
pub use sampler::{argmax, mask_stop_tokens_before_min, probabilities, sample, Sample, SampleContext};
pub use sampling_params::{check_prompt_token_ids, InvalidParam, SamplingParams, ValidSamplingParams};
pub use scheduler::Scheduler;
pub use scheduler_config::{AddRequestError, ConfigError, SchedulerConfig, SchedulingPolicy};
pub use scheduler_stats::SchedulerStats;
pub use speculative::{
    find_ngram, max_drafts_for_match, AcceptanceRecord, NgramMatch, SpeculativeConfig,
    SpeculativeConfigError, SpeculativeMethod,
};
pub use step::{
    FinishReason, ModelRunnerOutput, PromptLogprobs, RequestId, RequestUpdate, SampledToken, ScheduledSeq,
    SchedulerOutput,
};
pub use step_batch::StepBatch;
pub use structured_outputs::{Constraint, StructuredOutputs, StructuredOutputsFields};
pub use token_mask::TokenMask;
pub use weight::WeightView;
