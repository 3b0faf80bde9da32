//! LoRA expand for every adapter of a step, in one parallel region split by output column:
//! `y[r] += scale * B t[r]` as axpys over `lora_B`'s transpose, a register block of rows at a
//! time. `lora_B` comes as a skinny f32 matrix (its stored transpose) or as Q8_0 of its
//! transpose `[rank, out]` (blocks of 32 outputs, decoded to f32 a block at a time); any other
//! (an f16 one of an output width off the 32-element blocks) runs as dot products. Every output element is computed by the same
//! instructions whatever the split, so a row's values do not depend on the batch.

use crate::dot_scalar::float_dot;
use crate::lora::{check_segments, for_each_task, lora_err};
use crate::matmul::{Isa, OutPtr};
use crate::matrix::CpuMatrix;
use crate::packed::{LANES, VEC_BYTES};
use crate::quant::{f16_to_f32, read_u16};
use crate::tensor::CpuTensor;
use ember_core::{BackendResult, LoraSegment};
use rayon::ThreadPool;
use std::ops::Range;

/// Output columns per expand task (whole Q8_0 blocks).
const EXPAND_COLS_PER_TASK: usize = 128;
/// Outputs per Q8_0 block of a quantized `lora_B`'s transpose.
const Q8_0_COLS: usize = 32;
const _: () = assert!(EXPAND_COLS_PER_TASK.is_multiple_of(Q8_0_COLS));

thread_local! {
    /// The expand's decoded panels on this thread (see [`expand_cols`]), reused by every task
    /// it runs.
    static DECODED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `(outputs, rank)` of a `lora_B`: `[out, rank]` as stored, a quantized one's from its
/// transpose `[rank, out]`.
fn expand_shape(b: &CpuMatrix) -> (usize, usize) {
    if b.dtype().is_quantized() {
        (b.cols(), b.rows())
    } else {
        (b.rows(), b.cols())
    }
}

/// See [`ember_core::Backend::lora_expand`].
pub fn lora_expand(
    pool: &ThreadPool,
    isa: Isa,
    shrunk: &CpuTensor,
    segments: &[LoraSegment<'_, CpuMatrix>],
    y: &mut CpuTensor,
) -> BackendResult<()> {
    check_segments("lora_expand", segments, y.rows().min(shrunk.rows()), true)?;
    let n = y.cols();
    let bad = |s: &&LoraSegment<'_, CpuMatrix>| {
        let (num_outputs, rank) = expand_shape(s.matrix);
        num_outputs != n || s.col_offset + rank > shrunk.cols()
    };
    if let Some(s) = segments.iter().find(bad) {
        let (num_outputs, rank) = expand_shape(s.matrix);
        let detail = format!(
            "lora_B [{num_outputs}, {rank}] ({}) at column {} of {} shrunk columns into {n} outputs",
            s.matrix.dtype(),
            s.col_offset,
            shrunk.cols()
        );
        return Err(lora_err("lora_expand", detail));
    }
    let out = OutPtr(y.as_mut_slice().as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..segments.len())
        .flat_map(|g| (0..n).step_by(EXPAND_COLS_PER_TASK).map(move |c0| (g, c0)))
        .collect();
    let work = segments
        .iter()
        .map(|s| s.row_ids.len() * expand_shape(s.matrix).1 * n)
        .sum();
    for_each_task(pool, work, tasks.len(), |t| {
        let (g, c0) = tasks[t];
        let c1 = (c0 + EXPAND_COLS_PER_TASK).min(n);
        expand_cols(isa, &segments[g], shrunk, n, c0, c1, out);
    });
    Ok(())
}

/// `y[r, c0..c1] += scale * B[c0..c1] t` for every row `r` of `s` (`t` = its shrunk columns),
/// vectorized when the backend's kernel family `isa` has AVX2 (bit-equal either way: no FMA
/// contraction).
fn expand_cols(
    isa: Isa,
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    c0: usize,
    c1: usize,
    out: OutPtr,
) {
    // Decoded panels in the thread's buffer: this runs per task, thousands of times a step,
    // and a fresh buffer would be zeroed each time.
    let need = expand_shape(s.matrix).1 * Q8_0_COLS;
    DECODED.with_borrow_mut(|buf| {
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let decoded = &mut buf[..need];
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar && isa.is_supported() {
            // SAFETY: every family but the scalar one needs AVX2, FMA and F16C
            // (`is_supported`), the features the function is compiled for.
            return unsafe { expand_cols_avx2(s, shrunk, n, c0..c1, out, decoded) };
        }
        // Elsewhere (AArch64) the portable body serves every kernel family.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa;
        expand_cols_any(s, shrunk, n, c0..c1, out, decoded, false);
    });
}

/// [`expand_cols`] compiled for AVX2 + FMA + F16C (the axpys vectorize 8 wide, the Q8_0
/// decode gathers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand_cols_avx2(
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    cols: Range<usize>,
    out: OutPtr,
    decoded: &mut [f32],
) {
    expand_cols_any(s, shrunk, n, cols, out, decoded, true);
}

