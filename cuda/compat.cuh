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

// Lane index within the warp.
__device__ __forceinline__ int ember_lane_id() {
    return static_cast<int>(threadIdx.x) & (EMBER_WARP_SIZE - 1);
}

// `value` of lane `lane ^ offset`.
template <typename T>
__device__ __forceinline__ T ember_shfl_xor(T value, int offset) {
#if defined(__HIP_PLATFORM_AMD__)
    return __shfl_xor(value, offset);
#else
    return __shfl_xor_sync(EMBER_FULL_MASK, value, offset);
#endif
}

// `value` of lane `src_lane`.
template <typename T>
__device__ __forceinline__ T ember_shfl(T value, int src_lane) {
#if defined(__HIP_PLATFORM_AMD__)
    return __shfl(value, src_lane);
#else
    return __shfl_sync(EMBER_FULL_MASK, value, src_lane);
#endif
}

// Sum over aligned groups of `WIDTH` lanes (a power of two up to the warp size); every lane
// of a group gets its group's sum.
template <int WIDTH, typename T>
__device__ __forceinline__ T ember_group_sum(T value) {
#pragma unroll
    for (int offset = WIDTH / 2; offset > 0; offset >>= 1) {
        value += ember_shfl_xor(value, offset);
    }
    return value;
}

// Maximum over aligned groups of `WIDTH` lanes; every lane of a group gets the result.
template <int WIDTH, typename T>
__device__ __forceinline__ T ember_group_max(T value) {
#pragma unroll
    for (int offset = WIDTH / 2; offset > 0; offset >>= 1) {
        T other = ember_shfl_xor(value, offset);
        value = value > other ? value : other;
    }
    return value;
}

// Sum of `value` over the warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T ember_warp_sum(T value) {
    return ember_group_sum<EMBER_WARP_SIZE>(value);
}

// Maximum of `value` over the warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T ember_warp_max(T value) {
    return ember_group_max<EMBER_WARP_SIZE>(value);
}
