//! The repacked weight layout the quantized SIMD kernels read: 16 weight rows interleaved.
//!
//! Rows are taken in groups of [`LANES`] (the last group padded with zero rows). For each
//! group, block after block, one packed block holds the 16 rows' block `b`:
//!
//! ```text
//! quant vectors   num_vecs x 64 bytes: lane r owns bytes 4r..4r+4 of each vector
//! high-bit masks  num_vecs x fields x high_bits x u64: bit 4r+i set = add 2^(base_bits+h)
//!                 to field f of byte i of lane r
//! d               16 x f16 (Q8_K: 16 x f32)
//! m               16 x f16 (Q4_1 / Q5_1 min, K-quant dmin), when the format has one
//! scales          num_subs x 16 x i8 (K-quants), sub-block major
//! mins            num_subs x 16 x u8 (Q2_K, Q4_K, Q5_K)
//! ```
//!
//! A byte holds `fields` values of `base_bits` bits (4 crumbs of 2 bits, 2 nibbles or 1 byte),
//! the low bits of each element's field value `u` (see `blocks::Block`); bits above
//! `base_bits` (Q3_K's third, the Q5 formats' fifth, Q6_K's fifth and sixth) live in the
//! masks. Field `f` of byte `i` of lane `r` in vector `v` is element
//! `(v / 4) * 16 * fields + 16 f + 4 (v % 4) + i` of row `r`'s block, so each group of four
//! vectors covers `16 * fields` consecutive elements and each field of it one run of 16
//! elements (a Q8_K `bsums` group). One 4-byte lane slot against 4 broadcast activation bytes
//! is exactly one `vpdpbusd` lane, which yields a whole block's integer dot for 16 rows at
//! once without any horizontal sum: the SIMD kernels therefore compute the reference
//! arithmetic of `dot_scalar` exactly.
//!
//! Memory equals the GGUF size for the 32-element formats and Q6_K; Q4_K and Q5_K take 4 more
//! bytes per 256 weights (scales and mins unpacked to bytes), Q3_K 4 and Q2_K 16 more, Q8_K 32
//! fewer (no `bsums`).

use crate::alloc::AlignedBytes;
use crate::blocks::{decode_block, format_of, Block, Format};
use ember_core::{BackendResult, WeightDType};

/// Weight rows interleaved in one packed group.
pub const LANES: usize = 16;
/// Bytes of one quant vector (16 lanes x 4 bytes).
pub const VEC_BYTES: usize = 64;

/// Where each part of a packed block lives (byte offsets within the block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The integer structure of the format.
    pub fmt: Format,
    /// Low bits of each field value stored in the quant vectors: 2, 4 or 8.
    pub base_bits: u32,
    /// Field values per byte: 4, 2 or 1.
    pub fields: usize,
    /// Bits of the field value above `base_bits` (kept in the masks): 0, 1 or 2.
    pub high_bits: u32,
    /// Quant vectors per block.
    pub num_vecs: usize,
    /// Offset of the masks.
    pub masks_off: usize,
    /// Offset of the 16 block scales.
    pub d_off: usize,
    /// True when `d` is stored as f32 (Q8_K), else f16.
    pub d_f32: bool,
    /// Offset of the 16 mins (`dmin` for K-quants), when the format has them.
    pub m_off: usize,
    /// Offset of the sub-block scales.
    pub scales_off: usize,
    /// Offset of the sub-block mins.
    pub mins_off: usize,
    /// Bytes of one packed block.
    pub block_bytes: usize,
}

impl Layout {
    /// The packed layout of a quantized format; `None` for plain floats.
    pub const fn of(dtype: WeightDType) -> Option<Self> {
        let Some(fmt) = format_of(dtype) else {
            return None;
        };
        let base_bits = match fmt.bits {
            2 | 3 => 2,
            4..=6 => 4,
            _ => 8,
        };
        let fields = (8 / base_bits) as usize;
        let num_vecs = fmt.block_len * LANES * base_bits as usize / 8 / VEC_BYTES;
        let high_bits = fmt.bits - base_bits;
        let masks_off = num_vecs * VEC_BYTES;
        let d_off = masks_off + num_vecs * fields * high_bits as usize * 8;
        let d_f32 = matches!(dtype, WeightDType::Q8_K);
        let m_off = d_off + LANES * if d_f32 { 4 } else { 2 };
        let has_m = fmt.block_min || fmt.mins;
        let scales_off = m_off + if has_m { 2 * LANES } else { 0 };
        let mins_off = scales_off + if fmt.scales { fmt.num_subs() * LANES } else { 0 };
        let block_bytes = mins_off + if fmt.mins { fmt.num_subs() * LANES } else { 0 };
        Some(Self {
            fmt,
            base_bits,
            fields,
            high_bits,
            num_vecs,
            masks_off,
            d_off,
            d_f32,
            m_off,
            scales_off,
            mins_off,
            block_bytes,
        })
    }

