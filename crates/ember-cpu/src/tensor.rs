//! The CPU activation tensor: a dense row-major f32 matrix.

use ember_core::{BackendError, BackendResult};

/// A dense row-major f32 tensor `[rows, cols]`, one token per row.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    rows: usize,
    cols: usize,
    /// `[rows, cols]`, row-major.
    data: Vec<f32>,
}

impl CpuTensor {
    /// Wraps `data` (`[rows, cols]`, row-major); fails when the length does not match.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> BackendResult<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(BackendError::Device(format!(
                "tensor of shape [{rows}, {cols}] cannot hold {} elements",
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    /// A zero-filled tensor `[rows, cols]`; fails with `OutOfMemory` when it cannot be allocated.
    pub fn zeros(rows: usize, cols: usize) -> BackendResult<Self> {
        let data = crate::alloc::try_zeroed_vec::<f32>(rows.saturating_mul(cols), "activation tensor")?;
        Ok(Self { rows, cols, data })
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The elements, row-major `[rows, cols]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The elements, mutable, row-major `[rows, cols]`.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Row `r`; `[cols]`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r`, mutable; `[cols]`.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Consumes the tensor, returning its row-major elements.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}
