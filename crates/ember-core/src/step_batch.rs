//! [`StepBatch`]: the flat host inputs of one forward pass, as the model runner builds them
//! from a scheduler output and hands them to `Backend::prepare_step`.

/// Token ids and attention metadata of one step, flattened over its sequences.
///
/// Sequences appear in batch order; token rows of sequence `s` are
/// `query_start_loc[s]..query_start_loc[s + 1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepBatch {
    /// Token id of every row; `[num_tokens]`.
    pub input_ids: Vec<u32>,
    /// Position of each token in its sequence; `[num_tokens]`.
    pub positions: Vec<u32>,
    /// Cache slot (`block_id * block_size + offset`) each token's K/V is written to; `[num_tokens]`.
    pub slot_mapping: Vec<u32>,
    /// Offsets of each sequence's rows; `[num_seqs + 1]`.
    pub query_start_loc: Vec<u32>,
    /// Context length of each sequence after this step (cached + new tokens); `[num_seqs]`.
    pub seq_lens: Vec<u32>,
    /// Block ids of each sequence, padded to `max_blocks_per_seq`; `[num_seqs * max_blocks_per_seq]`.
    pub block_tables: Vec<u32>,
    /// Row stride of `block_tables`.
    pub max_blocks_per_seq: usize,
    /// Token rows whose logits are needed, in the order they come back; `[num_logits]`.
    pub logits_indices: Vec<u32>,
}

impl StepBatch {
    /// The inputs of one prompt of `num_tokens` tokens computed from scratch in a cache whose
    /// blocks `0, 1, ...` hold it in order, with logits at every position (scoring).
    pub fn whole_prompt(token_ids: &[u32], block_size: usize) -> Self {
        let num_tokens = token_ids.len() as u32;
        let num_blocks = token_ids.len().div_ceil(block_size.max(1)).max(1);
        Self {
            input_ids: token_ids.to_vec(),
            positions: (0..num_tokens).collect(),
            slot_mapping: (0..num_tokens).collect(),
            query_start_loc: vec![0, num_tokens],
            seq_lens: vec![num_tokens],
            block_tables: (0..num_blocks as u32).collect(),
            max_blocks_per_seq: num_blocks,
            logits_indices: (0..num_tokens).collect(),
        }
    }

    /// Number of token rows in the step.
    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }

    /// Number of sequences in the step.
    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    /// The block table row of sequence `seq`.
    pub fn block_table(&self, seq: usize) -> &[u32] {
        let start = seq * self.max_blocks_per_seq;
        &self.block_tables[start..start + self.max_blocks_per_seq]
    }

    /// Number of new tokens of the sequence with the most of them.
    pub fn max_query_len(&self) -> usize {
        self.query_start_loc
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or(0) as usize
    }

    /// Context length of the longest sequence.
    pub fn max_seq_len(&self) -> usize {
        self.seq_lens.iter().copied().max().unwrap_or(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_prompt_covers_every_position_in_order() {
        let batch = StepBatch::whole_prompt(&[5, 6, 7, 8, 9], 4);
        assert_eq!(batch.num_tokens(), 5);
        assert_eq!(batch.num_seqs(), 1);
        assert_eq!(batch.block_table(0), &[0, 1]);
        assert_eq!(batch.slot_mapping, vec![0, 1, 2, 3, 4]);
        assert_eq!(batch.logits_indices, vec![0, 1, 2, 3, 4]);
        assert_eq!((batch.max_query_len(), batch.max_seq_len()), (5, 5));
    }
}
