//! Portable reference dot products. They define the arithmetic every SIMD kernel
//! reproduces bit for bit:
//!
//! * quantized weights, per block in order: the exact integer dot
//!   `isum = sum_sub scale_sub * sum_k q_k * x_k` (scale 1 without sub-block scales), then
//!   `acc = fma(d_w * d_x, isum, acc)`; Q4_1 / Q5_1 then `acc = fma(m_w, s_x, acc)`; Q2_K,
//!   Q4_K, Q5_K then `acc = fma(-(dmin_w * d_x), sum_sub min_sub * sum_k x_k, acc)`
//!   (llama.cpp's integer arithmetic; activations in its Q8_0 / Q8_1 / Q8_K formats);
//! * float weights: 8 lanes, lane `l` takes elements `k = 8 i + l` with
//!   `lane = fma(w, x, lane)`; then `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`; then the
//!   tail elements one by one with `fma`.

#[cfg(test)]
use crate::blocks::{decode_block, format_of};
use crate::blocks::{Block, Format};
use crate::quant::{bf16_to_f32, f16_to_f32, read_u16, QuantActs};
use ember_core::WeightDType;

/// The integer sums of one weight block against activation row `r` from element `e0`:
/// `(isum, msum)` as defined in the module docs.
pub fn block_int_sums(fmt: &Format, blk: &Block, acts: &QuantActs, r: usize, e0: usize) -> (i32, i32) {
    let x = &acts.row_qs(r)[e0..e0 + fmt.block_len];
    let (mut isum, mut msum) = (0i32, 0i32);
    for (sub, xs) in x.chunks_exact(fmt.sub_len).enumerate() {
        let base = sub * fmt.sub_len;
        let dot: i32 = xs
            .iter()
            .enumerate()
            .map(|(k, &xk)| fmt.value(blk.u[base + k]) * i32::from(xk))
            .sum();
        let scale = if fmt.scales { i32::from(blk.scales[sub]) } else { 1 };
        isum += scale * dot;
        if fmt.mins {
            let xsum: i32 = xs.iter().map(|&v| i32::from(v)).sum();
            msum += i32::from(blk.mins[sub]) * xsum;
        }
    }
    (isum, msum)
}

/// Adds block `b` (decoded `blk`, starting at element `e0`) of a weight row's dot with
/// activation row `r` to `acc`, in the reference order.
#[inline]
pub fn accumulate_block(fmt: &Format, blk: &Block, acts: &QuantActs, r: usize, e0: usize, acc: f32) -> f32 {
    let (isum, msum) = block_int_sums(fmt, blk, acts, r, e0);
    let dx = acts.block_d(r, e0 / acts.block_len);
    let mut acc = (blk.d * dx).mul_add(isum as f32, acc);
    if fmt.block_min {
        acc = blk.m.mul_add(acts.block_s(r, e0 / 32), acc);
    }
    if fmt.mins {
        acc = (-(blk.m * dx)).mul_add(msum as f32, acc);
    }
    acc
}

/// Dot of one quantized weight row (`w_row`, ggml layout) with quantized activation row `r`
/// (quantized with the activation block length this format pairs with): the reference the
/// repacked kernels are tested against.
#[cfg(test)]
pub fn quant_dot(dtype: WeightDType, w_row: &[u8], acts: &QuantActs, r: usize) -> f32 {
    let Some(fmt) = format_of(dtype) else {
        unreachable!("float weight")
    };
    let mut blk = Block::default();
    let mut acc = 0.0f32;
    for (b, raw) in w_row.chunks_exact(dtype.block_bytes()).enumerate() {
        decode_block(dtype, raw, &mut blk);
        acc = accumulate_block(&fmt, &blk, acts, r, b * fmt.block_len, acc);
    }
    acc
}

/// Element `k` of a float-encoded weight row.
#[inline]
pub fn float_elem(dtype: WeightDType, w_row: &[u8], k: usize) -> f32 {
    match dtype {
        WeightDType::F32 => {
            f32::from_le_bytes([w_row[4 * k], w_row[4 * k + 1], w_row[4 * k + 2], w_row[4 * k + 3]])
        }
        WeightDType::F16 => f16_to_f32(read_u16(w_row, 2 * k)),
        WeightDType::BF16 => bf16_to_f32(read_u16(w_row, 2 * k)),
        _ => unreachable!("quantized weight"),
    }
}

/// Dot of one float weight row (F32/F16/BF16) with `x` (`[cols]`).
pub fn float_dot(dtype: WeightDType, w_row: &[u8], x: &[f32]) -> f32 {
    let full = x.len() / 8 * 8;
    let mut lanes = [0.0f32; 8];
    for k0 in (0..full).step_by(8) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = float_elem(dtype, w_row, k0 + l).mul_add(x[k0 + l], *lane);
        }
    }
    let mut s = hsum8(&lanes);
    for (k, &xk) in x.iter().enumerate().skip(full) {
        s = float_elem(dtype, w_row, k).mul_add(xk, s);
    }
    s
}

/// The fixed horizontal sum order of 8 lanes.
#[inline]
pub fn hsum8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}
