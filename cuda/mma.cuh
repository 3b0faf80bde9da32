// Tensor-core helpers (sm_80+): mma.sync m16n8k16 with f32 accumulation, ldmatrix, and
// packing of f32 pairs into 16-bit register pairs. Fragment layouts follow the PTX ISA:
// with g = lane / 4 and c = lane % 4,
//   A (16x16, row-major): regs {row g, cols 2c..2c+1}, {row g+8, same}, {row g, cols 2c+8..},
//                         {row g+8, cols 2c+8..}
//   B (16x8, k-major):    regs {k 2c..2c+1, col g}, {k 2c+8..2c+9, col g}
//   C (16x8, f32):        {row g, cols 2c, 2c+1}, {row g+8, cols 2c, 2c+1}
// HIP has no mma.sync: a ROCm port replaces this header (MFMA), nothing else.
#pragma once

#include "common.cuh"

// One 16x8x16 product d += a * b for 16-bit element type T.
template <typename T>
struct Mma;

template <>
struct Mma<bf16> {
    static __device__ __forceinline__ void run(float* d, const unsigned* a, unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&v);
    }
};

template <>
struct Mma<f16> {
    static __device__ __forceinline__ void run(float* d, const unsigned* a, unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&v);
    }
};

// Loads the B fragment of a 16x8 tile whose rows are k (16 rows of 8 contiguous elements at
// `row_ptr` for this lane's row `lane % 16`), transposing as it goes.
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned& b0, unsigned& b1, const void* row_ptr) {
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row_ptr));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(b0), "=r"(b1)
                 : "r"(addr));
}
