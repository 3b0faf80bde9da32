//! x86-64 SIMD tile kernels. A tile is `R` activation rows x `C` weight rows.
//!
//! Quantized kernels follow llama.cpp's scheme: per block, the integer dot of the 32 byte
//! pairs is left in a vector of int32 lanes (no horizontal reduction), converted to f32 and
//! multiplied-accumulated with the block's scale product into a per-(row, weight row)
//! vector accumulator; one fixed-order horizontal sum at the very end. Each (activation row,
//! weight row) pair runs the same instruction sequence whatever the tile shape, so results
//! are batch invariant; they differ from the scalar reference only by f32 rounding.
//!
//! * `avx2`: 256-bit, one block per vector, `maddubs` + `madd` (Q8_0 via the sign trick).
//! * `vnni`: 512-bit, two blocks per vector, AVX-512 VNNI `vpdpbusd` (unsigned weights; the
//!   Q8_0 / Q4_0 offset is corrected by starting the dot from `-(sum(x) << shift)`). The
//!   scale products `d_w * d_x` and Q4_1's `m_w * s_x` of both blocks come from one 128-bit
//!   multiply; `m * s` is summed in a small side accumulator added after the final sum.
//!
//! Float kernels accumulate each output in its own f32 lanes in `dot_scalar`'s order and are
//! bit-identical to the scalar reference.

#![allow(clippy::missing_safety_doc)]

/// Rows of quantized activations handed to a tile (see `quant::QuantActs`).
pub struct ActRows<'a> {
    /// `[rows, nb * 32]`.
    pub qs: &'a [i8],
    /// `[rows, nbp, 8]`: block scale in every lane.
    pub lanes_d: &'a [f32],
    /// `[rows, nbp, 8]`: `s / 8` in every lane.
    pub lanes_s: &'a [f32],
    /// `[rows, nbp, 8]`: offset correction in lane 0.
    pub lanes_corr: &'a [i32],
    /// `[rows, nbp, 2]`: `(d, s)` per block.
    pub pairs_ds: &'a [f32],
    /// Blocks per row.
    pub nb: usize,
    /// Blocks per row rounded up to even.
    pub nbp: usize,
    /// Rows.
    pub rows: usize,
}

impl ActRows<'_> {
    /// Asserts that the tile's rows and weight rows are in bounds.
    fn check<const R: usize, const C: usize>(&self, w: &[&[u8]; C], r0: usize, block_bytes: usize) {
        for wc in w {
            assert!(wc.len() >= self.nb * block_bytes);
        }
        assert!(self.nbp >= self.nb && self.nbp.is_multiple_of(2));
        assert!(r0 + R <= self.rows && self.qs.len() >= self.rows * self.nb * 32);
        let lanes = self.rows * self.nbp * 8;
        assert!(self.lanes_d.len() >= lanes && self.lanes_s.len() >= lanes && self.lanes_corr.len() >= lanes);
        assert!(self.pairs_ds.len() >= self.rows * self.nbp * 2);
    }
}

