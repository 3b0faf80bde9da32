//! Testing aid over the CPU backend's GGUF dequantization (the exact code path of
//! `dtype="float32"`), so Python tests can compare it with the `gguf` package bit for bit.

use ember_cpu::blocks::dequantize_row;
use ember_model::gguf::{ggml_type_name, weight_dtype_of};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::invalid_request;

/// The f32 values (little-endian bytes) of GGUF-encoded `data` of ggml type id `ggml_type`.
#[pyfunction]
pub fn dequantize<'py>(py: Python<'py>, data: &[u8], ggml_type: u32) -> PyResult<Bound<'py, PyBytes>> {
    let dtype = weight_dtype_of(ggml_type).ok_or_else(|| {
        invalid_request(format!(
            "ggml_type {ggml_type} ({}) is not supported",
            ggml_type_name(ggml_type)
        ))
    })?;
    if !data.len().is_multiple_of(dtype.block_bytes()) {
        return Err(invalid_request(format!(
            "data has {} bytes, not a whole number of {dtype} blocks of {} bytes",
            data.len(),
            dtype.block_bytes()
        )));
    }
    let num_elements = data.len() / dtype.block_bytes() * dtype.block_len();
    let mut out = vec![0.0f32; num_elements];
    py.detach(|| dequantize_row(dtype, data, &mut out));
    let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(PyBytes::new(py, &bytes))
}
