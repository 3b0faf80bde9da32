//! `x @ W^T (+ bias)`: the kernel family, shape checks, and the float-weight path (tiles of
//! rows x weight rows split over the thread pool); quantized weights go to `packed_matmul`.
//!
//! Every (activation row, weight row) pair is computed by the same instruction sequence
//! whatever the tile shape, batch size or thread split, so results are batch invariant.
//! Float kernels and the quantized kernels are bit-identical to the scalar reference.

use crate::dot_scalar::float_dot;
#[cfg(target_arch = "x86_64")]
use crate::dot_x86 as x86;
use crate::matrix::CpuMatrix;
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult};
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
    /// AArch64 NEON (baseline on every ARM64 CPU): widening-multiply integer dots.
    Neon,
    /// NEON with the dot-product extension (`sdot`).
    NeonDotprod,
}

impl Isa {
    /// Every family, best last within each architecture.
    pub const ALL: [Self; 5] = [
        Self::Scalar,
        Self::Avx2,
        Self::Avx512Vnni,
        Self::Neon,
        Self::NeonDotprod,
    ];

    /// The best family this CPU supports.
    pub fn detect() -> Self {
        let best = Self::ALL.into_iter().rev().find(|isa| isa.is_supported());
        best.unwrap_or(Self::Scalar)
    }

    /// Whether this CPU can run the family (only the scalar one off x86-64 and AArch64).
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn is_supported(self) -> bool {
        self == Self::Scalar
    }

    /// Whether this CPU can run the family (NEON is part of the AArch64 baseline).
    #[cfg(target_arch = "aarch64")]
    pub fn is_supported(self) -> bool {
        match self {
            Self::Scalar | Self::Neon => true,
            Self::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            Self::Avx2 | Self::Avx512Vnni => false,
        }
    }

    /// Whether this CPU can run the family.
    #[cfg(target_arch = "x86_64")]
    pub fn is_supported(self) -> bool {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        match self {
            Self::Scalar => true,
            Self::Neon | Self::NeonDotprod => false,
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

/// Output pointer shared by the tasks; each task writes a disjoint set of columns.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint column ranges of the output and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

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
    let isa = if isa.is_supported() { isa } else { Isa::Scalar };
    if w.dtype().is_quantized() && rows > 0 && n > 0 {
        // The tiles store every output element.
        let mut out = CpuTensor::for_overwrite(rows, n)?;
        crate::packed_matmul::quant_matmul(pool, isa, x, w, bias, &mut out);
        return Ok(out);
    }
    let mut out = CpuTensor::zeros(rows, n)?;
    if rows == 0 || n == 0 {
        return Ok(out);
    }
    if let Some(w_t) = w.transposed() {
        skinny_matmul(w_t, n, x.as_slice(), bias, out.as_mut_slice());
        return Ok(out);
    }
    let x = x.as_slice();
    let ptr = OutPtr(out.as_mut_slice().as_mut_ptr());
    let threads = pool.current_num_threads();
    let work = rows * n * k;
    if threads <= 1 || work < PAR_WORK {
        float_cols(isa, w, x, rows, 0, n, ptr, bias);
        return Ok(out);
    }
    // Few, coarse chunks: one per thread for small matrices, a few per thread for big ones to
    // absorb load imbalance. Chunk starts are multiples of 8 (every tile width divides 8).
    let per_thread = if work < BIG_WORK { 1 } else { 4 };
    let chunk = n.div_ceil(threads * per_thread).div_ceil(8) * 8;
    let num_chunks = n.div_ceil(chunk);
    crate::par::for_each_chunk(pool, num_chunks, |i| {
        let c_end = ((i + 1) * chunk).min(n);
        float_cols(isa, w, x, rows, i * chunk, c_end, ptr, bias);
    });
    Ok(out)
}

/// `out = x @ w^T (+ bias)` for a skinny f32 weight given as its `[k, n]` transpose `w_t` (a
/// LoRA `lora_B`, `k` = the rank): each row is `sum_k x[k] * w_t[k, :]` in `k` order, as axpys
/// (no `k`-long dot products, whose horizontal sums dominate at such widths); the same for every
/// batch size, so rows stay independent of the batch.
fn skinny_matmul(w_t: &[f32], n: usize, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, the features the function is compiled for.
        return unsafe { skinny_rows_avx2(w_t, n, x, bias, out) };
    }
    skinny_rows(w_t, n, x, bias, out);
}

/// [`skinny_matmul`] compiled for AVX2 + FMA (the axpys vectorize 8 wide with fused multiply-adds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn skinny_rows_avx2(w_t: &[f32], n: usize, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    skinny_rows(w_t, n, x, bias, out);
}

