#pragma once

#include "core/tensor.h"

namespace elephant::ops {

struct GemmArgs {
  bool transpose_b = true;  // b is [n, k], the layout of a Linear weight
  float alpha = 1.0f;
  float beta = 0.0f;  // c = alpha * a·op(b) + beta * c
};

// c[m, n] = alpha * a[m, k] · op(b) + beta * c, accumulated in float32. CPU: float32 through the BLAS sgemm.
// CUDA: cuBLAS; a and b share one dtype (F32, F16 or BF16), c has that dtype or F32.
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args = {});

// y[..., n] = x[..., k] · weight[n, k]^T: a Linear layer without bias, output in x's dtype and device.
Tensor linear(const Tensor& x, const Tensor& weight);

}  // namespace elephant::ops
