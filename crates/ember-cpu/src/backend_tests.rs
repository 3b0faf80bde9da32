//! Unit tests of [`crate::backend::CpuBackend`]'s trait ops: embedding, vectors and
//! elementwise ops, row gathers, KV cache writes and element types.

use crate::backend::CpuBackend;
use crate::blocks;
use crate::tensor::CpuTensor;
use crate::test_util::{random_weight_bytes, Rng};
use ember_core::WeightDType;
use ember_core::{Backend, BackendError, KvCacheSpec, StepBatch, WeightView};

/// A step with only the given input ids, logits rows and slots set.
fn step(input_ids: &[u32], logits_indices: &[u32], slot_mapping: &[u32]) -> StepBatch {
    StepBatch {
        input_ids: input_ids.to_vec(),
        logits_indices: logits_indices.to_vec(),
        slot_mapping: slot_mapping.to_vec(),
        ..StepBatch::default()
    }
}

#[test]
fn embed_dequantizes_rows_of_every_dtype() {
    let backend = CpuBackend::new(Some(1));
    let mut rng = Rng::new(1);
    for dtype in WeightDType::ALL {
        let cols = dtype.block_len().max(64);
        let bytes = random_weight_bytes(&mut rng, dtype, 5, cols);
        let shape = [5, cols];
        let table = backend
            .load_matrix(&WeightView {
                name: "emb",
                dtype,
                shape: &shape,
                bytes: &bytes,
            })
            .unwrap();
        let out = backend.embed(&step(&[3, 0, 3], &[], &[]), &table).unwrap();
        let row_bytes = bytes.len() / 5;
        let mut want = vec![0.0; cols];
        blocks::dequantize_row(dtype, &bytes[3 * row_bytes..4 * row_bytes], &mut want);
        assert_eq!(out.row(0), &want[..]);
        assert_eq!(out.row(2), &want[..]);
        assert!(backend.embed(&step(&[5], &[], &[]), &table).is_err());
    }
}

#[test]
fn vectors_elementwise_and_gather() {
    let backend = CpuBackend::new(Some(2));
    let bytes: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = backend
        .load_vector(&WeightView {
            name: "norm",
            dtype: WeightDType::F32,
            shape: &[3],
            bytes: &bytes,
        })
        .unwrap();
    assert_eq!(v, vec![1.0, 2.0, 3.0]);
    let short = WeightView {
        name: "norm",
        dtype: WeightDType::F32,
        shape: &[4],
        bytes: &bytes,
    };
    assert!(backend
        .load_vector(&short)
        .err()
        .unwrap()
        .to_string()
        .contains("norm"));
    let mut residual = CpuTensor::from_vec(2, 3, vec![1.0, 1.0, 1.0, 0.0, 0.0, 2.0]).unwrap();
    let x = CpuTensor::from_vec(2, 3, vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
    let normed = backend
        .add_rms_norm(&step(&[], &[], &[]), &mut residual, &x, &v, 0.0)
        .unwrap();
    assert_eq!(residual.row(0), &[2.0, 2.0, 2.0]);
    assert_eq!(normed.row(0), &[1.0, 2.0, 3.0]);
    let g = backend
        .logits_rows(&step(&[], &[1, 1, 0], &[]), &residual)
        .unwrap();
    assert_eq!(g.row(0), residual.row(1));
    assert!(backend.logits_rows(&step(&[], &[2], &[]), &residual).is_err());
    assert!(backend.silu_mul(&step(&[], &[], &[]), &x, &g).is_err());
    assert_eq!(backend.to_host(&x).unwrap(), x.as_slice());
}

#[test]
fn kv_cache_allocation_and_writes_are_checked() {
    let backend = CpuBackend::new(Some(1));
    let huge = KvCacheSpec {
        num_layers: 1,
        num_blocks: usize::MAX / 8,
        block_size: 16,
        num_kv_heads: 1,
        head_dim: 64,
    };
    assert!(matches!(
        backend.allocate_kv_cache(&huge),
        Err(BackendError::OutOfMemory { .. })
    ));
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: 2,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 2,
    };
    let mut cache = backend.allocate_kv_cache(&spec).unwrap();
    let k = CpuTensor::from_vec(1, 2, vec![1.0, 2.0]).unwrap();
    backend
        .write_kv(&step(&[], &[], &[5]), &mut cache, 0, &k, &k)
        .unwrap();
    assert_eq!(&cache.keys(0)[10..12], &[1.0, 2.0]);
    assert!(backend
        .write_kv(&step(&[], &[], &[8]), &mut cache, 0, &k, &k)
        .is_err());
    assert!(backend
        .write_kv(&step(&[], &[], &[0]), &mut cache, 1, &k, &k)
        .is_err());
    let half = CpuBackend::new(Some(1))
        .with_kv_cache_dtype(WeightDType::BF16)
        .unwrap();
    assert_eq!(half.kv_cache_dtype(), WeightDType::BF16);
    let mut cache = half.allocate_kv_cache(&spec).unwrap();
    let k = CpuTensor::from_vec(1, 2, vec![1.0 + 1.0 / 256.0, -3.0]).unwrap();
    half.write_kv(&step(&[], &[], &[1]), &mut cache, 0, &k, &k)
        .unwrap();
    assert_eq!(
        &cache.values(0)[2..4],
        &[1.0, -3.0],
        "rounded to bf16, ties to even"
    );
    assert!(half.with_kv_cache_dtype(WeightDType::Q4_0).is_err());
    let int8 = CpuBackend::new(Some(1))
        .with_kv_cache_dtype(WeightDType::Q8_0)
        .unwrap();
    let err = int8.allocate_kv_cache(&spec).err().unwrap().to_string();
    assert!(err.contains("head_dim 2 is not a multiple of 32"), "{err}");
}

