#include <cuda_profiler_api.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/cuda/runtime.cuh"
#include "core/device_memory.h"

namespace elephant::cuda {

void throw_cuda_error(cudaError_t error, const char* expression, const char* file, int line) {
  throw Error(std::string("CUDA error ") + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ") in " +
              expression + " at " + file + ":" + std::to_string(line));
}

void throw_cublas_error(cublasStatus_t status, const char* expression, const char* file, int line) {
  throw Error(std::string("cuBLAS error ") + cublasGetStatusName(status) + " in " + expression + " at " + file + ":" +
              std::to_string(line));
}

namespace {

struct ThreadContext {
  static constexpr size_t kCublasWorkspaceBytes = 32u << 20;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  void* cublas_workspace = nullptr;

  ThreadContext() {
    // The pool keeps freed memory for reuse instead of returning it to the driver, so steady-state
    // allocations (every step of a decode) never call cudaMalloc.
    static const bool pool_configured = [] {
      int device = 0;
      ELEPHANT_CUDA_CHECK(cudaGetDevice(&device));
      cudaMemPool_t pool;
      ELEPHANT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
      uint64_t keep_everything = UINT64_MAX;
      ELEPHANT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything));
      return true;
    }();
    (void)pool_configured;
    ELEPHANT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ELEPHANT_CUBLAS_CHECK(cublasCreate(&cublas));
    ELEPHANT_CUBLAS_CHECK(cublasSetStream(cublas, stream));
    // A workspace of our own, so that cuBLAS allocates nothing while a decode step is captured in a graph.
    ELEPHANT_CUDA_CHECK(cudaMalloc(&cublas_workspace, kCublasWorkspaceBytes));
    ELEPHANT_CUBLAS_CHECK(cublasSetWorkspace(cublas, cublas_workspace, kCublasWorkspaceBytes));
  }
  ~ThreadContext() {
    if (cublas) cublasDestroy(cublas);
    if (cublas_workspace) cudaFree(cublas_workspace);
    if (stream) cudaStreamDestroy(stream);
  }
  ThreadContext(const ThreadContext&) = delete;
  ThreadContext& operator=(const ThreadContext&) = delete;
};

// Set when the thread's context is gone (thread exit): tensors freed after that (statics) are freed synchronously.
thread_local bool context_destroyed = false;
thread_local bool context_created = false;

struct ContextHolder {
  ThreadContext context;
  ~ContextHolder() { context_destroyed = true; }
};

ThreadContext& context() {
  thread_local ContextHolder holder;
  context_created = true;
  return holder.context;
}

}  // namespace

cudaStream_t stream() { return context().stream; }
cublasHandle_t cublas() { return context().cublas; }

const cudaDeviceProp& device_properties() {
  static const cudaDeviceProp properties = [] {
    int device = 0;
    ELEPHANT_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp p;
    ELEPHANT_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    return p;
  }();
  return properties;
}

namespace {
// Compiled with the same architectures as every kernel: its PTX version says whether they contain griddepcontrol.
__global__ void programmatic_launch_probe_kernel() {}
}  // namespace

bool programmatic_launch_enabled() {
  static const bool enabled = [] {
    const char* setting = std::getenv("ELEPHANT_PDL");
    if (setting != nullptr && std::string(setting) == "0") return false;
    cudaFuncAttributes attributes{};
    ELEPHANT_CUDA_CHECK(cudaFuncGetAttributes(&attributes, programmatic_launch_probe_kernel));
    return device_properties().major >= 9 && attributes.ptxVersion >= 90;
  }();
  return enabled;
}

void* allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* pointer = nullptr;
  ELEPHANT_CUDA_CHECK(cudaMallocAsync(&pointer, bytes, stream()));
  return pointer;
}

