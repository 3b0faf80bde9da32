//! Portable reference dot products. They define the accumulation order every SIMD
//! kernel reproduces bit for bit:
//!
//! * quantized weights, per block `b` in order: `isum` = exact integer dot of the block;
//!   `acc = fma(dw * dx, isum, acc)`; Q4_1 then also `acc = fma(mw, sx, acc)`;
//! * float weights: 8 lanes, lane `l` takes elements `k = 8 i + l` with
//!   `lane = fma(w, x, lane)`; then `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`; then the
//!   tail elements one by one with `fma`.

use crate::quant::{bf16_to_f32, f16_to_f32, read_u16, QuantActs, QK};
use ember_core::WeightDType;

/// Dot of one quantized weight row with quantized activation row `r`.
pub fn quant_dot(dtype: WeightDType, w_row: &[u8], acts: &QuantActs, r: usize) -> f32 {
    let nb = acts.blocks_per_row;
    let xq = acts.row_qs(r);
    let mut acc = 0.0f32;
    for b in 0..nb {
        let dx = acts.d[acts.idx(r, b)];
        let x = &xq[b * QK..(b + 1) * QK];
        let xi = |j: usize| i32::from(x[j]);
        match dtype {
            WeightDType::Q8_0 => {
                let blk = &w_row[b * 34..(b + 1) * 34];
                let dw = f16_to_f32(read_u16(blk, 0));
                let isum: i32 = (0..QK).map(|j| i32::from(blk[2 + j] as i8) * xi(j)).sum();
                acc = (dw * dx).mul_add(isum as f32, acc);
            }
            WeightDType::Q4_0 => {
                let blk = &w_row[b * 18..(b + 1) * 18];
                let dw = f16_to_f32(read_u16(blk, 0));
                let isum: i32 = (0..16)
                    .map(|j| {
                        let q = blk[2 + j];
                        (i32::from(q & 0x0f) - 8) * xi(j) + (i32::from(q >> 4) - 8) * xi(j + 16)
                    })
                    .sum();
                acc = (dw * dx).mul_add(isum as f32, acc);
            }
            WeightDType::Q4_1 => {
                let blk = &w_row[b * 20..(b + 1) * 20];
                let dw = f16_to_f32(read_u16(blk, 0));
                let mw = f16_to_f32(read_u16(blk, 2));
                let isum: i32 = (0..16)
                    .map(|j| {
                        let q = blk[4 + j];
                        i32::from(q & 0x0f) * xi(j) + i32::from(q >> 4) * xi(j + 16)
                    })
                    .sum();
                acc = (dw * dx).mul_add(isum as f32, acc);
                acc = mw.mul_add(acts.s[acts.idx(r, b)], acc);
            }
            WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 => unreachable!("float weight"),
        }
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
