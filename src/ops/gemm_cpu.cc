#include <cblas.h>

#include <stdexcept>

#include "ops/gemm.h"

namespace elephant::ops {

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args) {
  if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2)
    throw std::invalid_argument("gemm: expected 2-D tensors, got a " + shape_string(a.shape()) + ", b " +
                                shape_string(b.shape()) + ", c " + shape_string(c.shape()));
  const int64_t m = a.dim(0);
  const int64_t k = a.dim(1);
  const int64_t n = args.transpose_b ? b.dim(0) : b.dim(1);
  const int64_t bk = args.transpose_b ? b.dim(1) : b.dim(0);
  if (bk != k || c.dim(0) != m || c.dim(1) != n)
    throw std::invalid_argument("gemm: shapes do not match: a " + shape_string(a.shape()) + ", b " +
                                shape_string(b.shape()) + (args.transpose_b ? " (transposed)" : "") + ", c " +
                                shape_string(c.shape()));
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, args.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), args.alpha, a.data<float>(), static_cast<int>(k),
              b.data<float>(), static_cast<int>(b.dim(1)), args.beta, c.data<float>(), static_cast<int>(n));
}

Tensor linear(const Tensor& x, const Tensor& weight) {
  Shape out_shape = x.shape();
  out_shape.back() = weight.dim(0);
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Tensor y = Tensor::empty(out_shape);
  Tensor y2 = y.reshape({rows, weight.dim(0)});
  gemm(x.reshape({rows, x.dim(-1)}), weight, y2);
  return y;
}

}  // namespace elephant::ops
