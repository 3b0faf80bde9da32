//! The object-safe face of a model runner, so the engine does not depend on the backend type.

use ember_core::{Backend, BackendResult, BackendStats, ModelRunnerOutput, SchedulerOutput};

use crate::engine::runner::ModelRunner;

/// Runs scheduled steps on some backend.
pub trait StepExecutor: Send {
    /// Runs one step and samples.
    fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput>;
    /// Logits of one prompt at `positions`, `[len(positions) * vocab_size]` row-major.
    fn score(&self, token_ids: &[u32], positions: &[u32]) -> BackendResult<Vec<f32>>;
    /// The backend's counters (CUDA graphs).
    fn backend_stats(&self) -> BackendStats;
}

impl<B: Backend> StepExecutor for ModelRunner<B>
where
    B::KvCache: Send,
{
    fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput> {
        ModelRunner::execute(self, output)
    }

    fn score(&self, token_ids: &[u32], positions: &[u32]) -> BackendResult<Vec<f32>> {
        ModelRunner::score(self, token_ids, positions)
    }

    fn backend_stats(&self) -> BackendStats {
        self.backend().stats()
    }
}
