// GGUF block dequantization at load time -> T. One thread per 32 output elements (a whole
// 32-element block, or one eighth of a 256-element K-quant super-block); byte loads (blocks
// are 18 to 292 bytes and unaligned), 16-byte stores. ggml layouts:
//   kind 0  Q8_0:   f16 d, 32 x i8 q                         x = d * q
//   kind 1  Q4_0:   f16 d, 16 B nibbles                      x = d * (q - 8)
//   kind 2  Q4_1:   f16 d, f16 m, 16 B nibbles               x = d * q + m
//   kind 3  Q5_0:   f16 d, u32 fifth bits, 16 B nibbles      x = d * (q - 16)
//   kind 4  Q5_1:   f16 d, f16 m, u32 fifth bits, 16 B       x = d * q + m
//   kind 5  IQ4_NL: f16 d, 16 B nibbles                      x = d * table[q]
//   kind 6  Q2_K:   16 B scales|mins, 64 B 2-bit q, f16 d, f16 dmin   x = (d*sc)*q - dmin*m
//   kind 7  Q3_K:   32 B hmask, 64 B 2-bit q, 12 B 6-bit scales, f16 d  x = (d*(sc-32))*(q-4*!h)
//   kind 8  Q4_K:   f16 d, f16 dmin, 12 B 6-bit scales|mins, 128 B nibbles
//   kind 9  Q5_K:   as Q4_K plus 32 B fifth bits before the nibbles
//   kind 10 Q6_K:   128 B low nibbles, 64 B high 2 bits, 16 x i8 scales, f16 d  x = (d*sc)*(q-32)
//   kind 11 Q8_K:   f32 d, 256 x i8 q, 16 x i16 sums         x = d * q
// In the 32-element formats element j < 16 is the low nibble of byte j, element j + 16 its high
// nibble. Products and sums use explicit round-to-nearest intrinsics (never contracted into an
// fma), so the f32 values equal the CPU backend's and the `gguf` package's bit for bit before
// the final rounding to T.
#include "common.cuh"

#define EMBER_QK 32
#define EMBER_QK_K 256

__device__ __constant__ signed char kIq4NlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                        1,    13,   25,  38,  53,  69,  89,  113};

__device__ __forceinline__ float load_f16(const unsigned char* p) {
    const unsigned short bits = static_cast<unsigned short>(p[0] | (p[1] << 8));
    return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ unsigned int load_u32(const unsigned char* p) {
    return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<unsigned int>(p[3]) << 24);
}

template <typename T>
__device__ __forceinline__ void store_block(T* dst, const float* x) {
    constexpr int W = VecWidth<T>::value;
#pragma unroll
    for (int i = 0; i < EMBER_QK / W; ++i) {
        reinterpret_cast<vec16_t*>(dst)[i] = pack16<T>(x + i * W);
    }
}

// Bytes of one stored block of `kind`; 0 for an unknown kind.
__device__ __forceinline__ int block_bytes(int kind) {
    switch (kind) {
        case 0: return 34;
        case 1: return 18;
        case 2: return 20;
        case 3: return 22;
        case 4: return 24;
        case 5: return 18;
        case 6: return 84;
        case 7: return 110;
        case 8: return 144;
        case 9: return 176;
        case 10: return 210;
        case 11: return 292;
        default: return 0;
    }
}

// The 32 values of a 32-element block (kinds 0-5).
__device__ void dequant_small(const unsigned char* blk, int kind, float* x) {
    const float d = load_f16(blk);
    if (kind == 0) {
#pragma unroll
        for (int j = 0; j < EMBER_QK; ++j) x[j] = __fmul_rn(d, static_cast<float>(static_cast<signed char>(blk[2 + j])));
        return;
    }
    const bool has_min = kind == 2 || kind == 4;
    const bool five = kind == 3 || kind == 4;
    const float m = has_min ? load_f16(blk + 2) : 0.0f;
    const int head = (has_min ? 4 : 2) + (five ? 4 : 0);
    const unsigned int qh = five ? load_u32(blk + head - 4) : 0u;
    const int offset = kind == 1 ? 8 : (kind == 3 ? 16 : 0);
    const unsigned char* qs = blk + head;
#pragma unroll
    for (int j = 0; j < EMBER_QK; ++j) {
        int q = j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
        q |= static_cast<int>((qh >> j) & 1u) << 4;
        if (kind == 5) {
            x[j] = __fmul_rn(d, static_cast<float>(kIq4NlValues[q]));
        } else if (has_min) {
            x[j] = __fadd_rn(__fmul_rn(d, static_cast<float>(q)), m);
        } else {
            x[j] = __fmul_rn(d, static_cast<float>(q - offset));
        }
    }
}

