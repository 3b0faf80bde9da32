//! `x @ W^T (+ bias)`: activation quantization, tiling over (rows x weight rows), and the
//! split of output features over the thread pool.
//!
//! Every (activation row, weight row) pair is computed by the same instruction sequence
//! whatever the tile shape, batch size or thread split, and the kernel family is fixed per
//! backend (never chosen by batch size), so results are batch invariant. Float kernels are
//! bit-identical to the scalar reference; quantized SIMD kernels keep the per-block integer
//! dots in vector lanes (llama.cpp's scheme) and so differ from the scalar reference by f32
//! rounding only.

use crate::dot_scalar::{float_dot, quant_dot};
use crate::dot_x86::{self as x86, ActRows};
use crate::matrix::CpuMatrix;
use crate::quant::{QuantActs, QK};
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult, WeightDType};
use rayon::ThreadPool;

/// The kernel family that runs the matmuls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (the reference).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 kernels with AVX-512 VNNI (`vpdpbusd`) integer dots.
    Avx512Vnni,
}

impl Isa {
    /// The best family this CPU supports.
    pub fn detect() -> Self {
        if Self::Avx512Vnni.is_supported() {
            Self::Avx512Vnni
        } else if Self::Avx2.is_supported() {
            Self::Avx2
        } else {
            Self::Scalar
        }
    }

    /// Whether this CPU can run the family.
    pub fn is_supported(self) -> bool {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        match self {
            Self::Scalar => true,
            Self::Avx2 => avx2,
            Self::Avx512Vnni => {
                avx2 && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
        }
    }
}

/// Activations prepared for one weight encoding.
enum Prepared<'a> {
    /// Quantized rows and the weight format tag.
    Quant(QuantActs, u8),
    /// f32 rows `[rows, k]` and the float tag.
    Float(&'a [f32], u8),
}

/// Output pointer shared by the tasks; each task writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Weight rows per L2-sized chunk target when many activation rows reuse them.
const CHUNK_BYTES: usize = 192 * 1024;

/// `x @ w^T (+ bias)`: `[rows, in] -> [rows, out]`.
pub fn matmul(
    pool: &ThreadPool,
    isa: Isa,
    x: &CpuTensor,
    w: &CpuMatrix,
    bias: Option<&[f32]>,
) -> BackendResult<CpuTensor> {
    let (rows, k, n) = (x.rows(), x.cols(), w.rows());
    if k != w.cols() {
        return Err(BackendError::Device(format!(
            "matmul: input has {k} features, weight [{n}, {}] expects {}",
            w.cols(),
            w.cols()
        )));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(BackendError::Device(format!(
                "matmul: bias has {} elements, expected {n}",
                b.len()
            )));
        }
    }
    let mut out = CpuTensor::zeros(rows, n)?;
    if rows == 0 || n == 0 {
        return Ok(out);
    }
    let quant = |shift: Option<u32>| QuantActs::quantize_with(x.as_slice(), rows, k, shift);
    let prep = match w.dtype() {
        WeightDType::F32 => Prepared::Float(x.as_slice(), x86::DT_F32),
        WeightDType::F16 => Prepared::Float(x.as_slice(), x86::DT_F16),
        WeightDType::BF16 => Prepared::Float(x.as_slice(), x86::DT_BF16),
        WeightDType::Q8_0 => Prepared::Quant(quant(Some(7)), x86::FMT_Q8_0),
        WeightDType::Q4_0 => Prepared::Quant(quant(Some(3)), x86::FMT_Q4_0),
        WeightDType::Q4_1 => Prepared::Quant(quant(None), x86::FMT_Q4_1),
    };
    debug_assert!(!matches!(prep, Prepared::Quant(..)) || k.is_multiple_of(QK));
    let isa = if isa.is_supported() { isa } else { Isa::Scalar };
    let ptr = OutPtr(out.as_mut_slice().as_mut_ptr());
    let threads = pool.current_num_threads();
    let work = rows * n * k;
    if threads <= 1 || work < PAR_WORK {
        compute_cols(isa, w, &prep, rows, 0, n, ptr, bias);
        return Ok(out);
    }
    // Few, coarse chunks: one per thread for small matrices (decode runs ~200 small matmuls
    // a step, so dispatch overhead matters); a few per thread for big ones to absorb load
    // imbalance. Chunk starts are multiples of 8 (every tile width divides 8).
    let per_thread = if work < BIG_WORK { 1 } else { 4 };
    let chunk = n.div_ceil(threads * per_thread).div_ceil(8) * 8;
    let num_chunks = n.div_ceil(chunk);
    crate::par::for_each_chunk(pool, num_chunks, |i| {
        let c_end = ((i + 1) * chunk).min(n);
        compute_cols(isa, w, &prep, rows, i * chunk, c_end, ptr, bias);
    });
    Ok(out)
}

