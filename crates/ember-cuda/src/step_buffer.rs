//! The step's inputs packed into one buffer of `u32` words, so a step costs one pinned
//! host-to-device copy. Sections follow in a fixed order, each starting 16-byte aligned:
//!
//! | section           | words                          | padding rows (graph batches)   |
//! |-------------------|--------------------------------|--------------------------------|
//! | `input_ids`       | `num_tokens`                   | token 0                        |
//! | `positions`       | `num_tokens`                   | 0                              |
//! | `slot_mapping`    | `num_tokens` (as i32)          | -1: the KV write is skipped    |
//! | `query_start_loc` | `num_seqs + 1`                 | one token per padding sequence |
//! | `seq_lens`        | `num_seqs`                     | 0: attention writes zeros      |
//! | `block_tables`    | `num_seqs * max_blocks_per_seq`| block 0 (never read)           |
//! | `logits_indices`  | `num_logits`                   | the padding rows               |

use ember_core::StepBatch;

/// Words per 16-byte alignment unit.
const ALIGN_WORDS: usize = 4;

/// One section: offset and length in `u32` words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// First word.
    pub offset: usize,
    /// Words.
    pub len: usize,
}

impl Section {
    /// Byte offset of the section in the buffer.
    pub fn byte_offset(&self) -> usize {
        self.offset * 4
    }
}

/// Where each input sits in the packed buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepLayout {
    /// Token ids; `[num_tokens]`.
    pub input_ids: Section,
    /// Positions; `[num_tokens]`.
    pub positions: Section,
    /// Cache slots, -1 for padding; `[num_tokens]`.
    pub slot_mapping: Section,
    /// Row offsets; `[num_seqs + 1]`.
    pub query_start_loc: Section,
    /// Context lengths; `[num_seqs]`.
    pub seq_lens: Section,
    /// Block tables; `[num_seqs * max_blocks_per_seq]`.
    pub block_tables: Section,
    /// Rows to sample; `[num_logits]`.
    pub logits_indices: Section,
    /// Words in use.
    pub total_words: usize,
    /// Token rows (after padding).
    pub num_tokens: usize,
    /// Sequences (after padding).
    pub num_seqs: usize,
    /// Row stride of the block tables.
    pub max_blocks_per_seq: usize,
}

impl StepLayout {
    /// The layout for the given (padded) sizes.
    pub fn new(num_tokens: usize, num_seqs: usize, max_blocks_per_seq: usize, num_logits: usize) -> Self {
        let mut next = 0;
        let mut section = |len: usize| {
            let s = Section { offset: next, len };
            next = (next + len).div_ceil(ALIGN_WORDS) * ALIGN_WORDS;
            s
        };
        let input_ids = section(num_tokens);
        let positions = section(num_tokens);
        let slot_mapping = section(num_tokens);
        let query_start_loc = section(num_seqs + 1);
        let seq_lens = section(num_seqs);
        let block_tables = section(num_seqs * max_blocks_per_seq);
        let logits_indices = section(num_logits);
        Self {
            input_ids,
            positions,
            slot_mapping,
            query_start_loc,
            seq_lens,
            block_tables,
            logits_indices,
            total_words: next,
            num_tokens,
            num_seqs,
            max_blocks_per_seq,
        }
    }
}

