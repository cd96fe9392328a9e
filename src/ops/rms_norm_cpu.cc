#include <cmath>
#include <stdexcept>

#include "ops/rms_norm.h"

namespace elephant::ops {

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  const int64_t d = x.dim(-1);
  if (weight.numel() != d || y.shape() != x.shape())
    throw std::invalid_argument("rms_norm: x " + shape_string(x.shape()) + ", weight " + shape_string(weight.shape()) +
                                ", y " + shape_string(y.shape()));
  const int64_t rows = x.numel() / std::max<int64_t>(d, 1);
  const float* in = x.data<float>();
  const float* w = weight.data<float>();
  float* out = y.data<float>();
#pragma omp parallel for if (rows * d > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = in + r * d;
    float sum = 0.0f;
    for (int64_t i = 0; i < d; ++i) sum += xr[i] * xr[i];
    const float scale = 1.0f / std::sqrt(sum / static_cast<float>(d) + eps);
    float* yr = out + r * d;
    for (int64_t i = 0; i < d; ++i) yr[i] = w[i] * (xr[i] * scale);
  }
}

}  // namespace elephant::ops
