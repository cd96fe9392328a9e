#pragma once

// What the CUDA benchmarks share: random device tensors, and timing by CUDA graph replay.

#include <benchmark/benchmark.h>

#include <cstdio>
#include <functional>
#include <random>

#include "core/cuda/runtime.cuh"
#include "core/tensor.h"
#include "elephant/device.h"

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

// Replays `copies` calls of `call` (given the copy index) from one CUDA graph, as decode steps run; sets each
// iteration's time per call (CUDA events around a replay). One warm-up pass runs uncaptured, three replays untimed.
inline void time_graph_replays(benchmark::State& state, int copies, const std::function<void(int)>& call) {
  cudaStream_t stream = cuda::stream();
  for (int c = 0; c < copies; ++c) call(c);
  cudaGraph_t graph;
  ELEPHANT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int c = 0; c < copies; ++c) call(c);
  ELEPHANT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  ELEPHANT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start, stop;
  ELEPHANT_CUDA_CHECK(cudaEventCreate(&start));
  ELEPHANT_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) ELEPHANT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  for (auto _ : state) {
    ELEPHANT_CUDA_CHECK(cudaEventRecord(start, stream));
    ELEPHANT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    ELEPHANT_CUDA_CHECK(cudaEventRecord(stop, stream));
    ELEPHANT_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    ELEPHANT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1000.0 / copies);
  }
  ELEPHANT_CUDA_CHECK(cudaGraphExecDestroy(exec));
  ELEPHANT_CUDA_CHECK(cudaGraphDestroy(graph));
  ELEPHANT_CUDA_CHECK(cudaEventDestroy(start));
  ELEPHANT_CUDA_CHECK(cudaEventDestroy(stop));
}

// A CUDA benchmark program's main(): without a GPU it says so and fails; otherwise it registers the benchmarks and
// runs the ones the flags select.
inline int run_cuda_benchmarks(int argc, char** argv, const char* program, void (*register_benchmarks)()) {
  benchmark::Initialize(&argc, argv);
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "%s: no CUDA device\n", program);
    return 1;
  }
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace elephant
