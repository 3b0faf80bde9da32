// Paged decode attention: one query token per sequence over its paged K/V context.
//
// Grid (num_kv_heads * head_chunks, num_seqs, num_splits), 128 threads. A block owns one KV
// head, up to EMBER_DECODE_MAX_GROUP of the query heads that share it (GQA: every K/V row is
// read once for all of them), and one partition of at most `partition_size` context tokens.
// A key row of HEAD_DIM elements is read by HEAD_DIM / 8 lanes with 16-byte loads, so a warp
// reads several keys per instruction. Softmax is exact within the partition (scores kept in
// shared memory); with num_splits > 1 each partition writes its unnormalized output, max and
// exp-sum, and ember_paged_decode_reduce combines them.
#include "common.cuh"

#define EMBER_DECODE_THREADS 128
#define EMBER_DECODE_MAX_GROUP 8
#define EMBER_DECODE_MAX_PARTITION 512

// out:          [num_seqs, num_heads, HEAD_DIM]                 (written when num_splits == 1)
// partial_acc:  [num_seqs, num_heads, num_splits, HEAD_DIM] f32 (written when num_splits > 1)
// partial_max:  [num_seqs, num_heads, num_splits] f32 score max of each partition
// partial_sum:  [num_seqs, num_heads, num_splits] f32 sum of exp(score - max)
// q:            [num_seqs, num_heads, HEAD_DIM]
// k_cache:      [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
// v_cache:      [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
// block_tables: [num_seqs, max_blocks_per_seq]
// seq_lens:     [num_seqs] context length (0 for a padding row: output zeros)
template <typename T, int HEAD_DIM, int BLOCK_SIZE>
__device__ void paged_decode_impl(T* __restrict__ out, float* __restrict__ partial_acc,
                                  float* __restrict__ partial_max, float* __restrict__ partial_sum,
                                  const T* __restrict__ q, const T* __restrict__ k_cache,
                                  const T* __restrict__ v_cache, const int* __restrict__ block_tables,
                                  const int* __restrict__ seq_lens, int max_blocks_per_seq,
                                  int num_heads, int num_kv_heads, float scale, int partition_size,
                                  int num_splits) {
    constexpr int W = VecWidth<T>::value;                     // elements per 16-byte load
    constexpr int LANES_PER_KEY = HEAD_DIM / W;               // lanes reading one key row
    constexpr int KEYS_PER_WARP = EMBER_WARP_SIZE / LANES_PER_KEY;
    constexpr int NUM_WARPS = EMBER_DECODE_THREADS / EMBER_WARP_SIZE;
    constexpr int KEYS_PER_ITER = KEYS_PER_WARP * NUM_WARPS;
    static_assert(LANES_PER_KEY <= EMBER_WARP_SIZE, "head too large for one warp");
    static_assert(EMBER_DECODE_MAX_GROUP * EMBER_DECODE_MAX_PARTITION >=
                      NUM_WARPS * EMBER_DECODE_MAX_GROUP * HEAD_DIM,
                  "score buffer too small to reuse for the cross-warp reduction");

    __shared__ float q_s[EMBER_DECODE_MAX_GROUP][HEAD_DIM];
    // Scores of the partition; reused as [NUM_WARPS][MAX_GROUP][HEAD_DIM] partial outputs.
    __shared__ float scores[EMBER_DECODE_MAX_GROUP * EMBER_DECODE_MAX_PARTITION];
    __shared__ float max_s[EMBER_DECODE_MAX_GROUP];
    __shared__ float sum_s[EMBER_DECODE_MAX_GROUP];

    const int group = num_heads / num_kv_heads;
    const int head_chunks = (group + EMBER_DECODE_MAX_GROUP - 1) / EMBER_DECODE_MAX_GROUP;
    const int kv_head = blockIdx.x / head_chunks;
    const int chunk = blockIdx.x - kv_head * head_chunks;
    const int head0 = kv_head * group + chunk * EMBER_DECODE_MAX_GROUP;
    const int nh = min(EMBER_DECODE_MAX_GROUP, group - chunk * EMBER_DECODE_MAX_GROUP);
    const int seq = blockIdx.y;
    const int split = blockIdx.z;
    const int seq_len = seq_lens[seq];
    const int start = split * partition_size;
    const int end = min(seq_len, start + partition_size);
    const int tid = threadIdx.x;

    if (start >= end) {
        // Empty partition: the reduction never reads it; a lone empty partition is a padding row.
        if (num_splits == 1) {
            for (int i = tid; i < nh * HEAD_DIM; i += blockDim.x) {
                out[(static_cast<size_t>(seq) * num_heads + head0) * HEAD_DIM + i] = from_float<T>(0.0f);
            }
        }
        return;
    }
    const int len = end - start;

    for (int i = tid; i < nh * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM;
        const int d = i - g * HEAD_DIM;
        q_s[g][d] = to_float(q[(static_cast<size_t>(seq) * num_heads + head0 + g) * HEAD_DIM + d]) * scale;
    }
    __syncthreads();

    const int lane = ember_lane_id();
    const int warp = tid / EMBER_WARP_SIZE;
    const int key_in_warp = lane / LANES_PER_KEY;
    const int sub = lane - key_in_warp * LANES_PER_KEY;  // which 16-byte chunk of the row
    const int* table = block_tables + static_cast<size_t>(seq) * max_blocks_per_seq;
    const size_t token_stride = static_cast<size_t>(num_kv_heads) * HEAD_DIM;

    // Element offset of context token t's row for this KV head, at this lane's chunk.
    auto row_offset = [&](int t) {
        const int block = table[t / BLOCK_SIZE];
        const int slot = block * BLOCK_SIZE + (t % BLOCK_SIZE);
        return static_cast<size_t>(slot) * token_stride + static_cast<size_t>(kv_head) * HEAD_DIM + sub * W;
    };

    // Pass 1: scores. The loop bound is uniform across the warp so the shuffles stay converged.
    for (int base = start + warp * KEYS_PER_WARP; base < end; base += KEYS_PER_ITER) {
        const int t = base + key_in_warp;
        const bool valid = t < end;
        float k[W];
        if (valid) {
            unpack16<T>(*reinterpret_cast<const vec16_t*>(k_cache + row_offset(t)), k);
        } else {
#pragma unroll
            for (int i = 0; i < W; ++i) k[i] = 0.0f;
        }
#pragma unroll
        for (int g = 0; g < EMBER_DECODE_MAX_GROUP; ++g) {
            if (g < nh) {
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < W; ++i) dot += q_s[g][sub * W + i] * k[i];
                dot = ember_group_sum<LANES_PER_KEY>(dot);
                if (valid && sub == 0) scores[g * EMBER_DECODE_MAX_PARTITION + (t - start)] = dot;
            }
        }
    }
    __syncthreads();

    // Softmax statistics per head: one warp per head, exp written back in place.
    for (int g = warp; g < nh; g += NUM_WARPS) {
        float* row = scores + g * EMBER_DECODE_MAX_PARTITION;
        float m = -INFINITY;
        for (int j = lane; j < len; j += EMBER_WARP_SIZE) m = fmaxf(m, row[j]);
        m = ember_warp_max(m);
        float s = 0.0f;
        for (int j = lane; j < len; j += EMBER_WARP_SIZE) {
            const float p = __expf(row[j] - m);
            row[j] = p;
            s += p;
        }
        s = ember_warp_sum(s);
        if (lane == 0) {
            max_s[g] = m;
            sum_s[g] = s;
        }
    }
    __syncthreads();

    // Pass 2: probability-weighted values; each lane accumulates its 8 dims for every head.
    float acc[EMBER_DECODE_MAX_GROUP][W];
