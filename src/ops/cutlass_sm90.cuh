#pragma once

// What the CUTLASS kernels built for sm_90a share (ops/grouped_gemm_sm90.cu, and the candidates bench_cuda_moe
// measures next to them): the device's SM count for the persistent tile scheduler, and one checked launch.

#include <cutlass/cutlass.h>
#include <cutlass/kernel_hardware_info.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/cuda/runtime.cuh"
#include "core/tensor.h"
#include "elephant/error.h"

namespace elephant::ops::cuda::sm90 {

// Byte offsets of consecutive arrays of `count` elements each, of the given element sizes, every array 16-byte
// aligned (CUTLASS's per-group arguments in one allocation); the last entry is the total.
inline std::vector<size_t> carve_arrays(size_t count, std::initializer_list<size_t> element_bytes) {
  const auto aligned = [](size_t offset) { return (offset + 15) / 16 * 16; };
  std::vector<size_t> offsets{0};
  for (const size_t bytes : element_bytes) offsets.push_back(aligned(offsets.back() + bytes * count));
  return offsets;
}

inline cutlass::KernelHardwareInfo hardware_info() {
  cutlass::KernelHardwareInfo hardware;
  ELEPHANT_CUDA_CHECK(cudaGetDevice(&hardware.device_id));
  hardware.sm_count = ::elephant::cuda::device_properties().multiProcessorCount;
  return hardware;
}

// Checks, initializes (its workspace from the stream-ordered pool) and enqueues a CUTLASS GEMM on the calling
// thread's stream; `what` names it in the error a refusal throws.
template <typename Gemm>
void run_gemm(const typename Gemm::Arguments& arguments, const char* what) {
  namespace rt = ::elephant::cuda;
  Gemm gemm;
  const auto check = [what](cutlass::Status status, const char* step) {
    if (status != cutlass::Status::kSuccess)
      throw Error(std::string(what) + ": CUTLASS " + step + ": " + cutlassGetStatusString(status));
  };
  check(gemm.can_implement(arguments), "can_implement");
  Tensor workspace = Tensor::empty({static_cast<int64_t>(std::max<size_t>(Gemm::get_workspace_size(arguments), 1))},
                                   DType::U8, Device::CUDA);
  check(gemm.initialize(arguments, workspace.raw(), rt::stream()), "initialize");
  check(gemm.run(rt::stream()), "run");
  ELEPHANT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace elephant::ops::cuda::sm90
