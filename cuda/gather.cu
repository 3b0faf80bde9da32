// Row gather: embedding lookup and the selection of the rows to sample.
// out[i, :] = table[ids[i], :]; one block per output row, 16-byte vector copies.
#include "common.cuh"

// out:   [num_rows, cols]   gathered rows
// table: [table_rows, cols] source rows (embedding table or hidden states)
// ids:   [num_rows]         source row of each output row; ids >= table_rows give zeros
template <typename T>
__device__ void gather_rows_impl(T* __restrict__ out, const T* __restrict__ table,
                                 const unsigned int* __restrict__ ids, int num_rows, int cols,
                                 int table_rows) {
    const int row = blockIdx.x;
    if (row >= num_rows) return;
    const unsigned int src = ids[row];
    T* dst = out + static_cast<size_t>(row) * cols;
    constexpr int W = VecWidth<T>::value;
    if (cols % W == 0) {
        vec16_t* dst_v = reinterpret_cast<vec16_t*>(dst);
        const vec16_t* src_v = reinterpret_cast<const vec16_t*>(table + static_cast<size_t>(src) * cols);
        for (int i = threadIdx.x; i < cols / W; i += blockDim.x) {
            dst_v[i] = src < static_cast<unsigned int>(table_rows) ? src_v[i] : make_uint4(0, 0, 0, 0);
        }
    } else {
        const T* src_row = table + static_cast<size_t>(src) * cols;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            dst[i] = src < static_cast<unsigned int>(table_rows) ? src_row[i] : from_float<T>(0.0f);
        }
    }
}

EMBER_INSTANTIATE_FLOAT_TYPES(ember_gather_rows, gather_rows_impl,
                              (void* out, const void* table, const unsigned int* ids, int num_rows,
                               int cols, int table_rows),
                              (static_cast<T*>(out), static_cast<const T*>(table), ids, num_rows,
                               cols, table_rows))
