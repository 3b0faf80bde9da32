//! `x @ W^T (+ bias)`: activation quantization, tiling over (rows x weight rows), and the
//! split of output features over the thread pool.
//!
//! Every output element follows the accumulation order of `dot_scalar` whatever the tile
//! shape, kernel family or thread split, so results are batch invariant and the SIMD
//! kernels are bit-identical to the scalar ones.

use crate::dot_scalar::{float_dot, quant_dot};
use crate::dot_x86::{self as x86, ActRows};
use crate::matrix::CpuMatrix;
use crate::quant::{QuantActs, QK};
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult, WeightDType};
use rayon::prelude::*;
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
    let prep = match w.dtype() {
        WeightDType::F32 => Prepared::Float(x.as_slice(), x86::DT_F32),
        WeightDType::F16 => Prepared::Float(x.as_slice(), x86::DT_F16),
        WeightDType::BF16 => Prepared::Float(x.as_slice(), x86::DT_BF16),
        WeightDType::Q8_0 => Prepared::Quant(QuantActs::quantize(x.as_slice(), rows, k), x86::FMT_Q8_0),
        WeightDType::Q4_0 => Prepared::Quant(QuantActs::quantize(x.as_slice(), rows, k), x86::FMT_Q4_0),
        WeightDType::Q4_1 => Prepared::Quant(QuantActs::quantize(x.as_slice(), rows, k), x86::FMT_Q4_1),
    };
    debug_assert!(!matches!(prep, Prepared::Quant(..)) || k.is_multiple_of(QK));
    let isa = if isa.is_supported() { isa } else { Isa::Scalar };
    let ptr = OutPtr(out.as_mut_slice().as_mut_ptr());
    let threads = pool.current_num_threads();
    let work = rows * n * k;
    if threads <= 1 || work < (1 << 17) {
        compute_cols(isa, w, &prep, rows, 0, n, ptr, bias);
        return Ok(out);
    }
    let mut chunk = n.div_ceil(threads * 4).div_ceil(8) * 8;
    if rows > 4 {
        let l2_cols = (CHUNK_BYTES / w.row_bytes().max(1)).max(8) / 8 * 8;
        chunk = chunk.min(l2_cols);
    }
    let num_chunks = n.div_ceil(chunk);
    pool.install(|| {
        (0..num_chunks).into_par_iter().for_each(|i| {
            let c_end = ((i + 1) * chunk).min(n);
            compute_cols(isa, w, &prep, rows, i * chunk, c_end, ptr, bias);
        })
    });
    Ok(out)
}

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

/// Writes the in-range outputs of one tile (lane `c * R + r`), adding the bias.
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

/// One tile of outputs: activation rows `r0..r0 + R` x weight rows `c0..c0 + C` (indices past
/// the last weight row repeat it; the caller drops those lanes).
#[inline]
fn tile<const R: usize, const C: usize>(
    isa: Isa,
    w: &CpuMatrix,
    prep: &Prepared<'_>,
    r0: usize,
    c0: usize,
) -> [f32; 8] {
    let last = w.rows() - 1;
    let ws: [&[u8]; C] = std::array::from_fn(|j| w.row((c0 + j).min(last)));
    match prep {
        Prepared::Quant(acts, fmt) => {
            if isa == Isa::Scalar {
                return std::array::from_fn(|o| quant_dot(w.dtype(), ws[o / R], acts, r0 + o % R));
            }
            let a = ActRows {
                qs: &acts.qs,
                d: &acts.d,
                s: &acts.s,
                sum_q: &acts.sum_q,
                nb: acts.blocks_per_row,
                rows: acts.rows,
            };
            // SAFETY: `isa` was checked as supported by this CPU; `fmt` matches the weight dtype.
            unsafe {
                match (isa, *fmt) {
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
        }
        Prepared::Float(x, dt) => {
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
    }
}
