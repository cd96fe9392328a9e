#pragma once

// Random device tensors for the CUDA benchmarks.

#include <random>

#include "core/cuda/runtime.cuh"
#include "core/tensor.h"

namespace elephant {

// Uniform in [-scale, scale) from a hash of the index: gigabytes of weights in milliseconds, never zeros.
template <typename T>
__global__ void fill_random(T* out, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + i;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    out[i] = cuda::from_float<T>(scale * (static_cast<float>(x >> 40) / 8388608.0f - 1.0f));
  }
}

inline Tensor random_device(const Shape& shape, float scale, DType dtype, std::mt19937& rng) {
  Tensor t = Tensor::empty(shape, dtype, Device::CUDA);
  const uint64_t seed = rng();
  cuda::dispatch_floating(dtype, "fill_random", [&](auto tag) {
    using T = decltype(tag);
    fill_random<<<1024, 256, 0, cuda::stream()>>>(t.data<T>(), t.numel(), seed, scale);
  });
  ELEPHANT_CHECK_LAUNCH();
  return t;
}

}  // namespace elephant
