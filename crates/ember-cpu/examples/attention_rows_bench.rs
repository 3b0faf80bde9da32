//! Times the attention of one verification step of SmolLM2-135M's shape (9 query heads, 3 KV
//! heads, head_dim 64, 30 layers) over one sequence's long context: 1, 2, 4 and 8 query rows
//! at the end of the context computed together (one call: the rows walk the K/V rows once),
//! beside the same rows computed one call per row (each row walks the whole context, as
//! before multi-row attention), for the float16 and int8 KV caches. Random K/V and queries
//! from a fixed seed.
//!
//! Run: `cargo run --release -p ember-cpu --example attention_rows_bench [-- THREADS [CONTEXT
//! [SAMPLES]]]` (defaults 2, 2048, 7). Each sample times (wall clock, `Instant`) as many
//! back-to-back steps (all 30 layers) as fill at least `MIN_SAMPLE_S`, so that every figure
//! is far above the clock's resolution; the two ways alternate sample by sample, so that a
//! load change on a shared machine reaches both. Prints the median milliseconds per step of
//! both ways, the steps per sample, and the speed-up of computing the rows together: the
//! median of the per-sample-pair ratios, with their smallest and largest.

use ember_core::{AttentionParams, AttentionShape, Backend, KvCacheSpec, StepBatch, WeightDType};
use ember_cpu::{CpuBackend, CpuTensor};
use std::time::Instant;

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const LAYERS: usize = 30;
const BLOCK: usize = 16;
/// The least wall time one sample lasts, in seconds.
const MIN_SAMPLE_S: f64 = 0.2;

/// Deterministic values in `[-1, 1)` (xorshift64).
fn random(n: usize, state: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Step metadata for one sequence of `len` tokens in blocks `0..`, querying `positions`.
fn step(positions: &[usize], len: usize) -> StepBatch {
    StepBatch {
        positions: positions.iter().map(|&p| p as u32).collect(),
        query_start_loc: vec![0, positions.len() as u32],
        seq_lens: vec![len as u32],
        block_tables: (0..len.div_ceil(BLOCK) as u32).collect(),
        max_blocks_per_seq: len.div_ceil(BLOCK),
        ..Default::default()
    }
}

/// Runs of `f` that fill one sample of at least `MIN_SAMPLE_S`, from a warm-up run.
fn runs_per_sample(f: &mut impl FnMut()) -> usize {
    let start = Instant::now();
    f();
    let warmup_s = start.elapsed().as_secs_f64().max(1e-6);
    (MIN_SAMPLE_S / warmup_s).ceil().max(1.0) as usize
}

/// Wall milliseconds per run of `f` over `num_runs` back-to-back runs.
fn sample_ms(f: &mut impl FnMut(), num_runs: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..num_runs {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / num_runs as f64
}

/// The median of `values` (not empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let threads = args.first().copied().unwrap_or(2);
    let context = args.get(1).copied().unwrap_or(2048);
    let num_samples = args.get(2).copied().unwrap_or(7).max(1);
    let spec = KvCacheSpec {
        num_layers: LAYERS,
        num_blocks: context.div_ceil(BLOCK),
        block_size: BLOCK,
        num_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let shape = AttentionShape {
        num_heads: HEADS,
        num_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let params = AttentionParams::causal(shape);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let kv_width = KV_HEADS * HEAD_DIM;
    let keys = CpuTensor::from_vec(context, kv_width, random(context * kv_width, &mut state)).unwrap();
    let values = CpuTensor::from_vec(context, kv_width, random(context * kv_width, &mut state)).unwrap();
    let write = StepBatch {
        slot_mapping: (0..context as u32).collect(),
        ..Default::default()
    };
    println!(
        "attention of one sequence, {context} tokens of context, {threads} threads, {LAYERS} layers; \
         wall ms per step, median of {num_samples} samples of >= {MIN_SAMPLE_S} s"
    );
    println!(
        "{:>8} {:>5} {:>12} {:>6} {:>12} {:>6} {:>8} {:>12}",
        "kv", "rows", "together ms", "steps", "per-row ms", "steps", "speedup", "min..max"
    );
    for (name, dtype) in [("float16", WeightDType::F16), ("int8", WeightDType::Q8_0)] {
        let backend = CpuBackend::new(Some(threads)).with_kv_cache_dtype(dtype).unwrap();
        let mut cache = backend.allocate_kv_cache(&spec).unwrap();
        for layer in 0..LAYERS {
            backend
                .write_kv(&write, &mut cache, layer, &keys, &values)
                .unwrap();
        }
        for rows in [1usize, 2, 4, 8] {
            let positions: Vec<usize> = (context - rows..context).collect();
            let width = HEADS * HEAD_DIM;
            let query = CpuTensor::from_vec(rows, width, random(rows * width, &mut state)).unwrap();
            let singles: Vec<CpuTensor> = (0..rows)
                .map(|r| CpuTensor::from_vec(1, width, query.row(r).to_vec()).unwrap())
                .collect();
            let meta = step(&positions, context);
            let mut together = || {
                for layer in 0..LAYERS {
                    backend.attention(&meta, &query, &cache, layer, &params).unwrap();
                }
            };
            let single_metas: Vec<StepBatch> = positions.iter().map(|&p| step(&[p], context)).collect();
            let mut per_row = || {
                for layer in 0..LAYERS {
                    for (m, q) in single_metas.iter().zip(&singles) {
                        backend.attention(m, q, &cache, layer, &params).unwrap();
                    }
                }
            };
            let (together_steps, per_row_steps) =
                (runs_per_sample(&mut together), runs_per_sample(&mut per_row));
            let (mut together_ms, mut per_row_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..num_samples {
                let (t, r) = (
                    sample_ms(&mut together, together_steps),
                    sample_ms(&mut per_row, per_row_steps),
                );
                together_ms.push(t);
                per_row_ms.push(r);
                ratios.push(r / t);
            }
            let (low, high) = ratios
                .iter()
                .fold((f64::MAX, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
            println!(
                "{name:>8} {rows:>5} {:>12.3} {together_steps:>6} {:>12.3} {per_row_steps:>6} {:>7.2}x {low:>5.2}..{high:<5.2}",
                median(together_ms),
                median(per_row_ms),
                median(ratios)
            );
        }
    }
}