/// Multiply-adds (`rows * n * k`) below which a matmul runs on the calling thread.
const PAR_WORK: usize = 1 << 18;
/// Multiply-adds above which a matmul is split into several chunks per thread.
const BIG_WORK: usize = 1 << 24;

/// Computes output columns `c_start..c_end` (`c_start` a multiple of 8) of every row.
#[allow(clippy::too_many_arguments)]
fn compute_cols(
    isa: Isa,
    w: &CpuMatrix,
    prep: &Prepared<'_>,
    rows: usize,
    c_start: usize,
    c_end: usize,
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    let acts = match prep {
        Prepared::Quant(acts, fmt) => (acts, *fmt),
        Prepared::Float(..) => return float_cols(isa, w, prep, rows, c_start, c_end, out, bias),
    };
    // With many rows, sweep the rows over L2-sized groups of weight rows.
    let group = if rows > 4 {
        (CHUNK_BYTES / w.row_bytes().max(1)).max(8) / 8 * 8
    } else {
        c_end - c_start
    };
    let mut g0 = c_start;
    while g0 < c_end {
        let g1 = (g0 + group).min(c_end);
        let mut r0 = 0;
        while rows - r0 >= 4 {
            quant_rows::<4, 2>(isa, w, acts, r0, g0, g1, out, bias);
            r0 += 4;
        }
        if rows - r0 >= 2 {
            quant_rows::<2, 4>(isa, w, acts, r0, g0, g1, out, bias);
            r0 += 2;
        }
        if rows - r0 == 1 {
            quant_rows::<1, 4>(isa, w, acts, r0, g0, g1, out, bias);
        }
        g0 = g1;
    }
}

/// Quantized tiles of `R` rows from `r0` over weight rows `c_start..c_end`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn quant_rows<const R: usize, const C: usize>(
    isa: Isa,
    w: &CpuMatrix,
    (acts, fmt): (&QuantActs, u8),
    r0: usize,
    c_start: usize,
    c_end: usize,
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    let n = w.rows();
    let a = ActRows {
        qs: &acts.qs,
        lanes_d: &acts.lanes_d,
        lanes_s: &acts.lanes_s,
        lanes_corr: &acts.lanes_corr,
        pairs_ds: &acts.pairs_ds,
        nb: acts.blocks_per_row,
        nbp: acts.padded_blocks,
        rows: acts.rows,
    };
    let rb = w.row_bytes();
    let all = w.as_bytes();
    for c0 in (c_start..c_end).step_by(C) {
        if r0 == 0 {
            prefetch(
                all,
                c0 * rb + PREFETCH_BYTES,
                (c0 + C).min(c_end) * rb + PREFETCH_BYTES,
            );
        }
        let ws: [&[u8]; C] = std::array::from_fn(|j| w.row((c0 + j).min(n - 1)));
        let res: [[f32; R]; C] = if isa == Isa::Scalar {
            std::array::from_fn(|c| std::array::from_fn(|r| quant_dot(w.dtype(), ws[c], acts, r0 + r)))
        } else {
            // SAFETY: `isa` was checked as supported by this CPU; `fmt` matches the weight
            // dtype and the activations carry its offset correction.
            unsafe {
                match (isa, fmt) {
                    (Isa::Avx2, x86::FMT_Q8_0) => {
                        x86::avx2::quant_tile::<R, C, { x86::FMT_Q8_0 }>(&ws, &a, r0)
                    }
                    (Isa::Avx2, x86::FMT_Q4_0) => {
                        x86::avx2::quant_tile::<R, C, { x86::FMT_Q4_0 }>(&ws, &a, r0)
                    }
                    (Isa::Avx2, _) => x86::avx2::quant_tile::<R, C, { x86::FMT_Q4_1 }>(&ws, &a, r0),
                    (_, x86::FMT_Q8_0) => x86::vnni::quant_tile::<R, C, { x86::FMT_Q8_0 }>(&ws, &a, r0),
                    (_, x86::FMT_Q4_0) => x86::vnni::quant_tile::<R, C, { x86::FMT_Q4_0 }>(&ws, &a, r0),
                    (_, _) => x86::vnni::quant_tile::<R, C, { x86::FMT_Q4_1 }>(&ws, &a, r0),
                }
            }
        };
        for (c, col) in res.iter().enumerate().take(C.min(c_end - c0)) {
            for (r, &v) in col.iter().enumerate() {
                let v = bias.map_or(v, |b| v + b[c0 + c]);
                // SAFETY: `r0 + r < rows` and `c0 + c < n`, so the index is inside the
                // `[rows, n]` output; this task is the only writer of column `c0 + c`.
                unsafe { *out.0.add((r0 + r) * n + c0 + c) = v };
            }
        }
    }
}

