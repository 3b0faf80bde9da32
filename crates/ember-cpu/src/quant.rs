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
///
/// Besides the plain per-block values, every block's scalars are also stored pre-broadcast
/// as 8-lane vectors (`lanes_*`, `[rows, padded_blocks, 8]`) so the SIMD kernels read a
/// block's scale with one vector load (two adjacent blocks with one 512-bit load); rows are
/// padded to an even number of blocks with zeros.
#[derive(Clone, Debug)]
pub struct QuantActs {
    /// Number of rows.
    pub rows: usize,
    /// Blocks per row (`cols / 32`).
    pub blocks_per_row: usize,
    /// Blocks per row rounded up to even (the `lanes_*` row stride in blocks).
    pub padded_blocks: usize,
    /// Quantized values; `[rows, blocks_per_row * 32]`, each in `-127..=127`.
    pub qs: Vec<i8>,
    /// Block scales rounded to f16, as f32; block-major `[blocks_per_row, rows]`.
    pub d: Vec<f32>,
    /// `f16(d * sum(q))` per block (Q8_1's `s`), as f32; `[blocks_per_row, rows]`.
    pub s: Vec<f32>,
    /// Exact `sum(q)` per block; `[blocks_per_row, rows]`.
    pub sum_q: Vec<i32>,
    /// `d` in all 8 lanes; `[rows, padded_blocks, 8]`.
    pub lanes_d: Vec<f32>,
    /// `s / 8` in all 8 lanes (the 8 lanes sum to `s`); `[rows, padded_blocks, 8]`.
    pub lanes_s: Vec<f32>,
    /// `(d, s)` per block; `[rows, padded_blocks, 2]`.
    pub pairs_ds: Vec<f32>,
    /// `-(sum(q) << corr_shift)` in lane 0, zeros elsewhere: the offset correction for
    /// unsigned-by-signed byte dots; `[rows, padded_blocks, 8]`.
    pub lanes_corr: Vec<i32>,
}

impl QuantActs {
    /// Quantizes `x` (`[rows, cols]`, `cols` a multiple of 32) with no offset correction.
    #[cfg(test)]
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        Self::quantize_with(x, rows, cols, None)
    }

    /// Quantizes `x`; `corr_shift` sets `lanes_corr` to `-(sum(q) << shift)` (zeros if `None`).
    /// The values do not depend on the CPU features used to compute them.
    pub fn quantize_with(x: &[f32], rows: usize, cols: usize, corr_shift: Option<u32>) -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { quantize_avx2(x, rows, cols, corr_shift) };
        }
        quantize_generic(x, rows, cols, corr_shift)
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

/// `quantize_generic` compiled with AVX2 (so rounding uses `vroundps`, not a libm call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(x: &[f32], rows: usize, cols: usize, corr_shift: Option<u32>) -> QuantActs {
    quantize_generic(x, rows, cols, corr_shift)
}

#[inline(always)]
fn quantize_generic(x: &[f32], rows: usize, cols: usize, corr_shift: Option<u32>) -> QuantActs {
    debug_assert_eq!(cols % QK, 0);
    debug_assert_eq!(x.len(), rows * cols);
    let nb = cols / QK;
    let nbp = nb.div_ceil(2) * 2;
    let mut acts = QuantActs {
        rows,
        blocks_per_row: nb,
        padded_blocks: nbp,
        qs: vec![0; rows * cols],
        d: vec![0.0; rows * nb],
        s: vec![0.0; rows * nb],
        sum_q: vec![0; rows * nb],
        lanes_d: vec![0.0; rows * nbp * 8],
        lanes_s: vec![0.0; rows * nbp * 8],
        lanes_corr: vec![0; rows * nbp * 8],
        pairs_ds: vec![0.0; rows * nbp * 2],
    };
    for (i, (xb, qb)) in x.chunks_exact(QK).zip(acts.qs.chunks_exact_mut(QK)).enumerate() {
        let (d, s, sum_q) = quantize_block(xb, qb);
        let (r, b) = (i / nb, i % nb);
        let j = b * rows + r;
        acts.d[j] = d;
        acts.s[j] = s;
        acts.sum_q[j] = sum_q;
        let l = (r * nbp + b) * 8;
        acts.lanes_d[l..l + 8].fill(d);
        acts.lanes_s[l..l + 8].fill(s * 0.125);
        acts.pairs_ds[(r * nbp + b) * 2] = d;
        acts.pairs_ds[(r * nbp + b) * 2 + 1] = s;
        if let Some(shift) = corr_shift {
            acts.lanes_corr[l] = -(sum_q << shift);
        }
    }
    acts
}

/// Quantizes one block; returns `(f16-rounded d, f16-rounded d*sum(q), sum(q))`.
#[inline(always)]
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
