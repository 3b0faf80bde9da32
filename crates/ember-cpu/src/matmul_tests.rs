//! Matmul kernels against f64 references, SIMD against scalar, and batch invariance.

use crate::matmul::{matmul, Isa};
use crate::matrix::CpuMatrix;
use crate::quant::QuantActs;
use crate::tensor::CpuTensor;
use crate::test_util::{random_weight_bytes, Rng, ALL_DTYPES};
use ember_core::{WeightDType, WeightView};

pub(crate) fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

pub(crate) fn make_matrix(rng: &mut Rng, dtype: WeightDType, n: usize, k: usize) -> CpuMatrix {
    let bytes = random_weight_bytes(rng, dtype, n, k);
    let shape = [n, k];
    CpuMatrix::from_view(&WeightView {
        name: "w",
        dtype,
        shape: &shape,
        bytes: &bytes,
    })
    .expect("valid matrix")
}

pub(crate) fn isas() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|i| i.is_supported())
        .collect()
}

pub(crate) fn dequantized(w: &CpuMatrix) -> Vec<f32> {
    let mut out = vec![0.0; w.rows() * w.cols()];
    for (r, row) in out.chunks_exact_mut(w.cols()).enumerate() {
        w.dequantize_row_into(r, row);
    }
    out
}

/// Checks every kernel family against f64 references over odd sizes and every dtype.
#[test]
fn matmul_matches_f64_reference_all_dtypes() {
    let mut rng = Rng::new(7);
    let pool = pool(2);
    for dtype in ALL_DTYPES {
        let ks: &[usize] = if dtype.is_quantized() {
            &[32, 96, 160]
        } else {
            &[1, 7, 37, 71]
        };
        for &k in ks {
            for &(rows, n) in &[(1, 1), (3, 13), (17, 37), (5, 9)] {
                let w = make_matrix(&mut rng, dtype, n, k);
                let x = CpuTensor::from_vec(rows, k, rng.vec(rows * k, 2.0)).unwrap();
                let bias = rng.vec(n, 1.0);
                let wd = dequantized(&w);
                let reference = matmul(&pool, Isa::Scalar, &x, &w, Some(&bias)).unwrap();
                for isa in isas() {
                    let got = matmul(&pool, isa, &x, &w, Some(&bias)).unwrap();
                    if !dtype.is_quantized() {
                        let same = got
                            .as_slice()
                            .iter()
                            .zip(reference.as_slice())
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{isa:?} differs from scalar for {dtype} rows={rows} n={n} k={k}"
                        );
                        continue;
                    }
                    // Quantized SIMD kernels keep each block's integer dot in 8 (or 16) int32
                    // lanes and scale/accumulate lanes in f32 (llama.cpp's scheme) instead of
                    // reducing every block to one exact integer first, so they differ from the
                    // scalar reference by f32 rounding only: a few ulps of the sum of the
                    // magnitudes of the per-block terms.
                    let acts = QuantActs::quantize(x.as_slice(), rows, k);
                    for r in 0..rows {
                        for c in 0..n {
                            let wr = &wd[c * k..(c + 1) * k];
                            let mag: f64 = (0..k)
                                .map(|j| {
                                    (f64::from(wr[j])
                                        * f64::from(acts.d[acts.idx(r, j / 32)])
                                        * f64::from(acts.row_qs(r)[j]))
                                    .abs()
                                })
                                .sum::<f64>()
                                + f64::from(bias[c].abs());
                            let (a, b) = (got.row(r)[c], reference.row(r)[c]);
                            assert!(
                                (f64::from(a) - f64::from(b)).abs() <= 1e-5 * mag + 1e-6,
                                "{isa:?} vs scalar for {dtype} rows={rows} n={n} k={k} ({r}, {c}): {a} vs {b}"
                            );
                        }
                    }
                }
                let acts = dtype
                    .is_quantized()
                    .then(|| QuantActs::quantize(x.as_slice(), rows, k));
                for r in 0..rows {
                    let xr = x.row(r);
                    for c in 0..n {
                        let wr = &wd[c * k..(c + 1) * k];
                        let got = f64::from(reference.row(r)[c]) - f64::from(bias[c]);
                        let exact: f64 = wr
                            .iter()
                            .zip(xr)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum();
                        let mag: f64 = wr
                            .iter()
                            .zip(xr)
                            .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                            .sum();
                        let tol = match &acts {
                            None => 1e-6 * mag + 1e-6,
                            Some(a) => {
                                // Against the same arithmetic on dequantized activations: only f32 rounding.
                                let xq: f64 = (0..k)
                                    .map(|j| {
                                        f64::from(wr[j])
                                            * f64::from(a.d[a.idx(r, j / 32)])
                                            * f64::from(a.row_qs(r)[j])
                                    })
                                    .sum();
                                let qmag: f64 = (0..k)
                                    .map(|j| {
                                        (f64::from(wr[j])
                                            * f64::from(a.d[a.idx(r, j / 32)])
                                            * f64::from(a.row_qs(r)[j]))
                                        .abs()
                                    })
                                    .sum();
                                let m_term = if dtype == WeightDType::Q4_1 {
                                    2.0f64.powi(-10) * qmag
                                } else {
                                    0.0
                                };
                                assert!(
                                    (got - xq).abs() <= 1e-5 * qmag + m_term + 1e-5,
                                    "{dtype} vs dequantized acts: {got} {xq}"
                                );
                                // Against exact activations: the 8-bit activation error bound.
                                let bound: f64 = (0..k)
                                    .map(|j| {
                                        let amax = xr[j / 32 * 32..j / 32 * 32 + 32]
                                            .iter()
                                            .fold(0.0f32, |m, v| m.max(v.abs()));
                                        f64::from(wr[j]).abs()
                                            * (0.5 * f64::from(amax) / 127.0
                                                + f64::from(xr[j]).abs() / 1024.0)
                                    })
                                    .sum();
                                1.2 * bound + m_term + 1e-5 * mag + 1e-5
                            }
                        };
                        assert!(
                            (got - exact).abs() <= tol,
                            "{dtype} rows={rows} n={n} k={k} r={r} c={c}: {got} vs {exact} (tol {tol})"
                        );
                    }
                }
            }
        }
    }
}

