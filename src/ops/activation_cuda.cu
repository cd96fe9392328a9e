// Activations in place: the formulas of activation_cpu.cc in float32 (activation_cuda.cuh's apply_activation: erff,
// tanhf, expf, no fast-math intrinsics), grid-stride over 16-byte packs when aligned.

#include <algorithm>
#include <cstdint>

#include "core/cuda/runtime.cuh"
#include "ops/activation_cuda.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;
using rt::from_float;
using rt::Pack;
using rt::to_float;

constexpr int kThreads = 256;

// One activation, fixed at compile time so that apply_activation's switch folds away.
template <Activation A>
struct Activate {
  __device__ float operator()(float v) const { return apply_activation(static_cast<int>(A), v); }
};

template <typename T, int N, typename F>
__global__ void activate_kernel(T* __restrict__ x, int64_t packs, int64_t n, F f) {
  rt::await_previous_kernel();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  auto* xp = reinterpret_cast<Pack<T, N>*>(x);
  for (int64_t i = first; i < packs; i += stride) {
    Pack<T, N> a = xp[i];
#pragma unroll
    for (int e = 0; e < N; ++e) a.v[e] = from_float<T>(f(to_float(a.v[e])));
    xp[i] = a;
  }
  for (int64_t i = packs * N + first; i < n; i += stride) x[i] = from_float<T>(f(to_float(x[i])));
}

template <typename T, typename F>
void launch(T* x, int64_t n, F f) {
  constexpr int N = 16 / sizeof(T);
  const bool vector = rt::is_aligned(x);
  const int64_t packs = vector ? n / N : n;
  const unsigned grid = rt::grid_stride_blocks(packs + 1, kThreads);
  if (vector) {
    rt::launch(activate_kernel<T, N, F>, grid, kThreads, 0, x, packs, n, f);
  } else {
    rt::launch(activate_kernel<T, 1, F>, grid, kThreads, 0, x, packs, n, f);
  }
}

}  // namespace

void activate(Activation activation, Tensor& x) {
  rt::dispatch_floating(x.dtype(), "activate", [&](auto tag) {
    using T = decltype(tag);
    T* p = x.data<T>();
    const int64_t n = x.numel();
    switch (activation) {
      case Activation::ReLU:
        return launch(p, n, Activate<Activation::ReLU>{});
      case Activation::Gelu:
        return launch(p, n, Activate<Activation::Gelu>{});
      case Activation::GeluNew:
        return launch(p, n, Activate<Activation::GeluNew>{});
      case Activation::Silu:
        return launch(p, n, Activate<Activation::Silu>{});
    }
    throw Error("activate: unknown activation");
  });
}

}  // namespace elephant::ops::cuda
