//! GGUF weight blocks decoded to integers, and their dequantization.
//!
//! Every quantized format is read into one [`Block`]: an unsigned field value `u` per
//! element, integer sub-block scales and mins, and the f32 block scales. The signed quant is
//! `u - offset` (or a table entry for IQ4_NL). The integer dot products, the repacked SIMD
//! layout and dequantization all start from this one decoding, so they agree by
//! construction. Bit layouts are ggml's (as the `gguf` package reads them).
//!
//! Dequantization rounds exactly like the `gguf` package's numpy code (f32 products, no
//! fused multiply-add): `d * q`, `d * q + m`, and for the K-quants `(d * sc) * q - (dmin * m)`.

#![allow(clippy::needless_range_loop)] // bit layouts read clearer with element indices

use crate::quant::{f16_to_f32, read_u16};
use ember_core::WeightDType;

/// Largest block length (the K-quant super-block).
pub const MAX_BLOCK_LEN: usize = 256;
/// Largest number of sub-blocks with their own scale (16 sub-blocks of 16).
pub const MAX_SUBS: usize = 16;

/// IQ4_NL's non-linear quant values, indexed by the stored nibble.
pub const IQ4_NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// One quantized block decoded to integers (layout-independent).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Unsigned field value per element; `[block_len]` meaningful.
    pub u: [u8; MAX_BLOCK_LEN],
    /// Integer scale per sub-block (K-quants); `[num_subs]` meaningful.
    pub scales: [i8; MAX_SUBS],
    /// Integer min per sub-block (Q2_K, Q4_K, Q5_K); `[num_subs]` meaningful.
    pub mins: [u8; MAX_SUBS],
    /// Block (super-block) scale.
    pub d: f32,
    /// Q4_1 / Q5_1 min, or the K-quants' `dmin`; 0 otherwise.
    pub m: f32,
}

impl Default for Block {
    fn default() -> Self {
        Self {
            u: [0; MAX_BLOCK_LEN],
            scales: [0; MAX_SUBS],
            mins: [0; MAX_SUBS],
            d: 0.0,
            m: 0.0,
        }
    }
}

/// How a format's integers combine into values (see [`format_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// Elements per block.
    pub block_len: usize,
    /// Elements per sub-block sharing an integer scale or min (the whole 32-block otherwise).
    pub sub_len: usize,
    /// Signed quant = `u - offset` (unused with `table`).
    pub offset: i32,
    /// Signed quant = `IQ4_NL_VALUES[u]`.
    pub table: bool,
    /// Sub-blocks carry integer scales.
    pub scales: bool,
    /// Sub-blocks carry integer mins (`- dmin * min` per element).
    pub mins: bool,
    /// The block carries an f32 min added to every element (Q4_1, Q5_1).
    pub block_min: bool,
    /// Bits of `u`.
    pub bits: u32,
}

impl Format {
    /// Sub-blocks per block.
    pub const fn num_subs(&self) -> usize {
        self.block_len / self.sub_len
    }

    /// The signed quant of field value `u`.
    #[inline]
    pub fn value(&self, u: u8) -> i32 {
        if self.table {
            i32::from(IQ4_NL_VALUES[usize::from(u & 15)])
        } else {
            i32::from(u) - self.offset
        }
    }
}

/// A format with no scales, mins or table.
const fn plain(block_len: usize, sub_len: usize, offset: i32, bits: u32) -> Format {
    Format {
        block_len,
        sub_len,
        offset,
        table: false,
        scales: false,
        mins: false,
        block_min: false,
        bits,
    }
}

/// The integer structure of a quantized format; `None` for plain floats.
pub const fn format_of(dtype: WeightDType) -> Option<Format> {
    let f = plain;
    Some(match dtype {
        WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 => return None,
        WeightDType::Q8_0 => f(32, 32, 128, 8),
        WeightDType::Q8_K => f(256, 32, 128, 8),
        WeightDType::Q4_0 => f(32, 32, 8, 4),
        WeightDType::Q5_0 => f(32, 32, 16, 5),
        WeightDType::IQ4_NL => Format {
            table: true,
            ..f(32, 32, 0, 4)
        },
        WeightDType::Q4_1 => Format {
            block_min: true,
            ..f(32, 32, 0, 4)
        },
        WeightDType::Q5_1 => Format {
            block_min: true,
            ..f(32, 32, 0, 5)
        },
        WeightDType::Q2_K => Format {
            scales: true,
            mins: true,
            ..f(256, 16, 0, 2)
        },
        WeightDType::Q3_K => Format {
            scales: true,
            ..f(256, 16, 4, 3)
        },
        WeightDType::Q4_K => Format {
            scales: true,
            mins: true,
            ..f(256, 32, 0, 4)
        },
        WeightDType::Q5_K => Format {
            scales: true,
            mins: true,
            ..f(256, 32, 0, 5)
        },
        WeightDType::Q6_K => Format {
            scales: true,
            ..f(256, 16, 32, 6)
        },
    })
}

