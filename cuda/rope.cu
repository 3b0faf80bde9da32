// Rotary position embeddings, in place. One block per token; each thread rotates dimension
// pairs of every head with the angle position * inv_freq[i] (f32, like the CPU backend).
//   interleaved = 1: pairs (2i, 2i + 1) (GGUF Llama layout)
//   interleaved = 0: pairs (i, i + rotary_dim / 2) (Hugging Face "rotate half")
#include "common.cuh"

#define EMBER_ROPE_MAX_DIM 512

// x:         [num_tokens, num_heads * head_dim] in/out
// positions: [num_tokens] position of each token
// inv_freq:  [rotary_dim / 2] f32 inverse frequencies
template <typename T>
__device__ void rope_impl(T* __restrict__ x, const unsigned int* __restrict__ positions,
                          const float* __restrict__ inv_freq, int num_heads, int head_dim,
                          int rotary_dim, int interleaved) {
    const int token = blockIdx.x;
    const int half = rotary_dim / 2;
    const float pos = static_cast<float>(positions[token]);
    T* row = x + static_cast<size_t>(token) * num_heads * head_dim;
    __shared__ float cos_s[EMBER_ROPE_MAX_DIM / 2];
    __shared__ float sin_s[EMBER_ROPE_MAX_DIM / 2];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        sincosf(pos * inv_freq[i], &sin_s[i], &cos_s[i]);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < num_heads * half; idx += blockDim.x) {
        const int head = idx / half;
        const int i = idx - head * half;
        const float sin_a = sin_s[i];
        const float cos_a = cos_s[i];
        const int a = interleaved ? 2 * i : i;
        const int b = interleaved ? 2 * i + 1 : i + half;
        T* h = row + head * head_dim;
        const float x0 = to_float(h[a]);
        const float x1 = to_float(h[b]);
        h[a] = from_float<T>(x0 * cos_a - x1 * sin_a);
        h[b] = from_float<T>(x0 * sin_a + x1 * cos_a);
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_rope, rope_impl,
                              (void* x, const unsigned int* positions, const float* inv_freq,
                               int num_heads, int head_dim, int rotary_dim, int interleaved),
                              (static_cast<T*>(x), positions, inv_freq, num_heads, head_dim,
                               rotary_dim, interleaved))
