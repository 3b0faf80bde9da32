//! x86-64 SIMD tile kernels: one call computes a tile of `R` activation rows x `C` weight
//! rows (`R * C == 8` outputs), output `(r, c)` in lane `c * R + r`.
//!
//! Each output is accumulated in its own f32 lane in the order `dot_scalar` defines, and
//! the per-block integer dot products are exact, so every kernel here is bit-identical to
//! the scalar reference and independent of the tile shape (batch invariance).
//! `avx2` uses `maddubs`+`madd`; `vnni` uses AVX-512 VNNI `vpdpbusd` on 256-bit vectors.

#![allow(clippy::missing_safety_doc)]

/// Rows of quantized activations handed to a tile.
pub struct ActRows<'a> {
    /// `[rows, nb * 32]`.
    pub qs: &'a [i8],
    /// `[nb, rows]`.
    pub d: &'a [f32],
    /// `[nb, rows]`.
    pub s: &'a [f32],
    /// `[nb, rows]`.
    pub sum_q: &'a [i32],
    /// Blocks per row.
    pub nb: usize,
    /// Rows.
    pub rows: usize,
}

macro_rules! tile_kernels {
    ($feat:literal) => {
        /// Sums each of the 8 vectors; lane `o` of the result is the sum of `p[o]`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn reduce8(p: &[__m256i; 8]) -> __m256i {
            let pair = |a: __m256i, b: __m256i| {
                _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
            };
            let quad = |a: __m256i, b: __m256i| {
                _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
            };
            let s0 = quad(pair(p[0], p[1]), pair(p[2], p[3]));
            let s1 = quad(pair(p[4], p[5]), pair(p[6], p[7]));
            let lo = _mm256_permute2x128_si256(s0, s1, 0x20);
            let hi = _mm256_permute2x128_si256(s0, s1, 0x31);
            _mm256_add_epi32(lo, hi)
        }

        /// The 32 nibbles of a Q4 block (`p`: 16 bytes) as bytes: low nibbles, then high.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            // SAFETY: the caller guarantees 16 readable bytes at `p`.
            let tmp = unsafe { _mm_loadu_si128(p.cast()) };
            let both = _mm256_broadcastsi128_si256(tmp);
            let shifted = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));
            _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
        }

        /// Per-lane weight scales from each column's first 4 block bytes (`d`, then `m` for
        /// Q4_1): lane `o` gets column `o / R`. Returns `(d, m)` as f32.
        #[target_feature(enable = $feat)]
        #[inline]
        fn weight_lanes<const R: usize, const C: usize>(dm: &[u32; C]) -> (__m256, __m256) {
            if C == 8 {
                let a = _mm_setr_epi32(dm[0] as i32, dm[1] as i32, dm[2] as i32, dm[3] as i32);
                let b = _mm_setr_epi32(
                    dm[4 % C] as i32,
                    dm[5 % C] as i32,
                    dm[6 % C] as i32,
                    dm[7 % C] as i32,
                );
                let lo16 = _mm_set1_epi32(0xffff);
                let d = _mm_packus_epi32(_mm_and_si128(a, lo16), _mm_and_si128(b, lo16));
                let m = _mm_packus_epi32(_mm_srli_epi32(a, 16), _mm_srli_epi32(b, 16));
                return (_mm256_cvtph_ps(d), _mm256_cvtph_ps(m));
            }
            let mut v = [0i32; 4];
            for c in 0..C.min(4) {
                v[c] = dm[c] as i32;
            }
            let v = _mm_setr_epi32(v[0], v[1], v[2], v[3]);
            let mut dmask = [0i8; 16];
            for (i, byte) in dmask.iter_mut().enumerate() {
                *byte = (4 * ((i / 2) / R) + i % 2) as i8;
            }
            // SAFETY: reads the 16-byte local array.
            let dmask = unsafe { _mm_loadu_si128(dmask.as_ptr().cast()) };
            let mmask = _mm_add_epi8(dmask, _mm_set1_epi8(2));
            (
                _mm256_cvtph_ps(_mm_shuffle_epi8(v, dmask)),
                _mm256_cvtph_ps(_mm_shuffle_epi8(v, mmask)),
            )
        }

        /// `v[o % R]` per lane from `R` adjacent values at `p`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn act_lanes<const R: usize>(p: *const f32) -> __m256 {
            // SAFETY: the caller guarantees `R` readable values at `p`.
            unsafe {
                match R {
                    1 => _mm256_set1_ps(p.read()),
                    2 => _mm256_castpd_ps(_mm256_set1_pd(p.cast::<f64>().read_unaligned())),
                    4 => {
                        let v = p.cast::<__m128>().read_unaligned();
                        _mm256_set_m128(v, v)
                    }
                    _ => _mm256_loadu_ps(p),
                }
            }
        }

        /// Quantized tile: weight rows `w[c]` (`block_bytes * nb` bytes each) against
        /// activation rows `r0..r0 + R` of `a`; returns the 8 outputs in lane order.
        ///
        /// # Safety
        /// The CPU supports this module's features; `block_bytes` matches the format
        /// (`Q8_0`: 34, `Q4_0`: 18, `Q4_1`: 20).
        #[target_feature(enable = $feat)]
        pub unsafe fn quant_tile<const R: usize, const C: usize, const FMT: u8>(
            w: &[&[u8]; C],
            a: &ActRows<'_>,
            r0: usize,
        ) -> [f32; 8] {
            const { assert!(R * C == 8) };
            let nb = a.nb;
            let k = nb * 32;
            let block_bytes = match FMT {
                FMT_Q8_0 => 34,
                FMT_Q4_0 => 18,
                _ => 20,
            };
            for wc in w {
                assert!(wc.len() >= nb * block_bytes);
            }
            assert!(r0 + R <= a.rows && a.qs.len() >= a.rows * k);
            assert!(a.d.len() >= nb * a.rows && a.s.len() >= nb * a.rows && a.sum_q.len() >= nb * a.rows);
            let zero = _mm256_setzero_si256();
            let mut acc = _mm256_setzero_ps();
            for b in 0..nb {
                let mut wq = [zero; C];
                let mut dm = [0u32; C];
                for c in 0..C {
                    // SAFETY: block `b < nb` of row `c` lies inside `w[c]` (asserted above).
                    unsafe {
                        let p = w[c].as_ptr().add(b * block_bytes);
                        dm[c] = p.cast::<u32>().read_unaligned();
                        wq[c] = match FMT {
                            FMT_Q8_0 => _mm256_loadu_si256(p.add(2).cast()),
                            FMT_Q4_0 => nibbles(p.add(2)),
                            _ => nibbles(p.add(4)),
                        };
                    }
                }
                let mut xq = [zero; R];
                for r in 0..R {
                    // SAFETY: row `r0 + r` block `b` lies inside `a.qs` (asserted above).
                    xq[r] = unsafe { _mm256_loadu_si256(a.qs.as_ptr().add((r0 + r) * k + b * 32).cast()) };
                }
                let i = b * a.rows + r0;
                let mut p = [zero; 8];
                for c in 0..C {
                    let u = if FMT == FMT_Q8_0 {
                        q8_weight(wq[c])
                    } else {
                        wq[c]
                    };
                    for r in 0..R {
                        p[c * R + r] = if FMT == FMT_Q8_0 {
                            q8_dot(u, wq[c], xq[r])
                        } else {
                            dot(u, xq[r])
                        };
                    }
                }
                let mut isum = reduce8(&p);
                // SAFETY (act_lanes): `i + R <= nb * rows`, asserted above.
                if FMT == FMT_Q4_0 || (FMT == FMT_Q8_0 && Q8_OFFSET) {
                    let sums = _mm256_castps_si256(unsafe { act_lanes::<R>(a.sum_q.as_ptr().add(i).cast()) });
                    let shift = if FMT == FMT_Q4_0 { 3 } else { 7 };
                    isum = _mm256_sub_epi32(isum, _mm256_sll_epi32(sums, _mm_cvtsi32_si128(shift)));
                }
                let (dw, mw) = weight_lanes::<R, C>(&dm);
                let dx = unsafe { act_lanes::<R>(a.d.as_ptr().add(i)) };
                acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum), acc);
                if FMT == FMT_Q4_1 {
                    let sx = unsafe { act_lanes::<R>(a.s.as_ptr().add(i)) };
                    acc = _mm256_fmadd_ps(mw, sx, acc);
                }
            }
            let mut out = [0.0f32; 8];
            // SAFETY: `out` has room for 8 f32.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
            out
        }
    };
}

