// GGUF block dequantization at load time: Q8_0, Q4_0 and Q4_1 -> T. One thread per
// 32-element block (byte loads: blocks are 34, 18 or 20 bytes and unaligned), 16-byte stores.
//   Q8_0: f16 d, 32 x int8 q:           x = d * q
//   Q4_0: f16 d, 16 bytes of nibbles:   x = d * (q - 8)
//   Q4_1: f16 d, f16 m, 16 bytes:       x = d * q + m
// Nibble order (ggml): element j < 16 is the low nibble of byte j, element j + 16 its high one.
#include "common.cuh"

#define EMBER_QK 32

__device__ __forceinline__ float load_f16(const unsigned char* p) {
    const unsigned short bits = static_cast<unsigned short>(p[0] | (p[1] << 8));
    return __half2float(__ushort_as_half(bits));
}

template <typename T>
__device__ __forceinline__ void store_block(T* dst, const float* x) {
    constexpr int W = VecWidth<T>::value;
#pragma unroll
    for (int i = 0; i < EMBER_QK / W; ++i) {
        reinterpret_cast<vec16_t*>(dst)[i] = pack16<T>(x + i * W);
    }
}

// kind: 0 = Q8_0, 1 = Q4_0, 2 = Q4_1
// out: [num_blocks * 32] dequantized elements
// src: [num_blocks * block_bytes] GGUF blocks
template <typename T>
__device__ void dequant_impl(T* __restrict__ out, const unsigned char* __restrict__ src,
                             long long num_blocks, int kind) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const int block_bytes = kind == 0 ? 34 : (kind == 1 ? 18 : 20);
    for (long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; b < num_blocks;
         b += stride) {
        const unsigned char* blk = src + b * block_bytes;
        const float d = load_f16(blk);
        float x[EMBER_QK];
        if (kind == 0) {
#pragma unroll
            for (int j = 0; j < EMBER_QK; ++j) x[j] = d * static_cast<float>(static_cast<signed char>(blk[2 + j]));
        } else {
            // Same roundings as the CPU backend: d * (q - 8) and d * q + m.
            const bool has_min = kind == 2;
            const float m = has_min ? load_f16(blk + 2) : 0.0f;
            const int offset = has_min ? 0 : 8;
            const unsigned char* qs = blk + (has_min ? 4 : 2);
#pragma unroll
            for (int j = 0; j < EMBER_QK / 2; ++j) {
                x[j] = d * static_cast<float>((qs[j] & 0xF) - offset) + m;
                x[j + EMBER_QK / 2] = d * static_cast<float>((qs[j] >> 4) - offset) + m;
            }
        }
        store_block<T>(out + b * EMBER_QK, x);
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_dequant, dequant_impl,
                              (void* out, const unsigned char* src, long long num_blocks, int kind),
                              (static_cast<T*>(out), src, num_blocks, kind))