/// Ops whose outputs take recycled buffers (`recycle`) write every element: with the thread's
/// kept buffers all NaN, rms_norm, silu_mul, gelu_tanh_mul and a quantized matmul (Q4_1, Q6_K)
/// give the same bits as with fresh zeroed buffers.
#[test]
fn recycled_buffers_never_reach_results() {
    let backend = CpuBackend::new(Some(1));
    let mut rng = Rng::new(9);
    let (rows, cols, n) = (3, 256, 40);
    let x = CpuTensor::from_vec(rows, cols, rng.vec(rows * cols, 2.0)).unwrap();
    let up = CpuTensor::from_vec(rows, cols, rng.vec(rows * cols, 2.0)).unwrap();
    let weight = rng.vec(cols, 1.0);
    let matrices: Vec<_> = [WeightDType::Q4_1, WeightDType::Q6_K]
        .into_iter()
        .map(|dtype| {
            let bytes = random_weight_bytes(&mut rng, dtype, n, cols);
            let view = WeightView {
                name: "w",
                dtype,
                shape: &[n, cols],
                bytes: &bytes,
            };
            backend.load_matrix(&view).unwrap()
        })
        .collect();
    let s = step(&[0; 3], &[], &[]);
    let run = || {
        let mut outs = vec![
            backend.rms_norm(&s, &x, &weight, 1e-5).unwrap(),
            backend.silu_mul(&s, &x, &up).unwrap(),
            backend.gelu_tanh_mul(&s, &x, &up).unwrap(),
        ];
        outs.extend(matrices.iter().map(|w| backend.matmul(&s, &x, w, None).unwrap()));
        outs.into_iter().map(CpuTensor::into_vec).collect::<Vec<_>>()
    };
    let fresh = run();
    for _ in 0..4 {
        crate::recycle::give_back(vec![f32::NAN; rows * cols]);
        crate::recycle::give_back(vec![f32::NAN; rows * n]);
    }
    let recycled = run();
    let bits = |v: &[Vec<f32>]| v.iter().flatten().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(fresh.iter().flatten().all(|v| v.is_finite()));
    assert_eq!(bits(&recycled), bits(&fresh));
}
