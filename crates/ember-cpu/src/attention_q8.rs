//! Attention's two inner loops over a Q8_0 (`"int8"`) KV cache, in integer arithmetic.
//!
//! Scores: the query heads are quantized once per call to 16-bit integers, one f32 scale
//! `dq = max|x| / 32767` per 32 elements (`round_half_even(x / dq)`, relative error about
//! 2^-16: far finer than the 8-bit query llama.cpp uses against its q8_0 cache, which doubled
//! the KL to float32 here), then each key block contributes its exact integer dot `i`
//! (`|i| < 2^31`; any summation order gives the same `i32`). Bit for bit in every kernel
//! family: `s = 0; s += f32(i_b) * (dq_b * dk_b)` over the blocks `b` in order (`f32(i)` and
//! the products rounded to nearest even), then `s * scale`. The SIMD kernels compute 8 keys
//! at once (`vpmaddwd`, or `vpdpwssd`, then a transposing integer reduction), so one query
//! head's scores for 8 keys take one float multiply-add per block.
//! Weighted sum: per context row and value block, `w = p_j * dv` once, then each element
//! `acc += w * v` (the `i8` widens exactly) in context order.
//! Quantizing the query changes the scores very slightly (the float caches dot the f32
//! query); tests/test_kv_cache_int8.py bounds the cache's effect on the logits.

use crate::attention_dot::KvRows;
use crate::kv_cache::elem_byte;
use crate::matmul::Isa;
use crate::quant::{f16_to_f32, read_u16};
use ember_core::WeightDType;

/// Elements per Q8_0 block.
const QK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale, then 32 `i8`s.
const BLOCK_BYTES: usize = 34;

/// Query heads quantized to 16 bits per element and one scale per 32 elements.
pub(crate) struct QuantQuery {
    /// Number of heads.
    rows: usize,
    /// Elements per head.
    cols: usize,
    /// Quantized elements; `[rows, cols]`.
    pub(crate) qs: Vec<i16>,
    /// Scales; `[rows, cols / 32]`.
    pub(crate) d: Vec<f32>,
}

impl QuantQuery {
    /// Quantizes `q` (`[rows, cols]`, `cols` a multiple of 32); see the module docs.
    pub(crate) fn new(q: &[f32], cols: usize) -> Self {
        let mut qs = vec![0i16; q.len()];
        let mut d = vec![0.0f32; q.len() / QK];
        for ((xb, qb), db) in q.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(&mut d) {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            *db = amax / 32767.0;
            // 0 for a zero block and for one whose inverse overflows (its quants are then 0).
            let id = 32767.0 / amax;
            let id = if id.is_finite() { id } else { 0.0 };
            for (o, &x) in qb.iter_mut().zip(xb) {
                // |x * id| <= 32767 up to rounding; the cast saturates (NaN: 0).
                *o = (x * id).round_ties_even() as i16;
            }
        }
        Self {
            rows: q.len() / cols.max(1),
            cols,
            qs,
            d,
        }
    }

    /// Quantized elements of head `g`.
    fn row_qs(&self, g: usize) -> &[i16] {
        &self.qs[g * self.cols..(g + 1) * self.cols]
    }
}

/// `attention_dot::scores` with `q` (`[heads, head_dim]`) quantized to 16 bits; `head_dim` is
/// a multiple of 32. See the module docs for the arithmetic.
pub fn scores(isa: Isa, q: &[f32], head_dim: usize, keys: &KvRows<'_>, scale: f32, scores: &mut [f32]) {
    let qq = QuantQuery::new(q, head_dim);
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was checked as supported.
        Isa::Avx512Vnni => return unsafe { x86::scores_vnni(&qq, keys, scale, scores) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::scores_avx2(&qq, keys, scale, scores) },
        _ => {}
    }
    let _ = isa;
    let n = keys.offs.len();
    let num_blocks = head_dim / QK;
    for g in 0..qq.rows {
        let (qs, qd) = (qq.row_qs(g), &qq.d[g * num_blocks..(g + 1) * num_blocks]);
        for j in keys.spans[g].clone() {
            let row = &keys.bytes[elem_byte(WeightDType::Q8_0, keys.offs[j])..];
            scores[g * n + j] = dot_scalar(qs, qd, row) * scale;
        }
    }
}

