//! Ember's CPU backend: quantized (Q8_0/Q4_0/Q4_1) and float matmuls with AVX2 / AVX-512
//! VNNI kernels and a scalar reference, paged attention, norms, RoPE and activations,
//! parallelized by a low-overhead spinning fork-join (`par`) over the backend's own rayon pool.
//!
//! Numerics: quantized matmuls quantize activations per 32-element block to 8 bits in ggml's
//! block formats (Q8_0 / Q8_1) and take llama.cpp's per-block integer-dot scheme; results are
//! not llama.cpp's bit for bit and are judged by KL against float32. Every result is independent of
//! batch composition and thread count (batch invariance); the quantized SIMD kernel families
//! differ from the scalar reference (and from each other) by f32 rounding only.

mod alloc;
mod attention;
mod backend;
mod dot_scalar;
mod dot_x86;
mod elementwise;
pub mod kv_cache;
pub mod matmul;
pub mod matrix;
pub mod memory_plan;
mod norm;
mod par;
mod quant;
mod rope;
pub mod tensor;

pub use backend::{CpuBackend, CpuOptions};
pub use kv_cache::CpuKvCache;
pub use matmul::Isa;
pub use matrix::CpuMatrix;
pub use tensor::CpuTensor;

#[cfg(test)]
mod attention_tests;
#[cfg(test)]
mod matmul_large_tests;
#[cfg(test)]
mod matmul_tests;
#[cfg(test)]
mod test_util;
