//! The two inner loops of paged attention over a KV cache of f32, f16, bf16 or Q8_0 elements, for
//! the query heads that share one KV head: scores `q . k_j * scale` over the context, and the
//! probability-weighted sum of the value rows. A Q8_0 cache goes to `attention_q8` (integer dots).
//!
//! Arithmetic of the float caches (every kernel family, bit for bit): a dot product keeps 8
//! lanes, lane `l` takes elements `8 i + l` with `lane += q * k` (a multiply, then an add: two
//! roundings), then the fixed horizontal sum `dot_scalar::hsum8`, then the tail elements one by
//! one; the weighted sum adds `p_j * v_j` element by element in context order. Cache elements
//! widen exactly, in place: no widened copy of the context.

use crate::dot_scalar::{float_elem, hsum8};
use crate::matmul::Isa;
use ember_core::WeightDType;
use std::ops::Range;

/// Where one KV head's context rows live in a layer's K or V bytes.
pub struct KvRows<'a> {
    /// The layer's elements (`dtype`), little-endian bytes.
    pub bytes: &'a [u8],
    /// Element encoding (F32, F16, BF16 or Q8_0).
    pub dtype: WeightDType,
    /// Element offset of context row `j`'s head row; `[num_ctx]`.
    pub offs: &'a [usize],
    /// The context rows `j` each query head attends, in order; `[num_query_heads]`. Entries of
    /// `scores` / `probs` outside a head's span are never read (the kernels may write them).
    pub spans: &'a [Range<usize>],
}

/// `scores[g * n + j] = (q_g . k_j) * scale` for the query heads `g` in `q`
/// (`[heads, head_dim]`) and the context rows `j` of their spans (`n = keys.offs.len()`).
pub fn scores(isa: Isa, q: &[f32], head_dim: usize, keys: &KvRows<'_>, scale: f32, scores: &mut [f32]) {
    if keys.dtype == WeightDType::Q8_0 {
        return crate::attention_q8::scores(isa, q, head_dim, keys, scale, scores);
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: the ISA was checked as supported; its kernels need only AVX2, FMA and F16C.
        return unsafe { x86::scores(q, head_dim, keys, scale, scores) };
    }
    let _ = isa;
    let n = keys.offs.len();
    for (g, qg) in q.chunks_exact(head_dim).enumerate() {
        for j in keys.spans[g].clone() {
            scores[g * n + j] = dot_scalar(qg, keys, keys.offs[j]) * scale;
        }
    }
}

/// `acc[g] += sum_j probs[g * n + j] * v_j` over the span of each head `g` (`acc`:
/// `[heads, head_dim]`), in context order.
pub fn weighted_sum(isa: Isa, probs: &[f32], head_dim: usize, values: &KvRows<'_>, acc: &mut [f32]) {
    if values.dtype == WeightDType::Q8_0 {
        return crate::attention_q8::weighted_sum(isa, probs, head_dim, values, acc);
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: as in `scores`.
        return unsafe { x86::weighted_sum(probs, head_dim, values, acc) };
    }
    let _ = isa;
    sum_elementwise(probs, head_dim, values, acc);
}