/// The reference dot of a quantized query head with the Q8_0 head row starting at `row`.
fn dot_scalar(qs: &[i16], qd: &[f32], row: &[u8]) -> f32 {
    let mut s = 0.0f32;
    for (b, (qb, &dq)) in qs.chunks_exact(QK).zip(qd).enumerate() {
        let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        let i: i32 = qb
            .iter()
            .zip(&blk[2..])
            .map(|(&q, &k)| i32::from(q) * i32::from(k as i8))
            .sum();
        s += i as f32 * (dq * f16_to_f32(read_u16(blk, 0)));
    }
    s
}

/// `attention_dot::weighted_sum` with one multiply by the block scale per value block. See the
/// module docs.
pub fn weighted_sum(isa: Isa, probs: &[f32], head_dim: usize, values: &KvRows<'_>, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: the ISA was checked as supported; the kernel needs only AVX2, FMA and F16C.
        return unsafe { x86::weighted_sum(probs, head_dim, values, acc) };
    }
    let _ = isa;
    let n = values.offs.len();
    for (g, ag) in acc.chunks_exact_mut(head_dim).enumerate() {
        for j in values.spans[g].clone() {
            let p = probs[g * n + j];
            let row = &values.bytes[elem_byte(WeightDType::Q8_0, values.offs[j])..];
            for (b, ab) in ag.chunks_exact_mut(QK).enumerate() {
                let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                let w = p * f16_to_f32(read_u16(blk, 0));
                for (a, &v) in ab.iter_mut().zip(&blk[2..]) {
                    *a += w * f32::from(v as i8);
                }
            }
        }
    }
}

