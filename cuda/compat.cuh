// Portability layer for Ember's kernels: warp size, lane masks and shuffles go through
// these helpers only, so a HIP build can map them to 64-wide wavefronts later.
#pragma once

#if defined(__HIP_PLATFORM_AMD__)
#define EMBER_WARP_SIZE 64
typedef unsigned long long ember_lane_mask_t;
#define EMBER_FULL_MASK 0xffffffffffffffffULL
#else
#define EMBER_WARP_SIZE 32
typedef unsigned int ember_lane_mask_t;
#define EMBER_FULL_MASK 0xffffffffu
#endif

// Sum of `value` over the warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T ember_warp_sum(T value) {
#pragma unroll
    for (int offset = EMBER_WARP_SIZE / 2; offset > 0; offset >>= 1) {
#if defined(__HIP_PLATFORM_AMD__)
        value += __shfl_xor(value, offset);
#else
        value += __shfl_xor_sync(EMBER_FULL_MASK, value, offset);
#endif
    }
    return value;
}

// Maximum of `value` over the warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T ember_warp_max(T value) {
#pragma unroll
    for (int offset = EMBER_WARP_SIZE / 2; offset > 0; offset >>= 1) {
#if defined(__HIP_PLATFORM_AMD__)
        T other = __shfl_xor(value, offset);
#else
        T other = __shfl_xor_sync(EMBER_FULL_MASK, value, offset);
#endif
        value = value > other ? value : other;
    }
    return value;
}
