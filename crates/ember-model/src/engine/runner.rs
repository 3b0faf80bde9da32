//! The model runner: turns a [`SchedulerOutput`] into flat step inputs, runs the model over
//! the paged KV cache, samples one token per finished chunk and computes prompt logprobs.

use std::ops::Range;

use ember_core::{
    device_sample_row, sample, token_logprob, Backend, BackendResult, DeviceSampleRow, KvCacheSpec,
    ModelRunnerOutput, PromptLogprobs, RequestHistories, SampleContext, SampledToken, ScheduledSeq,
    SchedulerOutput, StepMetadata, TokenLogprob,
};
use rayon::prelude::*;

use crate::models::llama::LlamaModel;

/// Flat inputs of one step: token ids plus the attention metadata.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StepInputs {
    /// Token ids of every scheduled row; `[num_tokens]`.
    pub input_ids: Vec<u32>,
    /// Positions, slots, block tables and the rows to sample.
    pub meta: StepMetadata,
}

/// Positions in `seq`'s chunk whose logits give prompt logprobs (of the token after each):
/// empty unless the request asks for prompt logprobs.
fn prompt_logprob_positions(seq: &ScheduledSeq) -> Range<usize> {
    if seq.sampling_params.prompt_logprobs.is_none() {
        return 0..0;
    }
    let start = seq.num_computed_tokens;
    let end = (start + seq.token_ids.len()).min(seq.num_prompt_tokens.saturating_sub(1));
    start..end.max(start)
}

/// Builds the flat inputs of `output` for a cache of `block_size`-token blocks. Logits rows
/// come per sequence in batch order: its prompt-logprob rows, then its sampled row.
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
        let first_row = end_row - seq.token_ids.len() as u32;
        for position in prompt_logprob_positions(seq) {
            meta.logits_indices.push(first_row + (position - start) as u32);
        }
        if seq.sample {
            meta.logits_indices.push(end_row - 1);
        }
    }
    inputs
}

/// The device sampling parameters of every sampled row of `output`, in batch order, when the
/// whole step can be sampled on the device: no prompt-logprob rows and every sampled row plain
/// (see [`device_sample_row`]). `None` sends the step to the host sampler.
fn device_sample_rows(output: &SchedulerOutput) -> Option<Vec<DeviceSampleRow>> {
    let mut rows = Vec::with_capacity(output.seqs.len());
    for seq in &output.seqs {
        if !prompt_logprob_positions(seq).is_empty() {
            return None;
        }
        if seq.sample {
            rows.push(device_sample_row(
                &seq.sampling_params,
                seq.seed,
                seq.num_output_tokens,
            )?);
        }
    }
    Some(rows)
}