macro_rules! float_kernels {
    ($feat:literal) => {
        /// Loads 8 float weights starting at element `k0` of a row encoded as `DT`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn load_w<const DT: u8>(p: *const u8, k0: usize) -> __m256 {
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
        #[target_feature(enable = $feat)]
        #[inline]
        fn hsum(v: __m256) -> f32 {
            let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
            _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)))
        }

        /// Float tile: weight rows `w[c]` encoded as `DT` against f32 rows `x[r]` (all the
        /// same length); returns the 8 outputs in lane order.
        ///
        /// # Safety
        /// The CPU supports this module's features.
        #[target_feature(enable = $feat)]
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
    };
}

/// Format tag of Q8_0 weights for `quant_tile`.
pub const FMT_Q8_0: u8 = 0;
/// Format tag of Q4_0 weights for `quant_tile`.
pub const FMT_Q4_0: u8 = 1;
/// Format tag of Q4_1 weights for `quant_tile`.
pub const FMT_Q4_1: u8 = 2;

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

/// AVX2 + FMA + F16C kernels.
pub mod avx2 {
    use super::{dt_of, ActRows, DT_F16, DT_F32, FMT_Q4_0, FMT_Q4_1, FMT_Q8_0};
    use std::arch::x86_64::*;

    /// Q8_0 weights use the sign trick (`|w|` times `x * sign(w)`), exact for `|x| <= 127`.
    const Q8_OFFSET: bool = false;

