//! Multi-row attention: the query rows of one sequence (speculative verification's 1 + k rows,
//! a prefill chunk) walk its context together, yet each row's output is bit-identical to that
//! row computed alone, for every KV cache dtype, kernel family, thread count and option.

use crate::test_util::Rng;
use crate::{CpuBackend, CpuTensor, Isa};
use ember_core::{AttentionParams, AttentionShape, Backend, KvCacheSpec, StepBatch, WeightDType};

/// Step metadata for one sequence of `seq_len` tokens in blocks `table`, querying `positions`.
fn step(positions: &[usize], seq_len: usize, table: &[u32]) -> StepBatch {
    StepBatch {
        positions: positions.iter().map(|&p| p as u32).collect(),
        query_start_loc: vec![0, positions.len() as u32],
        seq_lens: vec![seq_len as u32],
        block_tables: table.to_vec(),
        max_blocks_per_seq: table.len(),
        ..Default::default()
    }
}

#[test]
fn rows_of_one_sequence_equal_each_row_alone() {
    let mut rng = Rng::new(33);
    let (block_size, seq_len, num_rows) = (8usize, 61usize, 11usize);
    let (num_heads, num_kv_heads, head_dim) = (6usize, 2usize, 64usize);
    let num_blocks = seq_len.div_ceil(block_size) + 2;
    // Block ids in shuffled order.
    let mut table: Vec<u32> = (0..num_blocks as u32).rev().collect();
    table.swap(1, 4);
    table.truncate(seq_len.div_ceil(block_size));
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks,
        block_size,
        num_kv_heads,
        head_dim,
    };
    let kv_width = num_kv_heads * head_dim;
    let shape = AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    };
    let width = num_heads * head_dim;
    let positions: Vec<usize> = (seq_len - num_rows..seq_len).collect();
    let query = CpuTensor::from_vec(num_rows, width, rng.vec(num_rows * width, 1.0)).unwrap();
    let keys = CpuTensor::from_vec(seq_len, kv_width, rng.vec(seq_len * kv_width, 1.0)).unwrap();
    let values = CpuTensor::from_vec(seq_len, kv_width, rng.vec(seq_len * kv_width, 1.0)).unwrap();
    let slots: Vec<u32> = (0..seq_len)
        .map(|p| table[p / block_size] * block_size as u32 + (p % block_size) as u32)
        .collect();
    for kv_dtype in [
        WeightDType::F32,
        WeightDType::F16,
        WeightDType::BF16,
        WeightDType::Q8_0,
    ] {
        let writer = CpuBackend::with_isa(Some(1), Isa::Scalar)
            .with_kv_cache_dtype(kv_dtype)
            .unwrap();
        let mut cache = writer.allocate_kv_cache(&spec).unwrap();
        let write = StepBatch {
            slot_mapping: slots.clone(),
            ..StepBatch::default()
        };
        writer.write_kv(&write, &mut cache, 0, &keys, &values).unwrap();
        for (sliding_window, logit_soft_cap) in [(None, None), (Some(5), None), (Some(30), Some(2.0))] {
            let params = AttentionParams {
                sliding_window,
                logit_soft_cap,
                ..AttentionParams::causal(shape)
            };
            for (isa, threads) in Isa::ALL
                .into_iter()
                .filter(|i| i.is_supported())
                .flat_map(|i| [(i, 1), (i, 2)])
            {
                let backend = CpuBackend::with_isa(Some(threads), isa)
                    .with_kv_cache_dtype(kv_dtype)
                    .unwrap();
                let together = backend
                    .attention(&step(&positions, seq_len, &table), &query, &cache, 0, &params)
                    .unwrap();
                for (i, &pos) in positions.iter().enumerate() {
                    let one = CpuTensor::from_vec(1, width, query.row(i).to_vec()).unwrap();
                    let alone = backend
                        .attention(&step(&[pos], seq_len, &table), &one, &cache, 0, &params)
                        .unwrap();
                    let same = alone
                        .row(0)
                        .iter()
                        .zip(together.row(i))
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{kv_dtype} {isa:?} x{threads} {params:?}: row {i} differs from the row alone"
                    );
                }
            }
        }
    }
}