/// AVX2 and AVX-512 VNNI kernels (the VNNI one differs only in the integer dot instruction).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KvRows, QuantQuery, BLOCK_BYTES, QK};
    use crate::kv_cache::elem_byte;
    use ember_core::WeightDType;
    use std::arch::x86_64::*;

    /// Asserts that every head row at `offs` (`head_dim` elements) lies inside the bytes.
    fn check(rows: &KvRows<'_>, head_dim: usize) {
        let row_bytes = head_dim / QK * BLOCK_BYTES;
        assert!(
            rows.offs
                .iter()
                .all(|&o| elem_byte(WeightDType::Q8_0, o) + row_bytes <= rows.bytes.len()),
            "KV row out of range"
        );
    }

    /// Scores with `vpdpbusd`; see `super::scores`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn scores_vnni(qq: &QuantQuery, keys: &KvRows<'_>, scale: f32, out: &mut [f32]) {
        // SAFETY: the features are enabled here.
        unsafe { scores_with::<true>(qq, keys, scale, out) }
    }

    /// Scores with `vpmaddubsw` + `vpmaddwd`; see `super::scores`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_avx2(qq: &QuantQuery, keys: &KvRows<'_>, scale: f32, out: &mut [f32]) {
        // SAFETY: the features are enabled here.
        unsafe { scores_with::<false>(qq, keys, scale, out) }
    }

    /// The f16 scale at `p`, widened exactly.
    #[inline(always)]
    unsafe fn scale_at(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees 2 readable bytes; F16C is enabled by every caller.
        unsafe {
            let bits = p.cast::<u16>().read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }
    }

    /// One block's 32 quantized query elements, as two 16-lane vectors.
    #[inline(always)]
    unsafe fn load_q(q: *const i16) -> [__m256i; 2] {
        // SAFETY: the caller guarantees 32 readable elements; AVX is enabled by every caller.
        unsafe { [_mm256_loadu_si256(q.cast()), _mm256_loadu_si256(q.add(16).cast())] }
    }

    /// The 8 `i32` lanes of the integer dot of a query block with the 32 `i8`s at `k` (their
    /// sum is the dot; each lane sums 4 products below 2^22 in magnitude: no overflow).
    #[inline(always)]
    unsafe fn block_dot<const VNNI: bool>(q: [__m256i; 2], k: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 32 readable bytes at `k`; AVX2 (and, for `VNNI`,
        // AVX-512 VNNI + VL) are enabled by every caller.
        unsafe {
            let k0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(k.cast()));
            let k1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(k.add(16).cast()));
            if VNNI {
                _mm256_dpwssd_epi32(_mm256_madd_epi16(q[0], k0), q[1], k1)
            } else {
                _mm256_add_epi32(_mm256_madd_epi16(q[0], k0), _mm256_madd_epi16(q[1], k1))
            }
        }
    }

    /// Lane `i` = the sum of the 8 lanes of `m[i]` (exact integer sums).
    #[inline(always)]
    unsafe fn transpose_sum(m: [__m256i; 8]) -> __m256i {
        // SAFETY: register-only AVX2 instructions, enabled by every caller.
        unsafe {
            let h01 = _mm256_hadd_epi32(m[0], m[1]);
            let h23 = _mm256_hadd_epi32(m[2], m[3]);
            let h45 = _mm256_hadd_epi32(m[4], m[5]);
            let h67 = _mm256_hadd_epi32(m[6], m[7]);
            // Per 128-bit half: the half sums of keys 0..4, then of keys 4..8.
            let (a, b) = (_mm256_hadd_epi32(h01, h23), _mm256_hadd_epi32(h45, h67));
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(a, b),
                _mm256_permute2x128_si256::<0x31>(a, b),
            )
        }
    }

    /// The sum of the 8 lanes of `v`.
    #[inline(always)]
    unsafe fn lane_sum(v: __m256i) -> i32 {
        // SAFETY: register-only AVX2 instructions, enabled by every caller.
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_hadd_epi32(s, s);
            _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
        }
    }

    #[inline(always)]
    unsafe fn scores_with<const VNNI: bool>(qq: &QuantQuery, keys: &KvRows<'_>, scale: f32, out: &mut [f32]) {
        let head_dim = qq.cols;
        check(keys, head_dim);
        let (n, num_blocks) = (keys.offs.len(), head_dim / QK);
        assert!(out.len() >= qq.rows * n && qq.d.len() >= qq.rows * num_blocks);
        let row_at = |j: usize| keys.bytes[elem_byte(WeightDType::Q8_0, keys.offs[j])..].as_ptr();
        // SAFETY (this block and the loops below): AVX2, FMA and F16C are enabled by every
        // caller; every row read is a checked head row of `num_blocks` blocks, every query
        // read lies in head `g`'s `head_dim` quants, every store in `out` was asserted above.
        unsafe {
            let vscale = _mm256_set1_ps(scale);
            let mut dk = vec![_mm256_setzero_ps(); num_blocks];
            let full = n / 8 * 8;
            for j0 in (0..full).step_by(8) {
                let rows: [*const u8; 8] = std::array::from_fn(|i| row_at(j0 + i));
                for (b, d) in dk.iter_mut().enumerate() {
                    let bits: [i16; 8] =
                        std::array::from_fn(|i| rows[i].add(b * BLOCK_BYTES).cast::<i16>().read_unaligned());
                    *d = _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().cast()));
                }
                for g in 0..qq.rows {
                    let span = &keys.spans[g];
                    if span.end <= j0 || span.start >= j0 + 8 {
                        continue;
                    }
                    let qs = qq.row_qs(g).as_ptr();
                    let mut acc = _mm256_setzero_ps();
                    for (b, &d) in dk.iter().enumerate() {
                        let q = load_q(qs.add(b * QK));
                        let m =
                            std::array::from_fn(|i| block_dot::<VNNI>(q, rows[i].add(b * BLOCK_BYTES + 2)));
                        let d = _mm256_mul_ps(_mm256_set1_ps(qq.d[g * num_blocks + b]), d);
                        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(transpose_sum(m)), d));
                    }
                    _mm256_storeu_ps(out.as_mut_ptr().add(g * n + j0), _mm256_mul_ps(acc, vscale));
                }
            }
            for j in full..n {
                let row = row_at(j);
                for g in (0..qq.rows).filter(|&g| keys.spans[g].contains(&j)) {
                    let qs = qq.row_qs(g).as_ptr();
                    let mut s = 0.0f32;
                    for b in 0..num_blocks {
                        let blk = row.add(b * BLOCK_BYTES);
                        let i = lane_sum(block_dot::<VNNI>(load_q(qs.add(b * QK)), blk.add(2)));
                        s += i as f32 * (qq.d[g * num_blocks + b] * scale_at(blk));
                    }
                    out[g * n + j] = s * scale;
                }
            }
        }
    }

    /// Context rows per chunk of the weighted sum (their values stay in L1 across heads).
    const CHUNK: usize = 64;

    /// See `super::weighted_sum`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum(probs: &[f32], head_dim: usize, values: &KvRows<'_>, acc: &mut [f32]) {
        check(values, head_dim);
        assert!(probs.len() >= acc.len() / head_dim * values.offs.len());
        // SAFETY: the features are enabled here; rows and lengths checked above.
        unsafe {
            match head_dim {
                64 => sum_regs::<8>(probs, head_dim, values, acc),
                128 => sum_regs::<16>(probs, head_dim, values, acc),
                _ => sum_regs::<0>(probs, head_dim, values, acc),
            }
        }
    }

    /// The weighted sum with `C` 8-float accumulators per head in registers (`C = 0`: any
    /// head size, accumulated in memory); the same operations in the same order either way.
    /// Each chunk of context rows is widened once (the `i8`s to f32, the scales) for all heads.
    #[inline(always)]
    unsafe fn sum_regs<const C: usize>(probs: &[f32], head_dim: usize, values: &KvRows<'_>, acc: &mut [f32]) {
        let (n, num_blocks) = (values.offs.len(), head_dim / QK);
        let mut wide = vec![0.0f32; CHUNK * head_dim];
        let mut scales = vec![0.0f32; CHUNK * num_blocks];
        for j0 in (0..n).step_by(CHUNK) {
            let j1 = (j0 + CHUNK).min(n);
            for j in j0..j1 {
                let row = values.bytes[elem_byte(WeightDType::Q8_0, values.offs[j])..].as_ptr();
                let w = wide[(j - j0) * head_dim..].as_mut_ptr();
                for b in 0..num_blocks {
                    // SAFETY: block `b` of the checked row; `wide` holds `CHUNK` rows of
                    // `head_dim` floats; AVX2 and F16C are enabled by the caller.
                    unsafe {
                        let blk = row.add(b * BLOCK_BYTES);
                        scales[(j - j0) * num_blocks + b] = scale_at(blk);
                        for c in 0..QK / 8 {
                            let v8 = _mm_loadl_epi64(blk.add(2 + 8 * c).cast());
                            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v8));
                            _mm256_storeu_ps(w.add(b * QK + 8 * c), v);
                        }
                    }
                }
            }
            for (g, ag) in acc.chunks_exact_mut(head_dim).enumerate() {
                let span = &values.spans[g];
                let (lo, hi) = (j0.max(span.start), j1.min(span.end));
                if lo >= hi {
                    continue;
                }
                let a = ag.as_mut_ptr();
                // SAFETY: register-only; AVX is enabled by the caller.
                let mut regs = [unsafe { _mm256_setzero_ps() }; C];
                for (c, r) in regs.iter_mut().enumerate() {
                    // SAFETY: `8 c + 8 <= head_dim = ag.len()`.
                    *r = unsafe { _mm256_loadu_ps(a.add(8 * c)) };
                }
                for j in lo..hi {
                    let p = probs[g * n + j];
                    let v = wide[(j - j0) * head_dim..].as_ptr();
                    for b in 0..num_blocks {
                        let w = p * scales[(j - j0) * num_blocks + b];
                        // SAFETY: elements `32 b..32 b + 32` of the widened row and of `ag`.
                        unsafe {
                            let w = _mm256_set1_ps(w);
                            for c in 0..QK / 8 {
                                let k = 4 * b + c;
                                let x = _mm256_mul_ps(w, _mm256_loadu_ps(v.add(8 * k)));
                                if C == 0 {
                                    _mm256_storeu_ps(
                                        a.add(8 * k),
                                        _mm256_add_ps(_mm256_loadu_ps(a.add(8 * k)), x),
                                    );
                                } else {
                                    regs[k] = _mm256_add_ps(regs[k], x);
                                }
                            }
                        }
                    }
                }
                for (c, r) in regs.iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(a.add(8 * c), *r) };
                }
            }
        }
    }
}
