//! Host side of the row-wise kernels (`gather.cu`, `norm.cu`, `rope.cu`, `activation.cu`):
//! shape checks, launch geometry, and outputs allocated for the step.

use ember_core::{BackendError, BackendResult, Rope, RopeStyle};

use crate::device::{Arg, Device};
use crate::launch::{elementwise_geometry, row_geometry};
use crate::step::CudaStep;
use crate::tensor::{CudaTensor, CudaVector};

/// A shape error of operation `op`.
pub fn shape_err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

/// An error unless `a` and `b` have the same shape.
pub fn same_shape(op: &str, a: &CudaTensor, b: &CudaTensor) -> BackendResult<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(shape_err(
            op,
            format!(
                "shapes [{}, {}] and [{}, {}] differ",
                a.rows, a.cols, b.rows, b.cols
            ),
        ));
    }
    Ok(())
}

/// The `[rows, cols]` bf16 source of a gather.
pub struct GatherSource {
    /// Device address.
    pub ptr: u64,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// The row indices of a gather: the host copy (checked here) and the device array the kernel reads.
pub struct GatherIds<'a> {
    /// Host copy; `[num_rows]`.
    pub host: &'a [u32],
    /// Device address of the same `u32` array.
    pub device: u64,
}

/// `out[i] = table[ids[i]]`, a new tensor of the step.
pub fn gather(
    d: &Device,
    step: &CudaStep,
    table: GatherSource,
    ids: GatherIds<'_>,
    what: &str,
) -> BackendResult<CudaTensor> {
    let (table_ptr, table_rows, cols) = (table.ptr, table.rows, table.cols);
    let (ids, dev_ids) = (ids.host, ids.device);
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= table_rows) {
        return Err(shape_err(
            what,
            format!("index {bad} out of range ({table_rows} rows)"),
        ));
    }
    let out = step.tensor(d, ids.len(), cols, what)?;
    d.launch(
        "ember_gather_rows_bf16",
        row_geometry(ids.len(), cols),
        &[
            Arg::Ptr(out.ptr(d)),
            Arg::Ptr(table_ptr),
            Arg::Ptr(dev_ids),
            Arg::I32(ids.len() as i32),
            Arg::I32(cols as i32),
            Arg::I32(table_rows as i32),
        ],
    )?;
    Ok(out)
}

/// `out = rms_norm(residual (+= x)) * weight`; `x == 0` (null) is the plain norm of `residual`.
pub fn add_rms_norm(
    d: &Device,
    out: &CudaTensor,
    residual: u64,
    x: u64,
    weight: &CudaVector,
    eps: f32,
) -> BackendResult<()> {
    if weight.len != out.cols {
        return Err(shape_err(
            "rms_norm",
            format!("weight has {} elements, rows have {}", weight.len, out.cols),
        ));
    }
    d.launch(
        "ember_add_rms_norm_bf16",
        row_geometry(out.rows, out.cols),
        &[
            Arg::Ptr(out.ptr(d)),
            Arg::Ptr(residual),
            Arg::Ptr(x),
            Arg::Ptr(d.ptr(&weight.data)),
            Arg::I32(out.cols as i32),
            Arg::F32(eps),
        ],
    )
}

/// `x += y` (a tensor of `x`'s shape, address `y`, or null) `+ bias` (per column, or null).
pub fn add(d: &Device, x: &CudaTensor, y: u64, bias: u64) -> BackendResult<()> {
    let n = x.rows * x.cols;
    d.launch(
        "ember_add_bf16",
        elementwise_geometry(n, d.num_sms()),
        &[
            Arg::Ptr(x.ptr(d)),
            Arg::Ptr(y),
            Arg::Ptr(bias),
            Arg::I64(n as i64),
            Arg::I32(x.cols.max(1) as i32),
        ],
    )
}

/// `silu(gate) * up` into a new tensor of the step.
pub fn silu_mul(
    d: &Device,
    step: &CudaStep,
    gate: &CudaTensor,
    up: &CudaTensor,
) -> BackendResult<CudaTensor> {
    same_shape("silu_mul", gate, up)?;
    let out = step.tensor(d, gate.rows, gate.cols, "silu_mul")?;
    let n = gate.rows * gate.cols;
    d.launch(
        "ember_silu_mul_bf16",
        elementwise_geometry(n.div_ceil(8), d.num_sms()),
        &[
            Arg::Ptr(out.ptr(d)),
            Arg::Ptr(gate.ptr(d)),
            Arg::Ptr(up.ptr(d)),
            Arg::I64(n as i64),
        ],
    )?;
    Ok(out)
}

/// Rotates every head of `x` in place at the step's positions.
pub fn rope(
    d: &Device,
    step: &CudaStep,
    x: &mut CudaTensor,
    num_heads: usize,
    rope: &Rope<CudaVector>,
) -> BackendResult<()> {
    let rotary_dim = 2 * rope.inv_freq.len;
    let num_positions = step.batch.positions.len();
    if num_heads == 0
        || !x.cols.is_multiple_of(num_heads)
        || rotary_dim > x.cols / num_heads
        || rotary_dim > 512
        || num_positions != x.rows
    {
        return Err(shape_err(
            "rope",
            format!(
                "[{}, {}], {num_heads} heads, rotary dim {rotary_dim}, {num_positions} positions",
                x.rows, x.cols
            ),
        ));
    }
    d.launch(
        "ember_rope_bf16",
        row_geometry(x.rows, num_heads * rotary_dim / 2 * 8),
        &[
            Arg::Ptr(x.ptr(d)),
            Arg::Ptr(step.addrs.positions),
            Arg::Ptr(d.ptr(&rope.inv_freq.data)),
            Arg::I32(num_heads as i32),
            Arg::I32((x.cols / num_heads) as i32),
            Arg::I32(rotary_dim as i32),
            Arg::I32(i32::from(rope.style == RopeStyle::Interleaved)),
        ],
    )
}
