#include <algorithm>
#include <cmath>

#include "ops/backends.h"

namespace elephant::ops::cpu {

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  const int64_t d = x.dim(-1);
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

}  // namespace elephant::ops::cpu
