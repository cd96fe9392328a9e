#pragma once

// What the softmax kernels (softmax_cuda.cu) share with beam search's fused candidates (topk_cuda.cu): a row's
// (max, sum of exp(x - max)) in the same order, so that both give a row the same log-probs bit for bit. The fused
// candidates spread a row's block over several: each of its warps computes, in a block of its own, what that warp of
// the row's block computes (thread_stats, warp_stats), and warps_stats adds them as the row's block does.

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "core/cuda/runtime.cuh"
#include "core/tensor.h"
#include "elephant/error.h"

namespace elephant::ops::cuda {
namespace softmax_detail {

namespace rt = ::elephant::cuda;

// The max starts at -FLT_MAX, not -inf, so that a row of -inf adds exp(-inf) = 0 instead of exp(-inf - -inf) = NaN.
struct Stats {
  float max = -FLT_MAX;
  float sum = 0.0f;
};

__device__ __forceinline__ Stats merge(Stats a, Stats b) {
  const float max = fmaxf(a.max, b.max);
  return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
}

// A warp's statistics by a butterfly; lane 0's result is the one the block keeps.
__device__ __forceinline__ Stats warp_stats(Stats s) {
  for (int offset = 16; offset > 0; offset /= 2)
    s = merge(s, {__shfl_xor_sync(0xffffffffu, s.max, offset), __shfl_xor_sync(0xffffffffu, s.sum, offset)});
  return s;
}

// The block's statistics from its warps' (lane 0's), `warps` of them, added by warp 0 as block_stats does.
__device__ __forceinline__ Stats warps_stats(const Stats* warp_results, int warps) {
  const int lane = threadIdx.x % 32;
  return warp_stats(lane < warps ? warp_results[lane] : Stats{});
}

__device__ inline Stats block_stats(Stats s) {
  return rt::block_reduce(s, Stats{}, [](Stats v) { return warp_stats(v); });
}

// Thread `thread` of a row's block of `threads`: its packs thread, thread + threads, ... in order, the maximum first,
// then the sum of exp(v - max), as the CPU computes them. Two passes (the second reads the packs again, from L1): in
// one online pass every element waited on the last one's exp, and 16 rows of 128,000 took 21 us on an H100.
template <typename T, int N>
__device__ inline Stats thread_stats(const rt::Pack<T, N>* row, int64_t packs, int64_t thread, int64_t threads) {
  Stats s;
#pragma unroll 4
  for (int64_t i = thread; i < packs; i += threads) {
    const rt::Pack<T, N> v = row[i];
#pragma unroll
    for (int e = 0; e < N; ++e) s.max = fmaxf(s.max, rt::to_float(v.v[e]));
  }
#pragma unroll 4
  for (int64_t i = thread; i < packs; i += threads) {
    const rt::Pack<T, N> v = row[i];
#pragma unroll
    for (int e = 0; e < N; ++e) s.sum += expf(rt::to_float(v.v[e]) - s.max);
  }
  return s;
}

template <typename T, int N>
__device__ inline Stats row_stats(const rt::Pack<T, N>* row, int64_t packs) {
  return block_stats(thread_stats<T, N>(row, packs, threadIdx.x, blockDim.x));
}

// One block per row; threads by the row's packs (16-byte packs when the row allows, else elements).
struct Launch {
  unsigned rows;
  int threads;
};

inline Launch launch_for(const Tensor& x, int64_t packs) {
  const int64_t d = x.dim(-1);
  const int64_t rows = x.numel() / d;
  if (rows > 0x7fffffff) throw Error("softmax: too many rows for one launch");
  return {static_cast<unsigned>(rows), static_cast<int>(std::clamp<int64_t>((packs + 31) / 32 * 32, 32, 1024))};
}

}  // namespace softmax_detail
}  // namespace elephant::ops::cuda
