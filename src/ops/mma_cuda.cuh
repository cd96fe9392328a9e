#pragma once

// The tensor-core instruction the half-precision GEMM kernels share (grouped_gemm_cuda.cu, small_m_gemm_cuda.cu).

#include <cstdint>
#include <type_traits>

#include "core/cuda/runtime.cuh"

namespace elephant::ops::cuda {

// c += a · b for one m16n8k16 tile (mma.sync, float32 accumulation), T = __half or __nv_bfloat16. Fragments as
// PTX lays them out for lane (g, t) = (lane / 4, lane % 4): a[0] rows g, k 2t..2t+1; a[1] row g + 8, the same k;
// a[2], a[3] the same rows at k 2t+8..2t+9. b0: column g, k 2t..2t+1; b1: k 2t+8..2t+9. c[0], c[1]: row g,
// columns 2t, 2t+1; c[2], c[3]: row g + 8.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

}  // namespace elephant::ops::cuda
