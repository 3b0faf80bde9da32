//! The ops newer model families add (per-head norms: `rms_norm` with a head-wide weight), against f64 references.

use crate::test_util::Rng;
use crate::{CpuBackend, CpuTensor};
use ember_core::{Backend, StepBatch};

#[test]
fn rms_norm_normalizes_each_weight_wide_group_alone() {
    let backend = CpuBackend::new(Some(2));
    let mut rng = Rng::new(9);
    let step = StepBatch::default();
    for (rows, num_heads, head_dim) in [(1, 1, 8), (3, 4, 16), (300, 2, 64)] {
        let x = CpuTensor::from_vec(
            rows,
            num_heads * head_dim,
            rng.vec(rows * num_heads * head_dim, 3.0),
        )
        .unwrap();
        let weight = rng.vec(head_dim, 1.0);
        let out = backend.rms_norm(&step, &x, &weight, 1e-6).unwrap();
        for r in 0..rows {
            for (h, head) in x.row(r).chunks_exact(head_dim).enumerate() {
                let ms = head.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / head_dim as f64;
                let inv = 1.0 / (ms + 1e-6).sqrt();
                for (j, &v) in head.iter().enumerate() {
                    let want = f64::from(v) * inv * f64::from(weight[j]);
                    let got = f64::from(out.row(r)[h * head_dim + j]);
                    assert!(
                        (got - want).abs() <= 1e-6 * (want.abs() + 1e-3),
                        "{rows}x{num_heads} {r} {h} {j}"
                    );
                }
            }
        }
    }
    let x = CpuTensor::from_vec(1, 12, vec![1.0; 12]).unwrap();
    let err = backend
        .rms_norm(&step, &x, &vec![1.0; 5], 1e-6)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not whole groups of the weight's 5"), "{err}");
}
