// Prefill / chunked-prefill attention over the paged cache, causal, flash-style.
//
// Grid (num_seqs * q_tiles_per_seq, num_heads), 128 threads (4 warps). A block takes 64 query
// rows of one sequence and one head (16 rows per warp) and walks the context in tiles of
// 32 keys: K/V tiles are gathered from the paged cache into shared memory with 16-byte loads,
// S = Q K^T and O += P V run on tensor cores (mma.sync m16n8k16, f32 accumulation), and the
// softmax is online (running max and sum per row, exp2 with the scale folded in). Query row i
// of a sequence whose step brings q_len tokens sits at position seq_len - q_len + i and sees
// context positions 0..=that. Blocks past a sequence's q_len exit at once.
#include "mma.cuh"

#define EMBER_PREFILL_THREADS 128
#define EMBER_PREFILL_BLOCK_M 64
#define EMBER_PREFILL_BLOCK_N 32
#define EMBER_PREFILL_PAD 8  // elements of row padding: spreads rows over shared-memory banks

// out:             [num_tokens, num_heads, HEAD_DIM]
// q:               [num_tokens, num_heads, HEAD_DIM]
// k_cache:         [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
// v_cache:         [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
// block_tables:    [num_seqs, max_blocks_per_seq]
// seq_lens:        [num_seqs] context length after this step
// query_start_loc: [num_seqs + 1] first token row of each sequence
template <typename T, int HEAD_DIM, int BLOCK_SIZE>
__device__ void prefill_impl(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
                             const T* __restrict__ v_cache, const int* __restrict__ block_tables,
                             const int* __restrict__ seq_lens, const int* __restrict__ query_start_loc,
                             int max_blocks_per_seq, int num_heads, int num_kv_heads, float scale,
                             int q_tiles_per_seq) {
    constexpr int BM = EMBER_PREFILL_BLOCK_M;
    constexpr int BN = EMBER_PREFILL_BLOCK_N;
    constexpr int LD = HEAD_DIM + EMBER_PREFILL_PAD;
    constexpr int W = VecWidth<T>::value;
    constexpr int CHUNKS = HEAD_DIM / W;  // 16-byte chunks per row
    constexpr int KSTEPS = HEAD_DIM / 16;
    constexpr int DTILES = HEAD_DIM / 8;
    constexpr int NTILES = BN / 8;
    static_assert(HEAD_DIM % 16 == 0, "head_dim must be a multiple of 16");

    __shared__ __align__(16) T q_s[BM * LD];
    __shared__ __align__(16) T k_s[BN * LD];
    __shared__ __align__(16) T v_s[BN * LD];

    const int seq = blockIdx.x / q_tiles_per_seq;
    const int tile = blockIdx.x - seq * q_tiles_per_seq;
    const int head = blockIdx.y;
    const int q_start = query_start_loc[seq];
    const int q_len = query_start_loc[seq + 1] - q_start;
    const int row0 = tile * BM;  // first query row of this block within the sequence
    if (row0 >= q_len) return;
    const int seq_len = seq_lens[seq];
    const int ctx_before = seq_len - q_len;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int* table = block_tables + static_cast<size_t>(seq) * max_blocks_per_seq;
    const size_t token_stride = static_cast<size_t>(num_kv_heads) * HEAD_DIM;
    const int tid = threadIdx.x;
    const vec16_t zero = make_uint4(0, 0, 0, 0);

    for (int c = tid; c < BM * CHUNKS; c += EMBER_PREFILL_THREADS) {
        const int r = c / CHUNKS;
        const int ch = c - r * CHUNKS;
        vec16_t v = zero;
        if (row0 + r < q_len) {
            const size_t token = static_cast<size_t>(q_start + row0 + r);
            v = *reinterpret_cast<const vec16_t*>(q + (token * num_heads + head) * HEAD_DIM + ch * W);
        }
        *reinterpret_cast<vec16_t*>(q_s + r * LD + ch * W) = v;
    }
    __syncthreads();

    const int lane = ember_lane_id();
    const int warp = tid / EMBER_WARP_SIZE;
    const int g = lane >> 2;
    const int c4 = lane & 3;
    const int wrow = warp * 16;  // this warp's first row within the block

    unsigned qf[KSTEPS][4];
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        const int col = ks * 16 + c4 * 2;
        qf[ks][0] = *reinterpret_cast<const unsigned*>(q_s + (wrow + g) * LD + col);
        qf[ks][1] = *reinterpret_cast<const unsigned*>(q_s + (wrow + g + 8) * LD + col);
        qf[ks][2] = *reinterpret_cast<const unsigned*>(q_s + (wrow + g) * LD + col + 8);
        qf[ks][3] = *reinterpret_cast<const unsigned*>(q_s + (wrow + g + 8) * LD + col + 8);
    }

    const float scale_log2 = scale * 1.4426950408889634f;
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};  // this lane's partial sums; the quad is summed at the end
    float o[DTILES][4];
