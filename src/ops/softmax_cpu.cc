#include <algorithm>
#include <cmath>

#include "ops/backends.h"

namespace elephant::ops::cpu {

void softmax(Tensor& x) {
  const int64_t d = x.dim(-1);
  const int64_t rows = d ? x.numel() / d : 0;
  float* data = x.data<float>();
#pragma omp parallel for if (rows * d > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = data + r * d;
    const float max = *std::max_element(row, row + d);
    float sum = 0.0f;
    for (int64_t i = 0; i < d; ++i) sum += (row[i] = std::exp(row[i] - max));
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < d; ++i) row[i] *= inv;
  }
}

void log_softmax(const Tensor& x, Tensor& y) {
  const int64_t d = x.dim(-1);
  const int64_t rows = d ? x.numel() / d : 0;
  const float* in = x.data<float>();
  float* out = y.data<float>();
#pragma omp parallel for if (rows * d > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = in + r * d;
    const float max = *std::max_element(row, row + d);
    // A vocabulary's 128,000 terms summed one by one in float lose ~1e-5 of the sum; in double the CPU stays the
    // reference that the CUDA kernels' tree sums are held to.
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += std::exp(row[i] - max);
    const auto log_sum = static_cast<float>(std::log(sum));
    float* o = out + r * d;
    for (int64_t i = 0; i < d; ++i) o[i] = row[i] - max - log_sum;
  }
}

}  // namespace elephant::ops::cpu
