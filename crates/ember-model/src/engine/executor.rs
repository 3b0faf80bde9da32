//! The object-safe face of a model runner, so the engine does not depend on the backend type.

use ember_core::{Backend, BackendResult, BackendStats, ModelRunnerOutput, SchedulerOutput};

use crate::engine::runner::ModelRunner;
use crate::models::lora_adapter::LoraAdapter;

/// Runs scheduled steps on some backend.
pub trait StepExecutor: Send {
    /// Fills in the step's draft tokens (draft-model speculation); a no-op without a draft model.
    fn propose_drafts(&mut self, output: &mut SchedulerOutput) -> BackendResult<()>;
    /// Runs one step and samples.
    fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput>;
    /// Logits of one prompt at `positions` with adapter `lora_id` (loaded) or the base model,
    /// `[len(positions) * vocab_size]` row-major.
    fn score(&self, token_ids: &[u32], positions: &[u32], lora_id: Option<u32>) -> BackendResult<Vec<f32>>;
    /// The backend's counters (CUDA graphs).
    fn backend_stats(&self) -> BackendStats;
    /// Loads a LoRA adapter as `lora_id`.
    fn load_lora(&mut self, lora_id: u32, adapter: &LoraAdapter) -> BackendResult<()>;
    /// Drops LoRA adapter `lora_id`; false when it was not loaded.
    fn unload_lora(&mut self, lora_id: u32) -> bool;
}

impl<B: Backend> StepExecutor for ModelRunner<B>
where
    B::KvCache: Send,
{
    fn propose_drafts(&mut self, output: &mut SchedulerOutput) -> BackendResult<()> {
        ModelRunner::propose_drafts(self, output)
    }

    fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput> {
        ModelRunner::execute(self, output)
    }

    fn score(&self, token_ids: &[u32], positions: &[u32], lora_id: Option<u32>) -> BackendResult<Vec<f32>> {
        ModelRunner::score(self, token_ids, positions, lora_id)
    }

    fn backend_stats(&self) -> BackendStats {
        self.backend().stats()
    }

    fn load_lora(&mut self, lora_id: u32, adapter: &LoraAdapter) -> BackendResult<()> {
        ModelRunner::load_lora(self, lora_id, adapter)
    }

    fn unload_lora(&mut self, lora_id: u32) -> bool {
        ModelRunner::unload_lora(self, lora_id)
    }
}
