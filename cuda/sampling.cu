// Sampling on the GPU, one block (up to 1024 threads) per row of f32 logits:
//   ember_argmax_f32:      greedy token (lowest id on ties; NaN counts as -inf)
//   ember_log_softmax_f32: logprobs of every token
//   ember_sample_f32:      temperature, top-k, top-p, min-p with a per-request counter-based
//                          draw u = uniform(seed, token_index), bit-identical to the CPU
//                          sampler's (crates/ember-core/src/sampler.rs).
// Weights are w = exp((l - max) / T) in (0, 1]; top-k, top-p and min-p each give a weight
// threshold (top-k and top-p found by bisection on the weight with block-wide counts/sums),
// tokens with w >= the largest threshold are kept, and the token is found by the inverse CDF
// of u * (kept mass) in token-id order.
#include "common.cuh"

#define EMBER_BISECT_STEPS 32

// Per-request parameters; `#[repr(C)]` twin in crates/ember-cuda/src/sampling.rs.
struct SampleParams {
    float temperature;  // 0 = greedy
    float top_p;        // 1 = off
    float min_p;        // 0 = off
    int top_k;          // <= 0 or >= vocab = off
    unsigned long long seed;
    unsigned long long token_index;
};

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    unsigned long long z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// The uniform draw in [0, 1) of output token `token_index` of stream `seed`.
__device__ __forceinline__ double ember_uniform(unsigned long long seed, unsigned long long token_index) {
    const unsigned long long bits =
        splitmix64(splitmix64(seed) ^ splitmix64(token_index ^ 0xD1B54A32D192ED03ULL));
    return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

__device__ __forceinline__ float clean(float l) { return isnan(l) ? -INFINITY : l; }

// Block argmax of a row: (value, lowest index). `vals`/`idxs` hold one entry per warp.
__device__ void block_argmax(const float* row, int vocab, float* vals, int* idxs, float* best_val,
                             int* best_idx) {
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float l = clean(row[i]);
        if (l > v || (l == v && i < idx)) {
            v = l;
            idx = i;
        }
    }
    for (int offset = EMBER_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        const float ov = ember_shfl_xor(v, offset);
        const int oi = ember_shfl_xor(idx, offset);
        if (ov > v || (ov == v && oi < idx)) {
            v = ov;
            idx = oi;
        }
    }
    const int warp = threadIdx.x / EMBER_WARP_SIZE;
    if (ember_lane_id() == 0) {
        vals[warp] = v;
        idxs[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const int num_warps = (blockDim.x + EMBER_WARP_SIZE - 1) / EMBER_WARP_SIZE;
        float bv = vals[0];
        int bi = idxs[0];
        for (int w = 1; w < num_warps; ++w) {
            if (vals[w] > bv || (vals[w] == bv && idxs[w] < bi)) {
                bv = vals[w];
                bi = idxs[w];
            }
        }
        *best_val = bv;
        *best_idx = bi == 0x7fffffff ? 0 : bi;
    }
    __syncthreads();
}

// out_ids: [rows] greedy token of each row
// logits:  [rows, vocab]
extern "C" __global__ void ember_argmax_f32(int* out_ids, const float* logits, int vocab) {
    __shared__ float vals[EMBER_MAX_WARPS];
    __shared__ int idxs[EMBER_MAX_WARPS];
    __shared__ float best_val;
    __shared__ int best_idx;
    block_argmax(logits + static_cast<size_t>(blockIdx.x) * vocab, vocab, vals, idxs, &best_val, &best_idx);
    if (threadIdx.x == 0) out_ids[blockIdx.x] = best_idx;
}

// out:    [rows, vocab] log-softmax of each row (NaN logits count as -inf)
// logits: [rows, vocab]
// The log-sum-exp of one row (NaN logits count as -inf; -inf when every logit is), computed
// by the whole block; every thread gets the result.
__device__ float row_logsumexp(const float* row, int vocab, float* scratch) {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, clean(row[i]));
    m = ember_block_max(m, scratch);
    if (m == -INFINITY) return m;
    float s = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += expf(clean(row[i]) - m);
    return m + logf(ember_block_sum(s, scratch));
}

extern "C" __global__ void ember_log_softmax_f32(float* out, const float* logits, int vocab) {
    __shared__ float scratch[EMBER_MAX_WARPS];
    const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
    const float lse = row_logsumexp(row, vocab, scratch);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        out[static_cast<size_t>(blockIdx.x) * vocab + i] = lse > -INFINITY ? clean(row[i]) - lse : -INFINITY;
    }
}

