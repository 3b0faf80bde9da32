//! Where a decoder's canonical tensors come from: stored as they are ([`WeightSource`]), or
//! cut out of a family's fused tensors (Phi-3's `qkv_proj` and `gate_up_proj`).

use ember_core::{WeightDType, WeightView};

use crate::error::ModelLoadError;
use crate::formats::weights::WeightSource;

/// One canonical tensor, its bytes borrowed from the model file.
pub struct TensorSlice<'a> {
    /// Canonical name (for errors).
    pub name: String,
    /// Element encoding.
    pub dtype: WeightDType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Raw data.
    pub bytes: &'a [u8],
}

impl<'a> TensorSlice<'a> {
    /// The slice of a stored tensor.
    pub fn from_view(view: WeightView<'a>) -> Self {
        Self {
            name: view.name.to_string(),
            dtype: view.dtype,
            shape: view.shape.to_vec(),
            bytes: view.bytes,
        }
    }

    /// The view a backend loads.
    pub fn view(&self) -> WeightView<'_> {
        WeightView {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            bytes: self.bytes,
        }
    }

    /// Rows `start..start + num_rows` of this matrix, named `name`; an error when it is not a
    /// matrix of that many rows.
    pub fn rows(&self, name: &str, start: usize, num_rows: usize) -> Result<Self, ModelLoadError> {
        let bad = |detail: String| ModelLoadError::BadTensor {
            tensor: self.name.clone(),
            detail,
        };
        let &[total_rows, cols] = self.shape.as_slice() else {
            return Err(bad(format!("shape {:?} is not a matrix", self.shape)));
        };
        if start + num_rows > total_rows {
            return Err(bad(format!(
                "{total_rows} rows cannot hold rows {start}..{} of {name}",
                start + num_rows
            )));
        }
        let row_bytes = self
            .dtype
            .bytes_for(cols)
            .ok_or_else(|| bad(format!("{cols} columns are not whole {} blocks", self.dtype)))?;
        Ok(Self {
            name: name.to_string(),
            dtype: self.dtype,
            shape: vec![num_rows, cols],
            bytes: &self.bytes[start * row_bytes..(start + num_rows) * row_bytes],
        })
    }
}

/// The canonical tensors a decoder loads.
pub trait DecoderTensors {
    /// Whether the model has the tensor `name`.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`; an error naming it when it is missing or unreadable.
    fn tensor(&self, name: &str) -> Result<TensorSlice<'_>, ModelLoadError>;
}

impl DecoderTensors for WeightSource {
    fn contains(&self, name: &str) -> bool {
        WeightSource::contains(self, name)
    }

    fn tensor(&self, name: &str) -> Result<TensorSlice<'_>, ModelLoadError> {
        Ok(TensorSlice::from_view(self.get(name)?))
    }
}
