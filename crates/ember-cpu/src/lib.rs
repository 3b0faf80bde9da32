//! Ember's CPU backend: quantized (GGUF's 32-element formats and K-quants) and float matmuls
//! with AVX2 / AVX-512 VNNI (x86-64) or NEON / NEON dotprod (AArch64) kernels chosen at run time and a scalar reference, paged
//! attention, norms, RoPE and activations, parallelized by a low-overhead spinning fork-join
//! (`par`) over the backend's own rayon pool.
//!
//! Numerics: quantized matmuls quantize activations to 8 bits in ggml's block formats (Q8_0 /
//! Q8_1 per 32 elements, Q8_K per 256 for the K-quants) and take llama.cpp's per-block
//! integer-dot scheme; results are not llama.cpp's bit for bit and are judged by KL against
//! float32. The SIMD kernels read weights repacked at load (16 rows interleaved, `packed`) and
//! compute the scalar reference's arithmetic exactly, so every result is independent of the CPU
//! features, the batch composition and the thread count.

mod alloc;
mod attention;
mod attention_dot;
mod attention_q8;
mod backend;
pub mod blocks;
mod dot_scalar;
#[cfg(target_arch = "x86_64")]
mod dot_x86;
mod elementwise;
pub mod isa_choice;
pub mod kv_cache;
mod lora;
mod lora_expand;
pub mod matmul;
pub mod matrix;
pub mod memory_plan;
mod norm;
mod packed;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod packed_kernel;
mod packed_matmul;
#[cfg(target_arch = "aarch64")]
mod packed_neon;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod packed_tile;
#[cfg(target_arch = "x86_64")]
mod packed_x86;
mod par;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod quant_x86;
mod recycle;
mod rope;
mod rows;
pub mod tensor;

pub use backend::{CpuBackend, CpuOptions, DEFAULT_KV_CACHE_DTYPE};
pub use kv_cache::CpuKvCache;
pub use matmul::Isa;
pub use matrix::CpuMatrix;
pub use tensor::CpuTensor;

#[cfg(test)]
mod attention_rows_tests;
#[cfg(test)]
mod attention_tests;
#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod family_ops_tests;
#[cfg(test)]
mod lora_tests;
#[cfg(test)]
mod matmul_large_tests;
#[cfg(test)]
mod matmul_tests;
#[cfg(test)]
mod test_util;