/// The body of [`expand_cols`]: each element is `sum_k t[k] * B[c, k]` in `k` order, then
/// `y += delta * scale`. A skinny f32 `lora_B` runs over its stored transpose and a Q8_0 one
/// over its decoded blocks, [`EXPAND_LANES`] columns at a time for up to [`EXPAND_ROWS`] rows
/// at a time with the accumulators in registers; any other as dot products.
#[inline(always)]
fn expand_cols_any(
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    Range { start: c0, end: c1 }: Range<usize>,
    out: OutPtr,
    decoded: &mut [f32],
    simd: bool,
) {
    let rank = expand_shape(s.matrix).1;
    let shrunk_of = |r: u32| &shrunk.row(r as usize)[s.col_offset..s.col_offset + rank];
    // SAFETY (for the writes below): row `r` < y.rows() (checked) and columns c0..c1 < n; no
    // other task writes these columns of this row (segments share no row, tasks of a segment
    // no column).
    let y_cols = |r: u32, c: usize, len: usize| unsafe {
        std::slice::from_raw_parts_mut(out.0.add(r as usize * n + c), len)
    };
    let transposed = match s.matrix.transposed() {
        _ if s.matrix.dtype().is_quantized() => Transposed::Q8_0(s.matrix),
        Some(w_t) => Transposed::F32(w_t),
        None => {
            for &r in s.row_ids {
                let t = shrunk_of(r);
                for (c, o) in (c0..c1).zip(y_cols(r, c0, c1 - c0)) {
                    *o += float_dot(s.matrix.dtype(), s.matrix.row(c), t) * s.scale;
                }
            }
            return;
        }
    };
    // `[rank, 32]`: a Q8_0 block's 32 outputs decoded, two panels `[rank, EXPAND_LANES]`.
    let decoded = &mut decoded[..rank * Q8_0_COLS];
    for c in (c0..c1).step_by(EXPAND_LANES) {
        let lanes = EXPAND_LANES.min(c1 - c);
        // `[rank, lanes]` of the transpose at columns c..c + lanes, with its row stride.
        let (w, stride): (&[f32], usize) = match transposed {
            Transposed::F32(w_t) => (&w_t[c..], n),
            Transposed::Q8_0(b_t) => {
                // `c` is a multiple of 16 and the task's first column one of 32.
                if c.is_multiple_of(Q8_0_COLS) {
                    decode_q8_0_block(b_t, c / Q8_0_COLS, decoded, simd);
                }
                let half = c % Q8_0_COLS / EXPAND_LANES * rank * EXPAND_LANES;
                (&decoded[half..half + rank * EXPAND_LANES], EXPAND_LANES)
            }
        };
        if lanes < EXPAND_LANES {
            // The last columns (fewer than a block), one at a time with the same arithmetic.
            for &r in s.row_ids {
                let t = shrunk_of(r);
                for (j, o) in y_cols(r, c, lanes).iter_mut().enumerate() {
                    let delta = (0..rank).fold(0.0f32, |d, k| t[k].mul_add(w[k * stride + j], d));
                    *o += delta * s.scale;
                }
            }
            continue;
        }
        let mut rows = s.row_ids.chunks_exact(EXPAND_ROWS);
        for block in rows.by_ref() {
            let ts: [&[f32]; EXPAND_ROWS] = std::array::from_fn(|i| shrunk_of(block[i]));
            let delta = expand_block(&ts, w, stride, rank);
            for (&r, d) in block.iter().zip(&delta) {
                add_scaled(y_cols(r, c, EXPAND_LANES), d, s.scale);
            }
        }
        for &r in rows.remainder() {
            let delta = expand_block(&[shrunk_of(r)], w, stride, rank);
            add_scaled(y_cols(r, c, EXPAND_LANES), &delta[0], s.scale);
        }
    }
}

