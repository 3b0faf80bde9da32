// Elementwise ops: SiLU-and-multiply, residual add, bias add. Grid-stride loops over
// 16-byte vectors when the sizes allow, scalars otherwise.
#include "common.cuh"

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// out:  [n] silu(gate) * up
// gate: [n]
// up:   [n]
template <typename T>
__device__ void silu_mul_impl(T* __restrict__ out, const T* __restrict__ gate, const T* __restrict__ up,
                              long long n) {
    constexpr int W = VecWidth<T>::value;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n % W == 0) {
        for (long long v = first; v < n / W; v += stride) {
            float g[W], u[W];
            unpack16<T>(reinterpret_cast<const vec16_t*>(gate)[v], g);
            unpack16<T>(reinterpret_cast<const vec16_t*>(up)[v], u);
#pragma unroll
            for (int i = 0; i < W; ++i) g[i] = silu(g[i]) * u[i];
            reinterpret_cast<vec16_t*>(out)[v] = pack16<T>(g);
        }
    } else {
        for (long long i = first; i < n; i += stride) {
            out[i] = from_float<T>(silu(to_float(gate[i])) * to_float(up[i]));
        }
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_silu_mul, silu_mul_impl,
                              (void* out, const void* gate, const void* up, long long n),
                              (static_cast<T*>(out), static_cast<const T*>(gate),
                               static_cast<const T*>(up), n))

// x:    [rows, cols] in/out: x += y (y broadcast over rows when `bias` is set)
// y:    [rows, cols] T addend, or null
// bias: [cols]       f32 addend, or null
template <typename T>
__device__ void add_impl(T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ bias,
                         long long n, int cols) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float addend = y != nullptr ? to_float(y[i]) : bias[i % cols];
        x[i] = from_float<T>(to_float(x[i]) + addend);
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_add, add_impl,
                              (void* x, const void* y, const float* bias, long long n, int cols),
                              (static_cast<T*>(x), static_cast<const T*>(y), bias, n, cols))

// out: [n] f32 copy of x (logits for the sampling kernels)
// x:   [n]
template <typename T>
__device__ void to_f32_impl(float* __restrict__ out, const T* __restrict__ x, long long n) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = to_float(x[i]);
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_to_f32, to_f32_impl, (float* out, const void* x, long long n),
                              (out, static_cast<const T*>(x), n))
