//! Float encodings and the 8-bit quantization of activation rows that the quantized dot
//! products consume.
//!
//! Two activation formats, as llama.cpp pairs them with weight formats:
//! * 32-element blocks (ggml's Q8_0 / Q8_1, for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL weights),
//!   mirroring ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1`: `d = amax / 127` (stored
//!   rounded to f16), `q = round_half_even(x * 127 / amax)`, and `s = f16(d * sum(q))`;
//! * 256-element blocks (ggml's Q8_K, for the K-quants), mirroring `quantize_row_q8_K_ref`:
//!   with `max` the first element of largest magnitude, `iscale = -127 / max`,
//!   `q = min(127, round_half_even(iscale * x))` and `d = 1 / iscale` kept in f32.
//!
//! Both also keep the exact sum of every 16 quants (ggml's `bsums`).

/// Elements per 32-element quantization block.
pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

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

/// Activation rows quantized to 8 bits per block (layout in the module docs).
#[derive(Clone, Debug)]
pub struct QuantActs {
    /// Number of rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Elements per scale block: 32 (Q8_0 / Q8_1) or 256 (Q8_K).
    pub block_len: usize,
    /// Quantized values; `[rows, cols]`, each in `-127..=127`.
    pub qs: Vec<i8>,
    /// Block scales (f16-rounded for 32-element blocks, exact f32 for Q8_K); `[rows, cols / block_len]`.
    pub d: Vec<f32>,
    /// `f16(d * sum(q))` per 32-element block (Q8_1's `s`); `[rows, cols / 32]`, empty for Q8_K.
    pub s: Vec<f32>,
    /// Exact sum of every 16 quants; `[rows, cols / 16]`.
    pub bsums: Vec<i32>,
}

impl QuantActs {
    /// Quantizes `x` (`[rows, cols]`, `cols` a multiple of `block_len`, which is 32 or 256).
    /// The values do not depend on the CPU features used to compute them.
    pub fn quantize(x: &[f32], rows: usize, cols: usize, block_len: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were just detected.
            return unsafe { quantize_avx2(x, rows, cols, block_len) };
        }
        quantize_generic(x, rows, cols, block_len)
    }

    /// Quantized values of row `r`; `[cols]`.
    pub fn row_qs(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }

    /// Scale of block `b` of row `r`.
    pub fn block_d(&self, r: usize, b: usize) -> f32 {
        self.d[r * (self.cols / self.block_len) + b]
    }

    /// Q8_1 `s` of 32-element block `b` of row `r`.
    pub fn block_s(&self, r: usize, b: usize) -> f32 {
        self.s[r * (self.cols / QK) + b]
    }

    /// Sum of the quants of 16-element group `g` of row `r`.
    #[cfg(test)]
    pub fn bsum16(&self, r: usize, g: usize) -> i32 {
        self.bsums[r * (self.cols / 16) + g]
    }
}

/// [`quantize_generic`] with the AVX2 block quantizers of `quant_x86` (same values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], rows: usize, cols: usize, block_len: usize) -> QuantActs {
    use crate::quant_x86::{q8_0_block, q8_k_block};
    // SAFETY: the caller checked AVX2, FMA and F16C.
    quantize_with(
        x,
        rows,
        cols,
        block_len,
        |xb, qb, sums| unsafe { q8_0_block(xb, qb, sums) },
        |xb, qb, sums| unsafe { q8_k_block(xb, qb, sums) },
    )
}

/// The reference quantizer (any CPU).
fn quantize_generic(x: &[f32], rows: usize, cols: usize, block_len: usize) -> QuantActs {
    quantize_with(
        x,
        rows,
        cols,
        block_len,
        |xb, qb, sums| {
            let ds = quantize_q8_0_block(xb, qb);
            sums16(qb, sums);
            ds
        },
        |xb, qb, sums| {
            let d = quantize_q8_k_block(xb, qb);
            sums16(qb, sums);
            d
        },
    )
}

/// The sum of every 16 quants of `q` into `sums`.
fn sums16(q: &[i8], sums: &mut [i32]) {
    for (sum, q) in sums.iter_mut().zip(q.chunks_exact(16)) {
        *sum = q.iter().map(|&v| i32::from(v)).sum();
    }
}

/// Quantizes every block with `q8_0` (32-element blocks) or `q8_k` (256), each also writing
/// the block's 16-sums.
#[inline(always)]
fn quantize_with(
    x: &[f32],
    rows: usize,
    cols: usize,
    block_len: usize,
    q8_0: impl Fn(&[f32], &mut [i8], &mut [i32]) -> (f32, f32),
    q8_k: impl Fn(&[f32], &mut [i8], &mut [i32]) -> f32,
) -> QuantActs {
    debug_assert!(block_len == QK || block_len == QK_K);
    debug_assert_eq!(cols % block_len, 0);
    debug_assert_eq!(x.len(), rows * cols);
    let mut acts = QuantActs {
        rows,
        cols,
        block_len,
        qs: vec![0; rows * cols],
        d: vec![0.0; rows * cols / block_len],
        s: if block_len == QK {
            vec![0.0; rows * cols / QK]
        } else {
            Vec::new()
        },
        bsums: vec![0; rows * cols / 16],
    };
    let blocks = x
        .chunks_exact(block_len)
        .zip(acts.qs.chunks_exact_mut(block_len))
        .zip(acts.bsums.chunks_exact_mut(block_len / 16));
    for (i, ((xb, qb), sums)) in blocks.enumerate() {
        if block_len == QK {
            let (d, s) = q8_0(xb, qb, sums);
            acts.d[i] = d;
            acts.s[i] = s;
        } else {
            acts.d[i] = q8_k(xb, qb, sums);
        }
    }
    acts
}

