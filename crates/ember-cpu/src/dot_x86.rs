//! x86-64 AVX2 tiles for float weights (F32 / F16 / BF16): `R` activation rows x `C` weight
//! rows. Each output accumulates in its own f32 lanes in `dot_scalar`'s order and is
//! bit-identical to the scalar reference. (Quantized weights use the
//! repacked tiles of `packed_tile` / `packed_x86`.)

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

/// Float-weight tag: f32.
pub const DT_F32: u8 = 0;
/// Float-weight tag: f16.
pub const DT_F16: u8 = 1;
/// Float-weight tag: bf16.
pub const DT_BF16: u8 = 2;

/// The weight dtype of a float tag.
pub fn dt_of(dt: u8) -> ember_core::WeightDType {
    match dt {
        DT_F32 => ember_core::WeightDType::F32,
        DT_F16 => ember_core::WeightDType::F16,
        _ => ember_core::WeightDType::BF16,
    }
}

/// Loads 8 float weights starting at element `k0` of a row encoded as `DT`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn load_w<const DT: u8>(p: *const u8, k0: usize) -> __m256 {
    // SAFETY: the caller guarantees 8 elements from `k0` are in bounds.
    unsafe {
        match DT {
            DT_F32 => _mm256_loadu_ps(p.add(4 * k0).cast()),
            DT_F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * k0).cast())),
            _ => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * k0).cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            }
        }
    }
}

/// Fixed-order horizontal sum (see `dot_scalar::hsum8`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub fn hsum(v: __m256) -> f32 {
    let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)))
}

/// Float tile: weight rows `w[c]` encoded as `DT` against f32 rows `x[r]` (all the
/// same length); returns the 8 outputs in lane order.
///
/// # Safety
/// The CPU supports this module's features.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn float_tile<const R: usize, const C: usize, const DT: u8>(
    w: &[&[u8]; C],
    x: &[&[f32]; R],
) -> [f32; 8] {
    const { assert!(R * C == 8) };
    let kdim = x[0].len();
    let elem_bytes = if DT == DT_F32 { 4 } else { 2 };
    for xr in x {
        assert_eq!(xr.len(), kdim);
    }
    for wc in w {
        assert!(wc.len() >= kdim * elem_bytes);
    }
    let full = kdim / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 8];
    for k0 in (0..full).step_by(8) {
        let mut wv = [_mm256_setzero_ps(); C];
        for c in 0..C {
            // SAFETY: `k0 + 8 <= kdim` and each row holds `kdim` elements (asserted).
            wv[c] = unsafe { load_w::<DT>(w[c].as_ptr(), k0) };
        }
        for r in 0..R {
            // SAFETY: `k0 + 8 <= kdim == x[r].len()`.
            let xv = unsafe { _mm256_loadu_ps(x[r].as_ptr().add(k0)) };
            for c in 0..C {
                acc[c * R + r] = _mm256_fmadd_ps(wv[c], xv, acc[c * R + r]);
            }
        }
    }
    let dtype = dt_of(DT);
    let mut out = [0.0f32; 8];
    for c in 0..C {
        for r in 0..R {
            let mut s = hsum(acc[c * R + r]);
            for k in full..kdim {
                s = crate::dot_scalar::float_elem(dtype, w[c], k).mul_add(x[r][k], s);
            }
            out[c * R + r] = s;
        }
    }
    out
}
