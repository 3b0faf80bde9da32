//! The CPU activation tensor: a dense row-major f32 matrix, with its 8-bit quantizations kept
//! until it is next written (the q/k/v and gate/up projections of one input share them).

use crate::quant::{QuantActs, QK, QK_K};
use ember_core::{BackendError, BackendResult};
use std::sync::OnceLock;

/// A dense row-major f32 tensor `[rows, cols]`, one token per row.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    rows: usize,
    cols: usize,
    /// `[rows, cols]`, row-major.
    data: Vec<f32>,
    /// The rows quantized in 32- and in 256-element blocks, computed on first use and
    /// dropped by every mutable access.
    quantized: [OnceLock<QuantActs>; 2],
}

impl PartialEq for CpuTensor {
    fn eq(&self, other: &Self) -> bool {
        (self.rows, self.cols) == (other.rows, other.cols) && self.data == other.data
    }
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
        Ok(Self {
            rows,
            cols,
            data,
            quantized: Default::default(),
        })
    }

    /// A zero-filled tensor `[rows, cols]`; fails with `OutOfMemory` when it cannot be allocated.
    pub fn zeros(rows: usize, cols: usize) -> BackendResult<Self> {
        let data = crate::alloc::try_zeroed_vec::<f32>(rows.saturating_mul(cols), "activation tensor")?;
        Ok(Self {
            rows,
            cols,
            data,
            quantized: Default::default(),
        })
    }

    /// A tensor `[rows, cols]` of unspecified (initialized) values for a producer that writes
    /// every element: its buffer may be one a dropped tensor gave back (`recycle`).
    pub fn for_overwrite(rows: usize, cols: usize) -> BackendResult<Self> {
        let data = crate::recycle::take_for_overwrite(rows.saturating_mul(cols), "activation tensor")?;
        Ok(Self {
            rows,
            cols,
            data,
            quantized: Default::default(),
        })
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
        self.forget_quantized();
        &mut self.data
    }

    /// Row `r`; `[cols]`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r`, mutable; `[cols]`.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        self.forget_quantized();
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// The rows quantized in blocks of `block_len` (32 or 256; `cols` a multiple of it),
    /// computed once until the tensor is next written.
    pub fn quantized(&self, block_len: usize) -> &QuantActs {
        let slot = &self.quantized[usize::from(block_len == QK_K)];
        debug_assert!(block_len == QK || block_len == QK_K);
        slot.get_or_init(|| QuantActs::quantize(&self.data, self.rows, self.cols, block_len))
    }

    /// Drops the kept quantizations (the data is about to change).
    fn forget_quantized(&mut self) {
        self.quantized.iter_mut().for_each(|q| drop(q.take()));
    }

    /// Consumes the tensor, returning its row-major elements.
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }
}

impl Drop for CpuTensor {
    fn drop(&mut self) {
        crate::recycle::give_back(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_quantizations_follow_writes() {
        let x: Vec<f32> = (0..2 * 256).map(|i| (i % 37) as f32 - 18.0).collect();
        let mut t = CpuTensor::from_vec(2, 256, x.clone()).unwrap();
        for block_len in [QK, QK_K] {
            let fresh = QuantActs::quantize(&x, 2, 256, block_len);
            assert_eq!(t.quantized(block_len).qs, fresh.qs);
            assert_eq!(t.quantized(block_len).block_len, block_len);
        }
        t.as_mut_slice()[3] = 100.0;
        assert_eq!(t.quantized(QK).qs[3], 127, "as_mut_slice drops the kept rows");
        t.row_mut(1)[0] = -100.0;
        assert_eq!(t.quantized(QK_K).qs[256], -127, "row_mut drops them too");
        let copy = t.clone();
        assert_eq!(copy.quantized(QK_K).qs, t.quantized(QK_K).qs);
        assert_eq!(copy, t);
    }
}
