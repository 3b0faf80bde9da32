//! Ember's CUDA backend: cudarc with dynamic loading (no CUDA needed to build or to run on a
//! CPU-only machine), the kernels of `cuda/` embedded as one fatbin (or compiled by NVRTC at
//! run time), cuBLAS bf16 GEMMs with f32 accumulation, and one pinned copy of the step inputs
//! per step. Layouts and design notes: `cuda/README.md`.

pub mod arena;
mod attention;
mod backend;
mod device;
mod error;
mod gemm;
pub mod graph;
mod graph_exec;
pub mod kernel_args;
#[cfg(test)]
mod kernel_build;
pub mod kernels;
pub mod launch;
mod libraries;
pub mod lora_plan;
pub mod memory_plan;
mod module;
mod nvrtc_cache;
mod probe;
mod row_ops;
mod sampling;
mod step;
pub mod step_buffer;
mod tensor;
mod weights;

pub use backend::CudaBackend;
pub use graph_exec::{arena_bytes, GraphConfig};
pub use probe::{is_available, probe};
pub use step::{CudaStep, StepAddrs};
pub use tensor::{CudaKvCache, CudaMatrix, CudaTensor, CudaVector};
