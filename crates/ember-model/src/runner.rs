//! The model runner: turns a [`SchedulerOutput`] into flat step inputs, runs the model over
//! the paged KV cache and samples one token per finished chunk.

use ember_core::sampler::sample;
use ember_core::{Backend, BackendResult, KvCacheSpec, ModelRunnerOutput, SchedulerOutput, StepMetadata};
use rayon::prelude::*;

use crate::llama::LlamaModel;

/// Flat inputs of one step: token ids plus the attention metadata.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StepInputs {
    /// Token ids of every scheduled row; `[num_tokens]`.
    pub input_ids: Vec<u32>,
    /// Positions, slots, block tables and the rows to sample.
    pub meta: StepMetadata,
}

/// Builds the flat inputs of `output` for a cache of `block_size`-token blocks.
pub fn build_step_inputs(output: &SchedulerOutput, block_size: usize) -> StepInputs {
    let num_tokens = output.num_batched_tokens;
    let max_blocks_per_seq = output.seqs.iter().map(|s| s.block_ids.len()).max().unwrap_or(0);
    let mut inputs = StepInputs {
        input_ids: Vec::with_capacity(num_tokens),
        meta: StepMetadata {
            positions: Vec::with_capacity(num_tokens),
            slot_mapping: Vec::with_capacity(num_tokens),
            query_start_loc: Vec::with_capacity(output.seqs.len() + 1),
            seq_lens: Vec::with_capacity(output.seqs.len()),
            block_tables: Vec::with_capacity(output.seqs.len() * max_blocks_per_seq),
            max_blocks_per_seq,
            logits_indices: Vec::new(),
        },
    };
    let meta = &mut inputs.meta;
    meta.query_start_loc.push(0);
    for seq in &output.seqs {
        let start = seq.num_computed_tokens;
        for (offset, &token_id) in seq.token_ids.iter().enumerate() {
            let position = start + offset;
            inputs.input_ids.push(token_id);
            meta.positions.push(position as u32);
            let block = seq.block_ids[position / block_size];
            meta.slot_mapping
                .push(block * block_size as u32 + (position % block_size) as u32);
        }
        let end_row = inputs.input_ids.len() as u32;
        meta.query_start_loc.push(end_row);
        meta.seq_lens.push((start + seq.token_ids.len()) as u32);
        meta.block_tables.extend_from_slice(&seq.block_ids);
        meta.block_tables.resize(
            meta.block_tables.len() + max_blocks_per_seq - seq.block_ids.len(),
            0,
        );
        if seq.sample {
            meta.logits_indices.push(end_row - 1);
        }
    }
    inputs
}

/// Owns the backend, the model weights and the KV cache.
pub struct ModelRunner<B: Backend> {
    backend: B,
    model: LlamaModel<B>,
    kv_cache: B::KvCache,
    kv_spec: KvCacheSpec,
    vocab_size: usize,
}

impl<B: Backend> ModelRunner<B> {
    /// Allocates the KV cache described by `kv_spec` next to `model`.
    pub fn new(
        backend: B,
        model: LlamaModel<B>,
        kv_spec: KvCacheSpec,
        vocab_size: usize,
    ) -> BackendResult<Self> {
        let kv_cache = backend.allocate_kv_cache(&kv_spec)?;
        Ok(Self {
            backend,
            model,
            kv_cache,
            kv_spec,
            vocab_size,
        })
    }

    /// The KV cache geometry.
    pub fn kv_spec(&self) -> &KvCacheSpec {
        &self.kv_spec
    }

    /// Runs one scheduled step and samples a token for every sequence with `sample == true`.
    pub fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput> {
        if output.seqs.is_empty() {
            return Ok(ModelRunnerOutput::default());
        }
        let inputs = build_step_inputs(output, self.kv_spec.block_size);
        let logits =
            self.model
                .forward(&self.backend, &mut self.kv_cache, &inputs.input_ids, &inputs.meta)?;
        let mut logits = self.backend.to_host(&logits)?;
        let sampled_seqs: Vec<_> = output.seqs.iter().filter(|s| s.sample).collect();
        let sampled = logits
            .par_chunks_mut(self.vocab_size)
            .zip(sampled_seqs.par_iter())
            .map(|(row, seq)| {
                sample(row, &seq.sampling_params, seq.seed, seq.num_output_tokens)
                    .into_sampled_token(seq.request_id.clone())
            })
            .collect();
        Ok(ModelRunnerOutput { sampled })
    }

    /// Logits at every position of `token_ids` (`[len, vocab_size]`, row-major), computed in a
    /// scratch KV cache so the serving cache is untouched.
    pub fn score(&self, token_ids: &[u32]) -> BackendResult<Vec<f32>> {
        let block_size = self.kv_spec.block_size;
        let num_blocks = token_ids.len().div_ceil(block_size).max(1);
        let spec = KvCacheSpec {
            num_blocks,
            ..self.kv_spec
        };
        let mut scratch = self.backend.allocate_kv_cache(&spec)?;
        let num_tokens = token_ids.len() as u32;
        let meta = StepMetadata {
            positions: (0..num_tokens).collect(),
            slot_mapping: (0..num_tokens).collect(),
            query_start_loc: vec![0, num_tokens],
            seq_lens: vec![num_tokens],
            block_tables: (0..num_blocks as u32).collect(),
            max_blocks_per_seq: num_blocks,
            logits_indices: (0..num_tokens).collect(),
        };
        let logits = self
            .model
            .forward(&self.backend, &mut scratch, token_ids, &meta)?;
        self.backend.to_host(&logits)
    }
}
