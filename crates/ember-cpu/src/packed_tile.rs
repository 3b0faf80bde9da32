//! The tile kernel over the packed layout (`packed`), written once over the vector operations
//! of [`TileVec`]: `R` activation rows x `TileVec::WIDTH` weight rows (lanes `lane0..`).
//!
//! Each 4-byte lane slot of a quant vector is dotted with 4 broadcast activation bytes
//! (`TileVec::dot4`), so every lane accumulates its own row's exact integer sums; the signed
//! offset of unsigned field values is removed by starting each sum from `-offset * sum(x)`.
//! Sums are scaled by the sub-block scales per 16- or 32-element run, then the f32 stage is
//! the reference's `fma` sequence per block, lane by lane: results equal `dot_scalar` bit for
//! bit on every ISA (`packed_x86` implements `TileVec` for AVX-512 VNNI and AVX2, `packed_neon` for
//! NEON with and without `dotprod`).
//!
//! Everything here is `#[inline(always)]`: the kernels are instantiated inside the ISA's
//! `#[target_feature]` functions, where the intrinsics inline.

#![allow(clippy::needless_range_loop)]

use crate::packed::{Layout, LANES, VEC_BYTES};
use crate::packed_kernel::ActRow;

/// The vector operations of one ISA a tile needs. Integer vectors hold `WIDTH` i32 lanes
/// (or `4 * WIDTH` bytes), float vectors `WIDTH` f32 lanes.
///
/// # Safety
/// Every method may only run on a CPU with the implementor's features; pointers must be
/// readable for the bytes each method documents.
pub unsafe trait TileVec {
    /// Weight rows (lanes) per vector.
    const WIDTH: usize;
    /// True when `dot4` takes signed weights for the table and 8-bit formats (offset 0);
    /// false when it takes them shifted to unsigned (offset 128).
    const SIGNED_BYTES: bool;
    /// Integer vector.
    type I: Copy;
    /// Float vector.
    type F: Copy;
    /// All zero.
    unsafe fn zero_i() -> Self::I;
    /// All zero.
    unsafe fn zero_f() -> Self::F;
    /// `4 * WIDTH` bytes at `p`.
    unsafe fn load(p: *const u8) -> Self::I;
    /// `(w >> shift) & low` in every byte (`shift` < 8).
    unsafe fn field(w: Self::I, shift: u32, low: u8) -> Self::I;
    /// `u + add` in the bytes whose bit is set in the `4 * WIDTH`-bit mask at `mask`.
    unsafe fn add_masked(u: Self::I, mask: *const u8, add: i8) -> Self::I;
    /// IQ4_NL's value of every nibble index byte (plus 128 unless `SIGNED_BYTES`).
    unsafe fn table(u: Self::I) -> Self::I;
    /// `acc` plus, per lane, the dot of its 4 bytes of `u` with the 4 bytes of `x`; `u` is
    /// signed when `signed` (only with `SIGNED_BYTES`), else unsigned below 64.
    unsafe fn dot4(acc: Self::I, u: Self::I, x: i32, signed: bool) -> Self::I;
    /// `v` in every lane.
    unsafe fn splat_i(v: i32) -> Self::I;
    /// Lane-wise sum.
    unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
    /// Bitwise exclusive or.
    unsafe fn xor_i(a: Self::I, b: Self::I) -> Self::I;
    /// Lane-wise low 32 bits of the product.
    unsafe fn mul_i(a: Self::I, b: Self::I) -> Self::I;
    /// `WIDTH` signed bytes at `p`, widened.
    unsafe fn load_i8(p: *const u8) -> Self::I;
    /// `WIDTH` unsigned bytes at `p`, widened.
    unsafe fn load_u8(p: *const u8) -> Self::I;
    /// `WIDTH` f16 at `p`, widened.
    unsafe fn load_f16(p: *const u8) -> Self::F;
    /// `WIDTH` f32 at `p`.
    unsafe fn load_f32(p: *const u8) -> Self::F;
    /// `v` in every lane.
    unsafe fn splat_f(v: f32) -> Self::F;
    /// Lane-wise product.
    unsafe fn mul_f(a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise `a * b + c`, one rounding.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// Lane-wise `c - a * b`, one rounding.
    unsafe fn fnmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// Lane-wise i32 to f32 (round to nearest even).
    unsafe fn to_f(a: Self::I) -> Self::F;
    /// Stores `WIDTH` f32 at `p`.
    unsafe fn store_f(p: *mut f32, v: Self::F);
}

/// Sum of the quants of `n` consecutive 16-element groups from group `g0` of a row.
#[inline(always)]
unsafe fn bsum(a: &ActRow, g0: usize, n: usize) -> i32 {
    // SAFETY: the caller keeps `g0 + n` within the row's groups.
    (0..n).map(|g| unsafe { *a.bsums.add(g0 + g) }).sum()
}

/// Lanes `lane0..lane0 + V::WIDTH` of a tile: `out[r][lane0 + i]` for rows `rows` against
/// `num_blocks` packed blocks of layout `l` at `group`.
///
/// # Safety
/// The CPU supports `V`; `group` holds `num_blocks` packed blocks of `l`; the rows hold
/// `num_blocks` activation blocks of the format `l` pairs with; `lane0 + V::WIDTH <= LANES`.
#[inline(always)]
pub unsafe fn tile_lanes<V: TileVec, const R: usize>(
    l: &Layout,
    group: *const u8,
    num_blocks: usize,
    rows: &[ActRow; R],
    lane0: usize,
    out: &mut [[f32; LANES]; R],
) {
    let f = l.fmt;
    let signed = V::SIGNED_BYTES && (f.table || l.base_bits == 8);
    let offset = if signed {
        0
    } else if f.table {
        128
    } else {
        f.offset
    };
    let low = if l.base_bits == 8 {
        0xff
    } else {
        (1u16 << l.base_bits) as u8 - 1
    };
    let groups_per_block = f.block_len / 16;
    // SAFETY (whole body): offsets stay inside the packed blocks (the `Layout` of `l`, lanes
    // `lane0..lane0 + WIDTH`) and the activation blocks (the caller's contract).
    unsafe {
        let mut acc = [V::zero_f(); R];
        for b in 0..num_blocks {
            let p = group.add(b * l.block_bytes);
            let e0 = b * f.block_len;
            let g0 = e0 / 16;
            let mut isum = [V::zero_i(); R];
            let mut msum = [V::zero_i(); R];
            if !f.scales && offset != 0 {
                for r in 0..R {
                    isum[r] = V::splat_i(-offset * bsum(&rows[r], g0, groups_per_block));
                }
            }
            for q in 0..l.num_vecs / 4 {
                let mut s = [[V::zero_i(); 4]; R];
                if f.scales && offset != 0 {
                    for r in 0..R {
                        for fi in 0..l.fields {
                            s[r][fi] = V::splat_i(-offset * bsum(&rows[r], g0 + l.fields * q + fi, 1));
                        }
                    }
                }
                for vq in 0..4 {
                    let v = 4 * q + vq;
                    let w = V::load(p.add(v * VEC_BYTES + 4 * lane0));
                    for fi in 0..l.fields {
                        let mut u = if l.fields == 1 {
                            w
                        } else {
                            V::field(w, l.base_bits * fi as u32, low)
                        };
                        for h in 0..l.high_bits as usize {
                            let add = 1i8 << (l.base_bits as usize + h);
                            u = V::add_masked(u, p.add(l.mask_off(v, fi, h) + lane0 / 2), add);
                        }
                        if f.table {
                            u = V::table(u);
                        } else if signed {
                            // Stored as q + 128: back to the signed quant.
                            u = V::xor_i(u, V::splat_i(i32::from_ne_bytes([0x80; 4])));
                        }
                        let x_off = e0 + l.element(v, fi, 0);
                        for r in 0..R {
                            let x = rows[r].qs.add(x_off).cast::<i32>().read_unaligned();
                            // Without sub-block scales every field's sum goes straight into
                            // the block sum (exact integer sums: the order does not matter).
                            if f.scales {
                                s[r][fi] = V::dot4(s[r][fi], u, x, signed);
                            } else {
                                isum[r] = V::dot4(isum[r], u, x, signed);
                            }
                        }
                    }
                }
                // Fold the quad's per-field sums into the block sums: scaled by the sub-block
                // scales (K-quants; a 16-element sub-block is one field, a 32-element one both
                // nibble fields), with the sub-block mins against the activation sums.
                if !f.scales {
                    continue;
                }
                let per_sub = f.sub_len / 16;
                for j in 0..l.fields / per_sub {
                    let sub = (l.fields * q) / per_sub + j;
                    let sc = V::load_i8(p.add(l.scales_off + sub * LANES + lane0));
                    let mn = if f.mins {
                        V::load_u8(p.add(l.mins_off + sub * LANES + lane0))
                    } else {
                        V::zero_i()
                    };
                    for r in 0..R {
                        let mut t = s[r][j * per_sub];
                        if per_sub == 2 {
                            t = V::add_i(t, s[r][j * per_sub + 1]);
                        }
                        isum[r] = V::add_i(isum[r], V::mul_i(t, sc));
                        if f.mins {
                            let xs = V::splat_i(bsum(&rows[r], g0 + sub * per_sub, per_sub));
                            msum[r] = V::add_i(msum[r], V::mul_i(mn, xs));
                        }
                    }
                }
            }
            let dw = if l.d_f32 {
                V::load_f32(p.add(l.d_off + 4 * lane0))
            } else {
                V::load_f16(p.add(l.d_off + 2 * lane0))
            };
            let mw = if f.block_min || f.mins {
                V::load_f16(p.add(l.m_off + 2 * lane0))
            } else {
                V::zero_f()
            };
            for r in 0..R {
                let dx = V::splat_f(*rows[r].d.add(b));
                acc[r] = V::fmadd(V::mul_f(dw, dx), V::to_f(isum[r]), acc[r]);
                if f.block_min {
                    acc[r] = V::fmadd(mw, V::splat_f(*rows[r].s.add(e0 / 32)), acc[r]);
                }
                if f.mins {
                    acc[r] = V::fnmadd(V::mul_f(mw, dx), V::to_f(msum[r]), acc[r]);
                }
            }
        }
        for r in 0..R {
            V::store_f(out[r][lane0..].as_mut_ptr(), acc[r]);
        }
    }
}