/// Bytes per block of a quantized format tag.
const fn block_bytes(fmt: u8) -> usize {
    match fmt {
        FMT_Q8_0 => 34,
        FMT_Q4_0 => 18,
        _ => 20,
    }
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
    use super::{block_bytes, dt_of, ActRows, DT_F16, DT_F32, FMT_Q4_0, FMT_Q4_1, FMT_Q8_0};
    use std::arch::x86_64::*;

    /// The 32 nibbles of a Q4 block (`p`: 16 bytes) as bytes: low nibbles, then high.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 16 readable bytes at `p`.
        let tmp = unsafe { _mm_loadu_si128(p.cast()) };
        let both = _mm256_broadcastsi128_si256(tmp);
        let shifted = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
    }

    /// Quantized tile: weight rows `w[c]` (format `FMT`) against activation rows
    /// `r0..r0 + R` of `a`; returns `out[c][r]`.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn quant_tile<const R: usize, const C: usize, const FMT: u8>(
        w: &[&[u8]; C],
        a: &ActRows<'_>,
        r0: usize,
    ) -> [[f32; R]; C] {
        let bb = block_bytes(FMT);
        a.check::<R, C>(w, r0, bb);
        let (nb, nbp, k) = (a.nb, a.nbp, a.nb * 32);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        for b in 0..nb {
            let mut wq = [_mm256_setzero_si256(); C];
            let mut dw = [_mm256_setzero_ps(); C];
            let mut mw = [_mm256_setzero_ps(); C];
            for c in 0..C {
                // SAFETY: block `b < nb` of row `c` lies inside `w[c]` (checked above).
                unsafe {
                    let p = w[c].as_ptr().add(b * bb);
                    let h = if FMT == FMT_Q4_1 {
                        p.cast::<u32>().read_unaligned()
                    } else {
                        u32::from(p.cast::<u16>().read_unaligned())
                    };
                    let f = _mm_cvtph_ps(_mm_cvtsi32_si128(h as i32));
                    dw[c] = _mm256_broadcastss_ps(f);
                    if FMT == FMT_Q4_1 {
                        mw[c] = _mm256_broadcastss_ps(_mm_movehdup_ps(f));
                    }
                    wq[c] = match FMT {
                        FMT_Q8_0 => _mm256_loadu_si256(p.add(2).cast()),
                        FMT_Q4_0 => nibbles(p.add(2)),
                        _ => nibbles(p.add(4)),
                    };
                }
            }
            for r in 0..R {
                let row = r0 + r;
                let l = (row * nbp + b) * 8;
                // SAFETY: row `row` block `b` lies inside the activation arrays (checked above).
                let (xq, xd, xs, corr) = unsafe {
                    (
                        _mm256_loadu_si256(a.qs.as_ptr().add(row * k + b * 32).cast()),
                        _mm256_loadu_ps(a.lanes_d.as_ptr().add(l)),
                        _mm256_loadu_ps(a.lanes_s.as_ptr().add(l)),
                        _mm256_loadu_si256(a.lanes_corr.as_ptr().add(l).cast()),
                    )
                };
                for c in 0..C {
                    let prod = if FMT == FMT_Q8_0 {
                        _mm256_maddubs_epi16(_mm256_sign_epi8(wq[c], wq[c]), _mm256_sign_epi8(xq, wq[c]))
                    } else {
                        _mm256_maddubs_epi16(wq[c], xq)
                    };
                    let mut dot = _mm256_madd_epi16(prod, ones);
                    if FMT == FMT_Q4_0 {
                        dot = _mm256_add_epi32(dot, corr);
                    }
                    let scale = _mm256_mul_ps(dw[c], xd);
                    acc[c][r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[c][r]);
                    if FMT == FMT_Q4_1 {
                        acc[c][r] = _mm256_fmadd_ps(mw[c], xs, acc[c][r]);
                    }
                }
            }
        }
        let mut out = [[0.0f32; R]; C];
        for c in 0..C {
            for r in 0..R {
                out[c][r] = hsum(acc[c][r]);
            }
        }
        out
    }

    float_kernels!("avx2,fma,f16c");
}

/// AVX-512 VNNI kernels: two blocks per 512-bit vector (lanes 0..8 block `b`, 8..16 block
/// `b + 1`), `vpdpbusd` integer dots.
pub mod vnni {
    use super::{block_bytes, ActRows, FMT_Q4_1, FMT_Q8_0};
    use std::arch::x86_64::*;

