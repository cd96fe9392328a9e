// Elementwise ops: grid-stride loops over 16-byte packs when the pointers allow it, else one element a step;
// the elements past the last whole pack are done one by one. Math in float32, one rounding to the dtype.

#include <algorithm>
#include <cstdint>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;
using rt::from_float;
using rt::Pack;
using rt::to_float;

constexpr int kThreads = 256;

template <typename T, int N>
__global__ void add_kernel(T* __restrict__ x, const T* __restrict__ y, int64_t packs, int64_t n) {
  rt::await_previous_kernel();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  auto* xp = reinterpret_cast<Pack<T, N>*>(x);
  const auto* yp = reinterpret_cast<const Pack<T, N>*>(y);
  for (int64_t i = first; i < packs; i += stride) {
    Pack<T, N> a = xp[i];
    const Pack<T, N> b = yp[i];
#pragma unroll
    for (int e = 0; e < N; ++e) a.v[e] = from_float<T>(to_float(a.v[e]) + to_float(b.v[e]));
    xp[i] = a;
  }
  for (int64_t i = packs * N + first; i < n; i += stride) x[i] = from_float<T>(to_float(x[i]) + to_float(y[i]));
}

template <typename T, int N>
__global__ void scale_kernel(T* __restrict__ x, float factor, int64_t packs, int64_t n) {
  rt::await_previous_kernel();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  auto* xp = reinterpret_cast<Pack<T, N>*>(x);
  for (int64_t i = first; i < packs; i += stride) {
    Pack<T, N> a = xp[i];
#pragma unroll
    for (int e = 0; e < N; ++e) a.v[e] = from_float<T>(to_float(a.v[e]) * factor);
    xp[i] = a;
  }
  for (int64_t i = packs * N + first; i < n; i += stride) x[i] = from_float<T>(to_float(x[i]) * factor);
}

template <typename In, typename Out, int N>
__global__ void convert_kernel(const In* __restrict__ x, Out* __restrict__ y, int64_t packs, int64_t n) {
  rt::await_previous_kernel();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const auto* xp = reinterpret_cast<const Pack<In, N>*>(x);
  auto* yp = reinterpret_cast<Pack<Out, N>*>(y);
  for (int64_t i = first; i < packs; i += stride) {
    const Pack<In, N> a = xp[i];
    Pack<Out, N> b;
#pragma unroll
    for (int e = 0; e < N; ++e) b.v[e] = from_float<Out>(to_float(a.v[e]));
    yp[i] = b;
  }
  for (int64_t i = packs * N + first; i < n; i += stride) y[i] = from_float<Out>(to_float(x[i]));
}

__global__ void add_scalar_kernel(int32_t* __restrict__ x, int32_t value, int64_t n) {
  rt::await_previous_kernel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] += value;
}

}  // namespace

void add_scalar(Tensor& x, int32_t value) {
  rt::launch(add_scalar_kernel, rt::grid_stride_blocks(x.numel(), kThreads), kThreads, 0, x.data<int32_t>(), value,
             x.numel());
}

void add_in_place(Tensor& hidden, const Tensor& y) {
  rt::dispatch_floating(hidden.dtype(), "add_in_place", [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = 16 / sizeof(T);
    T* x = hidden.data<T>();
    const T* b = y.data<T>();
    const int64_t n = hidden.numel();
    if (rt::is_aligned(x) && rt::is_aligned(b)) {
      rt::launch(add_kernel<T, N>, rt::grid_stride_blocks(n / N + 1, kThreads), kThreads, 0, x, b, n / N, n);
    } else {
      rt::launch(add_kernel<T, 1>, rt::grid_stride_blocks(n, kThreads), kThreads, 0, x, b, n, n);
    }
  });
}

void scale_in_place(Tensor& x, float factor) {
  rt::dispatch_floating(x.dtype(), "scale_in_place", [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = 16 / sizeof(T);
    T* p = x.data<T>();
    const int64_t n = x.numel();
    if (rt::is_aligned(p)) {
      rt::launch(scale_kernel<T, N>, rt::grid_stride_blocks(n / N + 1, kThreads), kThreads, 0, p, factor, n / N, n);
    } else {
      rt::launch(scale_kernel<T, 1>, rt::grid_stride_blocks(n, kThreads), kThreads, 0, p, factor, n, n);
    }
  });
}

void convert(const Tensor& x, Tensor& y) {
  if (x.dtype() == y.dtype()) {
    ELEPHANT_CUDA_CHECK(cudaMemcpyAsync(y.raw(), x.raw(), x.nbytes(), cudaMemcpyDeviceToDevice, rt::stream()));
    return;
  }
  rt::dispatch_floating(x.dtype(), "convert", [&](auto in_tag) {
    using In = decltype(in_tag);
    rt::dispatch_floating(y.dtype(), "convert", [&](auto out_tag) {
      using Out = decltype(out_tag);
      // Packs of at most 16 bytes on either side.
      constexpr int N = 16 / (sizeof(In) > sizeof(Out) ? sizeof(In) : sizeof(Out));
      const In* src = x.data<In>();
      Out* dst = y.data<Out>();
      const int64_t n = x.numel();
      if (rt::is_aligned(src, N * sizeof(In)) && rt::is_aligned(dst, N * sizeof(Out))) {
        rt::launch(convert_kernel<In, Out, N>, rt::grid_stride_blocks(n / N + 1, kThreads), kThreads, 0, src, dst,
                   n / N, n);
      } else {
        rt::launch(convert_kernel<In, Out, 1>, rt::grid_stride_blocks(n, kThreads), kThreads, 0, src, dst, n, n);
      }
    });
  });
}

}  // namespace elephant::ops::cuda
