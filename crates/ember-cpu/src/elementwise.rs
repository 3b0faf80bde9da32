//! Elementwise activations.

/// `silu(g) * u` per element: `g / (1 + exp(-g)) * u`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `gelu_tanh(g) * u` per element: `0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))) * u`.
pub fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let inner = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
        *o = 0.5 * g * (1.0 + inner.tanh()) * u;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gelu_tanh_mul_matches_f64() {
        let g = [-20.0f32, -3.0, -0.5, 0.0, 0.3, 2.0, 9.0];
        let u = [1.0f32, 2.0, 3.0, -1.0, 0.5, 1.0, -2.0];
        let mut out = [0.0; 7];
        super::gelu_tanh_mul(&g, &u, &mut out);
        for i in 0..7 {
            let (gd, ud) = (f64::from(g[i]), f64::from(u[i]));
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (gd + 0.044715 * gd.powi(3));
            let want = 0.5 * gd * (1.0 + inner.tanh()) * ud;
            assert!(
                (f64::from(out[i]) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{i}"
            );
        }
    }

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