/// Reads block `raw` (`dtype.block_bytes()` bytes in ggml's layout) into `out`.
pub fn decode_block(dtype: WeightDType, raw: &[u8], out: &mut Block) {
    let u = &mut out.u;
    let nibbles = |u: &mut [u8; MAX_BLOCK_LEN], qs: &[u8]| {
        for (j, &q) in qs.iter().enumerate() {
            u[j] = q & 15;
            u[j + 16] = q >> 4;
        }
    };
    let fifth_bits = |u: &mut [u8; MAX_BLOCK_LEN], qh: &[u8]| {
        let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (e, v) in u.iter_mut().take(32).enumerate() {
            *v |= (((qh >> e) & 1) as u8) << 4;
        }
    };
    out.m = 0.0;
    match dtype {
        WeightDType::Q8_0 => {
            out.d = f16_to_f32(read_u16(raw, 0));
            for (v, &q) in u.iter_mut().zip(&raw[2..34]) {
                *v = q ^ 0x80;
            }
        }
        WeightDType::Q8_K => {
            out.d = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            for (v, &q) in u.iter_mut().zip(&raw[4..260]) {
                *v = q ^ 0x80;
            }
        }
        WeightDType::Q4_0 | WeightDType::IQ4_NL => {
            out.d = f16_to_f32(read_u16(raw, 0));
            nibbles(u, &raw[2..18]);
        }
        WeightDType::Q4_1 => {
            out.d = f16_to_f32(read_u16(raw, 0));
            out.m = f16_to_f32(read_u16(raw, 2));
            nibbles(u, &raw[4..20]);
        }
        WeightDType::Q5_0 => {
            out.d = f16_to_f32(read_u16(raw, 0));
            nibbles(u, &raw[6..22]);
            fifth_bits(u, &raw[2..6]);
        }
        WeightDType::Q5_1 => {
            out.d = f16_to_f32(read_u16(raw, 0));
            out.m = f16_to_f32(read_u16(raw, 2));
            nibbles(u, &raw[8..24]);
            fifth_bits(u, &raw[4..8]);
        }
        WeightDType::Q2_K => decode_q2_k(raw, out),
        WeightDType::Q3_K => decode_q3_k(raw, out),
        WeightDType::Q4_K | WeightDType::Q5_K => decode_q45_k(dtype == WeightDType::Q5_K, raw, out),
        WeightDType::Q6_K => decode_q6_k(raw, out),
        WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 => unreachable!("float block"),
    }
}

/// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin. Element
/// `128 n + 32 s + l` is bits `2s..2s+2` of `qs[32 n + l]`.
fn decode_q2_k(raw: &[u8], out: &mut Block) {
    for (j, &sm) in raw[..16].iter().enumerate() {
        out.scales[j] = (sm & 15) as i8;
        out.mins[j] = sm >> 4;
    }
    let qs = &raw[16..80];
    for n in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                out.u[128 * n + 32 * s + l] = (qs[32 * n + l] >> (2 * s)) & 3;
            }
        }
    }
    out.d = f16_to_f32(read_u16(raw, 80));
    out.m = f16_to_f32(read_u16(raw, 82));
}

/// Q3_K: hmask[32], qs[64], scales[12] (16 x 6 bits, minus 32), d. Element `128 n + 32 s + l`
/// has low bits `2s..2s+2` of `qs[32 n + l]` and high bit `4n + s` of `hmask[l]`; the quant
/// is `low - 4` when the high bit is clear, so `u = low + 4 * high` with offset 4.
fn decode_q3_k(raw: &[u8], out: &mut Block) {
    let (hmask, qs, sc) = (&raw[..32], &raw[32..96], &raw[96..108]);
    for n in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let low = (qs[32 * n + l] >> (2 * s)) & 3;
                let high = (hmask[l] >> (4 * n + s)) & 1;
                out.u[128 * n + 32 * s + l] = low | (high << 2);
            }
        }
    }
    for i in 0..16 {
        let low = if i < 8 { sc[i] & 15 } else { sc[i - 8] >> 4 };
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        out.scales[i] = ((low | (high << 4)) as i8) - 32;
    }
    out.d = f16_to_f32(read_u16(raw, 108));
}

/// The 8 six-bit scales and mins of a Q4_K / Q5_K super-block (`sc`: 12 bytes).
fn k_scale_min(sc: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        (
            (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4),
            (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
        )
    }
}

/// Q4_K / Q5_K: d, dmin, scales[12], (Q5_K: qh[32]), qs[128]. Element `64 c + j` is the low
/// nibble of `qs[32 c + j]`, element `64 c + 32 + j` its high nibble; Q5_K's fifth bit of
/// element `32 b + l` is bit `b` of `qh[l]`.
fn decode_q45_k(five: bool, raw: &[u8], out: &mut Block) {
    out.d = f16_to_f32(read_u16(raw, 0));
    out.m = f16_to_f32(read_u16(raw, 2));
    for j in 0..8 {
        let (sc, m) = k_scale_min(&raw[4..16], j);
        out.scales[j] = sc as i8;
        out.mins[j] = m;
    }
    let qs = if five { &raw[48..176] } else { &raw[16..144] };
    for c in 0..4 {
        for j in 0..32 {
            let q = qs[32 * c + j];
            out.u[64 * c + j] = q & 15;
            out.u[64 * c + 32 + j] = q >> 4;
        }
    }
    if five {
        let qh = &raw[16..48];
        for b in 0..8 {
            for l in 0..32 {
                out.u[32 * b + l] |= ((qh[l] >> b) & 1) << 4;
            }
        }
    }
}

