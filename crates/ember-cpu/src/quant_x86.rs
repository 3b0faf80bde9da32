//! AVX2 forms of `quant`'s activation block quantizers. Each returns exactly what the scalar
//! form returns: the block maximum is an order-free reduction, and every quant is one IEEE
//! multiply followed by round-half-to-even, as in the scalar code. Blocks with an infinite
//! maximum, and Q8_K blocks whose scale overflows, go to the scalar form, whose float-to-int
//! casts saturate differently from the SIMD conversion.

use crate::quant::{quantize_q8_0_block, quantize_q8_k_block, round_to_f16};
use std::arch::x86_64::*;

/// `max(|x|)` over 8-float vectors, ignoring NaNs as `f32::max` does (0 when all are NaN or zero).
#[target_feature(enable = "avx2,fma")]
unsafe fn abs_max(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        // SAFETY: `c` holds 8 floats.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        // `max_ps(a, b)` returns `b` when either is NaN, so NaN lanes of `v` are skipped.
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    lanes.iter().fold(0.0f32, |a, &b| a.max(b))
}

/// `round_half_even(x[i] * scale)` for 8 floats as i32 lanes, NaN products as 0 (the scalar
/// cast's result); the products are finite integers in `-127..=127` otherwise.
#[target_feature(enable = "avx2,fma")]
unsafe fn scaled_ints(x: &[f32], scale: __m256) -> __m256i {
    // SAFETY: the caller passes 8 floats.
    let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr()) }, scale);
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    _mm256_cvtps_epi32(_mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r)))
}

/// Packs 32 i32 lanes (each in i8 range) into `q[..32]` in order.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_i8(q: &mut [i8], v: [__m256i; 4]) {
    let lo = _mm256_packs_epi32(v[0], v[1]);
    let hi = _mm256_packs_epi32(v[2], v[3]);
    let packed = _mm256_packs_epi16(lo, hi);
    // The packs interleave 128-bit lanes; restore element order.
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: the caller passes 32 quants.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), ordered) };
}

/// Sum of the 8 i32 lanes of `v`.
#[target_feature(enable = "avx2,fma")]
unsafe fn lane_sum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// [`quantize_q8_0_block`] for one 32-element block, bit for bit.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_0_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    debug_assert!(x.len() == 32 && q.len() == 32);
    // SAFETY: AVX2 is enabled in this function.
    let amax = unsafe { abs_max(x) };
    if !amax.is_finite() {
        return quantize_q8_0_block(x, q);
    }
    // As in the scalar form: 0 for zero or denormal-tiny blocks.
    let id = 127.0 / amax;
    let id = if id.is_finite() { id } else { 0.0 };
    let scale = _mm256_set1_ps(id);
    // SAFETY: each slice holds 8 floats; AVX2 is enabled.
    let v = std::array::from_fn(|i| unsafe { scaled_ints(&x[8 * i..8 * i + 8], scale) });
    // SAFETY: as above; `q` holds 32 quants.
    let sum = unsafe {
        store_i8(q, v);
        lane_sum(_mm256_add_epi32(
            _mm256_add_epi32(v[0], v[1]),
            _mm256_add_epi32(v[2], v[3]),
        ))
    };
    let d = amax / 127.0;
    (round_to_f16(d), round_to_f16(d * sum as f32))
}

/// [`quantize_q8_k_block`] for one 256-element block, bit for bit.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_k_block(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert!(x.len() == 256 && q.len() == 256);
    // SAFETY: AVX2 is enabled in this function.
    let amax = unsafe { abs_max(x) };
    // The first element of largest magnitude sets the sign, as in the scalar form.
    let Some(&max) = x.iter().find(|v| v.abs() == amax) else {
        return quantize_q8_k_block(x, q);
    };
    let iscale = -127.0 / max;
    if amax == 0.0 || !amax.is_finite() || !iscale.is_finite() {
        return quantize_q8_k_block(x, q);
    }
    let scale = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    for (xb, qb) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)) {
        // SAFETY: each slice holds 8 floats; AVX2 is enabled.
        let v = std::array::from_fn(|i| unsafe {
            _mm256_min_epi32(scaled_ints(&xb[8 * i..8 * i + 8], scale), top)
        });
        // SAFETY: `qb` holds 32 quants.
        unsafe { store_i8(qb, v) };
    }
    1.0 / iscale
}
