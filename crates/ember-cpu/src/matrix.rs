//! The CPU weight matrix: a stored matrix kept in its file encoding.

use crate::alloc::AlignedBytes;
use crate::quant::{dequantize_row, QK};
use ember_core::{BackendError, BackendResult, WeightDType, WeightView};

/// A weight matrix `[out_features, in_features]` in its stored encoding.
///
/// F32/F16/BF16 are kept as stored and converted inside the kernels; Q8_0/Q4_0/Q4_1 stay
/// quantized, bytes exactly in ggml's block layout, copied into a 64-byte aligned buffer.
/// Row `r` occupies bytes `r * row_bytes .. (r + 1) * row_bytes`.
pub struct CpuMatrix {
    dtype: WeightDType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// `[rows, row_bytes]` in `dtype`'s layout.
    data: AlignedBytes,
}

impl CpuMatrix {
    /// Validates `view` (2-D, byte length, whole blocks per row) and copies its bytes.
    pub fn from_view(view: &WeightView<'_>) -> BackendResult<Self> {
        let bad = |detail: String| BackendError::BadWeight {
            name: view.name.to_string(),
            detail,
        };
        let &[rows, cols] = view.shape else {
            return Err(bad(format!("expected a 2-D matrix, got shape {:?}", view.shape)));
        };
        let dtype = view.dtype;
        if dtype.is_quantized() && !cols.is_multiple_of(QK) {
            return Err(bad(format!(
                "{dtype} rows must hold whole blocks of {QK}, but in_features is {cols}"
            )));
        }
        let expected = rows.checked_mul(cols).and_then(|n| dtype.bytes_for(n));
        if expected != Some(view.bytes.len()) {
            return Err(bad(format!(
                "shape [{rows}, {cols}] in {dtype} needs {} bytes, got {}",
                expected.map_or_else(|| "an impossible number of".to_string(), |n| n.to_string()),
                view.bytes.len()
            )));
        }
        let row_bytes = dtype.bytes_for(cols).unwrap_or(0);
        let data = AlignedBytes::copy_from(view.bytes, view.name)?;
        Ok(Self {
            dtype,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// Stored encoding.
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// Output features (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All stored bytes, `[rows, row_bytes]`.
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The stored bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Decodes row `r` into `out` (`[cols]`).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row(r), out);
    }
}
