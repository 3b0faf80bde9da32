// RMS norm, alone and fused with the residual add. One block per row; f32 accumulation.
// y = x * rsqrt(mean(x^2) + eps) * weight, rounded once to T.
#include "common.cuh"

// out:      [rows, cols] normalized rows
// residual: [rows, cols] in/out; with `x`, residual += x first and the sum is normalized
// x:        [rows, cols] added to residual, or null for a plain norm of `residual`
// weight:   [cols]       f32 scale
template <typename T>
__device__ void add_rms_norm_impl(T* __restrict__ out, T* __restrict__ residual,
                                  const T* __restrict__ x, const float* __restrict__ weight, int cols,
                                  float eps) {
    __shared__ float scratch[EMBER_MAX_WARPS];
    const size_t base = static_cast<size_t>(blockIdx.x) * cols;
    T* res = residual + base;
    float sum_sq = 0.0f;
    // Pass 1: the residual add (rounded to T, like the unfused ops) and the sum of squares.
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = to_float(res[i]);
        if (x != nullptr) {
            v = to_float(from_float<T>(v + to_float(x[base + i])));
            res[i] = from_float<T>(v);
        }
        sum_sq += v * v;
    }
    const float total = ember_block_sum(sum_sq, scratch);
    const float scale = rsqrtf(total / static_cast<float>(cols) + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        out[base + i] = from_float<T>(to_float(res[i]) * scale * weight[i]);
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_add_rms_norm, add_rms_norm_impl,
                              (void* out, void* residual, const void* x, const float* weight,
                               int cols, float eps),
                              (static_cast<T*>(out), static_cast<T*>(residual),
                               static_cast<const T*>(x), weight, cols, eps))
