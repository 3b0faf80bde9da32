//! Rotary position embeddings: angle `position as f32 * inv_freq[i]` in f32, cos/sin in f32
//! (the arithmetic of Hugging Face transformers).

use ember_core::RopeStyle;

/// Rotates every head of one row (`[num_heads * head_dim]`) in place at `position`.
///
/// `cos_sin` is scratch of length `2 * inv_freq.len()`.
pub fn rope_row(
    row: &mut [f32],
    num_heads: usize,
    position: u32,
    style: RopeStyle,
    inv_freq: &[f32],
    cos_sin: &mut [f32],
) {
    let half = inv_freq.len();
    let head_dim = row.len() / num_heads.max(1);
    let (cos, sin) = cos_sin.split_at_mut(half);
    for (i, &f) in inv_freq.iter().enumerate() {
        let angle = position as f32 * f;
        cos[i] = angle.cos();
        sin[i] = angle.sin();
    }
    for head in row.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;

    #[test]
    fn rope_matches_f64_rotation() {
        let mut rng = Rng::new(9);
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            for (heads, head_dim, rot) in [(1, 8, 8), (3, 64, 64), (2, 16, 8)] {
                let inv_freq: Vec<f32> = (0..rot / 2)
                    .map(|i| 10000f32.powf(-((2 * i) as f32) / rot as f32))
                    .collect();
                for pos in [0u32, 1, 17, 1000] {
                    let x = rng.vec(heads * head_dim, 1.0);
                    let mut y = x.clone();
                    let mut scratch = vec![0.0; rot];
                    rope_row(&mut y, heads, pos, style, &inv_freq, &mut scratch);
                    for h in 0..heads {
                        let base = h * head_dim;
                        for (i, &freq) in inv_freq.iter().enumerate() {
                            let (a, b) = match style {
                                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                                RopeStyle::HalfSplit => (i, i + rot / 2),
                            };
                            let ang = f64::from(pos as f32 * freq);
                            let (x0, x1) = (f64::from(x[base + a]), f64::from(x[base + b]));
                            let tol = 1e-5 * (1.0 + ang.abs() * 1e-2);
                            assert!((f64::from(y[base + a]) - (x0 * ang.cos() - x1 * ang.sin())).abs() < tol);
                            assert!((f64::from(y[base + b]) - (x0 * ang.sin() + x1 * ang.cos())).abs() < tol);
                        }
                        for j in rot..head_dim {
                            assert_eq!(y[base + j], x[base + j]);
                        }
                    }
                }
            }
        }
    }
}
