//! The two inner loops of paged attention over a KV cache of f32, f16, bf16 or Q8_0 elements, for
//! the query heads that share one KV head: scores `q . k_j * scale` over the context, and the
//! probability-weighted sum of the value rows.
//!
//! Arithmetic (every kernel family, bit for bit): a dot product keeps 8 lanes, lane `l` takes
//! elements `8 i + l` with `lane += q * k` (a multiply, then an add: two roundings), then the
//! fixed horizontal sum `dot_scalar::hsum8`, then the tail elements one by one; the weighted
//! sum adds `p_j * v_j` element by element in context order. Cache elements widen exactly
//! (a Q8_0 element to `q * d`, exact in f32), in place: no dequantized copy of the context.

use crate::dot_scalar::{float_elem, hsum8};
use crate::kv_cache::elem_byte;
use crate::matmul::Isa;
use crate::quant::{f16_to_f32, read_u16};
use ember_core::WeightDType;

/// Where one KV head's context rows live in a layer's K or V bytes.
pub struct KvRows<'a> {
    /// The layer's elements (`dtype`), little-endian bytes.
    pub bytes: &'a [u8],
    /// Element encoding (F32, F16, BF16 or Q8_0).
    pub dtype: WeightDType,
    /// Element offset of context position `j`'s head row; `[num_ctx]`.
    pub offs: &'a [usize],
}

/// Element `idx` of a layer's K or V bytes stored as `dtype`, widened exactly to f32.
pub fn kv_elem(dtype: WeightDType, bytes: &[u8], idx: usize) -> f32 {
    if dtype != WeightDType::Q8_0 {
        return float_elem(dtype, bytes, idx);
    }
    let block = elem_byte(dtype, idx);
    let q = bytes[block + 2 + idx % 32] as i8;
    f32::from(q) * f16_to_f32(read_u16(bytes, block))
}

/// `scores[g * n + j] = (q_g . k_j) * scale` for the `group` query heads in `q`
/// (`[group, head_dim]`) and the `n = keys.offs.len()` context rows.
pub fn scores(isa: Isa, q: &[f32], head_dim: usize, keys: &KvRows<'_>, scale: f32, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: the ISA was checked as supported; its kernels need only AVX2, FMA and F16C.
        return unsafe { x86::scores(q, head_dim, keys, scale, scores) };
    }
    let _ = isa;
    let n = keys.offs.len();
    for (g, qg) in q.chunks_exact(head_dim).enumerate() {
        for (j, &off) in keys.offs.iter().enumerate() {
            scores[g * n + j] = dot_scalar(qg, keys, off) * scale;
        }
    }
}

/// `acc[g] += sum_j probs[g * n + j] * v_j` for `group` heads (`acc`: `[group, head_dim]`).
pub fn weighted_sum(isa: Isa, probs: &[f32], head_dim: usize, values: &KvRows<'_>, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: as in `scores`.
        return unsafe { x86::weighted_sum(probs, head_dim, values, acc) };
    }
    let _ = isa;
    let n = values.offs.len();
    for (g, ag) in acc.chunks_exact_mut(head_dim).enumerate() {
        for (j, &off) in values.offs.iter().enumerate() {
            let p = probs[g * n + j];
            for (e, a) in ag.iter_mut().enumerate() {
                *a += p * kv_elem(values.dtype, values.bytes, off + e);
            }
        }
    }
}

/// The reference dot of `q` with the row at element `off`.
fn dot_scalar(q: &[f32], rows: &KvRows<'_>, off: usize) -> f32 {
    let full = q.len() / 8 * 8;
    let mut lanes = [0.0f32; 8];
    for i in (0..full).step_by(8) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += q[i + l] * kv_elem(rows.dtype, rows.bytes, off + i + l);
        }
    }
    let mut s = hsum8(&lanes);
    for (e, &qe) in q.iter().enumerate().skip(full) {
        s += qe * kv_elem(rows.dtype, rows.bytes, off + e);
    }
    s
}

