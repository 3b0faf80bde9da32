//! The large-shape paths of the CPU matmul against f64: SmolLM2's MLP up-projection over a
//! 64-row prefill chunk, `[64, 576] x [1536, 576]^T`. On one thread the quantized kernels
//! sweep the 64 rows over several L2-sized groups of weight rows; on three threads the
//! output columns are split into several chunks per thread. Both must match f64 and each
//! other bit for bit, on every instruction set this CPU runs.

use std::io::Write;

use crate::matmul::{matmul, Isa};
use crate::matmul_tests::{dequantized, isas, make_matrix, pool};
use crate::quant::{QuantActs, QK};
use crate::tensor::CpuTensor;
use crate::test_util::{Rng, ALL_DTYPES};
use ember_core::WeightDType;

const ROWS: usize = 64;
const N: usize = 1536;
const K: usize = 576;

/// Says which kernel families ran and which this CPU cannot run. Written to stderr directly,
/// past the test harness's output capture, so that every test log shows it.
fn report_isas(exercised: &[Isa]) {
    let skipped: Vec<Isa> = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|isa| !exercised.contains(isa))
        .collect();
    let line = format!(
        "ember-cpu large matmul ({ROWS} x {N} x {K}): instruction sets exercised {exercised:?}; \
         skipped (not supported by this CPU) {skipped:?}\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// The activations each weight format multiplies: the 8-bit quantized rows (dequantized
/// exactly) for quantized weights, the f32 rows otherwise.
fn effective_activations(dtype: WeightDType, x: &[f32]) -> Vec<f64> {
    if !dtype.is_quantized() {
        return x.iter().map(|&v| f64::from(v)).collect();
    }
    let acts = QuantActs::quantize(x, ROWS, K);
    (0..ROWS)
        .flat_map(|r| {
            let acts = &acts;
            (0..K).map(move |j| f64::from(acts.d[acts.idx(r, j / QK)]) * f64::from(acts.row_qs(r)[j]))
        })
        .collect()
}

/// Largest error f32 arithmetic may add to a dot product whose terms' magnitudes sum to `mag`.
fn tolerance(dtype: WeightDType, mag: f64) -> f64 {
    let unit = f64::from(f32::EPSILON) / 2.0;
    match dtype {
        // Products and sums in f32 in any order: |error| <= K u / (1 - K u) * sum |terms|.
        WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 => {
            let gamma = K as f64 * unit;
            gamma / (1.0 - gamma) * mag + 1e-12
        }
        // Exact integer block dots, scaled and summed in f32 over K / 32 blocks; Q4_1's
        // minimum term multiplies the f16-rounded block sum of the activations.
        WeightDType::Q4_1 => 1e-5 * mag + 2f64.powi(-10) * mag + 1e-6,
        _ => 1e-5 * mag + 1e-6,
    }
}

#[test]
fn large_matmul_matches_f64_on_every_supported_isa() {
    let exercised = isas();
    report_isas(&exercised);
    let mut rng = Rng::new(2024);
    let x = rng.vec(ROWS * K, 2.0);
    let input = CpuTensor::from_vec(ROWS, K, x.clone()).unwrap();
    let (one_thread, three_threads) = (pool(1), pool(3));
    for dtype in ALL_DTYPES {
        let w = make_matrix(&mut rng, dtype, N, K);
        let wd = dequantized(&w);
        let xs = effective_activations(dtype, &x);
        let outputs: Vec<(Isa, CpuTensor)> = exercised
            .iter()
            .flat_map(|&isa| {
                [&one_thread, &three_threads]
                    .map(|p| (isa, matmul(p, isa, &input, &w, None).expect("matmul")))
            })
            .collect();
        for pair in outputs.chunks(2) {
            let (isa, one, three) = (pair[0].0, pair[0].1.as_slice(), pair[1].1.as_slice());
            let same = one.iter().zip(three).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype} {isa:?}: 1 and 3 threads give different bits");
        }
        for r in 0..ROWS {
            let xr = &xs[r * K..(r + 1) * K];
            for c in 0..N {
                let terms = wd[c * K..(c + 1) * K]
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| f64::from(a) * b);
                let (exact, mag) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                let tol = tolerance(dtype, mag);
                for (isa, out) in outputs.iter().step_by(2) {
                    let got = f64::from(out.row(r)[c]);
                    assert!(
                        (got - exact).abs() <= tol,
                        "{dtype} {isa:?} ({r}, {c}): {got} vs f64 {exact} (tolerance {tol:e})"
                    );
                }
            }
        }
    }
}
