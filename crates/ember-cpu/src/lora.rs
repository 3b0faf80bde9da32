//! LoRA shrink for every adapter of a step, in one parallel region: each segment's rows run
//! through the matmul kernels (a Q8_0 `lora_A` through the 8-bit activation kernels on the
//! input's kept quantization, one task per segment; a float one through the float tiles, split
//! by column); the segment checks both halves share. The expand is in `lora_expand`. Every
//! output element is computed by the same instructions whatever the split, so a row's values
//! do not depend on what else is in the batch.

use crate::matmul::{float_cols, Isa, OutPtr, PAR_WORK};
use crate::matrix::CpuMatrix;
use crate::packed_matmul::quant_matmul_acts;
use crate::quant::QuantActs;
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult, LoraSegment, WeightDType};
use rayon::ThreadPool;
use std::sync::{Mutex, PoisonError};

/// `lora_A` rows per shrink task (a multiple of every float tile width).
const SHRINK_COLS_PER_TASK: usize = 8;

/// A LoRA kernel's error: `op` and what was wrong.
pub(crate) fn lora_err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

/// Checks that the segments' factors are non-empty float matrices (or Q8_0 ones, when
/// `q8_0_ok`), their rows in `0..num_rows` and no row in two segments.
pub(crate) fn check_segments(
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
pub(crate) fn for_each_task(pool: &ThreadPool, work: usize, num_tasks: usize, f: impl Fn(usize) + Sync) {
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
    let quantized_products = quantized_shrinks(pool, isa, x, &quantized)?;
    let float_products = float_shrinks(pool, isa, x, &float);
    let products = quantized_products
        .iter()
        .map(CpuTensor::as_slice)
        .chain(float_products.iter().map(Vec::as_slice));
    let width = segments.iter().map(|s| s.matrix.rows()).max().unwrap_or(0);
    let mut out = CpuTensor::zeros(x.rows(), width)?;
    for (s, product) in quantized.iter().chain(&float).zip(products) {
        let rank = s.matrix.rows();
        for (&r, row) in s.row_ids.iter().zip(product.chunks_exact(rank)) {
            out.row_mut(r as usize)[..rank].copy_from_slice(row);
        }
    }
    Ok(out)
}

/// `x[rows] A^T` of each segment with a Q8_0 `lora_A` (`[rows, rank]`, row-major), through the
/// quantized matmul on `x`'s kept quantization (`CpuTensor::quantized`, shared with the base
/// projections that read `x`), its rows gathered per segment. Many small segments run as tasks
/// of one parallel region, each product on its task's thread; a segment big enough to split
/// runs alone, split by the matmul itself. The products' buffers go back to the recycler when
/// the caller drops them.
fn quantized_shrinks(
    pool: &ThreadPool,
    isa: Isa,
    x: &CpuTensor,
    segments: &[&LoraSegment<'_, CpuMatrix>],
) -> BackendResult<Vec<CpuTensor>> {
    let Some(block_len) = segments
        .first()
        .and_then(|s| s.matrix.layout())
        .map(|l| l.fmt.block_len)
    else {
        return Ok(Vec::new());
    };
    let acts = x.quantized(block_len);
    let gathered: Vec<QuantActs> = segments.iter().map(|s| gather_acts(acts, s.row_ids)).collect();
    let mut products = Vec::with_capacity(segments.len());
    for s in segments {
        // The tiles store every output element.
        products.push(CpuTensor::for_overwrite(s.row_ids.len(), s.matrix.rows())?);
    }
    let work_of = |s: &LoraSegment<'_, CpuMatrix>| s.row_ids.len() * s.matrix.rows() * x.cols();
    if segments.iter().any(|s| work_of(s) >= PAR_WORK) {
        for ((s, rows), product) in segments.iter().zip(&gathered).zip(&mut products) {
            quant_matmul_acts(pool, isa, rows, s.matrix, None, product);
        }
    } else {
        // Task `g` alone locks product `g`: the locks are never contended.
        let locked: Vec<Mutex<CpuTensor>> = products.into_iter().map(Mutex::new).collect();
        let work = segments.iter().map(|s| work_of(s)).sum();
        for_each_task(pool, work, segments.len(), |g| {
            let mut product = locked[g].lock().unwrap_or_else(PoisonError::into_inner);
            // Below `PAR_WORK`, so the matmul runs on this task's thread.
            quant_matmul_acts(pool, isa, &gathered[g], segments[g].matrix, None, &mut product);
        });
        products = locked
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
            .collect();
    }
    Ok(products)
}

/// Rows `row_ids` of `acts`, in order: bit-equal to quantizing the gathered float rows (each
/// row is quantized on its own).
fn gather_acts(acts: &QuantActs, row_ids: &[u32]) -> QuantActs {
    /// Rows `row_ids` of `v`, a `[rows, width]` array.
    fn rows_of<T: Copy>(v: &[T], width: usize, row_ids: &[u32]) -> Vec<T> {
        let mut out = Vec::with_capacity(row_ids.len() * width);
        for &r in row_ids {
            out.extend_from_slice(&v[r as usize * width..(r as usize + 1) * width]);
        }
        out
    }
    let cols = acts.cols;
    // Each array holds the same number of entries per row (`s` none for Q8_K blocks).
    let per_row = |len: usize| len / acts.rows.max(1);
    QuantActs {
        rows: row_ids.len(),
        cols,
        block_len: acts.block_len,
        qs: rows_of(&acts.qs, cols, row_ids),
        d: rows_of(&acts.d, per_row(acts.d.len()), row_ids),
        s: rows_of(&acts.s, per_row(acts.s.len()), row_ids),
        bsums: rows_of(&acts.bsums, per_row(acts.bsums.len()), row_ids),
    }
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
