// Multi-LoRA: y += scale[slot] * B[slot] (A[slot] x) for each token row, with the adapters of a step
// stacked in slots (rank padded to max_rank with zeros). The host plans the step
// (crates/ember-cuda/src/lora_plan.rs): each row's slot (-1: the base model, no update) and the
// contiguous segments of rows that share one. Shrink (x -> buf = A x) is a grouped GEMV for decode
// steps (one block per row and rank) or a segmented GEMM for prefill (one block per 16-row tile of
// a segment, A tiles in shared memory); expand (buf -> y += scale * B buf) reads rank values per
// output element and serves both.
#include "common.cuh"

constexpr int LORA_THREADS = 128;
constexpr int LORA_TILE_ROWS = 16;
constexpr int LORA_TILE_K = 32;
constexpr int LORA_MAX_RANK = 64;

// buf:        [num_tokens, max_rank] f32   shrunk activations (0 for base rows)
// x:          [num_tokens, in_features]
// a:          [num_slots, max_rank, in_features]
// token_slots:[num_tokens]                 slot of each row, -1 for the base model
// Grid (num_tokens, max_rank), block LORA_THREADS.
template <typename T>
__device__ void lora_shrink_gemv_impl(float* __restrict__ buf, const T* __restrict__ x,
                                      const T* __restrict__ a, const int* __restrict__ token_slots,
                                      int in_features, int max_rank) {
    const int row = blockIdx.x;
    const int r = blockIdx.y;
    const int slot = token_slots[row];
    __shared__ float partial[LORA_THREADS];
    float acc = 0.0f;
    if (slot >= 0) {
        const T* x_row = x + static_cast<size_t>(row) * in_features;
        const T* a_row = a + (static_cast<size_t>(slot) * max_rank + r) * in_features;
        for (int k = threadIdx.x; k < in_features; k += LORA_THREADS) {
            acc += to_float(x_row[k]) * to_float(a_row[k]);
        }
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = LORA_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) buf[static_cast<size_t>(row) * max_rank + r] = partial[0];
}

// buf, x, a as above; seg_starts [num_segments + 1] row offsets of the runs of equal slots (every row
// in one); seg_slots [num_segments] (-1: base-model rows, skipped).
// Grid (num_segments, ceil(max_segment_len / LORA_TILE_ROWS)), block LORA_THREADS; max_rank <= 64.
template <typename T>
__device__ void lora_shrink_segments_impl(float* __restrict__ buf, const T* __restrict__ x,
                                          const T* __restrict__ a, const int* __restrict__ seg_starts,
                                          const int* __restrict__ seg_slots, int in_features,
                                          int max_rank) {
    const int seg = blockIdx.x;
    if (seg_slots[seg] < 0) return;  // a run of base-model rows
    const int row0 = seg_starts[seg] + blockIdx.y * LORA_TILE_ROWS;
    const int row_end = seg_starts[seg + 1];
    if (row0 >= row_end) return;
    const int num_rows = min(LORA_TILE_ROWS, row_end - row0);
    const T* a_slot = a + static_cast<size_t>(seg_slots[seg]) * max_rank * in_features;
    __shared__ float x_tile[LORA_TILE_ROWS][LORA_TILE_K];
    __shared__ float a_tile[LORA_MAX_RANK][LORA_TILE_K + 1];
    // Each thread owns outputs (i, r) with i * max_rank + r = threadIdx.x + j * LORA_THREADS.
    constexpr int PER_THREAD = LORA_TILE_ROWS * LORA_MAX_RANK / LORA_THREADS;
    float acc[PER_THREAD] = {};
    for (int k0 = 0; k0 < in_features; k0 += LORA_TILE_K) {
        for (int i = threadIdx.x; i < LORA_TILE_ROWS * LORA_TILE_K; i += LORA_THREADS) {
            const int row = i / LORA_TILE_K, k = k0 + i % LORA_TILE_K;
            x_tile[row][i % LORA_TILE_K] =
                row < num_rows && k < in_features ? to_float(x[static_cast<size_t>(row0 + row) * in_features + k]) : 0.0f;
        }
        for (int i = threadIdx.x; i < max_rank * LORA_TILE_K; i += LORA_THREADS) {
            const int r = i / LORA_TILE_K, k = k0 + i % LORA_TILE_K;
            a_tile[r][i % LORA_TILE_K] = k < in_features ? to_float(a_slot[static_cast<size_t>(r) * in_features + k]) : 0.0f;
        }
        __syncthreads();
        for (int j = 0; j < PER_THREAD; ++j) {
            const int out = threadIdx.x + j * LORA_THREADS;
            const int i = out / max_rank, r = out % max_rank;
            if (i < LORA_TILE_ROWS && r < max_rank) {
                float sum = 0.0f;
                for (int k = 0; k < LORA_TILE_K; ++k) sum += x_tile[i][k] * a_tile[r][k];
                acc[j] += sum;
            }
        }
        __syncthreads();
    }
    for (int j = 0; j < PER_THREAD; ++j) {
        const int out = threadIdx.x + j * LORA_THREADS;
        const int i = out / max_rank, r = out % max_rank;
        if (i < num_rows && out < LORA_TILE_ROWS * max_rank) {
            buf[static_cast<size_t>(row0 + i) * max_rank + r] = acc[j];
        }
    }
}

// y:          [num_tokens, out_features] (in/out)
// buf:        [num_tokens, max_rank] f32
// b:          [num_slots, out_features, max_rank]
// scales:     [num_slots] f32
// token_slots:[num_tokens]                 -1: row left as it is
// Grid-stride over num_tokens * out_features.
template <typename T>
__device__ void lora_expand_impl(T* __restrict__ y, const float* __restrict__ buf, const T* __restrict__ b,
                                 const float* __restrict__ scales, const int* __restrict__ token_slots,
                                 int num_tokens, int out_features, int max_rank) {
    const long long n = static_cast<long long>(num_tokens) * out_features;
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const int row = static_cast<int>(i / out_features), o = static_cast<int>(i % out_features);
        const int slot = token_slots[row];
        if (slot < 0) continue;
        const T* b_row = b + (static_cast<size_t>(slot) * out_features + o) * max_rank;
        const float* buf_row = buf + static_cast<size_t>(row) * max_rank;
        float acc = 0.0f;
        for (int r = 0; r < max_rank; ++r) acc += to_float(b_row[r]) * buf_row[r];
        y[i] = from_float<T>(to_float(y[i]) + scales[slot] * acc);
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_lora_shrink_gemv, lora_shrink_gemv_impl,
                              (float* buf, const void* x, const void* a, const int* token_slots,
                               int in_features, int max_rank),
                              (buf, static_cast<const T*>(x), static_cast<const T*>(a), token_slots,
                               in_features, max_rank))

EMBER_INSTANTIATE_FLOAT_TYPES(ember_lora_shrink_segments, lora_shrink_segments_impl,
                              (float* buf, const void* x, const void* a, const int* seg_starts,
                               const int* seg_slots, int in_features, int max_rank),
                              (buf, static_cast<const T*>(x), static_cast<const T*>(a), seg_starts,
                               seg_slots, in_features, max_rank))

EMBER_INSTANTIATE_FLOAT_TYPES(ember_lora_expand, lora_expand_impl,
                              (void* y, const float* buf, const void* b, const float* scales,
                               const int* token_slots, int num_tokens, int out_features, int max_rank),
                              (static_cast<T*>(y), buf, static_cast<const T*>(b), scales, token_slots,
                               num_tokens, out_features, max_rank))
