//! LoRA shrink and expand for every adapter of a step, each in one parallel region: the shrink
//! runs each segment's gathered rows through the matmul kernels (a Q8_0 `lora_A` through the
//! 8-bit activation kernels, one task per segment; a float one through the float tiles, split
//! by column), the expand adds `scale * B t` as axpys over `lora_B`'s stored transpose, split
//! by column. Every output element is computed by the same instructions whatever the split,
//! so a row's values do not depend on what else is in the batch.

use crate::dot_scalar::float_dot;
use crate::matmul::{float_cols, Isa, OutPtr, PAR_WORK};
use crate::matrix::{CpuMatrix, PANEL_LANES, SKINNY_MAX_COLS};
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult, LoraSegment, WeightDType};
use half::slice::HalfFloatSliceExt;
use rayon::ThreadPool;
use std::sync::{Mutex, PoisonError};

/// `lora_A` rows per shrink task (a multiple of every float tile width).
const SHRINK_COLS_PER_TASK: usize = 8;
/// Output columns per expand task.
const EXPAND_COLS_PER_TASK: usize = 128;

fn lora_err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

/// Checks that the segments' factors are non-empty float matrices (or Q8_0 ones, when
/// `q8_0_ok`), their rows in `0..num_rows` and no row in two segments.
fn check_segments(
    op: &str,
    segments: &[LoraSegment<'_, CpuMatrix>],
    num_rows: usize,
    q8_0_ok: bool,
) -> BackendResult<()> {
    let mut taken = vec![false; num_rows];
    for s in segments {
        let dtype = s.matrix.dtype();
        let dtype_ok = !dtype.is_quantized() || (q8_0_ok && dtype == WeightDType::Q8_0);
        if !dtype_ok || s.matrix.rows() == 0 {
            return Err(lora_err(
                op,
                format!(
                    "factor of dtype {} with {} rows",
                    s.matrix.dtype(),
                    s.matrix.rows()
                ),
            ));
        }
        for &r in s.row_ids {
            let seen = taken
                .get_mut(r as usize)
                .ok_or_else(|| lora_err(op, format!("row {r} of {num_rows}")))?;
            if std::mem::replace(seen, true) {
                return Err(lora_err(op, format!("row {r} in two segments")));
            }
        }
    }
    Ok(())
}

/// Runs `f(t)` for every task `t < num_tasks`: over the thread pool when the call's `work`
/// (multiply-adds) reaches the matmuls' parallel threshold, on the calling thread otherwise (a
/// parallel region costs a wake-up of every helper, dear on a shared core).
fn for_each_task(pool: &ThreadPool, work: usize, num_tasks: usize, f: impl Fn(usize) + Sync) {
    if work < PAR_WORK {
        (0..num_tasks).for_each(f);
    } else {
        crate::par::for_each_chunk(pool, num_tasks, f);
    }
}

/// See [`ember_core::Backend::lora_shrink`].
pub fn lora_shrink(
    pool: &ThreadPool,
    isa: Isa,
    x: &CpuTensor,
    segments: &[LoraSegment<'_, CpuMatrix>],
) -> BackendResult<CpuTensor> {
    check_segments("lora_shrink", segments, x.rows(), true)?;
    if let Some(s) = segments.iter().find(|s| s.matrix.cols() != x.cols()) {
        let detail = format!(
            "lora_A [{}, {}] on {} features",
            s.matrix.rows(),
            s.matrix.cols(),
            x.cols()
        );
        return Err(lora_err("lora_shrink", detail));
    }
    let isa = if isa.is_supported() { isa } else { Isa::Scalar };
    let (quantized, float): (Vec<_>, Vec<_>) = segments.iter().partition(|s| s.matrix.dtype().is_quantized());
    let mut products = quantized_shrinks(pool, isa, x, &quantized)?;
    products.extend(float_shrinks(pool, isa, x, &float));
    let width = segments.iter().map(|s| s.matrix.rows()).max().unwrap_or(0);
    let mut out = CpuTensor::zeros(x.rows(), width)?;
    for (s, product) in quantized.iter().chain(&float).zip(&products) {
        let rank = s.matrix.rows();
        for (&r, row) in s.row_ids.iter().zip(product.chunks_exact(rank)) {
            out.row_mut(r as usize)[..rank].copy_from_slice(row);
        }
    }
    Ok(out)
}

/// `x[rows] A^T` of each segment with a Q8_0 `lora_A` (`[rows, rank]`, row-major), through the
/// quantized matmul (which quantizes the gathered rows as it does any activations). Many small
/// segments run as tasks of one parallel region, each product on its task's thread; a segment
/// big enough to split runs alone, split by the matmul itself.
fn quantized_shrinks(
    pool: &ThreadPool,
    isa: Isa,
    x: &CpuTensor,
    segments: &[&LoraSegment<'_, CpuMatrix>],
) -> BackendResult<Vec<Vec<f32>>> {
    let mut gathered = Vec::with_capacity(segments.len());
    let mut products = Vec::with_capacity(segments.len());
    for s in segments {
        let mut rows = CpuTensor::zeros(s.row_ids.len(), x.cols())?;
        for (i, &r) in s.row_ids.iter().enumerate() {
            rows.row_mut(i).copy_from_slice(x.row(r as usize));
        }
        gathered.push(rows);
        products.push(CpuTensor::zeros(s.row_ids.len(), s.matrix.rows())?);
    }
    let work_of = |s: &LoraSegment<'_, CpuMatrix>| s.row_ids.len() * s.matrix.rows() * x.cols();
    if segments.iter().any(|s| work_of(s) >= PAR_WORK) {
        for ((s, rows), product) in segments.iter().zip(&gathered).zip(&mut products) {
            crate::packed_matmul::quant_matmul(pool, isa, rows, s.matrix, None, product);
        }
    } else {
        // Task `g` alone locks product `g`: the locks are never contended.
        let locked: Vec<Mutex<CpuTensor>> = products.into_iter().map(Mutex::new).collect();
        let work = segments.iter().map(|s| work_of(s)).sum();
        for_each_task(pool, work, segments.len(), |g| {
            let mut product = locked[g].lock().unwrap_or_else(PoisonError::into_inner);
            // Below `PAR_WORK`, so the matmul runs on this task's thread.
            let a = segments[g].matrix;
            crate::packed_matmul::quant_matmul(pool, isa, &gathered[g], a, None, &mut product);
        });
        products = locked
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
            .collect();
    }
    Ok(products.into_iter().map(CpuTensor::into_vec).collect())
}

/// `x[rows] A^T` of each segment with a float `lora_A` (`[rows, rank]`, row-major), through the
/// float tiles, [`SHRINK_COLS_PER_TASK`] columns of one segment per task.
fn float_shrinks(
    pool: &ThreadPool,
    isa: Isa,
    x: &CpuTensor,
    segments: &[&LoraSegment<'_, CpuMatrix>],
) -> Vec<Vec<f32>> {
    let gathered: Vec<Vec<f32>> = segments
        .iter()
        .map(|s| {
            let mut rows = Vec::with_capacity(s.row_ids.len() * x.cols());
            s.row_ids
                .iter()
                .for_each(|&r| rows.extend_from_slice(x.row(r as usize)));
            rows
        })
        .collect();
    let mut products: Vec<Vec<f32>> = segments
        .iter()
        .map(|s| vec![0.0; s.row_ids.len() * s.matrix.rows()])
        .collect();
    let outs: Vec<OutPtr> = products.iter_mut().map(|p| OutPtr(p.as_mut_ptr())).collect();
    let tasks: Vec<(usize, usize)> = segments
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.row_ids.is_empty())
        .flat_map(|(g, s)| {
            (0..s.matrix.rows())
                .step_by(SHRINK_COLS_PER_TASK)
                .map(move |c0| (g, c0))
        })
        .collect();
    crate::par::for_each_chunk(pool, tasks.len(), |t| {
        let (g, c0) = tasks[t];
        let s = &segments[g];
        let c1 = (c0 + SHRINK_COLS_PER_TASK).min(s.matrix.rows());
        // Each task writes columns c0..c1 of its own segment's product.
        float_cols(
            isa,
            s.matrix,
            &gathered[g],
            s.row_ids.len(),
            c0,
            c1,
            outs[g],
            None,
        );
    });
    products
}

/// See [`ember_core::Backend::lora_expand`].
pub fn lora_expand(
    pool: &ThreadPool,
    isa: Isa,
    shrunk: &CpuTensor,
    segments: &[LoraSegment<'_, CpuMatrix>],
    y: &mut CpuTensor,
) -> BackendResult<()> {
    check_segments("lora_expand", segments, y.rows().min(shrunk.rows()), false)?;
    let n = y.cols();
    if let Some(s) = segments
        .iter()
        .find(|s| s.matrix.rows() != n || s.col_offset + s.matrix.cols() > shrunk.cols())
    {
        let detail = format!(
            "lora_B [{}, {}] at column {} of {} shrunk columns into {n} outputs",
            s.matrix.rows(),
            s.matrix.cols(),
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
        .map(|s| s.row_ids.len() * s.matrix.cols() * n)
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
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && isa.is_supported() {
        // SAFETY: every family but the scalar one needs AVX2, FMA and F16C (`is_supported`),
        // the features the function is compiled for.
        return unsafe { expand_cols_avx2(s, shrunk, n, c0, c1, out) };
    }
    // Elsewhere (AArch64) the portable body serves every kernel family.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    expand_cols_any(s, shrunk, n, c0, c1, out, false);
}

/// [`expand_cols`] compiled for AVX2 + FMA + F16C (the axpys vectorize 8 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand_cols_avx2(
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    c0: usize,
    c1: usize,
    out: OutPtr,
) {
    expand_cols_any(s, shrunk, n, c0, c1, out, true);
}

/// The body of [`expand_cols`]: each element is `sum_k t[k] * B[c, k]` in `k` order, then
/// `y += delta * scale`. A skinny `lora_B` runs over its stored transpose, [`EXPAND_LANES`]
/// columns at a time (an f16 one decoded once per column block) for up to [`EXPAND_ROWS`] rows
/// at a time with the accumulators in registers; a wide one as dot products.
#[inline(always)]
fn expand_cols_any(
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    c0: usize,
    c1: usize,
    out: OutPtr,
    f16c: bool,
) {
    let rank = s.matrix.cols();
    let shrunk_of = |r: u32| &shrunk.row(r as usize)[s.col_offset..s.col_offset + rank];
    // SAFETY (for the writes below): row `r` < y.rows() (checked) and columns c0..c1 < n; no
    // other task writes these columns of this row (segments share no row, tasks of a segment
    // no column).
    let y_cols = |r: u32, c: usize, len: usize| unsafe {
        std::slice::from_raw_parts_mut(out.0.add(r as usize * n + c), len)
    };
    let transposed = match (s.matrix.transposed(), s.matrix.panels_f16()) {
        (Some(w_t), _) => Transposed::F32(w_t),
        (None, Some(w_t)) => Transposed::F16(w_t),
        (None, None) => {
            for &r in s.row_ids {
                let t = shrunk_of(r);
                for (c, o) in (c0..c1).zip(y_cols(r, c0, c1 - c0)) {
                    *o += float_dot(s.matrix.dtype(), s.matrix.row(c), t) * s.scale;
                }
            }
            return;
        }
    };
    let mut panel = [0.0f32; EXPAND_LANES * SKINNY_MAX_COLS];
    for c in (c0..c1).step_by(EXPAND_LANES) {
        let lanes = EXPAND_LANES.min(c1 - c);
        // `[rank, lanes]` of the transpose at columns c..c + lanes, with its row stride.
        let (w, stride): (&[f32], usize) = match transposed {
            Transposed::F32(w_t) => (&w_t[c..], n),
            Transposed::F16(panels) => {
                // `c` is a multiple of the panel width (tasks start at multiples of it).
                let len = rank * PANEL_LANES;
                let start = c / PANEL_LANES * len;
                decode_f16(&panels[start..start + len], &mut panel[..len], f16c);
                (&panel[..], EXPAND_LANES)
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

/// A skinny `lora_B`'s stored transpose: f32 `[rank, num_outputs]`, or f16 column panels (see
/// [`CpuMatrix::panels_f16`]).
#[derive(Clone, Copy)]
enum Transposed<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

/// `dst = src` as f32 (exact), with F16C instructions when `f16c` (only inside
/// [`expand_cols_avx2`], compiled for them); `src.len()` is a multiple of 8.
#[inline(always)]
fn decode_f16(src: &[half::f16], dst: &mut [f32], f16c: bool) {
    #[cfg(target_arch = "x86_64")]
    if f16c {
        use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
        for (s8, d8) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
            // SAFETY: 8 elements on each side; the caller runs on a CPU with F16C.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(s8.as_ptr().cast::<__m128i>()));
                _mm256_storeu_ps(d8.as_mut_ptr(), v);
            }
        }
        return;
    }
    let _ = f16c;
    src.convert_to_f32_slice(dst);
}

/// Rows of a register block of the expand.
const EXPAND_ROWS: usize = 4;
/// Columns of a register block of the expand (two AVX2 vectors; one f16 panel).
const EXPAND_LANES: usize = PANEL_LANES;
const _: () = assert!(EXPAND_COLS_PER_TASK.is_multiple_of(PANEL_LANES));

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
