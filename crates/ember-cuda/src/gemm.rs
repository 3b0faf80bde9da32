//! cuBLAS GEMM: `out[rows, out_features] = x[rows, in] @ W[out_features, in]^T`, bf16 inputs
//! and output, f32 accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F). Row-major tensors are
//! column-major transposes, so cuBLAS computes `out^T = W x^T` with W transposed.

use cudarc::cublas::{result, sys};

use crate::device::Device;
use crate::error::device_err;
use crate::tensor::{CudaMatrix, CudaTensor};
use ember_core::BackendResult;

/// `out = x @ weight^T` (shapes checked by the caller).
pub fn gemm_bf16(
    device: &Device,
    out: &CudaTensor,
    x: &CudaTensor,
    weight: &CudaMatrix,
) -> BackendResult<()> {
    let (m, n, k) = (weight.rows as i32, x.rows as i32, x.cols as i32);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the three buffers hold [m, k], [n, k] and [n, m] bf16 elements on this device and
    // stay alive until the stream reaches the call (they outlive the op's borrow).
    unsafe {
        result::gemm_ex(
            *device.blas().handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            (&alpha as *const f32).cast(),
            device.ptr(&weight.data) as *const _,
            sys::cudaDataType::CUDA_R_16BF,
            k,
            x.ptr(device) as *const _,
            sys::cudaDataType::CUDA_R_16BF,
            k,
            (&beta as *const f32).cast(),
            out.ptr(device) as *mut _,
            sys::cudaDataType::CUDA_R_16BF,
            m,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| device_err("cublasGemmEx", e))
}
