// Top-k per row for decoding: one block per row. Each thread keeps its own best K (a sorted list in registers,
// K a power of two >= k), then k rounds of a block-wide argmax pick the row's best, each round's winner popping
// its head. k is small (beam search takes 2 x beam), rows are long (a vocabulary, or beams x vocabulary).

#include <cfloat>
#include <climits>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

constexpr int kThreads = 256;

struct Entry {
  float value;
  int index;
};

// Larger value first; equal values by smaller index; the empty entry (-inf, INT_MAX) loses to every number.
__device__ __forceinline__ bool better(const Entry& a, const Entry& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ Entry best_of(Entry a, Entry b) { return better(b, a) ? b : a; }

template <int K>
__global__ void topk_kernel(const float* __restrict__ x, int64_t n, int k, float* __restrict__ values,
                            int* __restrict__ indices) {
  const float* row = x + blockIdx.x * n;
  Entry list[K];
#pragma unroll
  for (int j = 0; j < K; ++j) list[j] = {-FLT_MAX * 2.0f, INT_MAX};  // -inf, empty
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const Entry e{row[i], static_cast<int>(i)};
    if (e.value != e.value || !better(e, list[K - 1])) continue;  // NaN never enters
    list[K - 1] = e;
#pragma unroll
    for (int j = K - 1; j > 0; --j)
      if (better(list[j], list[j - 1])) {
        const Entry t = list[j];
        list[j] = list[j - 1];
        list[j - 1] = t;
      }
  }

  __shared__ Entry warp_best[kThreads / 32];
  __shared__ Entry winner;
  for (int round = 0; round < k; ++round) {
    Entry b = list[0];
    for (int offset = 16; offset > 0; offset >>= 1)
      b = best_of(b,
                  Entry{__shfl_xor_sync(0xffffffffu, b.value, offset), __shfl_xor_sync(0xffffffffu, b.index, offset)});
    if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = b;
    __syncthreads();
    if (threadIdx.x == 0) {
      Entry w = warp_best[0];
      for (int i = 1; i < static_cast<int>(blockDim.x / 32); ++i) w = best_of(w, warp_best[i]);
      winner = w;
      const bool empty = w.index == INT_MAX;
      values[blockIdx.x * k + round] = empty ? NAN : w.value;
      indices[blockIdx.x * k + round] = empty ? -1 : w.index;
    }
    __syncthreads();
    // Indices are unique, so exactly one thread owns the winner: it pops its head.
    if (list[0].index == winner.index && winner.index != INT_MAX) {
#pragma unroll
      for (int j = 0; j + 1 < K; ++j) list[j] = list[j + 1];
      list[K - 1] = {-FLT_MAX * 2.0f, INT_MAX};
    }
    __syncthreads();
  }
}

__global__ void add_row_values_kernel(float* __restrict__ x, const float* __restrict__ row_values, int64_t n) {
  const float add = row_values[blockIdx.y];
  float* row = x + blockIdx.y * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    row[i] += add;
}

__global__ void fill_column_kernel(float* __restrict__ x, int64_t rows, int64_t n, int64_t column, float value) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x)
    x[r * n + column] = value;
}

template <int K>
void launch_topk(const Tensor& x, int k, Tensor& values, Tensor& indices) {
  topk_kernel<K><<<static_cast<unsigned>(x.dim(0)), kThreads, 0, rt::stream()>>>(
      x.data<float>(), x.dim(1), k, values.data<float>(), indices.data<int32_t>());
  ELEPHANT_CHECK_LAUNCH();
}

}  // namespace

void topk(const Tensor& x, int k, Tensor& values, Tensor& indices) {
  if (k <= 1) return launch_topk<1>(x, k, values, indices);
  if (k <= 2) return launch_topk<2>(x, k, values, indices);
  if (k <= 4) return launch_topk<4>(x, k, values, indices);
  if (k <= 8) return launch_topk<8>(x, k, values, indices);
  if (k <= 16) return launch_topk<16>(x, k, values, indices);
  if (k <= 32) return launch_topk<32>(x, k, values, indices);
  return launch_topk<64>(x, k, values, indices);
}

void add_row_values(Tensor& x, const Tensor& row_values) {
  const dim3 grid(std::min<unsigned>(rt::blocks_for(x.dim(1), kThreads), 64), static_cast<unsigned>(x.dim(0)));
  add_row_values_kernel<<<grid, kThreads, 0, rt::stream()>>>(x.data<float>(), row_values.data<float>(), x.dim(1));
  ELEPHANT_CHECK_LAUNCH();
}

void fill_column(Tensor& x, int64_t column, float value) {
  fill_column_kernel<<<std::min<unsigned>(rt::blocks_for(x.dim(0), kThreads), 64), kThreads, 0, rt::stream()>>>(
      x.data<float>(), x.dim(0), x.dim(1), column, value);
  ELEPHANT_CHECK_LAUNCH();
}

}  // namespace elephant::ops::cuda