    /// Exact dot of unsigned bytes `u` (<= 128) with signed bytes `s` (|s| <= 127), 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    /// The unsigned operand for Q8_0 weights: `|w|`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q8_weight(w: __m256i) -> __m256i {
        _mm256_sign_epi8(w, w)
    }

    /// Q8_0 block dot: `|w| . (x * sign(w))`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q8_dot(u: __m256i, w: __m256i, x: __m256i) -> __m256i {
        dot(u, _mm256_sign_epi8(x, w))
    }

    tile_kernels!("avx2,fma,f16c");
    float_kernels!("avx2,fma,f16c");
}

/// AVX-512 VNNI kernels (256-bit `vpdpbusd`, so lanes match the AVX2 kernels).
pub mod vnni {
    use super::{ActRows, FMT_Q4_0, FMT_Q4_1, FMT_Q8_0};
    use std::arch::x86_64::*;

    /// Q8_0 weights use the offset trick: `(w + 128) . x - 128 * sum(x)`.
    const Q8_OFFSET: bool = true;

    /// Exact dot of unsigned bytes `u` with signed bytes `s`, 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    /// The unsigned operand for Q8_0 weights: `w + 128`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn q8_weight(w: __m256i) -> __m256i {
        _mm256_xor_si256(w, _mm256_set1_epi8(-128))
    }

    /// Q8_0 block dot before the offset correction: `(w + 128) . x`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn q8_dot(u: __m256i, _w: __m256i, x: __m256i) -> __m256i {
        dot(u, x)
    }

    tile_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}
