//! The flat inputs of one step ([`StepBatch`]) from a scheduler output, and which of its rows
//! need logits.

use std::ops::Range;

use ember_core::{ScheduledSeq, SchedulerOutput, StepBatch};

/// Positions in `seq`'s chunk whose logits give prompt logprobs (of the token after each):
/// empty unless the request asks for prompt logprobs.
pub(crate) fn prompt_logprob_positions(seq: &ScheduledSeq) -> Range<usize> {
    if seq.sampling_params.prompt_logprobs.is_none() {
        return 0..0;
    }
    let start = seq.num_computed_tokens;
    let end = (start + seq.token_ids.len()).min(seq.num_prompt_tokens.saturating_sub(1));
    start..end.max(start)
}

/// Builds the flat inputs of `output` for a cache of `block_size`-token blocks. Logits rows
/// come per sequence in batch order: its prompt-logprob rows, then its sampled row (and one
/// row per draft token after it).
pub fn build_step_batch(output: &SchedulerOutput, block_size: usize) -> StepBatch {
    let num_tokens = output.num_batched_tokens;
    let num_seqs = output.seqs.len();
    let max_blocks_per_seq = output.seqs.iter().map(|s| s.block_ids.len()).max().unwrap_or(0);
    let mut batch = StepBatch {
        input_ids: Vec::with_capacity(num_tokens),
        positions: Vec::with_capacity(num_tokens),
        slot_mapping: Vec::with_capacity(num_tokens),
        query_start_loc: Vec::with_capacity(num_seqs + 1),
        seq_lens: Vec::with_capacity(num_seqs),
        block_tables: Vec::with_capacity(num_seqs * max_blocks_per_seq),
        max_blocks_per_seq,
        logits_indices: Vec::new(),
    };
    batch.query_start_loc.push(0);
    for seq in &output.seqs {
        let start = seq.num_computed_tokens;
        for (offset, &token_id) in seq.token_ids.iter().enumerate() {
            let position = start + offset;
            batch.input_ids.push(token_id);
            batch.positions.push(position as u32);
            let block = seq.block_ids[position / block_size];
            batch
                .slot_mapping
                .push(block * block_size as u32 + (position % block_size) as u32);
        }
        let end_row = batch.input_ids.len() as u32;
        batch.query_start_loc.push(end_row);
        batch.seq_lens.push((start + seq.token_ids.len()) as u32);
        batch.block_tables.extend_from_slice(&seq.block_ids);
        batch.block_tables.resize(
            batch.block_tables.len() + max_blocks_per_seq - seq.block_ids.len(),
            0,
        );
        let first_row = end_row - seq.token_ids.len() as u32;
        for position in prompt_logprob_positions(seq) {
            batch.logits_indices.push(first_row + (position - start) as u32);
        }
        if seq.sample {
            // The last real token's row, then one row per draft.
            let num_rows = 1 + seq.num_draft_tokens as u32;
            batch.logits_indices.extend(end_row - num_rows..end_row);
        }
    }
    batch
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use ember_core::SamplingParams;

    use super::*;

    /// A scheduled chunk of request `id`: `len` tokens from `start` of a `num_prompt`-token prompt.
    pub(crate) fn seq(
        id: &str,
        start: usize,
        len: usize,
        num_prompt: usize,
        prompt_logprobs: Option<usize>,
    ) -> ScheduledSeq {
        ScheduledSeq {
            request_id: id.into(),
            token_ids: (0..len as u32).collect(),
            num_draft_tokens: 0,
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
            token_mask: None,
            draft_token_masks: Vec::new(),
            lora_id: None,
        }
    }

    /// The scheduler output running `seqs`.
    pub(crate) fn step(seqs: Vec<ScheduledSeq>) -> SchedulerOutput {
        SchedulerOutput {
            num_batched_tokens: seqs.iter().map(|s| s.token_ids.len()).sum(),
            seqs,
            released_ids: Vec::new(),
        }
    }

    #[test]
    fn logits_rows_cover_prompt_logprob_positions_then_the_sampled_row() {
        let output = step(vec![
            seq("a", 0, 3, 3, None),     // rows 0..3: sample row 2
            seq("b", 4, 4, 10, Some(1)), // rows 3..7: positions 4..8 all prompt rows, no sample
            seq("c", 6, 4, 10, Some(0)), // rows 7..11: positions 6..9 prompt rows, then row 10 sampled
        ]);
        let batch = build_step_batch(&output, 4);
        assert_eq!(batch.logits_indices, vec![2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(prompt_logprob_positions(&output.seqs[2]), 6..9);
        assert_eq!(prompt_logprob_positions(&output.seqs[0]), 0..0);
        assert_eq!(batch.query_start_loc, vec![0, 3, 7, 11]);
        assert_eq!(batch.seq_lens, vec![3, 8, 10]);
        // "b" position 4 sits in its block 1 (block id 1) at offset 0: slot 4.
        assert_eq!(batch.slot_mapping[3], 4);
    }
}
