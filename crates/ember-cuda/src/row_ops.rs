//! Host side of the row-wise kernels (`gather.cu`, `norm.cu`, `rope.cu`, `activation.cu`):
//! shape checks, launch geometry, and outputs allocated for the step.

use ember_core::{BackendError, BackendResult, Rope, RopeStyle};

use crate::device::Device;
use crate::kernel_args::{AddArgs, AddRmsNormArgs, DevPtr, GatherRowsArgs, RopeArgs, SiluMulArgs};
use crate::launch::{elementwise_geometry, row_geometry};
use crate::step::{CudaStep, StepIds};
use crate::tensor::{CudaMatrix, CudaTensor, CudaVector};

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
    pub ptr: DevPtr,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl GatherSource {
    /// A weight matrix (an embedding table).
    pub fn matrix(d: &Device, m: &CudaMatrix) -> Self {
        Self {
            ptr: d.dev(&m.data),
            rows: m.rows,
            cols: m.cols,
        }
    }

    /// An activation.
    pub fn tensor(d: &Device, t: &CudaTensor) -> Self {
        Self {
            ptr: t.dev(d),
            rows: t.rows,
            cols: t.cols,
        }
    }
}

/// `out[i] = table[ids[i]]`, a new tensor of the step.
pub fn gather(
    d: &Device,
    step: &CudaStep,
    table: GatherSource,
    ids: StepIds<'_>,
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
    d.kernels().gather_rows_bf16(
        row_geometry(ids.len(), cols),
        &GatherRowsArgs {
            out: out.dev(d),
            table: table_ptr,
            ids: dev_ids,
            num_rows: ids.len() as i32,
            cols: cols as i32,
            table_rows: table_rows as i32,
        },
    )?;
    Ok(out)
}

/// `out = rms_norm(residual (+= x)) * weight`; a null `x` is the plain norm of `residual`.
pub fn add_rms_norm(
    d: &Device,
    out: &CudaTensor,
    residual: DevPtr,
    x: DevPtr,
    weight: &CudaVector,
    eps: f32,
) -> BackendResult<()> {
    if weight.len != out.cols {
        return Err(shape_err(
            "rms_norm",
            format!("weight has {} elements, rows have {}", weight.len, out.cols),
        ));
    }
    d.kernels().add_rms_norm_bf16(
        row_geometry(out.rows, out.cols),
        &AddRmsNormArgs {
            out: out.dev(d),
            residual,
            x,
            weight: d.dev(&weight.data),
            cols: out.cols as i32,
            eps,
        },
    )
}

/// `x += y` (a tensor of `x`'s shape, or null) `+ bias` (`[cols]` f32, or null).
pub fn add(d: &Device, x: &CudaTensor, y: DevPtr, bias: DevPtr) -> BackendResult<()> {
    let n = x.rows * x.cols;
    d.kernels().add_bf16(
        elementwise_geometry(n, d.num_sms()),
        &AddArgs {
            x: x.dev(d),
            y,
            bias,
            n: n as i64,
            cols: x.cols.max(1) as i32,
        },
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
    d.kernels().silu_mul_bf16(
        elementwise_geometry(n.div_ceil(8), d.num_sms()),
        &SiluMulArgs {
            out: out.dev(d),
            gate: gate.dev(d),
            up: up.dev(d),
            n: n as i64,
        },
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
    d.kernels().rope_bf16(
        row_geometry(x.rows, num_heads * rotary_dim / 2 * 8),
        &RopeArgs {
            x: x.dev(d),
            positions: step.addrs.positions,
            inv_freq: d.dev(&rope.inv_freq.data),
            num_heads: num_heads as i32,
            head_dim: (x.cols / num_heads) as i32,
            rotary_dim: rotary_dim as i32,
            interleaved: i32::from(rope.style == RopeStyle::Interleaved),
        },
    )
}