// Block-wide count (as float) or weight sum of tokens whose weight is >= `threshold`.
__device__ float kept_mass(const float* row, int vocab, float m, float inv_t, float threshold, bool count,
                           float* scratch) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float w = __expf((clean(row[i]) - m) * inv_t);
        if (w >= threshold) acc += count ? 1.0f : w;
    }
    return ember_block_sum(acc, scratch);
}

// out_ids: [rows] sampled token of each row
// logits:  [rows, vocab]
// params:  [rows]
extern "C" __global__ void ember_sample_f32(int* out_ids, const float* logits, const SampleParams* params,
                                            int vocab) {
    __shared__ float vals[EMBER_MAX_WARPS];
    __shared__ int idxs[EMBER_MAX_WARPS];
    __shared__ float scratch[EMBER_MAX_WARPS];
    __shared__ float best_val;
    __shared__ int best_idx;
    __shared__ float prefix[1024];
    __shared__ int chosen;
    const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
    const SampleParams p = params[blockIdx.x];
    block_argmax(row, vocab, vals, idxs, &best_val, &best_idx);
    const float m = best_val;
    if (p.temperature <= 0.0f || !(m > -INFINITY) || isinf(m)) {
        if (threadIdx.x == 0) out_ids[blockIdx.x] = best_idx;
        return;
    }
    const float inv_t = 1.0f / p.temperature;
    float threshold = p.min_p > 0.0f ? p.min_p : 0.0f;
    if (p.top_k > 0 && p.top_k < vocab) {
        float lo = 0.0f, hi = 1.0f;  // count(w >= lo) >= k always holds
        for (int step = 0; step < EMBER_BISECT_STEPS; ++step) {
            const float mid = 0.5f * (lo + hi);
            if (kept_mass(row, vocab, m, inv_t, mid, true, scratch) >= static_cast<float>(p.top_k)) lo = mid;
            else hi = mid;
        }
        threshold = fmaxf(threshold, lo);
    }
    if (p.top_p < 1.0f) {
        const float target = p.top_p * kept_mass(row, vocab, m, inv_t, threshold, false, scratch);
        float lo = threshold, hi = 1.0f;
        for (int step = 0; step < EMBER_BISECT_STEPS; ++step) {
            const float mid = 0.5f * (lo + hi);
            if (kept_mass(row, vocab, m, inv_t, mid, false, scratch) >= target) lo = mid;
            else hi = mid;
        }
        threshold = fmaxf(threshold, lo);
    }
    // Inverse CDF in id order: each thread owns a contiguous range of ids.
    const int per_thread = (vocab + blockDim.x - 1) / blockDim.x;
    const int begin = min(vocab, static_cast<int>(threadIdx.x) * per_thread);
    const int end = min(vocab, begin + per_thread);
    float local = 0.0f;
    for (int i = begin; i < end; ++i) {
        const float w = __expf((clean(row[i]) - m) * inv_t);
        if (w >= threshold) local += w;
    }
    prefix[threadIdx.x] = local;
    if (threadIdx.x == 0) chosen = best_idx;  // fallback when rounding leaves the target unreached
    __syncthreads();
    // Inclusive scan of the per-thread masses (Hillis-Steele; blockDim.x <= 1024).
    for (int offset = 1; offset < static_cast<int>(blockDim.x); offset <<= 1) {
        const float add = threadIdx.x >= static_cast<unsigned>(offset) ? prefix[threadIdx.x - offset] : 0.0f;
        __syncthreads();
        prefix[threadIdx.x] += add;
        __syncthreads();
    }
    const float total = prefix[blockDim.x - 1];
    const float target = static_cast<float>(ember_uniform(p.seed, p.token_index)) * total;
    float cum = threadIdx.x > 0 ? prefix[threadIdx.x - 1] : 0.0f;
    if (cum <= target && target < prefix[threadIdx.x]) {
        for (int i = begin; i < end; ++i) {
            const float w = __expf((clean(row[i]) - m) * inv_t);
            if (w < threshold) continue;
            cum += w;
            if (target < cum) {
                chosen = i;
                break;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) out_ids[blockIdx.x] = chosen;
}

// out:     [rows] log-softmax of each row at its chosen token (NaN logits count as -inf)
// logits:  [rows, vocab]
// ids:     [rows] chosen token of each row
extern "C" __global__ void ember_token_logprob_f32(float* out, const float* logits, const int* ids, int vocab) {
    __shared__ float scratch[EMBER_MAX_WARPS];
    const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
    const float lse = row_logsumexp(row, vocab, scratch);
    if (threadIdx.x == 0) {
        const int id = ids[blockIdx.x];
        const bool valid = lse > -INFINITY && id >= 0 && id < vocab;
        out[blockIdx.x] = valid ? clean(row[id]) - lse : -INFINITY;
    }
}
