// Shared device helpers of Ember's kernels: element types and conversions, 128-bit vector
// access, block-wide reductions. Kernels include this header, never the intrinsics directly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "compat.cuh"

// NVRTC has no <math.h>: define the one macro the kernels use from it.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef __nv_bfloat16 bf16;
typedef __half f16;

// Conversions between storage types and f32 arithmetic.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(f16 x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ f16 from_float<f16>(float x) { return __float2half_rn(x); }

// 16 bytes: the unit of vectorized global loads and stores.
typedef uint4 vec16_t;

// Elements of `T` in one 16-byte vector.
template <typename T>
struct VecWidth {
    static constexpr int value = 16 / sizeof(T);
};

// Unpacks the `VecWidth<T>` elements of a 16-byte vector into f32.
template <typename T>
__device__ __forceinline__ void unpack16(const vec16_t& v, float* out) {
    // A local copy: one 16-byte load (LDG.E.128). Through the reference itself the compiler
    // reads global memory element by element (2-byte loads); scripts/check_sass.py checks this.
    const vec16_t local = v;
    const T* elems = reinterpret_cast<const T*>(&local);
#pragma unroll
    for (int i = 0; i < VecWidth<T>::value; ++i) {
        out[i] = to_float(elems[i]);
    }
}

// Packs `VecWidth<T>` f32 values into a 16-byte vector of `T`.
template <typename T>
__device__ __forceinline__ vec16_t pack16(const float* in) {
    vec16_t v;
    T* elems = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int i = 0; i < VecWidth<T>::value; ++i) {
        elems[i] = from_float<T>(in[i]);
    }
    return v;
}

// Largest supported thread block, in warps (1024 threads on NVIDIA).
#define EMBER_MAX_WARPS (1024 / EMBER_WARP_SIZE)

// Sum over the thread block; every thread gets the result. `scratch` holds one float per
// warp (`[EMBER_MAX_WARPS]`); the call synchronizes the block twice.
__device__ __forceinline__ float ember_block_sum(float value, float* scratch) {
    const int warp = threadIdx.x / EMBER_WARP_SIZE;
    const int num_warps = (blockDim.x + EMBER_WARP_SIZE - 1) / EMBER_WARP_SIZE;
    value = ember_warp_sum(value);
    if (ember_lane_id() == 0) scratch[warp] = value;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < num_warps; ++w) total += scratch[w];
    __syncthreads();
    return total;
}

// Maximum over the thread block; every thread gets the result (same contract as above).
__device__ __forceinline__ float ember_block_max(float value, float* scratch) {
    const int warp = threadIdx.x / EMBER_WARP_SIZE;
    const int num_warps = (blockDim.x + EMBER_WARP_SIZE - 1) / EMBER_WARP_SIZE;
    value = ember_warp_max(value);
    if (ember_lane_id() == 0) scratch[warp] = value;
    __syncthreads();
    float best = -INFINITY;
    for (int w = 0; w < num_warps; ++w) best = fmaxf(best, scratch[w]);
    __syncthreads();
    return best;
}

// Declares `extern "C"` entries `name##_bf16`, `name##_f16` and `name##_f32` forwarding to the
// kernel body template `impl<T>`; `args` may name `T`. Every pointer argument's shape is
// documented at the template.
#define EMBER_INSTANTIATE_FLOAT_TYPES(name, impl, params, args)                      \
    extern "C" __global__ void name##_bf16 params { typedef bf16 T; impl<T> args; } \
    extern "C" __global__ void name##_f16 params { typedef f16 T; impl<T> args; }   \
    extern "C" __global__ void name##_f32 params { typedef float T; impl<T> args; }

// Like `EMBER_INSTANTIATE_FLOAT_TYPES`, for the 16-bit types only (tensor-core kernels).
#define EMBER_INSTANTIATE_HALF_TYPES(name, impl, params, args)                       \
    extern "C" __global__ void name##_bf16 params { typedef bf16 T; impl<T> args; } \
    extern "C" __global__ void name##_f16 params { typedef f16 T; impl<T> args; }