#pragma unroll
    for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    // Query positions of this lane's two rows.
    const int qpos[2] = {ctx_before + row0 + wrow + g, ctx_before + row0 + wrow + g + 8};
    const int kv_end = ctx_before + min(q_len, row0 + BM);  // keys any row of the block sees

    for (int kt = 0; kt < kv_end; kt += BN) {
        __syncthreads();  // the previous tile's readers are done
        for (int c = tid; c < BN * CHUNKS; c += EMBER_PREFILL_THREADS) {
            const int r = c / CHUNKS;
            const int ch = c - r * CHUNKS;
            const int t = kt + r;
            vec16_t kv = zero, vv = zero;
            if (t < kv_end) {
                const int slot = table[t / BLOCK_SIZE] * BLOCK_SIZE + (t % BLOCK_SIZE);
                const size_t off = static_cast<size_t>(slot) * token_stride +
                                   static_cast<size_t>(kv_head) * HEAD_DIM + ch * W;
                kv = *reinterpret_cast<const vec16_t*>(k_cache + off);
                vv = *reinterpret_cast<const vec16_t*>(v_cache + off);
            }
            *reinterpret_cast<vec16_t*>(k_s + r * LD + ch * W) = kv;
            *reinterpret_cast<vec16_t*>(v_s + r * LD + ch * W) = vv;
        }
        __syncthreads();

        float s[NTILES][4];
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const T* krow = k_s + (nt * 8 + g) * LD;
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks) {
                const unsigned b0 = *reinterpret_cast<const unsigned*>(krow + ks * 16 + c4 * 2);
                const unsigned b1 = *reinterpret_cast<const unsigned*>(krow + ks * 16 + c4 * 2 + 8);
                Mma<T>::run(s[nt], qf[ks], b0, b1);
            }
        }

        // Causal mask, scale, online softmax update.
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const int kpos = kt + nt * 8 + c4 * 2 + (e & 1);
                s[nt][e] = kpos <= qpos[r] ? s[nt][e] * scale_log2 : -INFINITY;
                tile_max[r] = fmaxf(tile_max[r], s[nt][e]);
            }
        }
        float alpha[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(row_max[r], ember_group_max<4>(tile_max[r]));
            base[r] = m_new == -INFINITY ? 0.0f : m_new;  // a fully masked row stays all-zero
            alpha[r] = exp2f(row_max[r] - base[r]);
            row_max[r] = m_new;
            row_sum[r] *= alpha[r];
        }
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = exp2f(s[nt][e] - base[e >> 1]);
                row_sum[e >> 1] += s[nt][e];
            }
        }
#pragma unroll
        for (int d = 0; d < DTILES; ++d) {
            o[d][0] *= alpha[0];
            o[d][1] *= alpha[0];
            o[d][2] *= alpha[1];
            o[d][3] *= alpha[1];
        }

        // O += P V: the S accumulators of key tiles (2kk, 2kk+1) are exactly the A fragment.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            unsigned pa[4];
            pa[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            const T* vrow = v_s + (kk * 16 + (lane & 15)) * LD;
#pragma unroll
            for (int d = 0; d < DTILES; ++d) {
                unsigned b0, b1;
                ldmatrix_x2_trans(b0, b1, vrow + d * 8);
                Mma<T>::run(o[d], pa, b0, b1);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + wrow + g + 8 * r;
        const float total = ember_group_sum<4>(row_sum[r]);
        if (row >= q_len) continue;
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;
        const size_t token = static_cast<size_t>(q_start + row);
        T* dst = out + (token * num_heads + head) * HEAD_DIM + c4 * 2;
#pragma unroll
        for (int d = 0; d < DTILES; ++d) {
            *reinterpret_cast<unsigned*>(dst + d * 8) = Mma<T>::pack(o[d][2 * r] * inv, o[d][2 * r + 1] * inv);
        }
    }
}

#define EMBER_PREFILL_ENTRY(TNAME, TYPE, HD, BS)                                                    \
    extern "C" __global__ void __launch_bounds__(EMBER_PREFILL_THREADS)                             \
        ember_prefill_attention_##TNAME##_h##HD##_b##BS(                                            \
            void* out, const void* q, const void* k_cache, const void* v_cache,                     \
            const int* block_tables, const int* seq_lens, const int* query_start_loc,               \
            int max_blocks_per_seq, int num_heads, int num_kv_heads, float scale,                   \
            int q_tiles_per_seq) {                                                                  \
        prefill_impl<TYPE, HD, BS>(static_cast<TYPE*>(out), static_cast<const TYPE*>(q),           \
                                   static_cast<const TYPE*>(k_cache),                               \
                                   static_cast<const TYPE*>(v_cache), block_tables, seq_lens,       \
                                   query_start_loc, max_blocks_per_seq, num_heads, num_kv_heads,    \
                                   scale, q_tiles_per_seq);                                         \
    }

#define EMBER_PREFILL_ENTRIES(TNAME, TYPE)   \
    EMBER_PREFILL_ENTRY(TNAME, TYPE, 64, 16)  \
    EMBER_PREFILL_ENTRY(TNAME, TYPE, 64, 32)  \
    EMBER_PREFILL_ENTRY(TNAME, TYPE, 128, 16) \
    EMBER_PREFILL_ENTRY(TNAME, TYPE, 128, 32)

EMBER_PREFILL_ENTRIES(bf16, bf16)
EMBER_PREFILL_ENTRIES(f16, f16)
