//! The model runner: turns a [`SchedulerOutput`] into the step's flat inputs, has the backend
//! run the model over the paged KV cache, and samples (see [`crate::engine::sample_rows`]).

use ember_core::{
    Backend, BackendResult, KvCacheSpec, ModelRunnerOutput, RequestHistories, SchedulerOutput, StepBatch,
};

use crate::engine::batch::build_step_batch;
use crate::engine::sample_rows::sample_step;
use crate::models::Model;

/// Owns the backend, the model, the KV cache and the per-request token histories.
pub struct ModelRunner<B: Backend> {
    backend: B,
    model: Box<dyn Model<B>>,
    kv_cache: B::KvCache,
    kv_spec: KvCacheSpec,
    vocab_size: usize,
    eos_token_ids: Vec<u32>,
    histories: RequestHistories,
}

impl<B: Backend> ModelRunner<B> {
    /// Allocates the KV cache described by `kv_spec` next to `model`; `eos_token_ids` are
    /// masked before a request's `min_tokens`.
    pub fn new(
        backend: B,
        model: Box<dyn Model<B>>,
        kv_spec: KvCacheSpec,
        vocab_size: usize,
        eos_token_ids: Vec<u32>,
    ) -> BackendResult<Self> {
        let kv_cache = backend.allocate_kv_cache(&kv_spec)?;
        Ok(Self {
            backend,
            model,
            kv_cache,
            kv_spec,
            vocab_size,
            eos_token_ids,
            histories: RequestHistories::default(),
        })
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The KV cache geometry.
    pub fn kv_spec(&self) -> &KvCacheSpec {
        &self.kv_spec
    }

    /// Runs one scheduled step: samples a token for every sequence with `sample == true` and
    /// computes the prompt logprobs of the rows that asked for them.
    pub fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput> {
        self.histories.apply_schedule(output);
        if output.seqs.is_empty() {
            return Ok(ModelRunnerOutput::default());
        }
        let batch = build_step_batch(output, self.kv_spec.block_size);
        let (model, kv_cache, backend) = (&self.model, &mut self.kv_cache, &self.backend);
        let logits = backend.run_forward(batch, &mut |step| model.forward(backend, step, kv_cache))?;
        sample_step(
            backend,
            &logits,
            self.vocab_size,
            output,
            &mut self.histories,
            &self.eos_token_ids,
        )
    }

    /// Logits at `positions` of `token_ids` (`[len(positions), vocab_size]`, row-major; every
    /// position below the prompt length), computed in a scratch KV cache so the serving cache
    /// is untouched.
    pub fn score(&self, token_ids: &[u32], positions: &[u32]) -> BackendResult<Vec<f32>> {
        let batch = StepBatch {
            logits_indices: positions.to_vec(),
            ..StepBatch::whole_prompt(token_ids, self.kv_spec.block_size)
        };
        let spec = KvCacheSpec {
            num_blocks: batch.max_blocks_per_seq,
            ..self.kv_spec
        };
        let mut scratch = self.backend.allocate_kv_cache(&spec)?;
        let step = self.backend.prepare_step(batch)?;
        let logits = self.model.forward(&self.backend, &step, &mut scratch)?;
        self.backend.to_host(&logits)
    }
}
