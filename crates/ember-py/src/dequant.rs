//! Testing aids over the CPU backend's GGUF dequantization (the exact code path of
//! `dtype="float32"`) and its 8-bit activation quantization, so Python tests can compare them
//! with the `gguf` package and llama.cpp bit for bit.

use ember_cpu::blocks::dequantize_row;
use ember_cpu::quant::QuantActs;
use ember_model::formats::gguf::{ggml_type_name, weight_dtype_of};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::invalid_request;
use crate::guard::guard;

/// The f32 values (little-endian bytes) of GGUF-encoded `data` of ggml type id `ggml_type`.
#[pyfunction]
pub fn dequantize<'py>(py: Python<'py>, data: &[u8], ggml_type: u32) -> PyResult<Bound<'py, PyBytes>> {
    guard(|| {
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
    })
}

/// The 8-bit quantization of one activation row the quantized matmuls apply (`x`: little-endian
/// f32 bytes, a whole number of `block_len`-element blocks; `block_len` 32 for Q8_0 / Q8_1 or
/// 256 for Q8_K): `(quants as i8 bytes, block scales as f32 bytes, sums of 16 quants as i32 bytes)`.
#[pyfunction]
pub fn quantize_activations<'py>(
    py: Python<'py>,
    x: &[u8],
    block_len: usize,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    guard(|| {
        if block_len != 32 && block_len != 256 {
            return Err(invalid_request(format!(
                "block_len must be 32 or 256, got {block_len}"
            )));
        }
        if !x.len().is_multiple_of(4 * block_len) {
            return Err(invalid_request(format!(
                "x has {} bytes, not a whole number of {block_len}-element f32 blocks",
                x.len()
            )));
        }
        let values: Vec<f32> = x
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let acts = QuantActs::quantize(&values, 1, values.len(), block_len);
        let qs: Vec<u8> = acts.qs.iter().map(|&q| q as u8).collect();
        let d: Vec<u8> = acts.d.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sums: Vec<u8> = acts.bsums.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok((
            PyBytes::new(py, &qs),
            PyBytes::new(py, &d),
            PyBytes::new(py, &sums),
        ))
    })
}
