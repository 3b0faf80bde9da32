//! The CPU weight matrix: float formats as stored, quantized formats repacked at load.

use crate::alloc::AlignedBytes;
use crate::blocks::{dequantize_block, dequantize_row, Block};
use crate::packed::{pack, unpack_block, Layout, LANES};
use ember_core::{BackendError, BackendResult, WeightDType, WeightView};

/// A weight matrix `[out_features, in_features]`.
///
/// F32/F16/BF16 are kept as stored (row `r` at bytes `r * row_bytes..`) and converted inside
/// the kernels. Quantized formats are repacked at load into the interleaved layout of
/// `packed` (16 rows side by side, block after block), which the quantized kernels read.
pub struct CpuMatrix {
    dtype: WeightDType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// Float formats: `[rows, row_bytes]`; quantized: `[groups, blocks per row, packed block]`.
    data: AlignedBytes,
    /// The packed layout (quantized formats only).
    layout: Option<Layout>,
    /// `[cols, rows]`: an f32 matrix of at most [`SKINNY_MAX_COLS`] columns transposed (a LoRA
    /// `lora_B`), for the matmul that runs it as row-wise axpys.
    transposed: Option<Vec<f32>>,
}

/// Columns up to which an f32 matrix also keeps its transpose (see [`CpuMatrix::transposed`]).
pub const SKINNY_MAX_COLS: usize = 32;

/// Checks that `view` is a 2-D matrix with whole blocks per row and the right byte length;
/// returns `(rows, cols)`.
pub fn check_matrix_view(view: &WeightView<'_>) -> BackendResult<(usize, usize)> {
    let bad = |detail: String| BackendError::BadWeight {
        name: view.name.to_string(),
        detail,
    };
    let &[rows, cols] = view.shape else {
        return Err(bad(format!("expected a 2-D matrix, got shape {:?}", view.shape)));
    };
    let dtype = view.dtype;
    if !cols.is_multiple_of(dtype.block_len()) {
        return Err(bad(format!(
            "{dtype} rows must hold whole blocks of {}, but in_features is {cols}",
            dtype.block_len()
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
    Ok((rows, cols))
}

impl CpuMatrix {
    /// Validates `view` (see [`check_matrix_view`]) and copies (float) or repacks
    /// (quantized) its bytes.
    pub fn from_view(view: &WeightView<'_>) -> BackendResult<Self> {
        let (rows, cols) = check_matrix_view(view)?;
        let dtype = view.dtype;
        let row_bytes = dtype.bytes_for(cols).unwrap_or(0);
        let layout = Layout::of(dtype);
        let data = match layout {
            Some(_) => pack(dtype, view.bytes, rows, row_bytes, view.name)?,
            None => AlignedBytes::copy_from(view.bytes, view.name)?,
        };
        let skinny = (1..=SKINNY_MAX_COLS).contains(&cols);
        let transposed = (dtype == WeightDType::F32 && skinny).then(|| {
            let mut t = vec![0.0f32; rows * cols];
            for (i, b) in view.bytes.chunks_exact(4).enumerate() {
                t[(i % cols) * rows + i / cols] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            t
        });
        Ok(Self {
            dtype,
            rows,
            cols,
            row_bytes,
            data,
            layout,
            transposed,
        })
    }

    /// The `[cols, rows]` transpose of a skinny f32 matrix (at most [`SKINNY_MAX_COLS`] columns).
    pub fn transposed(&self) -> Option<&[f32]> {
        self.transposed.as_deref()
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

    /// The packed layout of a quantized matrix; `None` for float formats.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Blocks per row.
    pub fn num_blocks(&self) -> usize {
        self.cols / self.dtype.block_len()
    }

    /// The stored bytes of float row `r`; `[row_bytes]`.
    pub fn row(&self, r: usize) -> &[u8] {
        debug_assert!(self.layout.is_none(), "row bytes of a packed matrix");
        &self.data.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Packed group `g` (rows `16 g..16 g + 16`) of a quantized matrix.
    pub fn group(&self, g: usize) -> &[u8] {
        self.groups(g, g + 1)
    }

    /// Packed groups `g0..g1` (rows `16 g0..16 g1`, contiguous) of a quantized matrix.
    pub fn groups(&self, g0: usize, g1: usize) -> &[u8] {
        let bytes = self.num_blocks() * self.layout.map_or(0, |l| l.block_bytes);
        &self.data.as_slice()[g0 * bytes..g1 * bytes]
    }

    /// Decodes row `r` into `out` (`[cols]`), bit-equal to dequantizing the stored row.
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        let Some(layout) = self.layout else {
            return dequantize_row(self.dtype, self.row(r), out);
        };
        let mut blk = Block::default();
        let group = self.group(r / LANES);
        let len = self.dtype.block_len();
        for (b, o) in out.chunks_exact_mut(len).enumerate() {
            unpack_block(&layout, &group[b * layout.block_bytes..], r % LANES, &mut blk);
            dequantize_block(self.dtype, &blk, o);
        }
    }
}
