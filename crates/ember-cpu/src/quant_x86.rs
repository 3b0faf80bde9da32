//! AVX2 forms of `quant`'s activation block quantizers. Each returns exactly what the scalar
//! form returns: the block maximum is an order-free reduction, and every quant is one IEEE
//! multiply followed by round-half-to-even, as in the scalar code. Blocks with an infinite
//! maximum, and Q8_K blocks whose scale overflows, go to the scalar form, whose float-to-int
//! casts saturate differently from the SIMD conversion. The 16-sums come from the same i32
//! lanes as the stored quants, and the f16 roundings from F16C (ties to even, as `half`).

use crate::quant::{quantize_q8_0_block, quantize_q8_k_block};
use std::arch::x86_64::*;

/// `max(|x|)` over 8-float vectors, ignoring NaNs as `f32::max` does (0 when all are NaN or zero).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn abs_max(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        // SAFETY: `c` holds 8 floats.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        // `max_ps(a, b)` returns `b` when either is NaN, so NaN lanes of `v` are skipped.
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
    }
    // No lane is NaN or negative, so the order of the maxima does not matter.
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// The index of the first element of `x` whose magnitude is `amax` (`x.len()` a multiple of 8).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn first_of_magnitude(x: &[f32], amax: f32) -> Option<usize> {
    let (sign, target) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(amax));
    x.chunks_exact(8).enumerate().find_map(|(i, c)| {
        // SAFETY: `c` holds 8 floats.
        let v = _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        let hits = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, target));
        (hits != 0).then(|| 8 * i + hits.trailing_zeros() as usize)
    })
}

/// `round_half_even(x[i] * scale)` for 8 floats as i32 lanes, NaN products as 0 (the scalar
/// cast's result); the products are finite integers in `-127..=127` otherwise.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scaled_ints(x: &[f32], scale: __m256) -> __m256i {
    // SAFETY: the caller passes 8 floats.
    let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr()) }, scale);
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    _mm256_cvtps_epi32(_mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r)))
}

/// Packs 32 i32 lanes (each in i8 range) into `q[..32]` in order.
#[target_feature(enable = "avx2,fma,f16c")]
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane_sum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// [`quantize_q8_0_block`] for one 32-element block, bit for bit, with its two 16-sums.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_block(x: &[f32], q: &mut [i8], sums: &mut [i32]) -> (f32, f32) {
    debug_assert!(x.len() == 32 && q.len() == 32 && sums.len() == 2);
    // SAFETY: AVX2 is enabled in this function.
    let amax = unsafe { abs_max(x) };
    if !amax.is_finite() {
        let ds = quantize_q8_0_block(x, q);
        sums.copy_from_slice(&[sum16(&q[..16]), sum16(&q[16..])]);
        return ds;
    }
    // As in the scalar form: 0 for zero or denormal-tiny blocks.
    let id = 127.0 / amax;
    let id = if id.is_finite() { id } else { 0.0 };
    let scale = _mm256_set1_ps(id);
    // SAFETY: each slice holds 8 floats; AVX2 is enabled.
    let v: [__m256i; 4] = std::array::from_fn(|i| unsafe { scaled_ints(&x[8 * i..8 * i + 8], scale) });
    // SAFETY: as above; `q` holds 32 quants.
    unsafe {
        store_i8(q, v);
        sums[0] = lane_sum(_mm256_add_epi32(v[0], v[1]));
        sums[1] = lane_sum(_mm256_add_epi32(v[2], v[3]));
    }
    let d = amax / 127.0;
    let pair = _mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_setr_ps(
        d,
        d * (sums[0] + sums[1]) as f32,
        0.0,
        0.0,
    )));
    (_mm_cvtss_f32(pair), _mm_cvtss_f32(_mm_movehdup_ps(pair)))
}

/// The sum of 16 quants (the scalar fallbacks' 16-sums).
fn sum16(q: &[i8]) -> i32 {
    q.iter().map(|&v| i32::from(v)).sum()
}

/// [`quantize_q8_k_block`] for one 256-element block, bit for bit, with its 16 16-sums.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_k_block(x: &[f32], q: &mut [i8], sums: &mut [i32]) -> f32 {
    debug_assert!(x.len() == 256 && q.len() == 256 && sums.len() == 16);
    let scalar = |q: &mut [i8], sums: &mut [i32]| {
        let d = quantize_q8_k_block(x, q);
        for (sum, q16) in sums.iter_mut().zip(q.chunks_exact(16)) {
            *sum = sum16(q16);
        }
        d
    };
    // SAFETY: AVX2 is enabled in this function.
    let amax = unsafe { abs_max(x) };
    // The first element of largest magnitude sets the sign, as in the scalar form.
    // SAFETY: as above; 256 is a multiple of 8.
    let Some(first) = (unsafe { first_of_magnitude(x, amax) }) else {
        return scalar(q, sums);
    };
    let iscale = -127.0 / x[first];
    if amax == 0.0 || !amax.is_finite() || !iscale.is_finite() {
        return scalar(q, sums);
    }
    let scale = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    for ((xb, qb), pair) in x
        .chunks_exact(32)
        .zip(q.chunks_exact_mut(32))
        .zip(sums.chunks_exact_mut(2))
    {
        // SAFETY: each slice holds 8 floats; AVX2 is enabled.
        let v: [__m256i; 4] = std::array::from_fn(|i| unsafe {
            _mm256_min_epi32(scaled_ints(&xb[8 * i..8 * i + 8], scale), top)
        });
        // SAFETY: `qb` holds 32 quants.
        unsafe {
            store_i8(qb, v);
            pair[0] = lane_sum(_mm256_add_epi32(v[0], v[1]));
            pair[1] = lane_sum(_mm256_add_epi32(v[2], v[3]));
        }
    }
    1.0 / iscale
}
