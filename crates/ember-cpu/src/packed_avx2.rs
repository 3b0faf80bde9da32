//! AVX2 tiles over the packed layout (`packed`): `R` activation rows x 16 weight rows, in two
//! halves of 8 lanes (256-bit vectors).
//!
//! A 4-byte lane slot against 4 broadcast activation bytes is `vpmaddubsw` + `vpmaddwd` with
//! ones (unsigned field values up to 63, so the 16-bit pair sums never saturate). Signed
//! 8-bit weights (Q8_0, Q8_K, IQ4_NL's table values) use the sign trick instead
//! (`|w| * sign(x, w)`). Integer sums are exact and the f32 stage is the reference's `fma`
//! sequence, so results equal `dot_scalar` (and the AVX-512 kernels) bit for bit.

use crate::packed::{Layout, LANES, VEC_BYTES};
use crate::packed_kernel::{act_rows, layout_of_tag, ActRow};
use crate::quant::QuantActs;
use std::arch::x86_64::*;

/// Lanes per half tile.
const HALF: usize = LANES / 2;

/// Sums of `n` consecutive 16-element groups from group `g0` of an activation row.
#[inline(always)]
unsafe fn bsum(a: &ActRow, g0: usize, n: usize) -> i32 {
    // SAFETY: the caller keeps `g0 + n` within the row's groups.
    (0..n).map(|g| unsafe { *a.bsums.add(g0 + g) }).sum()
}

/// Bytes `0..32` of a half vector set to 0xff where bit `j` of `mask` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn expand_mask(mask: u32) -> __m256i {
    let v = _mm256_set1_epi32(mask as i32);
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, pick), bits), bits)
}

/// One tile: see `packed_vnni::tile` (same contract, same results).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `group` holds `num_blocks` packed blocks of `T`;
/// `acts` holds rows `r0..r0 + R` of `num_blocks` blocks of the activation format `T` pairs with.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile<const T: u8, const R: usize>(
    group: &[u8],
    num_blocks: usize,
    acts: &QuantActs,
    r0: usize,
) -> [[f32; LANES]; R] {
    let l: Layout = const { layout_of_tag(T) };
    assert!(group.len() >= num_blocks * l.block_bytes);
    let rows: [ActRow; R] = act_rows(acts, r0, num_blocks * l.fmt.block_len, l.fmt.block_len);
    let mut out = [[0.0f32; LANES]; R];
    for h in 0..2 {
        // SAFETY: forwarded from the caller; `h < 2`.
        let half = unsafe { half_tile::<T, R>(&l, group.as_ptr(), num_blocks, &rows, h) };
        for (o, v) in out.iter_mut().zip(half) {
            o[h * HALF..(h + 1) * HALF].copy_from_slice(&v);
        }
    }
    out
}

