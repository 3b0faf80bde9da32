//! Times the attention of one verification step of SmolLM2-135M's shape (9 query heads, 3 KV
//! heads, head_dim 64, 30 layers) over one sequence's long context: 1, 2, 4 and 8 query rows
//! at the end of the context computed together (one call: the rows walk the K/V rows once),
//! beside the same rows computed one call per row (each row walks the whole context, as
//! before multi-row attention), for the float16 and int8 KV caches. Random K/V and queries
//! from a fixed seed.
//!
//! Run: `cargo run --release -p ember-cpu --example attention_rows_bench [-- THREADS [CONTEXT
//! [STEPS]]]` (defaults 2, 2048, 7). Prints the median milliseconds per step (all 30 layers)
//! of both ways, and with THREADS=1 (the whole step on the calling thread) also its median CPU
//! milliseconds, which other processes on a shared machine disturb much less; the speed-up
//! of computing the rows together is taken from CPU time with one thread, else wall time.

use ember_core::{AttentionParams, AttentionShape, Backend, KvCacheSpec, StepBatch, WeightDType};
use ember_cpu::{CpuBackend, CpuTensor};
use std::time::Instant;

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const LAYERS: usize = 30;
const BLOCK: usize = 16;

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

/// CPU time the calling thread has run, in seconds (Linux `schedstat`; 0 elsewhere).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns * 1e-9)
}

/// Medians of `steps` runs of `f`: (wall, calling thread's CPU) milliseconds.
fn time(steps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let (t, c) = (Instant::now(), thread_cpu_s());
        f();
        cpu.push((thread_cpu_s() - c) * 1e3);
        wall.push(t.elapsed().as_secs_f64() * 1e3);
    }
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[steps / 2], cpu[steps / 2])
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let threads = args.first().copied().unwrap_or(2);
    let context = args.get(1).copied().unwrap_or(2048);
    let steps = args.get(2).copied().unwrap_or(7).max(1);
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
    println!("attention of one sequence, {context} tokens of context, {threads} threads, {LAYERS} layers");
    println!(
        "{:>8} {:>5} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "kv", "rows", "together ms", "together cpu", "per-row ms", "per-row cpu", "speedup"
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
            let (wall, cpu) = time(steps, || {
                for layer in 0..LAYERS {
                    backend.attention(&meta, &query, &cache, layer, &params).unwrap();
                }
            });
            let single_metas: Vec<StepBatch> = positions.iter().map(|&p| step(&[p], context)).collect();
            let (row_wall, row_cpu) = time(steps, || {
                for layer in 0..LAYERS {
                    for (m, q) in single_metas.iter().zip(&singles) {
                        backend.attention(m, q, &cache, layer, &params).unwrap();
                    }
                }
            });
            let speedup = if threads == 1 {
                row_cpu / cpu
            } else {
                row_wall / wall
            };
            println!("{name:>8} {rows:>5} {wall:>12.2} {cpu:>12.2} {row_wall:>12.2} {row_cpu:>12.2} {speedup:>7.2}x");
        }
    }
}
