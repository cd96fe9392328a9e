#pragma once

// The activations of ops/activation.h as device functions: the activation op's (activation_cuda.cu) and those the
// grouped GEMMs apply in their epilogue. kNoActivation stands for none.

#include <cmath>
#include <optional>

#include "ops/activation.h"

namespace elephant::ops::cuda {

constexpr int kNoActivation = -1;

// An op's optional activation (GemmArgs, GroupedGemmArgs, NormLinearArgs) as the kernels take it.
inline int activation_code(const std::optional<Activation>& activation) {
  return activation ? static_cast<int>(*activation) : kNoActivation;
}

__device__ __forceinline__ float apply_activation(int activation, float v) {
  // The formulas of activation_cpu.cc.
  switch (activation) {
    case static_cast<int>(Activation::ReLU):
      return v > 0.0f ? v : 0.0f;
    case static_cast<int>(Activation::Gelu):
      return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case static_cast<int>(Activation::GeluNew):  // the tanh approximation, as transformers' NewGELUActivation
      return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case static_cast<int>(Activation::Silu):
      return v / (1.0f + expf(-v));
    default:
      return v;
  }
}

}  // namespace elephant::ops::cuda
