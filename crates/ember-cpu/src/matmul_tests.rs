//! Matmul kernels against f64 references, the repacked SIMD kernels against the scalar
//! reference on the unpacked GGUF rows (bit for bit), and batch invariance.

use crate::dot_scalar::quant_dot;
use crate::matmul::{matmul, Isa};
use crate::matrix::CpuMatrix;
use crate::quant::QuantActs;
use crate::tensor::CpuTensor;
use crate::test_util::{random_weight_bytes, Rng};
use ember_core::{WeightDType, WeightView};

pub(crate) fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

pub(crate) fn make_matrix(bytes: &[u8], dtype: WeightDType, n: usize, k: usize) -> CpuMatrix {
    let shape = [n, k];
    CpuMatrix::from_view(&WeightView {
        name: "w",
        dtype,
        shape: &shape,
        bytes,
    })
    .expect("valid matrix")
}

pub(crate) fn isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
}

pub(crate) fn dequantized(w: &CpuMatrix) -> Vec<f32> {
    let mut out = vec![0.0; w.rows() * w.cols()];
    for (r, row) in out.chunks_exact_mut(w.cols()).enumerate() {
        w.dequantize_row_into(r, row);
    }
    out
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The activation block length a weight format pairs with (Q8_K for K-quants, else Q8_0).
pub(crate) fn act_block(dtype: WeightDType) -> usize {
    dtype.block_len().max(32)
}

/// Every kernel family equals the scalar reference on the unpacked GGUF rows, bit for bit:
/// every format, row counts that are not multiples of 16, every tile height.
#[test]
fn repacked_kernels_equal_the_unpacked_reference() {
    let mut rng = Rng::new(3);
    let pool = pool(2);
    for dtype in WeightDType::ALL.into_iter().filter(|t| t.is_quantized()) {
        let k = 2 * act_block(dtype);
        let n = 37;
        let bytes = random_weight_bytes(&mut rng, dtype, n, k);
        let row_bytes = bytes.len() / n;
        let w = make_matrix(&bytes, dtype, n, k);
        for rows in [1, 2, 3, 4, 6, 7, 8, 9, 12, 14, 16] {
            let x = CpuTensor::from_vec(rows, k, rng.vec(rows * k, 2.0)).unwrap();
            let acts = QuantActs::quantize(x.as_slice(), rows, k, act_block(dtype));
            let want: Vec<f32> = (0..rows * n)
                .map(|i| quant_dot(dtype, &bytes[i % n * row_bytes..][..row_bytes], &acts, i / n))
                .collect();
            for isa in isas() {
                let got = matmul(&pool, isa, &x, &w, None).unwrap();
                assert!(
                    bits_equal(got.as_slice(), &want),
                    "{dtype} {isa:?} rows={rows}: {:?} vs {:?}",
                    &got.as_slice()[..4],
                    &want[..4]
                );
            }
        }
    }
}

/// Checks the scalar reference against f64 references over odd sizes and every dtype: float
/// weights to f32 rounding, quantized ones to the 8-bit activation error, and SIMD families
/// bit for bit against the scalar one.
#[test]
fn matmul_matches_f64_reference_all_dtypes() {
    let mut rng = Rng::new(7);
    let pool = pool(2);
    for dtype in WeightDType::ALL {
        let ks: Vec<usize> = if dtype.is_quantized() {
            vec![act_block(dtype), 3 * act_block(dtype)]
        } else {
            vec![1, 7, 37, 71]
        };
        for k in ks {
            for &(rows, n) in &[(1, 1), (3, 13), (17, 37), (5, 9)] {
                let bytes = random_weight_bytes(&mut rng, dtype, n, k);
                let w = make_matrix(&bytes, dtype, n, k);
                let x = CpuTensor::from_vec(rows, k, rng.vec(rows * k, 2.0)).unwrap();
                let bias = rng.vec(n, 1.0);
                let wd = dequantized(&w);
                let reference = matmul(&pool, Isa::Scalar, &x, &w, Some(&bias)).unwrap();
                for isa in isas() {
                    let got = matmul(&pool, isa, &x, &w, Some(&bias)).unwrap();
                    assert!(
                        bits_equal(got.as_slice(), reference.as_slice()),
                        "{isa:?} differs from scalar for {dtype} rows={rows} n={n} k={k}"
                    );
                }
                let acts = dtype
                    .is_quantized()
                    .then(|| QuantActs::quantize(x.as_slice(), rows, k, act_block(dtype)));
                for r in 0..rows {
                    let xr = x.row(r);
                    // The activations the kernels see: exact, or dequantized 8-bit values.
                    let xs: Vec<f64> = match &acts {
                        None => xr.iter().map(|&v| f64::from(v)).collect(),
                        Some(a) => (0..k)
                            .map(|j| f64::from(a.block_d(r, j / a.block_len)) * f64::from(a.row_qs(r)[j]))
                            .collect(),
                    };
                    for c in 0..n {
                        let wr = &wd[c * k..(c + 1) * k];
                        let got = f64::from(reference.row(r)[c]) - f64::from(bias[c]);
                        let dot = |v: &[f64]| -> (f64, f64) {
                            let terms = wr.iter().zip(v).map(|(&a, &b)| f64::from(a) * b);
                            (terms.clone().sum(), terms.map(f64::abs).sum())
                        };
                        let (want, mag) = dot(&xs);
                        // Q4_1 / Q5_1 use Q8_1's `s = f16(d * sum(q))`: about an f16 ulp per block.
                        let s_term = block_min_term(dtype, &bytes, n, c, acts.as_ref(), r);
                        // f32 rounding of the block scales, the sub-block products and the
                        // accumulation (and of dequantizing the weights for the reference).
                        assert!(
                            (got - want).abs()
                                <= 2e-5 * mag + s_term + 1e-5 + 1e-6 * f64::from(bias[c].abs()),
                            "{dtype} rows={rows} n={n} k={k} r={r} c={c}: {got} vs {want}"
                        );
                        if let Some(a) = &acts {
                            // Against exact activations: the 8-bit activation error bound.
                            let exact: Vec<f64> = xr.iter().map(|&v| f64::from(v)).collect();
                            let (want, mag) = dot(&exact);
                            let bound: f64 = (0..k)
                                .map(|j| {
                                    f64::from(wr[j]).abs()
                                        * 0.5
                                        * f64::from(a.block_d(r, j / a.block_len)).abs()
                                })
                                .sum();
                            assert!(
                                (got - want).abs() <= 1.01 * bound + s_term + 2e-5 * mag + 1e-5,
                                "{dtype} vs exact activations: {got} vs {want} (bound {bound})"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The rounding allowance of Q8_1's f16 `s` in the dot of weight row `c` with activation row
/// `r`: `sum_b |m_b| * |d_x sum(q)| * 2^-10` (`s` is rounded from the unrounded `d_x`; 0 for
/// formats without a block min).
fn block_min_term(
    dtype: WeightDType,
    bytes: &[u8],
    n: usize,
    c: usize,
    acts: Option<&QuantActs>,
    r: usize,
) -> f64 {
    let (Some(a), true) = (acts, matches!(dtype, WeightDType::Q4_1 | WeightDType::Q5_1)) else {
        return 0.0;
    };
    let row = &bytes[c * bytes.len() / n..(c + 1) * bytes.len() / n];
    let mut blk = crate::blocks::Block::default();
    row.chunks_exact(dtype.block_bytes())
        .enumerate()
        .map(|(b, raw)| {
            crate::blocks::decode_block(dtype, raw, &mut blk);
            let sum_q: i32 = a.row_qs(r)[32 * b..32 * b + 32]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            f64::from(blk.m.abs()) * (f64::from(a.block_d(r, b)) * f64::from(sum_q)).abs() * 2f64.powi(-10)
        })
        .sum()
}

/// Each output is bit-identical whether its row runs alone or inside any batch, on any thread split.
#[test]
fn matmul_is_batch_invariant() {
    let mut rng = Rng::new(11);
    let (pool1, pool2) = (pool(1), pool(2));
    let cases = WeightDType::ALL.into_iter().flat_map(|dtype| {
        let ks: Vec<usize> = if dtype.is_quantized() {
            vec![act_block(dtype), 5 * act_block(dtype)]
        } else {
            vec![250]
        };
        ks.into_iter().map(move |k| (dtype, k))
    });
    for (dtype, k) in cases {
        let n = 300;
        let bytes = random_weight_bytes(&mut rng, dtype, n, k);
        let w = make_matrix(&bytes, dtype, n, k);
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
                        assert!(
                            bits_equal(got.row(r), all.row(start + r)),
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
    let bytes = random_weight_bytes(&mut rng, WeightDType::Q4_1, 8, 64);
    let w = make_matrix(&bytes, WeightDType::Q4_1, 8, 64);
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
    // A K-quant row must hold whole 256-element super-blocks.
    let shape = [1, 576];
    let bytes = vec![0u8; 2 * 144];
    let view = WeightView {
        name: "blk.0.ffn_up.weight",
        dtype: WeightDType::Q4_K,
        shape: &shape,
        bytes: &bytes,
    };
    let err = CpuMatrix::from_view(&view)
        .err()
        .expect("partial super-block")
        .to_string();
    assert!(err.contains("256") && err.contains("576"), "{err}");
}

/// Skinny f32 weights (a LoRA `lora_B`, `k` = the rank): every row equals that row alone, bit
/// for bit, with and without a bias, and matches an f64 reference.
#[test]
fn skinny_f32_rows_do_not_depend_on_the_batch() {
    let mut rng = Rng::new(11);
    let pool = pool(2);
    for k in [1, 16, 32] {
        let n = 45;
        let values = rng.vec(n * k, 1.0);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let w = make_matrix(&bytes, WeightDType::F32, n, k);
        let bias = rng.vec(n, 1.0);
        let x = CpuTensor::from_vec(9, k, rng.vec(9 * k, 2.0)).unwrap();
        for b in [None, Some(bias.as_slice())] {
            let all = matmul(&pool, Isa::detect(), &x, &w, b).unwrap();
            for r in 0..9 {
                let row = CpuTensor::from_vec(1, k, x.as_slice()[r * k..(r + 1) * k].to_vec()).unwrap();
                let alone = matmul(&pool, Isa::detect(), &row, &w, b).unwrap();
                assert!(bits_equal(alone.as_slice(), &all.as_slice()[r * n..(r + 1) * n]));
                for o in 0..n {
                    let want: f64 = (0..k)
                        .map(|j| f64::from(x.as_slice()[r * k + j]) * f64::from(values[o * k + j]))
                        .sum::<f64>()
                        + b.map_or(0.0, |b| f64::from(b[o]));
                    assert!(
                        (f64::from(all.as_slice()[r * n + o]) - want).abs() < 1e-4,
                        "k={k} r={r} o={o}"
                    );
                }
            }
        }
    }
}
