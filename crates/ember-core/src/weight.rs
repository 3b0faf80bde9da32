//! A borrowed view of one stored weight tensor, as loaders hand it to backends.

use crate::dtype::WeightDType;

/// One weight tensor in its stored encoding, borrowed from a memory-mapped file.
///
/// `shape` is outermost first: a matrix is `[out_features, in_features]`
/// (rows are contiguous), a vector is `[len]`.
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    /// Canonical tensor name (for error messages).
    pub name: &'a str,
    /// Element encoding of `bytes`.
    pub dtype: WeightDType,
    /// Dimensions, outermost first.
    pub shape: &'a [usize],
    /// Raw little-endian data, `dtype.bytes_for(num_elements)` long.
    pub bytes: &'a [u8],
}

impl WeightView<'_> {
    /// Number of elements (product of the shape).
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}