/// Lanes `8h..8h + 8` of a tile.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn half_tile<const T: u8, const R: usize>(
    l: &Layout,
    group: *const u8,
    num_blocks: usize,
    rows: &[ActRow; R],
    h: usize,
) -> [[f32; HALF]; R] {
    let f = l.fmt;
    let signed = f.table || l.base_bits == 8;
    let offset = if signed { 0 } else { f.offset };
    let low = _mm256_set1_epi8(if l.base_bits == 8 {
        -1
    } else {
        ((1u16 << l.base_bits) - 1) as i8
    });
    let ones = _mm256_set1_epi16(1);
    let table = {
        // SAFETY: the table is 16 readable bytes.
        let t = unsafe { _mm_loadu_si128(crate::blocks::IQ4_NL_VALUES.as_ptr().cast()) };
        _mm256_broadcastsi128_si256(t)
    };
    let groups_per_block = f.block_len / 16;
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..num_blocks {
        // SAFETY (whole block): every offset below lies inside packed block `b`, and every
        // activation read inside block `b` of the given rows (the caller's contract).
        unsafe {
            let p = group.add(b * l.block_bytes);
            let e0 = b * f.block_len;
            let g0 = e0 / 16;
            let mut isum = [_mm256_setzero_si256(); R];
            let mut msum = [_mm256_setzero_si256(); R];
            if !f.scales && offset != 0 {
                for r in 0..R {
                    isum[r] = _mm256_set1_epi32(-offset * bsum(&rows[r], g0, groups_per_block));
                }
            }
            for q in 0..l.num_vecs / 4 {
                let mut s = [[_mm256_setzero_si256(); 4]; R];
                if f.scales && offset != 0 {
                    for r in 0..R {
                        for fi in 0..l.fields {
                            s[r][fi] = _mm256_set1_epi32(-offset * bsum(&rows[r], g0 + l.fields * q + fi, 1));
                        }
                    }
                }
                for vq in 0..4 {
                    let v = 4 * q + vq;
                    let w = _mm256_loadu_si256(p.add(v * VEC_BYTES + 32 * h).cast());
                    for fi in 0..l.fields {
                        let mut u = match l.fields {
                            1 => w,
                            2 if fi == 1 => _mm256_and_si256(_mm256_srli_epi16::<4>(w), low),
                            _ => _mm256_and_si256(_mm256_srl_epi16(w, _mm_cvtsi32_si128(2 * fi as i32)), low),
                        };
                        for hb in 0..l.high_bits as usize {
                            let k = p
                                .add(l.mask_off(v, fi, hb) + 4 * h)
                                .cast::<u32>()
                                .read_unaligned();
                            let add = _mm256_set1_epi8(1i8 << (l.base_bits as usize + hb));
                            u = _mm256_add_epi8(u, _mm256_and_si256(expand_mask(k), add));
                        }
                        let x_off = e0 + l.element(v, fi, 0);
                        for r in 0..R {
                            let x = _mm256_set1_epi32(rows[r].qs.add(x_off).cast::<i32>().read_unaligned());
                            let pairs = if signed {
                                let qv = if f.table {
                                    _mm256_shuffle_epi8(table, u)
                                } else {
                                    _mm256_xor_si256(u, _mm256_set1_epi8(-128))
                                };
                                _mm256_maddubs_epi16(_mm256_abs_epi8(qv), _mm256_sign_epi8(x, qv))
                            } else {
                                _mm256_maddubs_epi16(u, x)
                            };
                            s[r][fi] = _mm256_add_epi32(s[r][fi], _mm256_madd_epi16(pairs, ones));
                        }
                    }
                }
                // Fold the quad's per-field sums into the block sums: scaled by the sub-block
                // scales (K-quants; sub-blocks of 16 are one field, of 32 both nibble fields),
                // with the sub-block mins against the activation sums.
                if !f.scales {
                    for r in 0..R {
                        for fi in 0..l.fields {
                            isum[r] = _mm256_add_epi32(isum[r], s[r][fi]);
                        }
                    }
                } else {
                    let per_sub = f.sub_len / 16;
                    for j in 0..l.fields / per_sub {
                        let sub = (l.fields * q) / per_sub + j;
                        let sc = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(
                            p.add(l.scales_off + sub * LANES + HALF * h)
                                .cast::<i64>()
                                .read_unaligned(),
                        ));
                        let mn = if f.mins {
                            _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(
                                p.add(l.mins_off + sub * LANES + HALF * h)
                                    .cast::<i64>()
                                    .read_unaligned(),
                            ))
                        } else {
                            _mm256_setzero_si256()
                        };
                        for r in 0..R {
                            let mut t = s[r][j * per_sub];
                            if per_sub == 2 {
                                t = _mm256_add_epi32(t, s[r][j * per_sub + 1]);
                            }
                            isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(t, sc));
                            if f.mins {
                                let xs = _mm256_set1_epi32(bsum(&rows[r], g0 + sub * per_sub, per_sub));
                                msum[r] = _mm256_add_epi32(msum[r], _mm256_mullo_epi32(mn, xs));
                            }
                        }
                    }
                }
            }
            let dw = if l.d_f32 {
                _mm256_loadu_ps(p.add(l.d_off + 4 * HALF * h).cast())
            } else {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(l.d_off + 2 * HALF * h).cast()))
            };
            let mw = if f.block_min || f.mins {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(l.m_off + 2 * HALF * h).cast()))
            } else {
                _mm256_setzero_ps()
            };
            for r in 0..R {
                let dx = _mm256_set1_ps(*rows[r].d.add(b));
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[r]), acc[r]);
                if f.block_min {
                    acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*rows[r].s.add(e0 / 32)), acc[r]);
                }
                if f.mins {
                    acc[r] = _mm256_fnmadd_ps(_mm256_mul_ps(mw, dx), _mm256_cvtepi32_ps(msum[r]), acc[r]);
                }
            }
        }
    }
    let mut out = [[0.0f32; HALF]; R];
    for r in 0..R {
        // SAFETY: `out[r]` holds 8 f32.
        unsafe { _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
    }
    out
}