    /// Element (within the block) held by field `f` of byte `i` of a lane of vector `v`.
    #[inline]
    pub fn element(&self, v: usize, f: usize, i: usize) -> usize {
        (v / 4) * 16 * self.fields + 16 * f + 4 * (v % 4) + i
    }

    /// Offset of the mask of high bit `h` of field `f` of vector `v`.
    #[inline]
    pub fn mask_off(&self, v: usize, f: usize, h: usize) -> usize {
        self.masks_off + ((v * self.fields + f) * self.high_bits as usize + h) * 8
    }
}

/// Packs `rows` rows of `row_bytes` GGUF bytes each (`raw`, `[rows, row_bytes]`) into
/// the layout above; `what` names the tensor in an allocation error.
pub fn pack(
    dtype: WeightDType,
    raw: &[u8],
    rows: usize,
    row_bytes: usize,
    what: &str,
) -> BackendResult<AlignedBytes> {
    let Some(layout) = Layout::of(dtype) else {
        unreachable!("float weight")
    };
    let num_blocks = row_bytes / dtype.block_bytes();
    let num_groups = rows.div_ceil(LANES);
    let total = num_groups * num_blocks * layout.block_bytes;
    let mut out = crate::alloc::try_zeroed_vec::<u8>(total, what)?;
    if total == 0 {
        return AlignedBytes::copy_from(&out, what);
    }
    let mut blocks: Vec<Block> = vec![Block::default(); LANES];
    for (g, group_out) in out.chunks_exact_mut(num_blocks * layout.block_bytes).enumerate() {
        for (b, dst) in group_out.chunks_exact_mut(layout.block_bytes).enumerate() {
            for (lane, blk) in blocks.iter_mut().enumerate() {
                let row = g * LANES + lane;
                if row < rows {
                    let start = row * row_bytes + b * dtype.block_bytes();
                    decode_block(dtype, &raw[start..start + dtype.block_bytes()], blk);
                } else {
                    *blk = Block::default();
                }
            }
            write_block(&layout, &blocks, dst);
        }
    }
    AlignedBytes::copy_from(&out, what)
}

/// Writes the packed block of 16 decoded lanes.
fn write_block(layout: &Layout, blocks: &[Block], dst: &mut [u8]) {
    let low_mask = if layout.base_bits == 8 {
        0xff
    } else {
        (1u8 << layout.base_bits) - 1
    };
    for (lane, blk) in blocks.iter().enumerate() {
        for v in 0..layout.num_vecs {
            for i in 0..4 {
                let mut byte = 0u8;
                for f in 0..layout.fields {
                    let u = blk.u[layout.element(v, f, i)];
                    byte |= (u & low_mask) << (layout.base_bits as usize * f);
                    for h in 0..layout.high_bits as usize {
                        if (u >> (layout.base_bits as usize + h)) & 1 != 0 {
                            dst[layout.mask_off(v, f, h) + (4 * lane + i) / 8] |= 1 << ((4 * lane + i) % 8);
                        }
                    }
                }
                dst[v * VEC_BYTES + 4 * lane + i] = byte;
            }
        }
        if layout.d_f32 {
            dst[layout.d_off + 4 * lane..][..4].copy_from_slice(&blk.d.to_le_bytes());
        } else {
            let d = half::f16::from_f32(blk.d).to_bits().to_le_bytes();
            dst[layout.d_off + 2 * lane..][..2].copy_from_slice(&d);
        }
        if layout.fmt.block_min || layout.fmt.mins {
            let m = half::f16::from_f32(blk.m).to_bits().to_le_bytes();
            dst[layout.m_off + 2 * lane..][..2].copy_from_slice(&m);
        }
        for sub in 0..layout.fmt.num_subs() {
            if layout.fmt.scales {
                dst[layout.scales_off + sub * LANES + lane] = blk.scales[sub] as u8;
            }
            if layout.fmt.mins {
                dst[layout.mins_off + sub * LANES + lane] = blk.mins[sub];
            }
        }
    }
}

