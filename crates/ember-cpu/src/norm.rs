//! RMS norm, with ggml's arithmetic: squares in f32 summed in f64, `scale = 1 / sqrt(mean + eps)`
//! in f32, then `(x * scale) * weight` (two roundings).

/// RMS-normalizes `x` (`[cols]`) into `out` (`[cols]`), scaled by `weight` (`[cols]`).
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len().max(1) as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;

    #[test]
    fn rms_norm_matches_f64() {
        let mut rng = Rng::new(5);
        for cols in [1, 3, 17, 576] {
            let x = rng.vec(cols, 3.0);
            let w = rng.vec(cols, 1.0);
            let mut out = vec![0.0; cols];
            rms_norm_row(&x, &w, 1e-5, &mut out);
            let ms: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            for j in 0..cols {
                let want = f64::from(x[j]) * inv * f64::from(w[j]);
                assert!(
                    (f64::from(out[j]) - want).abs() <= 1e-6 * (want.abs() + 1e-3),
                    "{cols} {j}"
                );
            }
        }
    }
}
