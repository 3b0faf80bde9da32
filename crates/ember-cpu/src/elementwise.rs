//! Elementwise activations.
//!
//! SiLU's exponential is a polynomial of fixed operation order (below), computed by the same
//! IEEE operations in the scalar form and in 8-wide AVX2 vectors: the two agree bit for bit, so
//! results do not depend on the instruction set (and a row's values not on the batch).

use crate::matmul::Isa;

/// `exp(x)` is evaluated for `x` clamped to this range (finite, normal results).
const EXP_LO: f32 = -87.0;
/// Upper end of the clamp.
const EXP_HI: f32 = 88.0;
/// `log2(e)`.
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln(2)` split in two: a head exact in few bits, so `n * LN2_HI` is exact, and the rest.
const LN2_HI: f32 = 0.693_359_4;
/// The rest of `ln(2)`.
const LN2_LO: f32 = -2.121_944_4e-4;
/// Coefficients of `(exp(r) - 1 - r) / r^2` on `|r| <= ln(2) / 2`, highest degree first
/// (the classic Cephes `expf` fit).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `exp(x)` within a few ulp for `x` in `EXP_LO..=EXP_HI` (clamped there; NaN gives
/// `exp(EXP_LO)`): `2^n * (1 + r + r^2 p(r))` with `n = round(x log2 e)`.
#[inline(always)]
fn exp_clamped(x: f32) -> f32 {
    // Not `clamp`, which keeps NaN: `max` maps it to `EXP_LO`, as the vector form does.
    #[allow(clippy::manual_clamp)]
    let x = x.max(EXP_LO).min(EXP_HI);
    let n = (x * LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p.mul_add(r, c));
    let e = p.mul_add(r * r, r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `silu(g) * u` per element: `g / (1 + exp(-g)) * u` (the exponential as in the module docs).
pub fn silu_mul(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: these families are only chosen on CPUs with AVX2 and FMA.
        return unsafe { silu_mul_avx2(gate, up, out) };
    }
    let _ = isa;
    silu_mul_scalar(gate, up, out);
}

/// [`silu_mul`] one element at a time.
fn silu_mul_scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_clamped(-g)) * u;
    }
}

/// [`silu_mul`] 8 elements at a time (the tail one at a time), bit for bit the scalar form.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = out.len().min(gate.len()).min(up.len());
    let body = len - len % 8;
    let splat = _mm256_set1_ps;
    for i in (0..body).step_by(8) {
        // SAFETY: `i + 8 <= len` for all three slices.
        let (g, u) = unsafe {
            (
                _mm256_loadu_ps(gate.as_ptr().add(i)),
                _mm256_loadu_ps(up.as_ptr().add(i)),
            )
        };
        let x = _mm256_xor_ps(g, splat(-0.0));
        // max/min return their second operand for a NaN first one, as f32::max/min do.
        let x = _mm256_min_ps(_mm256_max_ps(x, splat(EXP_LO)), splat(EXP_HI));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            splat(LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, splat(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, splat(LN2_LO), r);
        let mut p = splat(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, splat(c));
        }
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), splat(1.0));
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        let ex = _mm256_mul_ps(e, _mm256_castsi256_ps(pow2));
        let o = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(splat(1.0), ex)), u);
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), o) };
    }
    silu_mul_scalar(&gate[body..len], &up[body..len], &mut out[body..len]);
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
    use crate::matmul::Isa;

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
        super::silu_mul(Isa::Scalar, &g, &u, &mut out);
        for i in 0..6 {
            let (gd, ud) = (f64::from(g[i]), f64::from(u[i]));
            let want = gd / (1.0 + (-gd).exp()) * ud;
            assert!((f64::from(out[i]) - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
    }

    /// The exponential within 2 ulp of f64's over its whole clamp range, and SiLU on every
    /// instruction set bit for bit the scalar form: a sweep of magnitudes, rounding-boundary
    /// inputs, the clamp's ends and beyond, infinities, NaN, and lengths with every tail.
    #[test]
    fn silu_is_accurate_and_equal_on_every_isa() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            let got = f64::from(super::exp_clamped(x));
            let want = f64::from(x).exp();
            assert!(
                (got - want).abs() <= 2.0 * f64::from(f32::EPSILON) * want,
                "exp({x}): {got} vs {want}"
            );
            x += 0.0137;
        }
        let mut rng = crate::test_util::Rng::new(5);
        let mut g: Vec<f32> = (0..1000)
            .map(|i| rng.f32() * [1.0, 8.0, 40.0, 200.0][i % 4])
            .collect();
        g.extend([
            0.0,
            -0.0,
            87.0,
            -87.0,
            88.0,
            -88.0,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        g.extend((0..64).map(|i| (i as f32 - 32.0) * std::f32::consts::LN_2 / 2.0));
        let u: Vec<f32> = (0..g.len()).map(|_| rng.f32() * 3.0).collect();
        for len in [g.len(), 1, 7, 9, 15, 17] {
            let mut want = vec![0.0; len];
            super::silu_mul(Isa::Scalar, &g[..len], &u[..len], &mut want);
            for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
                let mut got = vec![0.0; len];
                super::silu_mul(isa, &g[..len], &u[..len], &mut got);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{isa:?} len {len}");
            }
            for i in 0..len {
                let (gd, ud) = (f64::from(g[i]), f64::from(u[i]));
                let exact = gd / (1.0 + (-gd).exp()) * ud;
                let got = f64::from(want[i]);
                // Infinite gates: -inf * 0 is NaN in f64; the clamped exponential keeps the sign.
                let ok = match gd {
                    _ if gd.is_nan() => got.is_nan(),
                    _ if gd.is_infinite() => got == gd * ud,
                    _ => (got - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                };
                assert!(ok, "silu({gd}) * {ud}: {got} vs {exact}");
            }
        }
    }
}