// Scale and min of sub-block `j` (of 8) of a Q4_K / Q5_K super-block (`sc`: 12 bytes).
__device__ __forceinline__ void k_scale_min(const unsigned char* sc, int j, int* scale, int* min) {
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

// Elements 32 j .. 32 j + 32 of a K-quant super-block (kinds 6-11).
__device__ void dequant_k(const unsigned char* blk, int kind, int j, float* x) {
#pragma unroll 4
    for (int l = 0; l < EMBER_QK; ++l) {
        const int e = EMBER_QK * j + l;
        const int sub16 = e / 16;
        float v = 0.0f;
        if (kind == 6) {  // Q2_K: element 128 n + 32 s + l is bits 2s.. of qs[32 n + l]
            const int q = (blk[16 + 32 * (j / 4) + l] >> (2 * (j % 4))) & 3;
            const float dl = __fmul_rn(load_f16(blk + 80), static_cast<float>(blk[sub16] & 15));
            const float ml = __fmul_rn(load_f16(blk + 82), static_cast<float>(blk[sub16] >> 4));
            v = __fsub_rn(__fmul_rn(dl, static_cast<float>(q)), ml);
        } else if (kind == 7) {  // Q3_K: high bit 4 n + s of hmask[l]; clear means q - 4
            const int low = (blk[32 + 32 * (j / 4) + l] >> (2 * (j % 4))) & 3;
            const int high = (blk[l] >> j) & 1;
            const unsigned char* sc = blk + 96;
            const int lo4 = sub16 < 8 ? (sc[sub16] & 15) : (sc[sub16 - 8] >> 4);
            const int hi2 = (sc[8 + sub16 % 4] >> (2 * (sub16 / 4))) & 3;
            const int scale = (lo4 | (hi2 << 4)) - 32;
            const float dl = __fmul_rn(load_f16(blk + 108), static_cast<float>(scale));
            v = __fmul_rn(dl, static_cast<float>(low + 4 * high - 4));
        } else if (kind == 8 || kind == 9) {  // Q4_K / Q5_K: sub-block j, nibbles of chunk j/2
            const bool five = kind == 9;
            const unsigned char* qs = blk + (five ? 48 : 16);
            const int byte = qs[32 * (j / 2) + l];
            int q = (j % 2) ? (byte >> 4) : (byte & 15);
            if (five) q |= ((blk[16 + l] >> j) & 1) << 4;
            int scale, min;
            k_scale_min(blk + 4, j, &scale, &min);
            const float dl = __fmul_rn(load_f16(blk), static_cast<float>(scale));
            const float ml = __fmul_rn(load_f16(blk + 2), static_cast<float>(min));
            v = __fsub_rn(__fmul_rn(dl, static_cast<float>(q)), ml);
        } else if (kind == 10) {  // Q6_K: half h = j / 4, 32-run k = j % 4 of it
            const int h = j / 4, k = j % 4;
            const int byte = blk[64 * h + 32 * (k % 2) + l];
            const int low = k < 2 ? (byte & 15) : (byte >> 4);
            const int high = (blk[128 + 32 * h + l] >> (2 * k)) & 3;
            const float dl = __fmul_rn(load_f16(blk + 208), static_cast<float>(static_cast<signed char>(blk[192 + sub16])));
            v = __fmul_rn(dl, static_cast<float>((low | (high << 4)) - 32));
        } else {  // Q8_K
            const float d = __uint_as_float(load_u32(blk));
            v = __fmul_rn(d, static_cast<float>(static_cast<signed char>(blk[4 + e])));
        }
        x[l] = v;
    }
}

// kind: see the file comment; an unknown kind writes nothing.
// out: [num_chunks * 32] dequantized elements
// src: the GGUF blocks holding num_chunks * 32 elements
template <typename T>
__device__ void dequant_impl(T* __restrict__ out, const unsigned char* __restrict__ src,
                             long long num_chunks, int kind) {
    const int bytes = block_bytes(kind);
    if (bytes == 0) return;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long c = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; c < num_chunks;
         c += stride) {
        float x[EMBER_QK];
        if (kind <= 5) {
            dequant_small(src + c * bytes, kind, x);
        } else {
            dequant_k(src + (c / 8) * bytes, kind, static_cast<int>(c % 8), x);
        }
        store_block<T>(out + c * EMBER_QK, x);
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_dequant, dequant_impl,
                              (void* out, const unsigned char* src, long long num_blocks, int kind),
                              (static_cast<T*>(out), src, num_blocks, kind))
