//! Ember's engine core: request bookkeeping, sampling parameters, the paged KV-cache
//! block pool and manager, the continuous-batching scheduler, and the [`Backend`] trait
//! that model code is written against. No device code and no model formats live here.

pub mod backend;
pub mod dtype;
pub mod sampling_params;
pub mod step;
pub mod weight;

pub use backend::{
    AttentionShape, Backend, BackendError, BackendResult, KvCacheSpec, Rope, RopeStyle, StepMetadata,
};
pub use dtype::WeightDType;
pub use sampling_params::{InvalidParam, SamplingParams};
pub use step::{
    FinishReason, ModelRunnerOutput, RequestId, RequestUpdate, SampledToken, ScheduledSeq, SchedulerOutput,
};
pub use weight::WeightView;
