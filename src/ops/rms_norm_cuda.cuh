#pragma once

// What the RMS norm kernel (rms_norm_cuda.cu) shares with the small-m GEMM that normalizes its rows itself
// (small_m_gemm_cuda.cu, ops::rms_norm_linear): the rounding of every element and the order of every float32
// addition, so that the two give the same normalized rows bit for bit.

#include <cstdint>

#include "core/cuda/runtime.cuh"

namespace elephant::ops::cuda {

// Threads of the norm kernel's block for rows of `packs` packs: one pack per thread up to 1024 packs.
__host__ __device__ inline int rms_norm_threads(int64_t packs) {
  const int64_t threads = (packs + 31) / 32 * 32;
  return static_cast<int>(threads < 32 ? 32 : threads > 1024 ? 1024 : threads);
}

// A warp's values summed by a butterfly: every lane ends with the same sum.
__device__ __forceinline__ float rms_norm_warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float add_square(float x, float sum) { return fmaf(x, x, sum); }

// 1 / sqrt(mean(x^2) + eps) for a row of d elements.
__device__ __forceinline__ float rms_scale(float sum_of_squares, int64_t d, float eps) {
  return 1.0f / sqrtf(sum_of_squares / static_cast<float>(d) + eps);
}

// g * x / rms: transformers casts the normalized hidden state to the weight's dtype before the multiply.
template <typename T>
__device__ __forceinline__ T rms_normalized(float x, float g, float scale) {
  return ::elephant::cuda::from_float<T>(g * ::elephant::cuda::to_float(::elephant::cuda::from_float<T>(x * scale)));
}

}  // namespace elephant::ops::cuda