#pragma unroll
    for (int g = 0; g < EMBER_DECODE_MAX_GROUP; ++g) {
#pragma unroll
        for (int i = 0; i < W; ++i) acc[g][i] = 0.0f;
    }
    for (int base = start + warp * KEYS_PER_WARP; base < end; base += KEYS_PER_ITER) {
        const int t = base + key_in_warp;
        if (t < end) {
            float v[W];
            unpack16<T>(*reinterpret_cast<const vec16_t*>(v_cache + row_offset(t)), v);
#pragma unroll
            for (int g = 0; g < EMBER_DECODE_MAX_GROUP; ++g) {
                if (g < nh) {
                    const float p = scores[g * EMBER_DECODE_MAX_PARTITION + (t - start)];
#pragma unroll
                    for (int i = 0; i < W; ++i) acc[g][i] += p * v[i];
                }
            }
        }
    }
    // Combine lanes that read different keys at the same chunk, then the warps.
#pragma unroll
    for (int g = 0; g < EMBER_DECODE_MAX_GROUP; ++g) {
#pragma unroll
        for (int i = 0; i < W; ++i) {
#pragma unroll
            for (int offset = LANES_PER_KEY; offset < EMBER_WARP_SIZE; offset <<= 1) {
                acc[g][i] += ember_shfl_xor(acc[g][i], offset);
            }
        }
    }
    __syncthreads();  // scores are dead: reuse them for the per-warp outputs
    float* partial = scores;
    if (key_in_warp == 0) {
#pragma unroll
        for (int g = 0; g < EMBER_DECODE_MAX_GROUP; ++g) {
            if (g < nh) {
#pragma unroll
                for (int i = 0; i < W; ++i) {
                    partial[(warp * EMBER_DECODE_MAX_GROUP + g) * HEAD_DIM + sub * W + i] = acc[g][i];
                }
            }
        }
    }
    __syncthreads();
    for (int i = tid; i < nh * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM;
        const int d = i - g * HEAD_DIM;
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < NUM_WARPS; ++w) a += partial[(w * EMBER_DECODE_MAX_GROUP + g) * HEAD_DIM + d];
        const size_t head = static_cast<size_t>(seq) * num_heads + head0 + g;
        if (num_splits == 1) {
            out[head * HEAD_DIM + d] = from_float<T>(a / sum_s[g]);
        } else {
            partial_acc[(head * num_splits + split) * HEAD_DIM + d] = a;
            if (d == 0) {
                partial_max[head * num_splits + split] = max_s[g];
                partial_sum[head * num_splits + split] = sum_s[g];
            }
        }
    }
}

