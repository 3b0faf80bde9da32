// reshape_and_cache: writes the step's keys and values into the paged cache through
// slot_mapping. Cache layout per layer, K and V each:
//   [num_blocks, block_size, num_kv_heads, head_dim], slot = block_id * block_size + offset,
// so a slot's `[num_kv_heads * head_dim]` row starts at element slot * num_kv_heads * head_dim.
// One block per token, 16-byte copies. Slot -1 marks a padding row and is skipped.
#include "common.cuh"

// k_cache, v_cache: [num_slots, width] with width = num_kv_heads * head_dim
// key, value:       [num_tokens, width]
// slot_mapping:     [num_tokens] destination slot, or -1
template <typename T>
__device__ void reshape_and_cache_impl(T* __restrict__ k_cache, T* __restrict__ v_cache,
                                       const T* __restrict__ key, const T* __restrict__ value,
                                       const int* __restrict__ slot_mapping, int width,
                                       long long num_slots) {
    const int token = blockIdx.x;
    const int slot = slot_mapping[token];
    if (slot < 0 || slot >= num_slots) return;
    const size_t src = static_cast<size_t>(token) * width;
    const size_t dst = static_cast<size_t>(slot) * width;
    constexpr int W = VecWidth<T>::value;
    if (width % W == 0) {
        for (int i = threadIdx.x; i < width / W; i += blockDim.x) {
            reinterpret_cast<vec16_t*>(k_cache + dst)[i] = reinterpret_cast<const vec16_t*>(key + src)[i];
            reinterpret_cast<vec16_t*>(v_cache + dst)[i] = reinterpret_cast<const vec16_t*>(value + src)[i];
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            k_cache[dst + i] = key[src + i];
            v_cache[dst + i] = value[src + i];
        }
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_reshape_and_cache, reshape_and_cache_impl,
                              (void* k_cache, void* v_cache, const void* key, const void* value,
                               const int* slot_mapping, int width, long long num_slots),
                              (static_cast<T*>(k_cache), static_cast<T*>(v_cache),
                               static_cast<const T*>(key), static_cast<const T*>(value),
                               slot_mapping, width, num_slots))