/// The rows of [`skinny_matmul`]: `out[r] = bias + sum_k x[r, k] * w_t[k, :]`, in `k` order.
#[inline(always)]
fn skinny_rows(w_t: &[f32], n: usize, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let k = w_t.len() / n.max(1);
    for (x_row, out_row) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        if let Some(b) = bias {
            out_row.copy_from_slice(b);
        }
        for (&xv, w_row) in x_row.iter().zip(w_t.chunks_exact(n)) {
            out_row
                .iter_mut()
                .zip(w_row)
                .for_each(|(o, &wv)| *o = xv.mul_add(wv, *o));
        }
    }
}

/// Multiply-adds (`rows * n * k`) below which a matmul runs on the calling thread.
pub(crate) const PAR_WORK: usize = 1 << 18;
/// Multiply-adds above which a matmul is split into several chunks per thread.
const BIG_WORK: usize = 1 << 24;

/// Weight rows of one block of [`float_cols`]: every activation row runs against a block before
/// the next block is loaded, so a multi-row step (a speculative verification) reads each weight
/// from memory once, not once per group of 4 rows. 16 rows of 576 f32 features are 36 KiB.
const FLOAT_COL_BLOCK: usize = 16;

/// Float-weight columns `c_start..c_end` of every row, in blocks of [`FLOAT_COL_BLOCK`]
/// weight rows (`c_start` is a multiple of 8, so every block but the last is whole tiles); in a
/// block, tiles of 4 rows, then 2, then 1 (each output's accumulation order is the same in every
/// tile shape).
#[allow(clippy::too_many_arguments)]
pub(crate) fn float_cols(
    isa: Isa,
    w: &CpuMatrix,
    x: &[f32],
    rows: usize,
    c_start: usize,
    c_end: usize,
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    for b0 in (c_start..c_end).step_by(FLOAT_COL_BLOCK) {
        let cols = b0..(b0 + FLOAT_COL_BLOCK).min(c_end);
        let mut r0 = 0;
        while rows - r0 >= 4 {
            for c0 in cols.clone().step_by(2) {
                store::<4, 2>(tile::<4, 2>(isa, w, x, r0, c0), r0, c0, w.rows(), out, bias);
            }
            r0 += 4;
        }
        if rows - r0 >= 2 {
            for c0 in cols.clone().step_by(4) {
                store::<2, 4>(tile::<2, 4>(isa, w, x, r0, c0), r0, c0, w.rows(), out, bias);
            }
            r0 += 2;
        }
        if rows - r0 == 1 {
            for c0 in cols.step_by(8) {
                store::<1, 8>(tile::<1, 8>(isa, w, x, r0, c0), r0, c0, w.rows(), out, bias);
            }
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
    x: &[f32],
    r0: usize,
    c0: usize,
) -> [f32; 8] {
    let last = w.rows() - 1;
    let ws: [&[u8]; C] = std::array::from_fn(|j| w.row((c0 + j).min(last)));
    let k = w.cols();
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[(r0 + r) * k..(r0 + r + 1) * k]);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `isa` was checked as supported (the float kernels need only AVX2/FMA/F16C).
        return unsafe {
            match w.dtype() {
                ember_core::WeightDType::F32 => x86::float_tile::<R, C, { x86::DT_F32 }>(&ws, &xs),
                ember_core::WeightDType::F16 => x86::float_tile::<R, C, { x86::DT_F16 }>(&ws, &xs),
                _ => x86::float_tile::<R, C, { x86::DT_BF16 }>(&ws, &xs),
            }
        };
    }
    let _ = isa;
    std::array::from_fn(|o| float_dot(w.dtype(), ws[o / R], xs[o % R]))
}
