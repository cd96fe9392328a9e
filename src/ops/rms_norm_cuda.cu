// T5 layer norm: one block per row. Pass 1 sums squares in float32 (16-byte packs when aligned), a block
// reduction gives the scale; pass 2 re-reads the row (from L1/L2) and writes w * round_T(x * scale).

#include <cstdint>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"
#include "ops/rms_norm_cuda.cuh"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;
using rt::from_float;
using rt::Pack;
using rt::to_float;

// N divides d (N == 1 when the rows are not 16-byte aligned).
template <typename T, int N>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y, int64_t d,
                                float eps) {
  rt::await_previous_kernel();
  using P = Pack<T, N>;
  const int64_t packs = d / N;
  const P* xr = reinterpret_cast<const P*>(x + blockIdx.x * d);
  const P* w = reinterpret_cast<const P*>(weight);
  P* yr = reinterpret_cast<P*>(y + blockIdx.x * d);
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    const P v = xr[i];
#pragma unroll
    for (int e = 0; e < N; ++e) sum = add_square(to_float(v.v[e]), sum);
  }
  const float scale = rms_scale(rt::block_reduce(sum, 0.0f, [](float v) { return rms_norm_warp_sum(v); }), d, eps);
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    const P v = xr[i], g = w[i];
    P out;
#pragma unroll
    for (int e = 0; e < N; ++e) out.v[e] = rms_normalized<T>(to_float(v.v[e]), to_float(g.v[e]), scale);
    yr[i] = out;
  }
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  rt::dispatch_floating(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = 16 / sizeof(T);
    const int64_t d = x.dim(-1);
    const int64_t rows = x.numel() / d;
    if (rows > 0x7fffffff) throw Error("rms_norm: too many rows for one launch");
    const T* in = x.data<T>();
    const T* w = weight.data<T>();
    T* out = y.data<T>();
    const bool vector = d % N == 0 && rt::is_aligned(in) && rt::is_aligned(w) && rt::is_aligned(out);
    const int64_t packs = vector ? d / N : d;
    const int threads = rms_norm_threads(packs);
    const auto grid = static_cast<unsigned>(rows);
    if (vector) {
      rt::launch(rms_norm_kernel<T, N>, grid, threads, 0, in, w, out, d, eps);
    } else {
      rt::launch(rms_norm_kernel<T, 1>, grid, threads, 0, in, w, out, d, eps);
    }
  });
}

}  // namespace elephant::ops::cuda