/// What one row of logits is for.
enum RowJob<'a> {
    /// Sample the sequence's next token.
    Sample(&'a ScheduledSeq),
    /// The logprob of the prompt token at `position + 1`, the row being at `position`.
    Prompt(&'a ScheduledSeq, usize),
}

/// What one row of logits gave.
enum RowResult {
    Sampled(SampledToken),
    Prompt(Option<TokenLogprob>),
}

/// Appends the prompt logprob from the row at `position` of `seq` to this step's chunks. A
/// missing entry (no history: a bookkeeping bug) ends the request's chunk for this step.
fn push_prompt_logprob(
    chunks: &mut Vec<PromptLogprobs>,
    seq: &ScheduledSeq,
    position: usize,
    entry: Option<TokenLogprob>,
) {
    let Some(entry) = entry else {
        log::warn!(
            "no prompt history for request {} at position {position}",
            seq.request_id
        );
        return;
    };
    match chunks.last_mut() {
        Some(chunk)
            if chunk.request_id == seq.request_id
                && chunk.first_position + chunk.entries.len() == position + 1 =>
        {
            chunk.entries.push(entry);
        }
        _ => chunks.push(PromptLogprobs {
            request_id: seq.request_id.clone(),
            first_position: position + 1,
            entries: vec![entry],
        }),
    }
}

/// Owns the backend, the model weights, the KV cache and the per-request token histories.
pub struct ModelRunner<B: Backend> {
    backend: B,
    model: LlamaModel<B>,
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
        model: LlamaModel<B>,
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

    /// The KV cache geometry.
    pub fn kv_spec(&self) -> &KvCacheSpec {
        &self.kv_spec
    }

    /// Runs one scheduled step: samples a token for every sequence with `sample == true` and
    /// computes the prompt logprobs of the rows that asked for them.
    pub fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput> {
        self.histories.begin_step(output);
        if output.seqs.is_empty() {
            return Ok(ModelRunnerOutput::default());
        }
        let inputs = build_step_inputs(output, self.kv_spec.block_size);
        let (model, kv_cache, backend) = (&self.model, &mut self.kv_cache, &self.backend);
        let logits = backend.run_forward(&inputs.input_ids, &inputs.meta, &mut |ids, meta| {
            model.forward(backend, kv_cache, ids, meta)
        })?;
        if let Some(rows) = device_sample_rows(output) {
            if let Some(tokens) = backend.sample_on_device(&logits, &rows)? {
                let mut out = ModelRunnerOutput::default();
                let sampled = output.seqs.iter().filter(|s| s.sample);
                for (seq, (token_id, logprob)) in sampled.zip(tokens) {
                    out.sampled.push(SampledToken {
                        request_id: seq.request_id.clone(),
                        token_id,
                        logprob,
                        rank: None,
                        top_logprobs: Vec::new(),
                    });
                }
                self.histories.record(&out.sampled);
                return Ok(out);
            }
        }
        let mut logits = self.backend.to_host(&logits)?;
        let mut jobs = Vec::with_capacity(inputs.meta.logits_indices.len());
        for seq in &output.seqs {
            jobs.extend(prompt_logprob_positions(seq).map(|p| RowJob::Prompt(seq, p)));
            if seq.sample {
                jobs.push(RowJob::Sample(seq));
            }
        }
        let (histories, eos_token_ids) = (&self.histories, self.eos_token_ids.as_slice());
        let results: Vec<RowResult> = logits
            .par_chunks_mut(self.vocab_size)
            .zip(jobs.par_iter())
            .map(|(row, job)| match *job {
                RowJob::Sample(seq) => {
                    let ctx = SampleContext {
                        seed: seq.seed,
                        token_index: seq.num_output_tokens,
                        history: histories.get(&seq.request_id),
                        eos_token_ids,
                    };
                    RowResult::Sampled(
                        sample(row, &seq.sampling_params, &ctx).into_sampled_token(seq.request_id.clone()),
                    )
                }
                RowJob::Prompt(seq, position) => {
                    let next = histories
                        .get(&seq.request_id)
                        .and_then(|h| h.prompt_token_ids().get(position + 1).copied());
                    let k = seq.sampling_params.prompt_logprobs.unwrap_or(0);
                    RowResult::Prompt(next.and_then(|token_id| token_logprob(row, token_id, k)))
                }
            })
            .collect();
        let mut out = ModelRunnerOutput::default();
        for (job, result) in jobs.iter().zip(results) {
            match (job, result) {
                (_, RowResult::Sampled(token)) => out.sampled.push(token),
                (RowJob::Prompt(seq, position), RowResult::Prompt(entry)) => {
                    push_prompt_logprob(&mut out.prompt_logprobs, seq, *position, entry);
                }
                (RowJob::Sample(_), RowResult::Prompt(_)) => {}
            }
        }
        self.histories.record(&out.sampled);
        Ok(out)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ember_core::SamplingParams;

    use super::*;

    fn seq(
        id: &str,
        start: usize,
        len: usize,
        num_prompt: usize,
        prompt_logprobs: Option<usize>,
    ) -> ScheduledSeq {
        ScheduledSeq {
            request_id: id.into(),
            token_ids: (0..len as u32).collect(),
            num_computed_tokens: start,
            block_ids: vec![0, 1, 2, 3],
            sample: start + len >= num_prompt,
            sampling_params: Arc::new(SamplingParams {
                prompt_logprobs,
                ..Default::default()
            }),
            num_output_tokens: 0,
            seed: 0,
            num_prompt_tokens: num_prompt,
            all_token_ids: None,
        }
    }

    #[test]
    fn logits_rows_cover_prompt_logprob_positions_then_the_sampled_row() {
        let seqs = vec![
            seq("a", 0, 3, 3, None),     // rows 0..3: sample row 2
            seq("b", 4, 4, 10, Some(1)), // rows 3..7: positions 4..8 all prompt rows, no sample
            seq("c", 6, 4, 10, Some(0)), // rows 7..11: positions 6..9 prompt rows, then row 10 sampled
        ];
        let output = SchedulerOutput {
            num_batched_tokens: seqs.iter().map(|s| s.token_ids.len()).sum(),
            seqs,
            released_ids: Vec::new(),
        };
        let inputs = build_step_inputs(&output, 4);
        assert_eq!(inputs.meta.logits_indices, vec![2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(prompt_logprob_positions(&output.seqs[2]), 6..9);
        assert_eq!(prompt_logprob_positions(&output.seqs[0]), 0..0);
    }

    #[test]
    fn device_sampling_needs_every_row_plain_and_no_prompt_logprobs() {
        let step = |seqs: Vec<ScheduledSeq>| SchedulerOutput {
            num_batched_tokens: seqs.iter().map(|s| s.token_ids.len()).sum(),
            seqs,
            released_ids: Vec::new(),
        };
        // "b" is mid-prompt (no sampled row): only "a" and "c" get device rows.
        let plain = step(vec![
            seq("a", 5, 1, 3, None),
            seq("b", 0, 2, 10, None),
            seq("c", 9, 1, 3, None),
        ]);
        assert_eq!(device_sample_rows(&plain).map(|r| r.len()), Some(2));
        let prompt_rows = step(vec![seq("a", 5, 1, 3, None), seq("b", 0, 2, 10, Some(0))]);
        assert!(device_sample_rows(&prompt_rows).is_none());
        let mut penalized = seq("a", 5, 1, 3, None);
        penalized.sampling_params = Arc::new(SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        });
        assert!(device_sample_rows(&step(vec![penalized, seq("c", 9, 1, 3, None)])).is_none());
    }

    #[test]
    fn prompt_logprob_chunks_group_consecutive_rows() {
        let s = seq("a", 0, 4, 6, Some(0));
        let entry = |token_id| {
            Some(TokenLogprob {
                token_id,
                logprob: 0.0,
                rank: 1,
                top_logprobs: Vec::new(),
            })
        };
        let mut chunks = Vec::new();
        push_prompt_logprob(&mut chunks, &s, 0, entry(5));
        push_prompt_logprob(&mut chunks, &s, 1, entry(6));
        push_prompt_logprob(&mut chunks, &s, 2, None);
        push_prompt_logprob(&mut chunks, &s, 3, entry(8));
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].first_position, chunks[0].entries.len()), (1, 2));
        assert_eq!((chunks[1].first_position, chunks[1].entries.len()), (4, 1));
    }
}