/// Reads lane `lane` of packed block `src` back into `out` (the exact inverse of packing).
pub fn unpack_block(layout: &Layout, src: &[u8], lane: usize, out: &mut Block) {
    let low_mask = if layout.base_bits == 8 {
        0xff
    } else {
        (1u8 << layout.base_bits) - 1
    };
    for v in 0..layout.num_vecs {
        for i in 0..4 {
            let byte = src[v * VEC_BYTES + 4 * lane + i];
            for f in 0..layout.fields {
                let mut u = (byte >> (layout.base_bits as usize * f)) & low_mask;
                for h in 0..layout.high_bits as usize {
                    let bit = 4 * lane + i;
                    if (src[layout.mask_off(v, f, h) + bit / 8] >> (bit % 8)) & 1 != 0 {
                        u |= 1 << (layout.base_bits as usize + h);
                    }
                }
                out.u[layout.element(v, f, i)] = u;
            }
        }
    }
    let f16_at = |off: usize| crate::quant::f16_to_f32(crate::quant::read_u16(src, off));
    out.d = if layout.d_f32 {
        let p = layout.d_off + 4 * lane;
        f32::from_le_bytes([src[p], src[p + 1], src[p + 2], src[p + 3]])
    } else {
        f16_at(layout.d_off + 2 * lane)
    };
    out.m = if layout.fmt.block_min || layout.fmt.mins {
        f16_at(layout.m_off + 2 * lane)
    } else {
        0.0
    };
    for sub in 0..layout.fmt.num_subs() {
        if layout.fmt.scales {
            out.scales[sub] = src[layout.scales_off + sub * LANES + lane] as i8;
        }
        if layout.fmt.mins {
            out.mins[sub] = src[layout.mins_off + sub * LANES + lane];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{random_weight_bytes, Rng};

    #[test]
    fn packing_round_trips_every_format() {
        let mut rng = Rng::new(5);
        for dtype in WeightDType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let layout = Layout::of(dtype).unwrap();
            let (rows, cols) = (19, 2 * dtype.block_len());
            let raw = random_weight_bytes(&mut rng, dtype, rows, cols);
            let row_bytes = raw.len() / rows;
            let packed = pack(dtype, &raw, rows, row_bytes, "w").unwrap();
            assert_eq!(packed.as_slice().len(), 2 * 2 * layout.block_bytes, "{dtype}");
            let (mut want, mut got) = (Block::default(), Block::default());
            for row in 0..rows {
                for b in 0..2 {
                    let start = row * row_bytes + b * dtype.block_bytes();
                    decode_block(dtype, &raw[start..start + dtype.block_bytes()], &mut want);
                    let group = (row / LANES * 2 + b) * layout.block_bytes;
                    let src = &packed.as_slice()[group..group + layout.block_bytes];
                    unpack_block(&layout, src, row % LANES, &mut got);
                    assert_eq!(got, want, "{dtype} row {row} block {b}");
                }
            }
        }
    }

    #[test]
    fn layouts_keep_the_gguf_size() {
        let per_row = |t: WeightDType| Layout::of(t).unwrap().block_bytes / LANES;
        for t in [
            WeightDType::Q8_0,
            WeightDType::Q4_0,
            WeightDType::Q4_1,
            WeightDType::Q5_0,
            WeightDType::Q5_1,
            WeightDType::IQ4_NL,
            WeightDType::Q6_K,
        ] {
            assert_eq!(per_row(t), t.block_bytes(), "{t}");
        }
        assert_eq!(per_row(WeightDType::Q4_K), 148);
        assert_eq!(per_row(WeightDType::Q5_K), 180);
        assert_eq!(per_row(WeightDType::Q3_K), 114);
        assert_eq!(per_row(WeightDType::Q2_K), 100);
        assert_eq!(per_row(WeightDType::Q8_K), 260);
    }
}