/// A `lora_B`'s transpose: f32 `[rank, num_outputs]` (a skinny one's stored transpose), or a
/// packed Q8_0 matrix `[rank, num_outputs]`.
#[derive(Clone, Copy)]
enum Transposed<'a> {
    F32(&'a [f32]),
    Q8_0(&'a CpuMatrix),
}

/// Rows of a packed Q8_0 lane group decoded together (one 8 x 8 dword transpose on AVX2).
const DECODE_LANES: usize = 8;

/// Decodes block `b` (outputs `32 b..32 b + 32`) of every row `k` of a packed Q8_0 `lora_B`
/// transpose into `out`, two panels `[rank, 16]` (outputs `32 b..32 b + 16`, then the next 16):
/// `d * q` in f32 (exact, as `CpuMatrix::dequantize_row_into`). The quants of
/// [`DECODE_LANES`] rows come out of the packed vectors by an AVX2 transpose when `simd` (only
/// inside [`expand_cols_avx2`], compiled for it).
#[inline(always)]
fn decode_q8_0_block(b_t: &CpuMatrix, b: usize, out: &mut [f32], simd: bool) {
    let Some(layout) = b_t.layout() else {
        unreachable!("a Q8_0 lora_B is packed")
    };
    let rank = b_t.rows();
    let (first, second) = out.split_at_mut(rank * EXPAND_LANES);
    for k0 in (0..rank).step_by(DECODE_LANES) {
        let src = &b_t.group(k0 / LANES)[b * layout.block_bytes..(b + 1) * layout.block_bytes];
        let lane0 = k0 % LANES;
        // `q[j]`: the 32 quants of row `k0 + j` in element order.
        let mut q = [[0i8; Q8_0_COLS]; DECODE_LANES];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the caller runs on a CPU with AVX2; the loads read lanes
            // `lane0..lane0 + 8` of the block's 8 quant vectors, inside `src`.
            unsafe { transpose_q8_0_lanes(src, lane0, &mut q) };
        }
        if !simd || cfg!(not(target_arch = "x86_64")) {
            // Byte `i` of a lane of quant vector `v` holds element `4 v + i`, offset by 128.
            for (j, row) in q.iter_mut().enumerate() {
                for (e, v) in row.iter_mut().enumerate() {
                    *v = (src[e / 4 * VEC_BYTES + 4 * (lane0 + j) + e % 4] ^ 0x80) as i8;
                }
            }
        }
        for (j, row) in q.iter().enumerate().take(rank - k0) {
            let k = k0 + j;
            let d = f16_to_f32(read_u16(src, layout.d_off + 2 * (lane0 + j)));
            let (lo, hi) = row.split_at(EXPAND_LANES);
            for (o, &v) in first[k * EXPAND_LANES..(k + 1) * EXPAND_LANES].iter_mut().zip(lo) {
                *o = d * f32::from(v);
            }
            for (o, &v) in second[k * EXPAND_LANES..(k + 1) * EXPAND_LANES]
                .iter_mut()
                .zip(hi)
            {
                *o = d * f32::from(v);
            }
        }
    }
}

