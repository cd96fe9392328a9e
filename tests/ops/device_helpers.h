#pragma once

// Helpers for tests that run an op on CUDA and compare it with the CPU backend (the reference). On a machine
// without a GPU, or a build without CUDA, such tests report SKIPPED (never passed).

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "elephant/device.h"
#include "ops/elementwise.h"

namespace elephant::testdev {

inline bool cuda_available() { return cuda_device_count() > 0; }

#define ELEPHANT_REQUIRE_CUDA()                                                                                      \
  do {                                                                                                               \
    if (!::elephant::testdev::cuda_available()) GTEST_SKIP() << "GPU test: no CUDA device in this build or machine"; \
  } while (0)

// Uniform in [lo, hi), never exactly zero (a zero hides unwritten outputs and wrong indexing).
inline Tensor random_cpu(const Shape& shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(shape);
  std::uniform_real_distribution<float> dist(lo, hi);
  float* data = t.numel() ? t.data<float>() : nullptr;
  for (int64_t i = 0; i < t.numel(); ++i) {
    float v = 0.0f;
    while (v == 0.0f) v = dist(rng);
    data[i] = v;
  }
  return t;
}

// A CPU F32 tensor in `dtype` on CUDA (rounded to nearest even).
inline Tensor to_cuda(const Tensor& cpu_f32, DType dtype = DType::F32) {
  return cpu_f32.to_dtype(dtype).to(Device::CUDA);
}

// Any tensor as a CPU F32 tensor (floating dtypes are widened; integer tensors are returned on the CPU as they are).
inline Tensor to_cpu_float(const Tensor& t) {
  const Tensor host = t.to(Device::CPU);
  return is_floating(host.dtype()) ? host.to_float() : host;
}

// The rounding of `cpu_f32` to `dtype` and back: the inputs a half-precision kernel really sees, so that the CPU
// reference computes on the same values.
inline Tensor rounded_to(const Tensor& cpu_f32, DType dtype) { return cpu_f32.to_dtype(dtype).to_float(); }

// A tensor filled with NaN: outputs start poisoned, so an element a kernel forgot to write fails the comparison.
inline Tensor poisoned(const Shape& shape, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = std::nanf("");
  return t.to_dtype(dtype).to(device);
}

// ||actual - expected|| / ||expected|| in double (METHOD.md's measure): float32 lands far under 1e-3, tf32 near
// 3e-4, bf16/fp16 between 1e-3 and 1e-2. NaN or a size mismatch fails.
inline ::testing::AssertionResult relative_l2_within(const Tensor& actual, const Tensor& expected, double bound) {
  const Tensor a = to_cpu_float(actual), e = to_cpu_float(expected);
  if (a.numel() != e.numel())
    return ::testing::AssertionFailure() << "size " << a.numel() << " vs reference " << e.numel();
  double diff = 0.0, norm = 0.0;
  const float* pa = a.numel() ? a.data<float>() : nullptr;
  const float* pe = e.numel() ? e.data<float>() : nullptr;
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (std::isnan(pa[i])) return ::testing::AssertionFailure() << "NaN at flat index " << i;
    diff += (double(pa[i]) - pe[i]) * (double(pa[i]) - pe[i]);
    norm += double(pe[i]) * pe[i];
  }
  const double rel = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
  if (rel <= bound) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "relative L2 error " << rel << " > " << bound;
}

// The bound METHOD.md gives for each compute dtype (float32 kernels accumulate in a different order than the CPU).
inline double tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 1e-5;
    case DType::F16:
      return 2e-3;
    default:
      return 1e-2;  // BF16
  }
}

inline const std::vector<DType>& cuda_dtypes() {
  static const std::vector<DType> dtypes{DType::F32, DType::F16, DType::BF16};
  return dtypes;
}

}  // namespace elephant::testdev
