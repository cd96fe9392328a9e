// Softmax and log-softmax over the last dimension: one block per row. Pass 1 keeps a running (max, sum of
// exp(x - max)) per thread (online softmax, one exp per element), merged across the block; pass 2 re-reads
// the row and writes. Rows are read in 16-byte packs when aligned, so 256K-column rows take 2 reads + 1 write.

#include <cstdint>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"
#include "ops/softmax_cuda.cuh"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;
using rt::from_float;
using rt::Pack;
using rt::to_float;
using softmax_detail::Launch;
using softmax_detail::launch_for;
using softmax_detail::row_stats;
using softmax_detail::Stats;

// N divides d (N == 1 when rows are not 16-byte aligned).
template <typename T, int N>
__global__ void softmax_kernel(T* __restrict__ x, int64_t d) {
  rt::await_previous_kernel();
  using P = Pack<T, N>;
  const int64_t packs = d / N;
  P* row = reinterpret_cast<P*>(x + blockIdx.x * d);
  const Stats s = row_stats<T, N>(row, packs);
  const float inv = 1.0f / s.sum;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    P v = row[i];
#pragma unroll
    for (int e = 0; e < N; ++e) v.v[e] = from_float<T>(expf(to_float(v.v[e]) - s.max) * inv);
    row[i] = v;
  }
}

template <typename T, int N>
__global__ void log_softmax_kernel(const T* __restrict__ x, float* __restrict__ y, int64_t d) {
  rt::await_previous_kernel();
  using P = Pack<T, N>;
  using F = Pack<float, N>;
  const int64_t packs = d / N;
  const P* row = reinterpret_cast<const P*>(x + blockIdx.x * d);
  F* out = reinterpret_cast<F*>(y + blockIdx.x * d);
  const Stats s = row_stats<T, N>(row, packs);
  const float log_sum = logf(s.sum);
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    const P v = row[i];
    F o;
#pragma unroll
    for (int e = 0; e < N; ++e) o.v[e] = to_float(v.v[e]) - s.max - log_sum;
    out[i] = o;
  }
}

}  // namespace

void softmax(Tensor& x) {
  rt::dispatch_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = 16 / sizeof(T);
    const int64_t d = x.dim(-1);
    T* p = x.data<T>();
    const bool vector = d % N == 0 && rt::is_aligned(p);
    const Launch l = launch_for(x, vector ? d / N : d);
    if (vector) {
      rt::launch(softmax_kernel<T, N>, l.rows, l.threads, 0, p, d);
    } else {
      rt::launch(softmax_kernel<T, 1>, l.rows, l.threads, 0, p, d);
    }
  });
}

void log_softmax(const Tensor& x, Tensor& y) {
  rt::dispatch_floating(x.dtype(), "log_softmax", [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = 16 / sizeof(T);
    const int64_t d = x.dim(-1);
    const T* in = x.data<T>();
    float* out = y.data<float>();
    const bool vector = d % N == 0 && rt::is_aligned(in) && rt::is_aligned(out, N * sizeof(float));
    const Launch l = launch_for(x, vector ? d / N : d);
    if (vector) {
      rt::launch(log_softmax_kernel<T, N>, l.rows, l.threads, 0, in, out, d);
    } else {
      rt::launch(log_softmax_kernel<T, 1>, l.rows, l.threads, 0, in, out, d);
    }
  });
}

}  // namespace elephant::ops::cuda