/// Quantizes one 32-element block; returns `(f16-rounded d, f16-rounded d * sum(q))`.
#[inline(always)]
pub(crate) fn quantize_q8_0_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    // 0 for a zero block, and for one so tiny (below 127 / f32::MAX) that the inverse
    // overflows: its f16 scale is 0 either way, and every quant stays in range.
    let id = 127.0 / amax;
    let id = if id.is_finite() { id } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &xi) in q.iter_mut().zip(x) {
        // |xi * id| <= 127 (up to rounding), so the cast cannot wrap.
        let v = (xi * id).round_ties_even() as i32;
        *qi = v as i8;
        sum += v;
    }
    (round_to_f16(d), round_to_f16(d * sum as f32))
}

/// One Q8_0 block of 32 elements into its 34 stored bytes (a weight's or a KV-cache row's):
/// f16 scale `max|x| / 127`, then `round(x / scale)` (ties away from zero) as `i8`; an
/// all-zero (or non-finite maximum) block stores zeros.
pub fn encode_q8_0_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = half::f16::from_f32(amax / 127.0);
    let d32 = d.to_f32();
    if !(d32 > 0.0 && d32.is_finite()) {
        out.fill(0);
        return;
    }
    out[..2].copy_from_slice(&d.to_bits().to_le_bytes());
    let inv = 1.0 / d32;
    for (o, &v) in out[2..].iter_mut().zip(x) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
    }
}

/// Quantizes one 256-element block the Q8_K way; returns `d`.
#[inline(always)]
pub(crate) fn quantize_q8_k_block(x: &[f32], q: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = ((iscale * xi).round_ties_even() as i32).min(127) as i8;
    }
    1.0 / iscale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_block_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.13).collect();
        let a = QuantActs::quantize(&x, 2, 32, QK);
        for r in 0..2 {
            let d = a.block_d(r, 0);
            for j in 0..32 {
                let back = d * f32::from(a.qs[r * 32 + j]);
                assert!((back - x[r * 32 + j]).abs() <= 0.5 * d + x[r * 32 + j].abs() * 1e-3);
            }
            let sum: i32 = a.row_qs(r).iter().map(|&q| i32::from(q)).sum();
            assert_eq!(sum, a.bsum16(r, 0) + a.bsum16(r, 1));
        }
        let zeros = QuantActs::quantize(&[0.0; 32], 1, 32, QK);
        assert_eq!(zeros.d[0], 0.0);
        assert!(zeros.qs.iter().all(|&q| q == 0));
    }

    #[test]
    fn q8_k_maps_the_largest_magnitude_to_minus_127() {
        let mut x: Vec<f32> = (0..256).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.01).collect();
        x[7] = 2.0;
        x[9] = -2.0; // same magnitude later: the first one sets the sign
        let a = QuantActs::quantize(&x, 1, 256, QK_K);
        assert_eq!((a.qs[7], a.qs[9]), (-127, 127));
        assert_eq!(a.d[0], 1.0 / (-127.0f32 / 2.0));
        for (q, v) in a.qs.iter().zip(&x) {
            assert!((a.d[0] * f32::from(*q) - v).abs() <= 0.5 * a.d[0].abs() * 1.0001);
        }
        let sum: i32 = a.qs[16..32].iter().map(|&q| i32::from(q)).sum();
        assert_eq!(a.bsum16(0, 1), sum);
        assert!(a.s.is_empty());
    }

    /// Rows that stress the quantizers: random scales, exact halves (ties), zeros, repeated
    /// maxima of both signs, NaN, infinities and denormal-tiny blocks.
    #[cfg(target_arch = "x86_64")]
    fn hard_rows(cols: usize) -> Vec<f32> {
        let mut rng = crate::test_util::Rng::new(7);
        let mut x = Vec::new();
        for kind in 0..12 {
            let scale = [1.0, 1e-3, 37.0, 1e-38, 1e30][kind % 5];
            x.extend((0..cols).map(|_| rng.f32() * scale));
            let row = x.len() - cols;
            match kind {
                5 => {
                    // Scale 1 and exact halves: every quant is a rounding tie.
                    x[row..]
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = (i % 254) as f32 - 126.5);
                    x[row] = 127.0;
                }
                6 => x[row..].fill(0.0),
                7 => (x[row + 3], x[row + 5]) = (-9.0, 9.0),
                8 => x[row + 2] = f32::NAN,
                9 => x[row + 1] = f32::INFINITY,
                10 => x[row..].iter_mut().step_by(3).for_each(|v| *v = f32::NAN),
                11 => x[row..]
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits() & 0x807f_ffff)),
                _ => {}
            }
        }
        x
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_quantizers_equal_the_reference_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        for block_len in [QK, QK_K] {
            let cols = 2 * QK_K;
            let x = hard_rows(cols);
            let rows = x.len() / cols;
            let fast = unsafe { quantize_avx2(&x, rows, cols, block_len) };
            let slow = quantize_generic(&x, rows, cols, block_len);
            assert_eq!(fast.qs, slow.qs, "block_len {block_len}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast.d), bits(&slow.d), "block_len {block_len}");
            assert_eq!(bits(&fast.s), bits(&slow.s), "block_len {block_len}");
            assert_eq!(fast.bsums, slow.bsums, "block_len {block_len}");
        }
    }
}
