//! Elementwise activations.

/// `silu(g) * u` per element: `g / (1 + exp(-g)) * u`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn silu_mul_matches_f64() {
        let g = [-20.0f32, -1.5, 0.0, 0.3, 4.0, 30.0];
        let u = [1.0f32, 2.0, 3.0, -1.0, 0.5, 1.0];
        let mut out = [0.0; 6];
        super::silu_mul(&g, &u, &mut out);
        for i in 0..6 {
            let (gd, ud) = (f64::from(g[i]), f64::from(u[i]));
            let want = gd / (1.0 + (-gd).exp()) * ud;
            assert!((f64::from(out[i]) - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
    }
}
