#include <cmath>
#include <stdexcept>

#include "ops/backends.h"

namespace elephant::ops {

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "gelu") return Activation::Gelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::GeluNew;
  if (name == "silu" || name == "swish") return Activation::Silu;
  throw std::invalid_argument("unsupported activation \"" + name + "\" (supported: relu, gelu, gelu_new, silu)");
}

std::string activation_name(Activation activation) {
  switch (activation) {
    case Activation::ReLU:
      return "relu";
    case Activation::Gelu:
      return "gelu";
    case Activation::GeluNew:
      return "gelu_new";
    case Activation::Silu:
      return "silu";
  }
  return "?";
}

namespace cpu {
namespace {

template <typename F>
void apply(Tensor& x, F f) {
  float* data = x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) data[i] = f(data[i]);
}

}  // namespace

void activate(Activation activation, Tensor& x) {
  switch (activation) {
    case Activation::ReLU:
      apply(x, [](float v) { return v > 0.0f ? v : 0.0f; });
      break;
    case Activation::Gelu:
      apply(x, [](float v) { return 0.5f * v * (1.0f + std::erf(v * static_cast<float>(M_SQRT1_2))); });
      break;
    case Activation::GeluNew:  // the tanh approximation, as transformers' NewGELUActivation
      apply(x, [](float v) {
        const float inner = static_cast<float>(std::sqrt(2.0 / M_PI)) * (v + 0.044715f * v * v * v);
        return 0.5f * v * (1.0f + std::tanh(inner));
      });
      break;
    case Activation::Silu:
      apply(x, [](float v) { return v / (1.0f + std::exp(-v)); });
      break;
  }
}

}  // namespace cpu
}  // namespace elephant::ops
