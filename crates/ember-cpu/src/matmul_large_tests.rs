//! The large-shape paths of the CPU matmul against f64: SmolLM2's MLP up-projection over a
//! 64-row prefill chunk, `[64, 576] x [1536, 576]^T` (the down-projection, `[64, 1536] x
//! [576, 1536]^T`, for the 256-element K-quant blocks, which 576 does not hold). On one thread the quantized kernels
//! sweep the 64 rows over several L2-sized groups of weight rows; on three threads the
//! output columns are split into several chunks per thread. Both must match f64 and each
//! other bit for bit, on every instruction set this CPU runs.

use std::io::Write;

use crate::matmul::{matmul, Isa};
use crate::matmul_tests::{act_block, dequantized, isas, make_matrix, pool};
use crate::quant::QuantActs;
use crate::tensor::CpuTensor;
use crate::test_util::{random_weight_bytes, Rng};
use ember_core::WeightDType;

const ROWS: usize = 64;
const N: usize = 1536;
const K: usize = 576;

/// Says which kernel families ran and which this CPU cannot run. Written to stderr directly,
/// past the test harness's output capture, so that every test log shows it.
fn report_isas(exercised: &[Isa]) {
    let skipped: Vec<Isa> = Isa::ALL
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
fn effective_activations(dtype: WeightDType, x: &[f32], k: usize) -> Vec<f64> {
    if !dtype.is_quantized() {
        return x.iter().map(|&v| f64::from(v)).collect();
    }
    let block_len = act_block(dtype);
    let acts = QuantActs::quantize(x, ROWS, k, block_len);
    (0..ROWS)
        .flat_map(|r| {
            let acts = &acts;
            (0..k).map(move |j| f64::from(acts.block_d(r, j / block_len)) * f64::from(acts.row_qs(r)[j]))
        })
        .collect()
}

/// Largest error f32 arithmetic may add to a dot product whose terms' magnitudes sum to `mag`.
fn tolerance(dtype: WeightDType, mag: f64, k: usize) -> f64 {
    let unit = f64::from(f32::EPSILON) / 2.0;
    match dtype {
        // Products and sums in f32 in any order: |error| <= k u / (1 - k u) * sum |terms|.
        WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 => {
            let gamma = k as f64 * unit;
            gamma / (1.0 - gamma) * mag + 1e-12
        }
        // Exact integer block dots, scaled and summed in f32 over k / 32 blocks; the Q4_1 and
        // Q5_1 minimum terms multiply the f16-rounded block sums of the activations.
        WeightDType::Q4_1 | WeightDType::Q5_1 => 1e-5 * mag + 2f64.powi(-10) * mag + 1e-6,
        _ => 1e-5 * mag + 1e-6,
    }
}

#[test]
fn large_matmul_matches_f64_on_every_supported_isa() {
    let exercised = isas();
    report_isas(&exercised);
    let mut rng = Rng::new(2024);
    let (one_thread, three_threads) = (pool(1), pool(3));
    for dtype in WeightDType::ALL {
        let (n, k) = if K.is_multiple_of(dtype.block_len()) {
            (N, K)
        } else {
            (K, N)
        };
        let x = rng.vec(ROWS * k, 2.0);
        let input = CpuTensor::from_vec(ROWS, k, x.clone()).unwrap();
        let w = make_matrix(&random_weight_bytes(&mut rng, dtype, n, k), dtype, n, k);
        let wd = dequantized(&w);
        let xs = effective_activations(dtype, &x, k);
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
            let xr = &xs[r * k..(r + 1) * k];
            for c in 0..n {
                let terms = wd[c * k..(c + 1) * k]
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| f64::from(a) * b);
                let (exact, mag) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                let tol = tolerance(dtype, mag, k);
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
