//! Times one decode step of SmolLM2-135M's matmuls with random weights: the 7 per-layer
//! matmuls (Q4_1) x 30 layers plus the tied Q8_0 lm_head [49152 x 576], at batch 1, 16, 64.
//!
//! Run: `cargo run --release -p ember-cpu --example decode_layer_bench [-- THREADS [STEPS]]`

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

fn random_matrix(
    backend: &CpuBackend,
    rng: &mut Rng,
    dtype: WeightDType,
    rows: usize,
    cols: usize,
) -> CpuMatrix {
    let mut bytes = Vec::with_capacity(dtype.bytes_for(rows * cols).unwrap_or(0));
    let f16 = |x: f32| half::f16::from_f32(x).to_bits().to_le_bytes();
    for _ in 0..rows * cols / 32 {
        bytes.extend(f16(0.002 + 0.01 * rng.unit()));
        if dtype == WeightDType::Q4_1 {
            bytes.extend(f16(-0.08 * rng.unit()));
        }
        let payload = if dtype == WeightDType::Q8_0 { 32 } else { 16 };
        (0..payload).for_each(|_| bytes.push(rng.next() as u8));
    }
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
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
        .map(|_| {
            shapes
                .iter()
                .map(|&(n, k)| random_matrix(&loader, &mut rng, WeightDType::Q4_1, n, k))
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
    println!("threads={threads} steps={steps} (per step: 30 layers x 7 Q4_1 matmuls + Q8_0 lm_head)");
    println!(
        "{:<12} {:>6} {:>12} {:>12} {:>12}",
        "kernels", "batch", "ms/step", "tokens/s", "min ms"
    );
    for isa in isas {
        let backend = CpuBackend::with_isa(Some(threads), isa);
        for batch in [1usize, 16, 64] {
            let steps = if isa == Isa::Scalar { 2 } else { steps };
            let xs: Vec<f32> = (0..batch * INTERMEDIATE).map(|_| rng.unit() - 0.5).collect();
            let x = CpuTensor::from_vec(batch, HIDDEN, xs[..batch * HIDDEN].to_vec()).expect("shape");
            let xi = CpuTensor::from_vec(batch, INTERMEDIATE, xs).expect("shape");
            let mut times = Vec::new();
            let no_inputs = StepBatch::default();
            for step in 0..steps + 2 {
                let t0 = Instant::now();
                for layer in &layers {
                    for (j, w) in layer.iter().enumerate() {
                        let input = if j == 6 { &xi } else { &x };
                        std::hint::black_box(backend.matmul(&no_inputs, input, w, None).expect("matmul"));
                    }
                }
                std::hint::black_box(backend.matmul(&no_inputs, &x, &lm_head, None).expect("matmul"));
                if step >= 2 {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            println!(
                "{:<12} {:>6} {:>12.2} {:>12.1} {:>12.2}",
                format!("{isa:?}"),
                batch,
                median * 1e3,
                batch as f64 / median,
                times[0] * 1e3
            );
        }
    }
}