void free(void* pointer) {
  // Called from destructors: a failure here cannot be thrown, and the next checked call reports it.
  if (!pointer) return;
  // A thread without a live context (never used CUDA, or exiting) frees synchronously instead of creating one.
  if (context_destroyed || !context_created) {
    cudaFree(pointer);
    return;
  }
  cudaFreeAsync(pointer, stream());
}

void copy(void* destination, bool destination_on_device, const void* source, bool source_on_device, size_t bytes) {
  const cudaMemcpyKind kind = destination_on_device
                                  ? (source_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                  : cudaMemcpyDeviceToHost;
  ELEPHANT_CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, kind, stream()));
  if (!destination_on_device) ELEPHANT_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void fill_zero(void* destination, size_t bytes) {
  ELEPHANT_CUDA_CHECK(cudaMemsetAsync(destination, 0, bytes, stream()));
}

void synchronize() { ELEPHANT_CUDA_CHECK(cudaStreamSynchronize(stream())); }

void profiler(bool collect) { ELEPHANT_CUDA_CHECK(collect ? cudaProfilerStart() : cudaProfilerStop()); }

// For HostReadback: a copy to pinned host memory does not wait for the device, and an event after it lets the host
// wait for that copy alone.
void* allocate_pinned(size_t bytes) {
  void* pointer = nullptr;
  ELEPHANT_CUDA_CHECK(cudaMallocHost(&pointer, bytes));
  return pointer;
}

void free_pinned(void* pointer) {
  if (pointer) cudaFreeHost(pointer);  // from destructors: a failure shows at the next checked call
}

void* create_event() {
  cudaEvent_t event = nullptr;
  ELEPHANT_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  return event;
}

void destroy_event(void* event) {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void copy_to_host_async(void* destination, const void* source, size_t bytes, void* event) {
  if (bytes > 0) ELEPHANT_CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToHost, stream()));
  ELEPHANT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), stream()));
}

void wait_event(void* event) { ELEPHANT_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event))); }

namespace {
cudaMemPool_t default_pool() {
  int device = 0;
  ELEPHANT_CUDA_CHECK(cudaGetDevice(&device));
  cudaMemPool_t pool;
  ELEPHANT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  return pool;
}
}  // namespace

// The pool's tensors plus the memory CUDA graphs hold for the temporaries of the steps they replay (graphs
// allocate from their own pool). The peak adds the two peaks: an upper bound when they peaked apart.
DeviceMemoryUsage memory_usage() {
  int device = 0;
  ELEPHANT_CUDA_CHECK(cudaGetDevice(&device));
  uint64_t current = 0, peak = 0, graph_current = 0, graph_peak = 0;
  ELEPHANT_CUDA_CHECK(cudaMemPoolGetAttribute(default_pool(), cudaMemPoolAttrUsedMemCurrent, &current));
  ELEPHANT_CUDA_CHECK(cudaMemPoolGetAttribute(default_pool(), cudaMemPoolAttrUsedMemHigh, &peak));
  ELEPHANT_CUDA_CHECK(cudaDeviceGetGraphMemAttribute(device, cudaGraphMemAttrReservedMemCurrent, &graph_current));
  ELEPHANT_CUDA_CHECK(cudaDeviceGetGraphMemAttribute(device, cudaGraphMemAttrReservedMemHigh, &graph_peak));
  return {static_cast<size_t>(current + graph_current), static_cast<size_t>(peak + graph_peak)};
}

void reset_peak_memory() {
  int device = 0;
  ELEPHANT_CUDA_CHECK(cudaGetDevice(&device));
  uint64_t zero = 0;  // the only value the attributes accept: restart the high-water marks from the current use
  ELEPHANT_CUDA_CHECK(cudaMemPoolSetAttribute(default_pool(), cudaMemPoolAttrUsedMemHigh, &zero));
  ELEPHANT_CUDA_CHECK(cudaDeviceSetGraphMemAttribute(device, cudaGraphMemAttrReservedMemHigh, &zero));
}

}  // namespace elephant::cuda