/// Packs `batch` into `buf`, padding a decode batch (one token per sequence) up to
/// `padded_seqs` sequences; returns the layout, or `None` when `buf` is too small or
/// padding was asked for a step that is not pure decode.
pub fn pack_step(batch: &StepBatch, padded_seqs: usize, buf: &mut [u32]) -> Option<StepLayout> {
    let input_ids = &batch.input_ids;
    let (num_tokens, num_seqs) = (batch.num_tokens(), batch.num_seqs());
    let pad = padded_seqs.saturating_sub(num_seqs);
    if pad > 0 && num_tokens != num_seqs {
        return None;
    }
    let num_logits = batch.logits_indices.len();
    let logits_pad = if num_logits == num_seqs { pad } else { 0 };
    let mbps = batch.max_blocks_per_seq;
    let layout = StepLayout::new(num_tokens + pad, num_seqs + pad, mbps, num_logits + logits_pad);
    if buf.len() < layout.total_words || input_ids.len() != num_tokens {
        return None;
    }
    let mut write = |s: Section, real: &[u32], fill: &dyn Fn(usize) -> u32| {
        let dst = &mut buf[s.offset..s.offset + s.len];
        dst[..real.len()].copy_from_slice(real);
        for (i, d) in dst.iter_mut().enumerate().skip(real.len()) {
            *d = fill(i);
        }
    };
    write(layout.input_ids, input_ids, &|_| 0);
    write(layout.positions, &batch.positions, &|_| 0);
    write(layout.slot_mapping, &batch.slot_mapping, &|_| u32::MAX);
    let last = batch.query_start_loc.last().copied().unwrap_or(0);
    write(layout.query_start_loc, &batch.query_start_loc, &|i| {
        last + (i - num_seqs) as u32
    });
    write(layout.seq_lens, &batch.seq_lens, &|_| 0);
    write(
        layout.block_tables,
        &batch.block_tables[..num_seqs * mbps],
        &|_| 0,
    );
    write(layout.logits_indices, &batch.logits_indices, &|i| {
        (i - num_logits + num_tokens) as u32
    });
    Some(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_meta(n: usize) -> StepBatch {
        StepBatch {
            input_ids: (0..n as u32).map(|i| 100 + i).collect(),
            positions: (0..n as u32).map(|i| 10 + i).collect(),
            slot_mapping: (0..n as u32).map(|i| 16 * i + 3).collect(),
            query_start_loc: (0..=n as u32).collect(),
            seq_lens: (0..n as u32).map(|i| 11 + i).collect(),
            block_tables: (0..2 * n as u32).collect(),
            max_blocks_per_seq: 2,
            logits_indices: (0..n as u32).collect(),
        }
    }

    #[test]
    fn sections_are_aligned_and_disjoint() {
        let l = StepLayout::new(5, 3, 7, 3);
        let sections = [
            l.input_ids,
            l.positions,
            l.slot_mapping,
            l.query_start_loc,
            l.seq_lens,
            l.block_tables,
            l.logits_indices,
        ];
        for pair in sections.windows(2) {
            assert_eq!(pair[0].byte_offset() % 16, 0);
            assert!(pair[0].offset + pair[0].len <= pair[1].offset);
        }
        assert_eq!(l.block_tables.len, 21);
        assert_eq!(l.total_words % 4, 0);
        assert!(l.total_words >= l.logits_indices.offset + 3);
    }

    #[test]
    fn unpadded_step_round_trips() {
        let meta = decode_meta(3);
        let mut buf = vec![7u32; 64];
        let l = pack_step(&meta, 3, &mut buf).unwrap();
        let get = |s: Section| buf[s.offset..s.offset + s.len].to_vec();
        assert_eq!(get(l.input_ids), meta.input_ids);
        assert_eq!(get(l.positions), meta.positions);
        assert_eq!(get(l.slot_mapping), meta.slot_mapping);
        assert_eq!(get(l.query_start_loc), meta.query_start_loc);
        assert_eq!(get(l.seq_lens), meta.seq_lens);
        assert_eq!(get(l.block_tables), meta.block_tables);
        assert_eq!(get(l.logits_indices), meta.logits_indices);
    }

    #[test]
    fn decode_batch_is_padded_with_inert_rows() {
        let meta = decode_meta(3);
        let mut buf = vec![7u32; 128];
        let l = pack_step(&meta, 8, &mut buf).unwrap();
        assert_eq!((l.num_tokens, l.num_seqs), (8, 8));
        let get = |s: Section| buf[s.offset..s.offset + s.len].to_vec();
        assert_eq!(get(l.input_ids)[3..], [0; 5]);
        assert_eq!(get(l.slot_mapping)[3..], [u32::MAX; 5]);
        assert_eq!(get(l.query_start_loc), (0..=8).collect::<Vec<u32>>());
        assert_eq!(get(l.seq_lens)[3..], [0; 5]);
        assert_eq!(get(l.block_tables)[6..], [0; 10]);
        assert_eq!(get(l.logits_indices), (0..8).collect::<Vec<u32>>());
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut meta = decode_meta(3);
        assert!(pack_step(&meta, 3, &mut [0u32; 8]).is_none());
        let short = StepBatch {
            input_ids: meta.input_ids[..2].to_vec(),
            ..meta.clone()
        };
        assert!(pack_step(&short, 3, &mut [0u32; 64]).is_none());
        // A prefill step (more tokens than sequences) cannot be padded.
        meta.input_ids = vec![1, 2, 3, 4];
        meta.positions.push(0);
        meta.slot_mapping.push(0);
        *meta.query_start_loc.last_mut().unwrap() = 4;
        assert!(pack_step(&meta, 4, &mut [0u32; 64]).is_none());
        assert!(pack_step(&meta, 3, &mut [0u32; 64]).is_some());
    }
}
