// Every kernel entry point of cuda/. The host declares each one it launches once, with a typed
// argument struct, in crates/ember-cuda/src/kernels.rs and kernel_args.rs (checked against the
// compiled PTX by scripts/cuda_compile_check.sh); grid and block sizes are in launch.rs, argument
// checks in the op modules. A launch failure is a CUresult turned into an error, never an abort.
// <T> is one of bf16, f16, f32 ("16-bit" kernels: bf16, f16); HD in {64, 128}; BS in {16, 32}.
// Shapes are row-major; pointer shapes are documented here and at each kernel template.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// gather.cu. Grid (num_rows), any block size.
//   out [num_rows, cols], table [table_rows, cols], ids [num_rows]
void ember_gather_rows_T(void* out, const void* table, const unsigned int* ids, int num_rows, int cols,
                         int table_rows);

// norm.cu. Grid (rows), block 256 (1024 max).
//   out [rows, cols], residual [rows, cols] (in/out), x [rows, cols] or null, weight [cols] f32
void ember_add_rms_norm_T(void* out, void* residual, const void* x, const float* weight, int cols, float eps);

// activation.cu. Grid-stride.
//   out/gate/up [n]
void ember_silu_mul_T(void* out, const void* gate, const void* up, long long n);
//   x [rows, cols] (in/out), y [rows, cols] or null, bias [cols] f32 or null; n = rows * cols
void ember_add_T(void* x, const void* y, const float* bias, long long n, int cols);
//   out [n] f32, x [n]
void ember_to_f32_T(float* out, const void* x, long long n);

// rope.cu. Grid (num_tokens).
//   x [num_tokens, num_heads * head_dim] (in/out), positions [num_tokens], inv_freq [rotary_dim / 2] f32
void ember_rope_T(void* x, const unsigned int* positions, const float* inv_freq, int num_heads, int head_dim,
                  int rotary_dim, int interleaved);

// kv_cache.cu. Grid (num_tokens).
//   k_cache/v_cache [num_slots, width], key/value [num_tokens, width], slot_mapping [num_tokens] (-1: skip)
void ember_reshape_and_cache_T(void* k_cache, void* v_cache, const void* key, const void* value,
                               const int* slot_mapping, int width, long long num_slots);

// lora.cu. Adapters stacked in slots, rank padded to max_rank (<= 64 for the segmented shrink);
// token_slots [num_tokens] (-1: base model); seg_starts [num_segments + 1] (runs of equal slots, every
// row in one); seg_slots [num_segments] (-1: base-model run).
//   buf [num_tokens, max_rank] f32, x [num_tokens, in_features], a [num_slots, max_rank, in_features]
// Grid (num_tokens, max_rank), block 128 (decode: grouped GEMV).
void ember_lora_shrink_gemv_T(float* buf, const void* x, const void* a, const int* token_slots,
                              int in_features, int max_rank);
// Grid (num_segments, ceil(max_segment_len / 16)), block 128 (prefill: segmented GEMM).
void ember_lora_shrink_segments_T(float* buf, const void* x, const void* a, const int* seg_starts,
                                  const int* seg_slots, int in_features, int max_rank);
//   y [num_tokens, out_features] (in/out), b [num_slots, out_features, max_rank], scales [num_slots] f32.
// Grid-stride over num_tokens * out_features.
void ember_lora_expand_T(void* y, const float* buf, const void* b, const float* scales,
                         const int* token_slots, int num_tokens, int out_features, int max_rank);

// decode_attention.cu (16-bit). Grid (num_kv_heads * ceil(group / 8), num_seqs, num_splits), block 128.
//   out [num_seqs, num_heads, HD]; partial_acc [num_seqs, num_heads, num_splits, HD] f32;
//   partial_max/partial_sum [num_seqs, num_heads, num_splits] f32; q [num_seqs, num_heads, HD];
//   k_cache/v_cache [num_blocks, BS, num_kv_heads, HD]; block_tables [num_seqs, max_blocks_per_seq];
//   seq_lens [num_seqs]
void ember_paged_decode_attention_T_hHD_bBS(void* out, float* partial_acc, float* partial_max,
                                            float* partial_sum, const void* q, const void* k_cache,
                                            const void* v_cache, const int* block_tables,
                                            const int* seq_lens, int max_blocks_per_seq, int num_heads,
                                            int num_kv_heads, float scale, int partition_size,
                                            int num_splits);
// Grid (num_heads, num_seqs), block <= head_dim.
void ember_paged_decode_reduce_T(void* out, const float* partial_acc, const float* partial_max,
                                 const float* partial_sum, const int* seq_lens, int num_heads,
                                 int head_dim, int partition_size, int num_splits);

// prefill_attention.cu (16-bit, sm_80+ tensor cores). Grid (num_seqs * q_tiles_per_seq, num_heads),
// block 128, q tile 64 rows.
//   out/q [num_tokens, num_heads, HD]; k_cache/v_cache [num_blocks, BS, num_kv_heads, HD];
//   block_tables [num_seqs, max_blocks_per_seq]; seq_lens [num_seqs]; query_start_loc [num_seqs + 1]
void ember_prefill_attention_T_hHD_bBS(void* out, const void* q, const void* k_cache, const void* v_cache,
                                       const int* block_tables, const int* seq_lens,
                                       const int* query_start_loc, int max_blocks_per_seq, int num_heads,
                                       int num_kv_heads, float scale, int q_tiles_per_seq);

// sampling.cu (f32 logits). Grid (rows), block 1024.
//   out_ids [rows], logits [rows, vocab], params [rows] (struct SampleParams), out [rows, vocab]
void ember_argmax_f32(int* out_ids, const float* logits, int vocab);
void ember_log_softmax_f32(float* out, const float* logits, int vocab);
struct SampleParams;
void ember_sample_f32(int* out_ids, const float* logits, const struct SampleParams* params, int vocab);
//   out [rows] f32 logprob of ids[row], ids [rows]
void ember_token_logprob_f32(float* out, const float* logits, const int* ids, int vocab);

// dequant.cu. Grid-stride, one thread per 32 output elements; kind 0 = Q8_0, 1 = Q4_0, 2 = Q4_1,
// 3 = Q5_0, 4 = Q5_1, 5 = IQ4_NL, 6 = Q2_K, 7 = Q3_K, 8 = Q4_K, 9 = Q5_K, 10 = Q6_K, 11 = Q8_K.
//   out [num_blocks * 32], src [the GGUF blocks of num_blocks * 32 elements]
void ember_dequant_T(void* out, const unsigned char* src, long long num_blocks, int kind);

#ifdef __cplusplus
}
#endif