/// How far ahead of the tile being computed weight bytes are prefetched.
const PREFETCH_BYTES: usize = 4096;

/// Prefetches the cache lines of `bytes[start..end]` (clamped to the buffer) into L2.
#[inline]
fn prefetch(bytes: &[u8], start: usize, end: usize) {
    let end = end.min(bytes.len());
    let mut off = start & !63;
    while off < end {
        // SAFETY: `off < bytes.len()`; prefetching never faults.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            _mm_prefetch::<_MM_HINT_T1>(bytes.as_ptr().add(off).cast());
        }
        off += 64;
    }
}

/// Float-weight columns `c_start..c_end` of every row.
#[allow(clippy::too_many_arguments)]
fn float_cols(
    isa: Isa,
    w: &CpuMatrix,
    prep: &Prepared<'_>,
    rows: usize,
    c_start: usize,
    c_end: usize,
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    let mut r0 = 0;
    while rows - r0 >= 4 {
        for c0 in (c_start..c_end).step_by(2) {
            store::<4, 2>(tile::<4, 2>(isa, w, prep, r0, c0), r0, c0, w.rows(), out, bias);
        }
        r0 += 4;
    }
    if rows - r0 >= 2 {
        for c0 in (c_start..c_end).step_by(4) {
            store::<2, 4>(tile::<2, 4>(isa, w, prep, r0, c0), r0, c0, w.rows(), out, bias);
        }
        r0 += 2;
    }
    if rows - r0 == 1 {
        for c0 in (c_start..c_end).step_by(8) {
            store::<1, 8>(tile::<1, 8>(isa, w, prep, r0, c0), r0, c0, w.rows(), out, bias);
        }
    }
}

/// Writes the in-range outputs of one float tile (lane `c * R + r`), adding the bias.
#[inline]
fn store<const R: usize, const C: usize>(
    res: [f32; 8],
    r0: usize,
    c0: usize,
    n: usize,
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    for c in 0..C.min(n - c0) {
        for r in 0..R {
            let v = res[c * R + r];
            let v = bias.map_or(v, |b| v + b[c0 + c]);
            // SAFETY: `r0 + r < rows` and `c0 + c < n`, so the index is inside the `[rows, n]`
            // output; this task is the only writer of column `c0 + c`.
            unsafe { *out.0.add((r0 + r) * n + c0 + c) = v };
        }
    }
}

/// One float tile: activation rows `r0..r0 + R` x weight rows `c0..c0 + C` (indices past
/// the last weight row repeat it; the caller drops those lanes).
#[inline]
fn tile<const R: usize, const C: usize>(
    isa: Isa,
    w: &CpuMatrix,
    prep: &Prepared<'_>,
    r0: usize,
    c0: usize,
) -> [f32; 8] {
    let Prepared::Float(x, dt) = prep else {
        unreachable!("float tile on quantized weights")
    };
    let last = w.rows() - 1;
    let ws: [&[u8]; C] = std::array::from_fn(|j| w.row((c0 + j).min(last)));
    let k = w.cols();
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[(r0 + r) * k..(r0 + r + 1) * k]);
    if isa == Isa::Scalar {
        return std::array::from_fn(|o| float_dot(w.dtype(), ws[o / R], xs[o % R]));
    }
    // SAFETY: `isa` was checked as supported (the float kernels need only AVX2/FMA/F16C).
    unsafe {
        match *dt {
            x86::DT_F32 => x86::avx2::float_tile::<R, C, { x86::DT_F32 }>(&ws, &xs),
            x86::DT_F16 => x86::avx2::float_tile::<R, C, { x86::DT_F16 }>(&ws, &xs),
            _ => x86::avx2::float_tile::<R, C, { x86::DT_BF16 }>(&ws, &xs),
        }
    }
}