/// The AVX2 body of [`decode_q8_0_block`] for lanes `lane0..lane0 + 8`: the block's 8 quant
/// vectors, each 8 lanes of 4 bytes, transposed as an 8 x 8 dword matrix so row `j` holds lane
/// `lane0 + j`'s 32 quants in element order, then offset back to `i8`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_q8_0_lanes(src: &[u8], lane0: usize, q: &mut [[i8; Q8_0_COLS]; DECODE_LANES]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() >= 7 * VEC_BYTES + 4 * lane0 + 32);
    // SAFETY: see the caller; each store writes 32 bytes of one row of `q`.
    unsafe {
        let r: [__m256i; 8] = std::array::from_fn(|v| {
            _mm256_loadu_si256(src.as_ptr().add(v * VEC_BYTES + 4 * lane0).cast::<__m256i>())
        });
        let t = [
            _mm256_unpacklo_epi32(r[0], r[1]),
            _mm256_unpackhi_epi32(r[0], r[1]),
            _mm256_unpacklo_epi32(r[2], r[3]),
            _mm256_unpackhi_epi32(r[2], r[3]),
            _mm256_unpacklo_epi32(r[4], r[5]),
            _mm256_unpackhi_epi32(r[4], r[5]),
            _mm256_unpacklo_epi32(r[6], r[7]),
            _mm256_unpackhi_epi32(r[6], r[7]),
        ];
        let u = [
            _mm256_unpacklo_epi64(t[0], t[2]),
            _mm256_unpackhi_epi64(t[0], t[2]),
            _mm256_unpacklo_epi64(t[1], t[3]),
            _mm256_unpackhi_epi64(t[1], t[3]),
            _mm256_unpacklo_epi64(t[4], t[6]),
            _mm256_unpackhi_epi64(t[4], t[6]),
            _mm256_unpacklo_epi64(t[5], t[7]),
            _mm256_unpackhi_epi64(t[5], t[7]),
        ];
        let offset = _mm256_set1_epi8(0x80u8 as i8);
        for j in 0..4 {
            let low = _mm256_permute2x128_si256::<0x20>(u[j], u[j + 4]);
            let high = _mm256_permute2x128_si256::<0x31>(u[j], u[j + 4]);
            _mm256_storeu_si256(q[j].as_mut_ptr().cast(), _mm256_xor_si256(low, offset));
            _mm256_storeu_si256(q[j + 4].as_mut_ptr().cast(), _mm256_xor_si256(high, offset));
        }
    }
}

/// Rows of a register block of the expand.
const EXPAND_ROWS: usize = 4;
/// Columns of a register block of the expand (two AVX2 vectors; half a Q8_0 block).
const EXPAND_LANES: usize = 16;
const _: () = assert!(Q8_0_COLS == 2 * EXPAND_LANES);

/// `delta[i][j] = sum_k ts[i][k] * w[k * stride + j]` for `k < rank`, in `k` order.
#[inline(always)]
fn expand_block<const R: usize>(
    ts: &[&[f32]; R],
    w: &[f32],
    stride: usize,
    rank: usize,
) -> [[f32; EXPAND_LANES]; R] {
    let mut delta = [[0.0f32; EXPAND_LANES]; R];
    for k in 0..rank {
        let w = &w[k * stride..k * stride + EXPAND_LANES];
        for (d, t) in delta.iter_mut().zip(ts) {
            let tv = t[k];
            for (dv, &wv) in d.iter_mut().zip(w) {
                *dv = tv.mul_add(wv, *dv);
            }
        }
    }
    delta
}

/// `y += delta * scale`, element by element (not fused, as every other column of the expand).
#[inline(always)]
fn add_scaled(y: &mut [f32], delta: &[f32], scale: f32) {
    y.iter_mut().zip(delta).for_each(|(o, &v)| *o += v * scale);
}
