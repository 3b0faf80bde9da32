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
        expand_cols(&segments[g], shrunk, n, c0, c1, out);
    });
    Ok(())
}

/// `y[r, c0..c1] += scale * B[c0..c1] t` for every row `r` of `s` (`t` = its shrunk columns).
fn expand_cols(
    s: &LoraSegment<'_, CpuMatrix>,
    shrunk: &CpuTensor,
    n: usize,
    c0: usize,
    c1: usize,
    out: OutPtr,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, the features the function is compiled for.
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

/// The body of [`expand_cols`]: each element is `sum_k t[k] * B[c, k]` in `k` order (axpys over
/// the transpose of a skinny `lora_B`, dot products otherwise), then `y += delta * scale`.
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
    let mut delta = [0.0f32; EXPAND_COLS_PER_TASK];
    let delta = &mut delta[..c1 - c0];
    for &r in s.row_ids {
        let t = &shrunk.row(r as usize)[s.col_offset..s.col_offset + rank];
        match s.matrix.transposed() {
            Some(w_t) => {
                delta.fill(0.0);
                for (&tv, w_row) in t.iter().zip(w_t.chunks_exact(n)) {
                    delta
                        .iter_mut()
                        .zip(&w_row[c0..c1])
                        .for_each(|(d, &wv)| *d = tv.mul_add(wv, *d));
                }
            }
            None => delta
                .iter_mut()
                .enumerate()
                .for_each(|(c, d)| *d = float_dot(s.matrix.dtype(), s.matrix.row(c0 + c), t)),
        }
        // SAFETY: row `r` < y.rows() (checked) and columns c0..c1 < n; no other task writes
        // these columns of this row (segments share no row, tasks of a segment no column).
        let y_row = unsafe { std::slice::from_raw_parts_mut(out.0.add(r as usize * n + c0), c1 - c0) };
        y_row
            .iter_mut()
            .zip(delta.iter())
            .for_each(|(o, &v)| *o += v * s.scale);
    }
}