/// The reference weighted sum (element by element; any head size).
fn sum_elementwise(probs: &[f32], head_dim: usize, values: &KvRows<'_>, acc: &mut [f32]) {
    let n = values.offs.len();
    for (g, ag) in acc.chunks_exact_mut(head_dim).enumerate() {
        for j in values.spans[g].clone() {
            let (p, off) = (probs[g * n + j], values.offs[j]);
            for (e, a) in ag.iter_mut().enumerate() {
                *a += p * float_elem(values.dtype, values.bytes, off + e);
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
            *lane += q[i + l] * float_elem(rows.dtype, rows.bytes, off + i + l);
        }
    }
    let mut s = hsum8(&lanes);
    for (e, &qe) in q.iter().enumerate().skip(full) {
        s += qe * float_elem(rows.dtype, rows.bytes, off + e);
    }
    s
}

/// AVX2 kernels, specialised for head sizes 64 and 128 (accumulators in registers).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::KvRows;
    use crate::dot_scalar::float_elem;
    use crate::dot_x86::{hsum, load_w, DT_BF16, DT_F16, DT_F32};
    use crate::kv_cache::elem_byte;
    use ember_core::WeightDType;
    use std::arch::x86_64::*;

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
    #[allow(clippy::needless_range_loop)] // `c` also indexes `qg` and, with `C = 0`, the row.
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
        // SAFETY: the rows were checked; `C > 0` only with `head_dim = 8 C`.
        let done = if C > 0 {
            unsafe { scores_quads::<DT, C>(q, keys, scale, out) }
        } else {
            0
        };
        for (j, &off) in keys.offs.iter().enumerate().skip(done) {
            let k = keys.bytes[elem_byte(keys.dtype, off)..].as_ptr();
            // With `C` fixed, the key row is widened once for all heads.
            // SAFETY: `8 c + 8 <= head_dim` elements of the checked row.
            let wide: [__m256; C] = std::array::from_fn(|c| unsafe { load_w::<DT>(k, 8 * c) });
            for (g, qg) in q.chunks_exact(head_dim).enumerate() {
                if !keys.spans[g].contains(&j) {
                    continue;
                }
                let mut acc = _mm256_setzero_ps();
                for c in 0..chunks {
                    // SAFETY: `8 c + 8 <= head_dim` elements of `qg` and of the checked row.
                    let (qv, kv) = unsafe {
                        let kv = if C > 0 { wide[c] } else { load_w::<DT>(k, 8 * c) };
                        (_mm256_loadu_ps(qg.as_ptr().add(8 * c)), kv)
                    };
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(qv, kv));
                }
                let mut s = hsum(acc);
                for (e, &qe) in qg.iter().enumerate().skip(8 * chunks) {
                    s += qe * float_elem(keys.dtype, keys.bytes, off + e);
                }
                out[g * n + j] = s * scale;
            }
        }
    }

    /// Scores of the context rows in quads `4 i..4 i + 4` (rows widened once for all heads),
    /// each quad's four sums reduced together; returns the rows done (a multiple of 4). The
    /// reduction adds the same lanes in the same order as `hsum` (`dot_scalar::hsum8`), so
    /// the scores equal the one-row-at-a-time ones bit for bit.
    ///
    /// # Safety
    /// `head_dim = 8 C`; the key rows were checked (`check`).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_quads<const DT: u8, const C: usize>(
        q: &[f32],
        keys: &KvRows<'_>,
        scale: f32,
        out: &mut [f32],
    ) -> usize {
        let (n, head_dim) = (keys.offs.len(), 8 * C);
        let mut wide = [[0.0f32; 128]; 4];
        assert!(head_dim <= 128);
        let mut j = 0;
        while j + 4 <= n {
            for (t, row) in wide.iter_mut().enumerate() {
                let k = keys.bytes[elem_byte(keys.dtype, keys.offs[j + t])..].as_ptr();
                for c in 0..C {
                    // SAFETY: `8 c + 8 <= head_dim` elements of the checked row, and of `row`.
                    unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * c), load_w::<DT>(k, 8 * c)) };
                }
            }
            for (g, qg) in q.chunks_exact(head_dim).enumerate() {
                let span = &keys.spans[g];
                let dot = |t: usize| {
                    let mut acc = _mm256_setzero_ps();
                    for c in 0..C {
                        // SAFETY: `8 c + 8 <= head_dim` elements of `qg` and of `wide[t]`.
                        let (qv, kv) = unsafe {
                            (
                                _mm256_loadu_ps(qg.as_ptr().add(8 * c)),
                                _mm256_loadu_ps(wide[t].as_ptr().add(8 * c)),
                            )
                        };
                        acc = _mm256_add_ps(acc, _mm256_mul_ps(qv, kv));
                    }
                    acc
                };
                let dst = &mut out[g * n + j..g * n + j + 4];
                if span.start <= j && j + 4 <= span.end {
                    let sums = hsum4([dot(0), dot(1), dot(2), dot(3)]);
                    // SAFETY: `dst` holds 4 f32.
                    unsafe { _mm_storeu_ps(dst.as_mut_ptr(), _mm_mul_ps(sums, _mm_set1_ps(scale))) };
                } else {
                    for (t, d) in dst.iter_mut().enumerate() {
                        if span.contains(&(j + t)) {
                            *d = hsum(dot(t)) * scale;
                        }
                    }
                }
            }
            j += 4;
        }
        j
    }

    /// `[hsum(a[0]), .., hsum(a[3])]`: the same additions of the same lanes as `hsum`, four
    /// vectors at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum4(a: [__m256; 4]) -> __m128 {
        // t_k = low half + high half of a[k]: [t0 | t2] and [t1 | t3].
        let t02 = _mm256_add_ps(
            _mm256_permute2f128_ps(a[0], a[2], 0x20),
            _mm256_permute2f128_ps(a[0], a[2], 0x31),
        );
        let t13 = _mm256_add_ps(
            _mm256_permute2f128_ps(a[1], a[3], 0x20),
            _mm256_permute2f128_ps(a[1], a[3], 0x31),
        );
        // u_k = [t_k0 + t_k2, t_k1 + t_k3]: [u0 u1 | u2 u3].
        let u = _mm256_add_ps(
            _mm256_shuffle_ps(t02, t13, 0x44),
            _mm256_shuffle_ps(t02, t13, 0xee),
        );
        // r_k = u_k0 + u_k1: [r0 r1 r0 r1 | r2 r3 r2 r3].
        let r = _mm256_add_ps(_mm256_shuffle_ps(u, u, 0x88), _mm256_shuffle_ps(u, u, 0xdd));
        _mm_movelh_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1))
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
            return super::sum_elementwise(probs, head_dim, values, acc);
        }
        // Each chunk of value rows is widened to f32 once for all heads.
        let mut wide = vec![0.0f32; CHUNK * head_dim];
        for j0 in (0..n).step_by(CHUNK) {
            let j1 = (j0 + CHUNK).min(n);
            for j in j0..j1 {
                let v = values.bytes[elem_byte(values.dtype, values.offs[j])..].as_ptr();
                for c in 0..C {
                    // SAFETY: the checked row holds `head_dim >= 8 c + 8` elements, and `wide`
                    // `CHUNK` rows of `head_dim`.
                    unsafe {
                        _mm256_storeu_ps(
                            wide.as_mut_ptr().add((j - j0) * head_dim + 8 * c),
                            load_w::<DT>(v, 8 * c),
                        )
                    };
                }
            }
            for (g, ag) in acc.chunks_exact_mut(head_dim).enumerate() {
                let span = &values.spans[g];
                let (lo, hi) = (j0.max(span.start), j1.min(span.end));
                if lo >= hi {
                    continue;
                }
                let mut regs = [_mm256_setzero_ps(); C];
                for (c, r) in regs.iter_mut().enumerate() {
                    // SAFETY: `8 c + 8 <= head_dim = ag.len()`.
                    *r = unsafe { _mm256_loadu_ps(ag.as_ptr().add(8 * c)) };
                }
                for j in lo..hi {
                    let p = _mm256_set1_ps(probs[g * n + j]);
                    let v = wide[(j - j0) * head_dim..].as_ptr();
                    for (c, r) in regs.iter_mut().enumerate() {
                        // SAFETY: the widened row holds `head_dim >= 8 c + 8` elements.
                        *r = _mm256_add_ps(*r, _mm256_mul_ps(p, unsafe { _mm256_loadu_ps(v.add(8 * c)) }));
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
