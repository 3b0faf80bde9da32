//! AVX-512 VNNI tiles over the packed layout (`packed`): `R` activation rows x 16 weight
//! rows, one 512-bit vector lane per weight row.
//!
//! Each 4-byte lane slot of a quant vector is dotted with 4 broadcast activation bytes by
//! `vpdpbusd`, so every lane accumulates its own row's exact integer sums; field values are
//! unsigned (IQ4_NL's table is stored shifted by 128 and Q8's quants by 128), and the signed
//! offset is removed by starting each sum from `-offset * sum(x)`. The f32 stage is the
//! reference's `fma` sequence per block, lane by lane, so results equal `dot_scalar` bit for
//! bit.

use crate::packed::{Layout, LANES, VEC_BYTES};
use crate::packed_kernel::{act_rows, layout_of_tag, ActRow};
use crate::quant::QuantActs;
use std::arch::x86_64::*;

/// Sums of `n` consecutive 16-element groups from group `g0` of an activation row.
#[inline(always)]
unsafe fn bsum(a: &ActRow, g0: usize, n: usize) -> i32 {
    // SAFETY: the caller keeps `g0 + n` within the row's groups.
    (0..n).map(|g| unsafe { *a.bsums.add(g0 + g) }).sum()
}

/// One tile: weight rows of packed group `group` (`num_blocks` packed blocks of format tag
/// `T`) against activation rows `r0..r0 + R`; returns `out[r][lane]`.
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; `group` holds `num_blocks`
/// packed blocks of `T`; `acts` holds rows `r0..r0 + R` of `num_blocks` blocks of the
/// activation format `T` pairs with.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::needless_range_loop)]
pub unsafe fn tile<const T: u8, const R: usize>(
    group: &[u8],
    num_blocks: usize,
    acts: &QuantActs,
    r0: usize,
) -> [[f32; LANES]; R] {
    let l: Layout = const { layout_of_tag(T) };
    let f = l.fmt;
    assert!(group.len() >= num_blocks * l.block_bytes);
    let rows: [ActRow; R] = act_rows(acts, r0, num_blocks * f.block_len, f.block_len);
    let offset = if f.table { 128 } else { f.offset };
    let low = _mm512_set1_epi8(if l.base_bits == 8 {
        -1
    } else {
        ((1u16 << l.base_bits) - 1) as i8
    });
    let table = {
        let mut t = [0i8; 16];
        for (o, v) in t.iter_mut().zip(crate::blocks::IQ4_NL_VALUES) {
            *o = (i32::from(v) + 128) as u8 as i8;
        }
        // SAFETY: `t` is 16 readable bytes.
        _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(t.as_ptr().cast()) })
    };
    let groups_per_block = f.block_len / 16;
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..num_blocks {
        // SAFETY (whole block): every offset below lies inside packed block `b` (asserted
        // length and `Layout`), and every activation read inside block `b` of rows `r0..r0 + R`.
        unsafe {
            let p = group.as_ptr().add(b * l.block_bytes);
            let e0 = b * f.block_len;
            let g0 = e0 / 16;
            let mut isum = [_mm512_setzero_si512(); R];
            let mut msum = [_mm512_setzero_si512(); R];
            if !f.scales && offset != 0 {
                for r in 0..R {
                    isum[r] = _mm512_set1_epi32(-offset * bsum(&rows[r], g0, groups_per_block));
                }
            }
            for q in 0..l.num_vecs / 4 {
                let mut s = [[_mm512_setzero_si512(); 4]; R];
                if f.scales && offset != 0 {
                    for r in 0..R {
                        for fi in 0..l.fields {
                            s[r][fi] = _mm512_set1_epi32(-offset * bsum(&rows[r], g0 + l.fields * q + fi, 1));
                        }
                    }
                }
                for vq in 0..4 {
                    let v = 4 * q + vq;
                    let w = _mm512_loadu_si512(p.add(v * VEC_BYTES).cast());
                    for fi in 0..l.fields {
                        let mut u = match l.fields {
                            1 => w,
                            2 if fi == 1 => _mm512_and_si512(_mm512_srli_epi16::<4>(w), low),
                            _ => _mm512_and_si512(_mm512_srl_epi16(w, _mm_cvtsi32_si128(2 * fi as i32)), low),
                        };
                        for h in 0..l.high_bits as usize {
                            let k: __mmask64 = p.add(l.mask_off(v, fi, h)).cast::<u64>().read_unaligned();
                            u = _mm512_mask_add_epi8(
                                u,
                                k,
                                u,
                                _mm512_set1_epi8(1i8 << (l.base_bits as usize + h)),
                            );
                        }
                        if f.table {
                            u = _mm512_shuffle_epi8(table, u);
                        }
                        let x_off = e0 + l.element(v, fi, 0);
                        for r in 0..R {
                            let x = _mm512_set1_epi32(rows[r].qs.add(x_off).cast::<i32>().read_unaligned());
                            s[r][fi] = _mm512_dpbusd_epi32(s[r][fi], u, x);
                        }
                    }
                }
                // Fold the quad's per-field sums into the block sums: scaled by the sub-block
                // scales (K-quants; sub-blocks of 16 are one field, of 32 both nibble fields),
                // with the sub-block mins against the activation sums.
                if !f.scales {
                    for r in 0..R {
                        for fi in 0..l.fields {
                            isum[r] = _mm512_add_epi32(isum[r], s[r][fi]);
                        }
                    }
                } else {
                    let per_sub = f.sub_len / 16;
                    for j in 0..l.fields / per_sub {
                        let sub = (l.fields * q) / per_sub + j;
                        let sc =
                            _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(l.scales_off + sub * LANES).cast()));
                        let mn = if f.mins {
                            _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(l.mins_off + sub * LANES).cast()))
                        } else {
                            _mm512_setzero_si512()
                        };
                        for r in 0..R {
                            let mut t = s[r][j * per_sub];
                            if per_sub == 2 {
                                t = _mm512_add_epi32(t, s[r][j * per_sub + 1]);
                            }
                            isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(t, sc));
                            if f.mins {
                                let xs = _mm512_set1_epi32(bsum(&rows[r], g0 + sub * per_sub, per_sub));
                                msum[r] = _mm512_add_epi32(msum[r], _mm512_mullo_epi32(mn, xs));
                            }
                        }
                    }
                }
            }
            let dw = if l.d_f32 {
                _mm512_loadu_ps(p.add(l.d_off).cast())
            } else {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(l.d_off).cast()))
            };
            let mw = if f.block_min || f.mins {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(l.m_off).cast()))
            } else {
                _mm512_setzero_ps()
            };
            for r in 0..R {
                let dx = _mm512_set1_ps(*rows[r].d.add(b));
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[r]), acc[r]);
                if f.block_min {
                    acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*rows[r].s.add(e0 / 32)), acc[r]);
                }
                if f.mins {
                    acc[r] = _mm512_fnmadd_ps(_mm512_mul_ps(mw, dx), _mm512_cvtepi32_ps(msum[r]), acc[r]);
                }
            }
        }
    }
    let mut out = [[0.0f32; LANES]; R];
    for r in 0..R {
        // SAFETY: `out[r]` holds 16 f32.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
    }
    out
}
