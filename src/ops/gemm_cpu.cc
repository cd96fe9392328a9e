#include <cblas.h>

#include "ops/backends.h"
#include "quantization/quantized_tensor.h"

namespace elephant::ops::cpu {

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args) {
  const int m = static_cast<int>(a.dim(0));
  const int k = static_cast<int>(a.dim(1));
  const int n = static_cast<int>(c.dim(1));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, args.transpose_b ? CblasTrans : CblasNoTrans, m, n, k, args.alpha,
              a.data<float>(), k, b.data<float>(), static_cast<int>(b.dim(1)), args.beta, c.data<float>(), n);
}

void linear_stack(const Tensor& x, const Tensor& weights, Tensor& y) {
  const int m = static_cast<int>(x.dim(0));
  const int k = static_cast<int>(x.dim(1));
  const int n = static_cast<int>(weights.dim(1));
  for (int64_t i = 0; i < weights.dim(0); ++i)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x.data<float>(), k,
                weights.data<float>() + i * n * k, k, 0.0f, y.data<float>() + i * m * n, n);
}

void quantized_linear(const Tensor& x, const QuantizedTensor& weight, Tensor& y, const QuantizedLinearArgs& args) {
  Tensor dense = Tensor::empty({weight.dim(0), weight.dim(1)}, DType::F32, Device::CPU);
  dequantize_matrix(weight, 0, dense.data<float>());
  GemmArgs gemm_args;
  gemm_args.beta = args.accumulate ? 1.0f : 0.0f;
  cpu::gemm(x, dense, y, gemm_args);
}

}  // namespace elephant::ops::cpu