/// AVX2 kernels, specialised for head sizes 64 and 128 (accumulators in registers).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{kv_elem, KvRows};
    use crate::dot_x86::{hsum, load_w, DT_BF16, DT_F16, DT_F32};
    use crate::kv_cache::elem_byte;
    use ember_core::WeightDType;
    use std::arch::x86_64::*;

    /// Element tag of a Q8_0 cache (beside `dot_x86`'s float tags).
    const DT_Q8_0: u8 = 3;

    /// Loads 8 cache elements from element `k0` of a head row starting at `p`, widened to f32
    /// (a Q8_0 row: `q * d` with its block's scale, exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load_kv<const DT: u8>(p: *const u8, k0: usize) -> __m256 {
        if DT != DT_Q8_0 {
            // SAFETY: forwarded.
            return unsafe { load_w::<DT>(p, k0) };
        }
        // SAFETY: the caller guarantees 8 elements from `k0` (inside one 32-element block,
        // as `k0 % 8 == 0`) are in bounds.
        unsafe {
            let block = p.add(k0 / 32 * 34);
            // The f16 scale, broadcast and widened exactly in-register.
            let d = _mm256_cvtph_ps(_mm_set1_epi16(block.cast::<i16>().read_unaligned()));
            let q = _mm_loadl_epi64(block.add(2 + k0 % 32).cast());
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d)
        }
    }

    /// Context rows per chunk of the weighted sum (their values stay in L1 across heads).
    const CHUNK: usize = 64;

    /// See `super::scores`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(q: &[f32], head_dim: usize, keys: &KvRows<'_>, scale: f32, out: &mut [f32]) {
        // SAFETY: forwarded; each variant checks its bounds.
        unsafe {
            match (keys.dtype, head_dim) {
                (WeightDType::F16, 64) => scores_dt::<DT_F16, 8>(q, head_dim, keys, scale, out),
                (WeightDType::F16, 128) => scores_dt::<DT_F16, 16>(q, head_dim, keys, scale, out),
                (WeightDType::F16, _) => scores_dt::<DT_F16, 0>(q, head_dim, keys, scale, out),
                (WeightDType::BF16, 64) => scores_dt::<DT_BF16, 8>(q, head_dim, keys, scale, out),
                (WeightDType::BF16, 128) => scores_dt::<DT_BF16, 16>(q, head_dim, keys, scale, out),
                (WeightDType::BF16, _) => scores_dt::<DT_BF16, 0>(q, head_dim, keys, scale, out),
                (WeightDType::Q8_0, 64) => scores_dt::<DT_Q8_0, 8>(q, head_dim, keys, scale, out),
                (WeightDType::Q8_0, 128) => scores_dt::<DT_Q8_0, 16>(q, head_dim, keys, scale, out),
                (WeightDType::Q8_0, _) => scores_dt::<DT_Q8_0, 0>(q, head_dim, keys, scale, out),
                (_, 64) => scores_dt::<DT_F32, 8>(q, head_dim, keys, scale, out),
                (_, 128) => scores_dt::<DT_F32, 16>(q, head_dim, keys, scale, out),
                _ => scores_dt::<DT_F32, 0>(q, head_dim, keys, scale, out),
            }
        }
    }

    /// See `super::weighted_sum`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum(probs: &[f32], head_dim: usize, values: &KvRows<'_>, acc: &mut [f32]) {
        // SAFETY: forwarded; each variant checks its bounds.
        unsafe {
            match (values.dtype, head_dim) {
                (WeightDType::F16, 64) => sum_dt::<DT_F16, 8>(probs, head_dim, values, acc),
                (WeightDType::F16, 128) => sum_dt::<DT_F16, 16>(probs, head_dim, values, acc),
                (WeightDType::F16, _) => sum_dt::<DT_F16, 0>(probs, head_dim, values, acc),
                (WeightDType::BF16, 64) => sum_dt::<DT_BF16, 8>(probs, head_dim, values, acc),
                (WeightDType::BF16, 128) => sum_dt::<DT_BF16, 16>(probs, head_dim, values, acc),
                (WeightDType::BF16, _) => sum_dt::<DT_BF16, 0>(probs, head_dim, values, acc),
                (WeightDType::Q8_0, 64) => sum_dt::<DT_Q8_0, 8>(probs, head_dim, values, acc),
                (WeightDType::Q8_0, 128) => sum_dt::<DT_Q8_0, 16>(probs, head_dim, values, acc),
                (WeightDType::Q8_0, _) => sum_dt::<DT_Q8_0, 0>(probs, head_dim, values, acc),
                (_, 64) => sum_dt::<DT_F32, 8>(probs, head_dim, values, acc),
                (_, 128) => sum_dt::<DT_F32, 16>(probs, head_dim, values, acc),
                _ => sum_dt::<DT_F32, 0>(probs, head_dim, values, acc),
            }
        }
    }

    /// Asserts that every row `off..off + head_dim` lies inside the layer's bytes.
    fn check(rows: &KvRows<'_>, head_dim: usize) {
        let elems = rows.bytes.len() / rows.dtype.block_bytes() * rows.dtype.block_len();
        assert!(
            rows.offs.iter().all(|&o| o + head_dim <= elems),
            "KV row out of range"
        );
    }

    /// Scores with `C` 8-element chunks per head (`C = 0`: any head size).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_dt<const DT: u8, const C: usize>(
        q: &[f32],
        head_dim: usize,
        keys: &KvRows<'_>,
        scale: f32,
        out: &mut [f32],
    ) {
        check(keys, head_dim);
        let n = keys.offs.len();
        let chunks = if C == 0 { head_dim / 8 } else { C };
        for (j, &off) in keys.offs.iter().enumerate() {
            let k = keys.bytes[elem_byte(keys.dtype, off)..].as_ptr();
            for (g, qg) in q.chunks_exact(head_dim).enumerate() {
                let mut acc = _mm256_setzero_ps();
                for c in 0..chunks {
                    // SAFETY: `8 c + 8 <= head_dim` elements of `qg` and of the checked row.
                    let (qv, kv) =
                        unsafe { (_mm256_loadu_ps(qg.as_ptr().add(8 * c)), load_kv::<DT>(k, 8 * c)) };
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(qv, kv));
                }
                let mut s = hsum(acc);
                for (e, &qe) in qg.iter().enumerate().skip(8 * chunks) {
                    s += qe * kv_elem(keys.dtype, keys.bytes, off + e);
                }
                out[g * n + j] = s * scale;
            }
        }
    }

    /// Weighted sum with `C` 8-element chunks per head (`C = 0`: any head size).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum_dt<const DT: u8, const C: usize>(
        probs: &[f32],
        head_dim: usize,
        values: &KvRows<'_>,
        acc: &mut [f32],
    ) {
        check(values, head_dim);
        let n = values.offs.len();
        if C == 0 {
            for (g, ag) in acc.chunks_exact_mut(head_dim).enumerate() {
                for (j, &off) in values.offs.iter().enumerate() {
                    let p = probs[g * n + j];
                    for (e, a) in ag.iter_mut().enumerate() {
                        *a += p * kv_elem(values.dtype, values.bytes, off + e);
                    }
                }
            }
            return;
        }
        for j0 in (0..n).step_by(CHUNK) {
            let j1 = (j0 + CHUNK).min(n);
            for (g, ag) in acc.chunks_exact_mut(head_dim).enumerate() {
                let mut regs = [_mm256_setzero_ps(); C];
                for (c, r) in regs.iter_mut().enumerate() {
                    // SAFETY: `8 c + 8 <= head_dim = ag.len()`.
                    *r = unsafe { _mm256_loadu_ps(ag.as_ptr().add(8 * c)) };
                }
                for j in j0..j1 {
                    let p = _mm256_set1_ps(probs[g * n + j]);
                    let v = values.bytes[elem_byte(values.dtype, values.offs[j])..].as_ptr();
                    for (c, r) in regs.iter_mut().enumerate() {
                        // SAFETY: the checked row holds `head_dim >= 8 c + 8` elements.
                        *r = _mm256_add_ps(*r, _mm256_mul_ps(p, unsafe { load_kv::<DT>(v, 8 * c) }));
                    }
                }
                for (c, r) in regs.iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(ag.as_mut_ptr().add(8 * c), *r) };
                }
            }
        }
    }
}
