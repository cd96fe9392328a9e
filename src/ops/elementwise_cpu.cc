#include "ops/backends.h"

namespace elephant::ops::cpu {

void add_in_place(Tensor& hidden, const Tensor& y) {
  float* h = hidden.data<float>();
  const float* in = y.data<float>();
  const int64_t n = hidden.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) h[i] += in[i];
}

void scale_in_place(Tensor& x, float factor) {
  float* data = x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) data[i] *= factor;
}

void add_scalar(Tensor& x, int32_t value) {
  int32_t* data = x.data<int32_t>();
  for (int64_t i = 0; i < x.numel(); ++i) data[i] += value;
}

void convert(const Tensor& x, Tensor& y) { y.copy_from(x.to_dtype(y.dtype())); }

}  // namespace elephant::ops::cpu
