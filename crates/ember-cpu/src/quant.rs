//! GGUF block formats (Q8_0, Q4_0, Q4_1) and float encodings: dequantization, and the
//! 8-bit quantization of activation rows that the quantized dot products consume.
//!
//! Activation quantization mirrors ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1`:
//! per 32-element block, `d = amax / 127` (stored rounded to f16), `q = round_half_even(x * 127 / amax)`,
//! and for Q8_1 `s = f16(d * sum(q))`.

use ember_core::WeightDType;

/// Elements per quantization block.
pub const QK: usize = 32;

/// f16 bits to f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Rounds `x` to the nearest f16 (ties to even, like `ggml_fp32_to_fp16`) and back to f32.
#[inline]
pub fn round_to_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// bf16 bits to f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Little-endian u16 at `off`.
#[inline]
pub fn read_u16(bytes: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([bytes[off], bytes[off + 1]])
}

/// Decodes one stored row (`out.len()` elements, whole blocks for quantized formats) to f32.
///
/// `bytes` holds exactly the row in `dtype`'s layout. Q4_1 is `d * q + m` (two roundings).
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
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        WeightDType::Q8_0 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(34)) {
                let d = f16_to_f32(read_u16(blk, 0));
                for (x, &q) in o.iter_mut().zip(&blk[2..34]) {
                    *x = d * f32::from(q as i8);
                }
            }
        }
        WeightDType::Q4_0 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(18)) {
                let d = f16_to_f32(read_u16(blk, 0));
                for j in 0..16 {
                    let q = blk[2 + j];
                    o[j] = d * f32::from(i16::from(q & 0x0f) as i8 - 8);
                    o[j + 16] = d * f32::from(i16::from(q >> 4) as i8 - 8);
                }
            }
        }
        WeightDType::Q4_1 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(20)) {
                let d = f16_to_f32(read_u16(blk, 0));
                let m = f16_to_f32(read_u16(blk, 2));
                for j in 0..16 {
                    let q = blk[4 + j];
                    o[j] = d * f32::from(q & 0x0f) + m;
                    o[j + 16] = d * f32::from(q >> 4) + m;
                }
            }
        }
    }
}

/// Activation rows quantized to 8 bits per 32-element block (ggml's Q8_0 / Q8_1 arithmetic).
#[derive(Clone, Debug)]
pub struct QuantActs {
    /// Number of rows.
    pub rows: usize,
    /// Blocks per row (`cols / 32`).
    pub blocks_per_row: usize,
    /// Quantized values; `[rows, blocks_per_row * 32]`, each in `-127..=127`.
    pub qs: Vec<i8>,
    /// Block scales rounded to f16, as f32; block-major `[blocks_per_row, rows]` so that a
    /// tile's consecutive rows are adjacent.
    pub d: Vec<f32>,
    /// `f16(d * sum(q))` per block (Q8_1's `s`), as f32; `[blocks_per_row, rows]`.
    pub s: Vec<f32>,
    /// Exact `sum(q)` per block; `[blocks_per_row, rows]`.
    pub sum_q: Vec<i32>,
}

impl QuantActs {
    /// Quantizes `x` (`[rows, cols]`, `cols` a multiple of 32).
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(cols % QK, 0);
        debug_assert_eq!(x.len(), rows * cols);
        let nb = cols / QK;
        let mut acts = Self {
            rows,
            blocks_per_row: nb,
            qs: vec![0; rows * cols],
            d: vec![0.0; rows * nb],
            s: vec![0.0; rows * nb],
            sum_q: vec![0; rows * nb],
        };
        for (i, (xb, qb)) in x.chunks_exact(QK).zip(acts.qs.chunks_exact_mut(QK)).enumerate() {
            let (d, s, sum_q) = quantize_block(xb, qb);
            let i = (i % nb) * rows + i / nb;
            acts.d[i] = d;
            acts.s[i] = s;
            acts.sum_q[i] = sum_q;
        }
        acts
    }

    /// Index of row `r`, block `b` in `d`, `s` and `sum_q`.
    pub fn idx(&self, r: usize, b: usize) -> usize {
        b * self.rows + r
    }

    /// Quantized values of row `r`; `[blocks_per_row * 32]`.
    pub fn row_qs(&self, r: usize) -> &[i8] {
        let k = self.blocks_per_row * QK;
        &self.qs[r * k..(r + 1) * k]
    }
}

/// Quantizes one block; returns `(f16-rounded d, f16-rounded d*sum(q), sum(q))`.
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &xi) in q.iter_mut().zip(x) {
        // |xi * id| <= 127 (up to rounding), so the cast cannot wrap.
        let v = (xi * id).round_ties_even() as i32;
        *qi = v as i8;
        sum += v;
    }
    (round_to_f16(d), round_to_f16(d * sum as f32), sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_block_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.13).collect();
        let a = QuantActs::quantize(&x, 2, 32);
        for r in 0..2 {
            let d = a.d[a.idx(r, 0)];
            for j in 0..32 {
                let back = d * f32::from(a.qs[r * 32 + j]);
                assert!((back - x[r * 32 + j]).abs() <= 0.5 * d + x[r * 32 + j].abs() * 1e-3);
            }
            let sum: i32 = a.row_qs(r).iter().map(|&q| i32::from(q)).sum();
            assert_eq!(sum, a.sum_q[a.idx(r, 0)]);
        }
        let zeros = QuantActs::quantize(&[0.0; 32], 1, 32);
        assert_eq!(zeros.d[0], 0.0);
        assert!(zeros.qs.iter().all(|&q| q == 0));
    }

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
    }
}