/// Each output is bit-identical whether its row runs alone or inside any batch, on any thread split.
#[test]
fn matmul_is_batch_invariant() {
    let mut rng = Rng::new(11);
    let (pool1, pool2) = (pool(1), pool(2));
    let cases = ALL_DTYPES.into_iter().flat_map(|dtype| {
        // Quantized: an even and an odd number of blocks (the 512-bit kernels pair blocks).
        let ks: &[usize] = if dtype.is_quantized() { &[256, 160] } else { &[250] };
        ks.iter().map(move |&k| (dtype, k))
    });
    for (dtype, k) in cases {
        let n = 300;
        let w = make_matrix(&mut rng, dtype, n, k);
        let rows = 17;
        let x = rng.vec(rows * k, 1.5);
        let full = CpuTensor::from_vec(rows, k, x.clone()).unwrap();
        for isa in isas() {
            let all = matmul(&pool2, isa, &full, &w, None).unwrap();
            for &(start, len) in &[(0, 1), (5, 1), (16, 1), (3, 3), (1, 6), (7, 10), (0, 17)] {
                let sub = CpuTensor::from_vec(len, k, x[start * k..(start + len) * k].to_vec()).unwrap();
                for p in [&pool1, &pool2] {
                    let got = matmul(p, isa, &sub, &w, None).unwrap();
                    for r in 0..len {
                        let same = got
                            .row(r)
                            .iter()
                            .zip(all.row(start + r))
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{dtype} {isa:?}: row {} differs in batch ({start}, {len})",
                            start + r
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_rejects_bad_shapes() {
    let mut rng = Rng::new(3);
    let w = make_matrix(&mut rng, WeightDType::Q4_1, 8, 64);
    let x = CpuTensor::from_vec(2, 32, vec![0.0; 64]).unwrap();
    assert!(matmul(&pool(1), Isa::Scalar, &x, &w, None).is_err());
    let x = CpuTensor::from_vec(1, 64, vec![0.0; 64]).unwrap();
    assert!(matmul(&pool(1), Isa::Scalar, &x, &w, Some(&[0.0; 3])).is_err());
    let bytes = vec![0u8; 39];
    let shape = [1, 64];
    let view = WeightView {
        name: "blk.0.attn_q.weight",
        dtype: WeightDType::Q4_1,
        shape: &shape,
        bytes: &bytes,
    };
    let err = CpuMatrix::from_view(&view)
        .err()
        .expect("short buffer rejected")
        .to_string();
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("40") && err.contains("39"),
        "{err}"
    );
    let shape = [2, 48];
    let view = WeightView {
        name: "w",
        dtype: WeightDType::Q8_0,
        shape: &shape,
        bytes: &bytes,
    };
    assert!(CpuMatrix::from_view(&view).is_err());
}
