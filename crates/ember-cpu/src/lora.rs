//! LoRA shrink and expand for every adapter of a step, each in one parallel region: the shrink
//! runs each segment's gathered rows through the float matmul tiles, the expand adds
//! `scale * B t` as axpys over `lora_B`'s stored transpose. Tasks split segments by column and
//! every output element is computed by the same instructions whatever the split, so a row's
//! values do not depend on what else is in the batch.

use crate::dot_scalar::float_dot;
use crate::matmul::{float_cols, Isa, OutPtr, PAR_WORK};
use crate::matrix::CpuMatrix;
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult, LoraSegment};
use rayon::ThreadPool;

/// `lora_A` rows per shrink task (a multiple of every float tile width).
const SHRINK_COLS_PER_TASK: usize = 8;
/// Output columns per expand task.
const EXPAND_COLS_PER_TASK: usize = 128;

fn lora_err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

/// Checks that the segments' factors are float matrices, their rows in `0..num_rows` and no row
/// in two segments.
fn check_segments(op: &str, segments: &[LoraSegment<'_, CpuMatrix>], num_rows: usize) -> BackendResult<()> {
    let mut taken = vec![false; num_rows];
    for s in segments {
        if s.matrix.dtype().is_quantized() || s.matrix.rows() == 0 {
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
    check_segments("lora_shrink", segments, x.rows())?;
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
    let gathered: Vec<Vec<f32>> = segments
        .iter()
        .map(|s| {
            s.row_ids
                .iter()
                .flat_map(|&r| x.row(r as usize))
                .copied()
                .collect()
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
    let width = segments.iter().map(|s| s.matrix.rows()).max().unwrap_or(0);
    let mut out = CpuTensor::zeros(x.rows(), width)?;
    for (s, product) in segments.iter().zip(&products) {
        let rank = s.matrix.rows();
        for (&r, row) in s.row_ids.iter().zip(product.chunks_exact(rank)) {
            out.row_mut(r as usize)[..rank].copy_from_slice(row);
        }
    }
    Ok(out)
}

/// See [`ember_core::Backend::lora_expand`].
pub fn lora_expand(
    pool: &ThreadPool,
    isa: Isa,
    shrunk: &CpuTensor,
    segments: &[LoraSegment<'_, CpuMatrix>],
    y: &mut CpuTensor,
) -> BackendResult<()> {
    check_segments("lora_expand", segments, y.rows().min(shrunk.rows()))?;
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
        // SAFETY: every family but the scalar one needs AVX2 and FMA (checked by `is_supported`),
        // the features the function is compiled for.
        return unsafe { expand_cols_avx2(s, shrunk, n, c0, c1, out) };
    }
    expand_cols_any(s, shrunk, n, c0, c1, out);
}

/// [`expand_cols`] compiled for AVX2 + FMA (the axpys vectorize 8 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn expand_cols_avx2(
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    c0: usize,
    c1: usize,
    out: OutPtr,
) {
    expand_cols_any(s, shrunk, n, c0, c1, out);
}

/// The body of [`expand_cols`]: each element is `sum_k t[k] * B[c, k]` in `k` order, then
/// `y += delta * scale`. A skinny `lora_B` runs over its stored transpose, up to
/// [`EXPAND_ROWS`] rows by [`EXPAND_LANES`] columns at a time with the accumulators in
/// registers (each `B` value loaded once for the block's rows); a wide one as dot products.
#[inline(always)]
fn expand_cols_any(
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    c0: usize,
    c1: usize,
    out: OutPtr,
) {
    let rank = s.matrix.cols();
    let shrunk_of = |r: u32| &shrunk.row(r as usize)[s.col_offset..s.col_offset + rank];
    // SAFETY (for the writes below): row `r` < y.rows() (checked) and columns c0..c1 < n; no
    // other task writes these columns of this row (segments share no row, tasks of a segment
    // no column).
    let y_cols = |r: u32, c: usize, len: usize| unsafe {
        std::slice::from_raw_parts_mut(out.0.add(r as usize * n + c), len)
    };
    let Some(w_t) = s.matrix.transposed() else {
        for &r in s.row_ids {
            let t = shrunk_of(r);
            for (c, o) in (c0..c1).zip(y_cols(r, c0, c1 - c0)) {
                *o += float_dot(s.matrix.dtype(), s.matrix.row(c), t) * s.scale;
            }
        }
        return;
    };
    let num_blocked = (c1 - c0) / EXPAND_LANES * EXPAND_LANES;
    let mut rows = s.row_ids.chunks_exact(EXPAND_ROWS);
    for block in rows.by_ref() {
        let ts: [&[f32]; EXPAND_ROWS] = std::array::from_fn(|i| shrunk_of(block[i]));
        for c in (c0..c0 + num_blocked).step_by(EXPAND_LANES) {
            let delta = expand_block(&ts, w_t, n, c);
            for (&r, d) in block.iter().zip(&delta) {
                add_scaled(y_cols(r, c, EXPAND_LANES), d, s.scale);
            }
        }
    }
    for &r in rows.remainder() {
        let ts = [shrunk_of(r)];
        for c in (c0..c0 + num_blocked).step_by(EXPAND_LANES) {
            add_scaled(y_cols(r, c, EXPAND_LANES), &expand_block(&ts, w_t, n, c)[0], s.scale);
        }
    }
    // The last columns (fewer than a block), one at a time with the same arithmetic.
    for &r in s.row_ids {
        let t = shrunk_of(r);
        for (c, o) in (c0 + num_blocked..c1).zip(y_cols(r, c0 + num_blocked, c1 - c0 - num_blocked)) {
            let delta = t
                .iter()
                .zip(w_t.chunks_exact(n))
                .fold(0.0f32, |d, (&tv, w_row)| tv.mul_add(w_row[c], d));
            *o += delta * s.scale;
        }
    }
}

/// Rows of a register block of the expand.
const EXPAND_ROWS: usize = 4;
/// Columns of a register block of the expand (two AVX2 vectors).
const EXPAND_LANES: usize = 16;

/// `delta[i][j] = sum_k ts[i][k] * w_t[k, c + j]` (`w_t` is `[rank, n]`), `k` in order.
#[inline(always)]
fn expand_block<const R: usize>(ts: &[&[f32]; R], w_t: &[f32], n: usize, c: usize) -> [[f32; EXPAND_LANES]; R] {
    let mut delta = [[0.0f32; EXPAND_LANES]; R];
    for (k, w_row) in w_t.chunks_exact(n).enumerate() {
        let w = &w_row[c..c + EXPAND_LANES];
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