    /// Weights of blocks `b` and (when `two`) `b + 1` starting at `p`: the unsigned byte
    /// operand, and `[d_b, m_b, d_b+1, m_b+1]` (`m` = 0 unless Q4_1). A missing second block
    /// is zero.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn weights<const FMT: u8>(p: *const u8, two: bool) -> (__m512i, __m128) {
        let bb = block_bytes(FMT);
        // SAFETY: the caller guarantees block `b` (and `b + 1` when `two`) are readable at `p`.
        unsafe {
            let q = p.add(bb);
            let half = |p: *const u8| -> i32 {
                if FMT == FMT_Q4_1 {
                    p.cast::<u32>().read_unaligned() as i32
                } else {
                    i32::from(p.cast::<u16>().read_unaligned())
                }
            };
            let h1 = if two { half(q) } else { 0 };
            let f = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(half(p)), h1, 1));
            let wq = if FMT == FMT_Q8_0 {
                let lo = _mm256_loadu_si256(p.add(2).cast());
                let hi = if two {
                    _mm256_loadu_si256(q.add(2).cast())
                } else {
                    _mm256_setzero_si256()
                };
                let v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                _mm512_xor_si512(v, _mm512_set1_epi8(-128))
            } else {
                let off = if FMT == FMT_Q4_1 { 4 } else { 2 };
                let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(off).cast()));
                let hi = if two {
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(q.add(off).cast()))
                } else {
                    _mm256_setzero_si256()
                };
                let v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
                _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
            };
            (wq, f)
        }
    }

    /// Horizontal sum of 16 lanes in a fixed order.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn hsum(v: __m512) -> f32 {
        let h = _mm256_add_ps(
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
        );
        let t = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
        _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)))
    }

    /// Quantized tile: weight rows `w[c]` (format `FMT`) against activation rows
    /// `r0..r0 + R` of `a`; returns `out[c][r]`. Activations must carry the offset
    /// correction for `FMT` (`Q8_0`: shift 7, `Q4_0`: shift 3).
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn quant_tile<const R: usize, const C: usize, const FMT: u8>(
        w: &[&[u8]; C],
        a: &ActRows<'_>,
        r0: usize,
    ) -> [[f32; R]; C] {
        let bb = block_bytes(FMT);
        a.check::<R, C>(w, r0, bb);
        let (nb, nbp, k) = (a.nb, a.nbp, a.nb * 32);
        let mut acc = [[_mm512_setzero_ps(); R]; C];
        // Lanes 1 and 3 accumulate `m * s` of even and odd blocks (Q4_1); 0 and 2 are unused.
        let mut acc_ms = [[_mm_setzero_ps(); R]; C];
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
        for b in (0..nb).step_by(2) {
            let two = b + 1 < nb;
            let mut wq = [_mm512_setzero_si512(); C];
            let mut dm = [_mm_setzero_ps(); C];
            for c in 0..C {
                // SAFETY: blocks `b` and, when `two`, `b + 1` of row `c` lie inside `w[c]`.
                (wq[c], dm[c]) = unsafe { weights::<FMT>(w[c].as_ptr().add(b * bb), two) };
            }
            for r in 0..R {
                let row = r0 + r;
                let l = (row * nbp + b) * 8;
                // SAFETY: row `row` blocks `b..b + 2` lie inside the (padded) activation
                // arrays; `qs` holds block `b + 1` only when `two`.
                let (xq, ds, corr) = unsafe {
                    let pq = a.qs.as_ptr().add(row * k + b * 32);
                    let xq = if two {
                        _mm512_loadu_si512(pq.cast())
                    } else {
                        _mm512_zextsi256_si512(_mm256_loadu_si256(pq.cast()))
                    };
                    (
                        xq,
                        _mm_loadu_ps(a.pairs_ds.as_ptr().add((row * nbp + b) * 2)),
                        _mm512_loadu_si512(a.lanes_corr.as_ptr().add(l).cast()),
                    )
                };
                for c in 0..C {
                    let init = if FMT == FMT_Q4_1 {
                        _mm512_setzero_si512()
                    } else {
                        corr
                    };
                    let dot = _mm512_dpbusd_epi32(init, wq[c], xq);
                    // [d_w d_x, m_w s_x] for both blocks, then d_w d_x over each block's lanes.
                    let prod = _mm_mul_ps(dm[c], ds);
                    let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(prod));
                    acc[c][r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[c][r]);
                    if FMT == FMT_Q4_1 {
                        acc_ms[c][r] = _mm_add_ps(acc_ms[c][r], prod);
                    }
                }
            }
        }
        let mut out = [[0.0f32; R]; C];
        for c in 0..C {
            for r in 0..R {
                out[c][r] = hsum(acc[c][r]);
                if FMT == FMT_Q4_1 {
                    let m = acc_ms[c][r];
                    let odd = _mm_cvtss_f32(_mm_shuffle_ps::<0b11>(m, m));
                    out[c][r] += _mm_cvtss_f32(_mm_movehdup_ps(m)) + odd;
                }
            }
        }
        out
    }
}