// Combines the partitions of one (sequence, head) per block; `head_dim` threads or fewer.
// out:         [num_seqs, num_heads, head_dim]
// partial_*:   as written by the decode kernel
// seq_lens:    [num_seqs]
template <typename T>
__device__ void paged_decode_reduce_impl(T* __restrict__ out, const float* __restrict__ partial_acc,
                                         const float* __restrict__ partial_max,
                                         const float* __restrict__ partial_sum,
                                         const int* __restrict__ seq_lens, int num_heads, int head_dim,
                                         int partition_size, int num_splits) {
    const int head = blockIdx.x;
    const int seq = blockIdx.y;
    const size_t sh = static_cast<size_t>(seq) * num_heads + head;
    const int used = min(num_splits, (seq_lens[seq] + partition_size - 1) / partition_size);
    float m = -INFINITY;
    for (int s = 0; s < used; ++s) m = fmaxf(m, partial_max[sh * num_splits + s]);
    float denom = 0.0f;
    for (int s = 0; s < used; ++s) denom += __expf(partial_max[sh * num_splits + s] - m) * partial_sum[sh * num_splits + s];
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < used; ++s) {
            a += __expf(partial_max[sh * num_splits + s] - m) * partial_acc[(sh * num_splits + s) * head_dim + d];
        }
        out[sh * head_dim + d] = from_float<T>(used > 0 ? a / denom : 0.0f);
    }
}

EMBER_INSTANTIATE_HALF_TYPES(ember_paged_decode_reduce, paged_decode_reduce_impl,
                             (void* out, const float* partial_acc, const float* partial_max,
                              const float* partial_sum, const int* seq_lens, int num_heads,
                              int head_dim, int partition_size, int num_splits),
                             (static_cast<T*>(out), partial_acc, partial_max, partial_sum, seq_lens,
                              num_heads, head_dim, partition_size, num_splits))

#define EMBER_DECODE_ENTRY(TNAME, TYPE, HD, BS)                                                     \
    extern "C" __global__ void __launch_bounds__(EMBER_DECODE_THREADS)                              \
        ember_paged_decode_attention_##TNAME##_h##HD##_b##BS(                                       \
            void* out, float* partial_acc, float* partial_max, float* partial_sum, const void* q,   \
            const void* k_cache, const void* v_cache, const int* block_tables, const int* seq_lens, \
            int max_blocks_per_seq, int num_heads, int num_kv_heads, float scale,                   \
            int partition_size, int num_splits) {                                                   \
        paged_decode_impl<TYPE, HD, BS>(static_cast<TYPE*>(out), partial_acc, partial_max,         \
                                        partial_sum, static_cast<const TYPE*>(q),                   \
                                        static_cast<const TYPE*>(k_cache),                          \
                                        static_cast<const TYPE*>(v_cache), block_tables, seq_lens,  \
                                        max_blocks_per_seq, num_heads, num_kv_heads, scale,         \
                                        partition_size, num_splits);                                \
    }

#define EMBER_DECODE_ENTRIES(TNAME, TYPE)   \
    EMBER_DECODE_ENTRY(TNAME, TYPE, 64, 16)  \
    EMBER_DECODE_ENTRY(TNAME, TYPE, 64, 32)  \
    EMBER_DECODE_ENTRY(TNAME, TYPE, 128, 16) \
    EMBER_DECODE_ENTRY(TNAME, TYPE, 128, 32)

EMBER_DECODE_ENTRIES(bf16, bf16)
EMBER_DECODE_ENTRIES(f16, f16)
