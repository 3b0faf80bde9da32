//! Times the matmuls of one SmolLM2-135M step with random weights: the 7 per-layer matmuls x
//! 30 layers plus the tied Q8_0 lm_head [49152 x 576], at 1, 16 and 64 rows (decode) and 512
//! rows (prefill; lm_head on one row, as in a prefill step), for the weight formats of the
//! default Q4_1 file or of llama.cpp's Q4_K_M of it (Q5_0 where rows of 576 do not fit a
//! K-quant super-block, Q4_K / Q6_K `ffn_down`, Q8_0 / Q5_0 `attn_v`).
//!
//! Run: `cargo run --release -p ember-cpu --example decode_layer_bench [-- THREADS [STEPS [MIX]]]`
//! with MIX `q4_1` (default) or `q4_k_m`; `BENCH_ISA=Avx2` (or `Avx512Vnni`, `Scalar`) picks one
//! kernel family. Prints min and median milliseconds per step, and (Linux) the calling
//! thread's median CPU milliseconds per step, which other processes on a shared machine
//! disturb much less than wall time (with THREADS=1 the whole step runs on that thread).

use ember_core::{Backend, StepBatch, WeightDType, WeightView};
use ember_cpu::{CpuBackend, CpuMatrix, CpuTensor, Isa};
use std::time::Instant;

const HIDDEN: usize = 576;
const INTERMEDIATE: usize = 1536;
const KV_WIDTH: usize = 192;
const LAYERS: usize = 30;
const VOCAB: usize = 49152;

/// xorshift64 for reproducible random weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Random bytes of one block: every f16 scale small and finite, every other byte random.
fn random_block(rng: &mut Rng, dtype: WeightDType) -> Vec<u8> {
    let mut blk: Vec<u8> = (0..dtype.block_bytes()).map(|_| rng.next() as u8).collect();
    let scale_offsets: &[usize] = match dtype {
        WeightDType::Q4_1 | WeightDType::Q5_1 | WeightDType::Q4_K | WeightDType::Q5_K => &[0, 2],
        WeightDType::Q6_K => &[208],
        WeightDType::Q2_K => &[80, 82],
        WeightDType::Q3_K => &[108],
        _ => &[0],
    };
    for &off in scale_offsets {
        let v = half::f16::from_f32(0.0005 + 0.005 * rng.unit()).to_bits();
        blk[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    blk
}

fn random_matrix(
    backend: &CpuBackend,
    rng: &mut Rng,
    dtype: WeightDType,
    rows: usize,
    cols: usize,
) -> CpuMatrix {
    let bytes: Vec<u8> = (0..rows * cols / dtype.block_len())
        .flat_map(|_| random_block(rng, dtype))
        .collect();
    let shape = [rows, cols];
    backend
        .load_matrix(&WeightView {
            name: "bench",
            dtype,
            shape: &shape,
            bytes: &bytes,
        })
        .expect("valid weight")
}

/// The formats of layer `i`'s q, k, v, o, gate, up, down matrices in a file of `mix`.
fn layer_formats(mix: &str, i: usize) -> [WeightDType; 7] {
    use WeightDType::*;
    match mix {
        "q4_k_m" => {
            // llama.cpp's Q4_K_M of SmolLM2-135M: more bits for attn_v / ffn_down in some layers.
            let wide = i < 4 || i.is_multiple_of(3) || i >= 26;
            let v = if wide { Q8_0 } else { Q5_0 };
            let down = if wide { Q6_K } else { Q4_K };
            [Q5_0, Q5_0, v, Q5_0, Q5_0, Q5_0, down]
        }
        _ => [Q4_1; 7],
    }
}

/// CPU time the calling thread has run, in seconds (Linux `schedstat`; 0 elsewhere).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns * 1e-9)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let mix = args.get(3).cloned().unwrap_or_else(|| "q4_1".into());
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let loader = CpuBackend::new(Some(threads));
    let shapes = [
        (HIDDEN, HIDDEN),
        (KV_WIDTH, HIDDEN),
        (KV_WIDTH, HIDDEN),
        (HIDDEN, HIDDEN),
        (INTERMEDIATE, HIDDEN),
        (INTERMEDIATE, HIDDEN),
        (HIDDEN, INTERMEDIATE),
    ];
    let layers: Vec<Vec<CpuMatrix>> = (0..LAYERS)
        .map(|i| {
            shapes
                .iter()
                .zip(layer_formats(&mix, i))
                .map(|(&(n, k), dtype)| random_matrix(&loader, &mut rng, dtype, n, k))
                .collect()
        })
        .collect();
    let lm_head = random_matrix(&loader, &mut rng, WeightDType::Q8_0, VOCAB, HIDDEN);
    let only = std::env::var("BENCH_ISA").ok();
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512Vnni, Isa::Scalar]
        .into_iter()
        .filter(|i| i.is_supported())
        .filter(|i| only.as_ref().is_none_or(|o| format!("{i:?}") == *o))
        .collect();
    println!("threads={threads} steps={steps} mix={mix} (per step: 30 layers x 7 matmuls + Q8_0 lm_head)");
    println!(
        "{:<12} {:>6} {:>10} {:>10} {:>10} {:>14}",
        "kernels", "rows", "min ms", "median ms", "cpu ms", "rows/s (min)"
    );
    for isa in isas {
        let backend = CpuBackend::with_isa(Some(threads), isa);
        for batch in [1usize, 16, 64, 512] {
            let steps = if isa == Isa::Scalar { 2 } else { steps };
            let xs: Vec<f32> = (0..batch * INTERMEDIATE).map(|_| rng.unit() - 0.5).collect();
            let x = CpuTensor::from_vec(batch, HIDDEN, xs[..batch * HIDDEN].to_vec()).expect("shape");
            let xi = CpuTensor::from_vec(batch, INTERMEDIATE, xs).expect("shape");
            let last = CpuTensor::from_vec(1, HIDDEN, x.row(0).to_vec()).expect("shape");
            let head_in = if batch > 64 { &last } else { &x };
            let (mut times, mut cpu) = (Vec::new(), Vec::new());
            let no_inputs = StepBatch::default();
            for step in 0..steps + 2 {
                let (t0, c0) = (Instant::now(), thread_cpu_s());
                for layer in &layers {
                    for (j, w) in layer.iter().enumerate() {
                        let input = if j == 6 { &xi } else { &x };
                        std::hint::black_box(backend.matmul(&no_inputs, input, w, None).expect("matmul"));
                    }
                }
                std::hint::black_box(
                    backend
                        .matmul(&no_inputs, head_in, &lm_head, None)
                        .expect("matmul"),
                );
                if step >= 2 {
                    times.push(t0.elapsed().as_secs_f64());
                    cpu.push(thread_cpu_s() - c0);
                }
            }
            times.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            println!(
                "{:<12} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>14.1}",
                format!("{isa:?}"),
                batch,
                times[0] * 1e3,
                times[times.len() / 2] * 1e3,
                cpu[cpu.len() / 2] * 1e3,
                batch as f64 / times[0]
            );
        }
    }
}