/// Q6_K: ql[128], qh[64], scales[16] (i8), d. Element `128 h + 64 s + t` (t < 64) has low
/// nibble `s` of `ql[64 h + t]`; element `128 h + 32 k + l` has high bits `2k..2k+2` of
/// `qh[32 h + l]`; offset 32.
fn decode_q6_k(raw: &[u8], out: &mut Block) {
    let (ql, qh) = (&raw[..128], &raw[128..192]);
    for h in 0..2 {
        for t in 0..64 {
            let q = ql[64 * h + t];
            out.u[128 * h + t] = q & 15;
            out.u[128 * h + 64 + t] = q >> 4;
        }
        for k in 0..4 {
            for l in 0..32 {
                out.u[128 * h + 32 * k + l] |= ((qh[32 * h + l] >> (2 * k)) & 3) << 4;
            }
        }
    }
    for (s, &b) in out.scales.iter_mut().zip(&raw[192..208]) {
        *s = b as i8;
    }
    out.d = f16_to_f32(read_u16(raw, 208));
}

/// Writes the values of decoded block `blk` of `dtype` to `out` (`[block_len]`), rounding as
/// the `gguf` package does.
pub fn dequantize_block(dtype: WeightDType, blk: &Block, out: &mut [f32]) {
    let Some(fmt) = format_of(dtype) else {
        unreachable!("float block")
    };
    for (e, o) in out.iter_mut().enumerate().take(fmt.block_len) {
        let u = blk.u[e];
        let sub = e / fmt.sub_len;
        *o = if fmt.block_min {
            blk.d * f32::from(u) + blk.m
        } else if fmt.mins {
            (blk.d * f32::from(blk.scales[sub])) * f32::from(u) - blk.m * f32::from(blk.mins[sub])
        } else if fmt.scales {
            (blk.d * f32::from(blk.scales[sub])) * fmt.value(u) as f32
        } else {
            blk.d * fmt.value(u) as f32
        };
    }
}

/// Decodes one stored row (`out.len()` elements, whole blocks for quantized formats) to f32.
///
/// `bytes` holds exactly the row in `dtype`'s layout; the values equal the `gguf` package's.
pub fn dequantize_row(dtype: WeightDType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        WeightDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightDType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        WeightDType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = crate::quant::bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        _ => {
            let mut blk = Block::default();
            let (len, size) = (dtype.block_len(), dtype.block_bytes());
            for (o, raw) in out.chunks_exact_mut(len).zip(bytes.chunks_exact(size)) {
                decode_block(dtype, raw, &mut blk);
                dequantize_block(dtype, &blk, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantize_q4_layouts() {
        // d = 1.0 (0x3c00), m = 0.5 (0x3800), nibble byte j = low j%16, high 15 - j%16.
        let mut q41 = vec![0x00, 0x3c, 0x00, 0x38];
        let mut q40 = vec![0x00, 0x3c];
        for j in 0..16u8 {
            q41.push(j | ((15 - j) << 4));
            q40.push(j | ((15 - j) << 4));
        }
        let mut out = [0.0f32; 32];
        dequantize_row(WeightDType::Q4_1, &q41, &mut out);
        assert_eq!(out[3], 3.5);
        assert_eq!(out[16 + 3], 12.5);
        dequantize_row(WeightDType::Q4_0, &q40, &mut out);
        assert_eq!(out[0], -8.0);
        assert_eq!(out[16], 7.0);
        dequantize_row(WeightDType::IQ4_NL, &q40, &mut out);
        assert_eq!((out[0], out[16]), (-127.0, 113.0));
    }

    #[test]
    fn fifth_bits_and_k_scales() {
        // Q5_0: d = 1, qh bit e set for odd e, all nibbles 3: odd elements 19 - 16 = 3, even -13.
        let mut q50 = vec![0x00, 0x3c];
        q50.extend(0xaaaa_aaaau32.to_le_bytes());
        q50.extend([0x33; 16]);
        let mut out = [0.0f32; 32];
        dequantize_row(WeightDType::Q5_0, &q50, &mut out);
        assert_eq!((out[0], out[1], out[31]), (-13.0, 3.0, 3.0));
        // Q4_K scale packing: sub-block 5 takes its low bits from byte 9 and its top two
        // bits from byte 1 (scale) / byte 5 (min).
        let mut sc = [0u8; 12];
        sc[9] = 0x7a; // scale low 0xa, min low 0x7
        sc[1] = 0b1100_0000; // scale high bits 3
        sc[5] = 0b0100_0000; // min high bits 1
        assert_eq!(k_scale_min(&sc, 5), (0x3a, 0x17));
    }
}
