#pragma once

// What CUDA sources share: error checks that throw elephant::Error, the calling thread's stream and cuBLAS
// handle, dtype tags for the half types, and float conversions usable in kernels. Included by .cu files only.
// Op backends live in elephant::ops::cuda, where `cuda::` names that namespace: they alias this one as
// `namespace rt = ::elephant::cuda;`.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/dtype.h"
#include "elephant/error.h"

namespace elephant {

template <>
constexpr DType dtype_of<__half>() {
  return DType::F16;
}
template <>
constexpr DType dtype_of<__nv_bfloat16>() {
  return DType::BF16;
}

namespace cuda {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* expression, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* expression, const char* file, int line);

#define ELEPHANT_CUDA_CHECK(expression)                                                     \
  do {                                                                                      \
    const cudaError_t elephant_error_ = (expression);                                       \
    if (elephant_error_ != cudaSuccess)                                                     \
      ::elephant::cuda::throw_cuda_error(elephant_error_, #expression, __FILE__, __LINE__); \
  } while (0)

#define ELEPHANT_CUBLAS_CHECK(expression)                                                      \
  do {                                                                                         \
    const cublasStatus_t elephant_status_ = (expression);                                      \
    if (elephant_status_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::elephant::cuda::throw_cublas_error(elephant_status_, #expression, __FILE__, __LINE__); \
  } while (0)

// After a <<<>>> launch: a bad launch configuration shows here; faults inside the kernel show at the next
// synchronizing call (and under compute-sanitizer at the faulting access).
#define ELEPHANT_CHECK_LAUNCH() ELEPHANT_CUDA_CHECK(cudaGetLastError())

cudaStream_t stream();                      // the calling thread's stream (non-blocking, created on first use)
cublasHandle_t cublas();                    // the calling thread's cuBLAS handle, bound to stream()
const cudaDeviceProp& device_properties();  // of the current device

// Programmatic dependent launch (Hopper). A kernel started through launch() below may be scheduled while the kernel
// before it on the stream is still running, so that its launch latency, and its reads of data no kernel writes
// (weights), overlap that kernel's tail: a decode step is a chain of ~300 short kernels. Every kernel launched this
// way calls await_previous_kernel() before it reads memory an earlier kernel wrote or writes memory an earlier
// kernel reads, in every block and before any early return (a block that exits without it could let the grid
// complete before its predecessor). Kernels launched with <<<>>> (and library kernels) keep full ordering.
// On when the device and the compiled kernels support it (sm_90 code on a compute capability 9+ device), unless the
// environment sets ELEPHANT_PDL=0 (for A/B measurements).
bool programmatic_launch_enabled();

// Waits until every kernel before this one on the stream has completed and its writes are visible, then lets the
// next kernel launched through launch() be scheduled (its blocks run only up to their own await).
__device__ __forceinline__ void await_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The reduction of every thread's value over the block, returned to every thread (blockDim.x a multiple of 32): each
// warp reduces its lanes with warp_reduce, then warp 0 reduces the warps' results, `identity` in its lanes past the
// last warp. A fixed order: a row reduced this way gives the same bits in every kernel that reduces it so.
template <typename V, typename WarpReduce>
__device__ V block_reduce(V value, V identity, const WarpReduce& warp_reduce) {
  __shared__ V partial[32];
  __shared__ V total;
  value = warp_reduce(value);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = warp_reduce(lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : identity);
    if (lane == 0) total = value;
  }
  __syncthreads();
  return total;
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream();
  config.attrs = &attribute;
  config.numAttrs = programmatic_launch_enabled() ? 1 : 0;
  ELEPHANT_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...));
}

// N elements of T loaded or stored as one access (16 bytes for the vectorized paths).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline bool is_aligned(const void* pointer, size_t bytes = 16) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

inline unsigned blocks_for(int64_t work, int per_block) {
  return static_cast<unsigned>((work + per_block - 1) / per_block);
}

// Blocks for a grid-stride loop over `work` items: enough to fill every multiprocessor, no more.
inline unsigned grid_stride_blocks(int64_t work, int threads) {
  const int64_t cap = static_cast<int64_t>(device_properties().multiProcessorCount) * 2048 / threads;
  const int64_t wanted = (work + threads - 1) / threads;
  return static_cast<unsigned>(wanted < 1 ? 1 : wanted < cap ? wanted : cap);
}

// Calls f with a value of the element type that `dtype` names: float, __half or __nv_bfloat16.
template <typename F>
void dispatch_floating(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::F32:
      f(float{});
      return;
    case DType::F16:
      f(__half{});
      return;
    case DType::BF16:
      f(__nv_bfloat16{});
      return;
    default:
      throw Error(std::string(op) + ": unsupported dtype " + dtype_name(dtype) + " on CUDA (F32, F16 or BF16)");
  }
}

template <typename T>
__device__ __forceinline__ float to_float(T value) {
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(value);
  } else {
    return __bfloat162float(value);
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float value) {
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(value);
  } else {
    return __float2bfloat16_rn(value);
  }
}

// h + scale * v in float32, rounded once to T: a product row (v, already in T) added, scaled, to a residual row.
template <typename T>
__device__ __forceinline__ T add_scaled(T h, float scale, T v) {
  return from_float<T>(to_float(h) + scale * to_float(v));
}

}  // namespace cuda
}  // namespace elephant
