// c = alpha * a·op(b) + beta * c: the small-m kernel (small_m_gemm_cuda.cu) for a few half-precision rows against
// a Linear weight, cuBLAS for everything else.
// cuBLAS is column-major: a row-major [r, c] matrix is its column-major transpose, so row-major c = a·op(b) is computed
// as column-major c^T = op(b)^T · a^T.

#include <climits>
#include <string>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"
#include "ops/gemm_cuda.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      throw Error("gemm: unsupported dtype " + dtype_name(dtype) + " on CUDA (F32, F16 or BF16)");
  }
}

}  // namespace

void gemm_cublas(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args) {
  const int64_t m = a.dim(0), k = a.dim(1), n = c.dim(1);
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
    throw Error("gemm: dimensions " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) +
                " exceed cuBLAS's int range");
  if (k == 0) {  // a·op(b) is empty: c = beta * c, and beta == 0 must not read c (it may hold NaN)
    if (args.beta == 0.0f)
      ELEPHANT_CUDA_CHECK(cudaMemsetAsync(c.raw(), 0, c.nbytes(), rt::stream()));
    else if (args.beta != 1.0f)
      scale_in_place(c, args.beta);
    return;
  }
  // CUBLAS_COMPUTE_32F keeps F32 products in full float32 (no TF32) under the handle's default math mode.
  ELEPHANT_CUBLAS_CHECK(cublasGemmEx(
      rt::cublas(), args.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
      static_cast<int>(k), &args.alpha, b.raw(), cuda_type(b.dtype()), static_cast<int>(args.transpose_b ? k : n),
      a.raw(), cuda_type(a.dtype()), static_cast<int>(k), &args.beta, c.raw(), cuda_type(c.dtype()),
      static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void linear_stack_cublas(const Tensor& x, const Tensor& weights, Tensor& y) {
  const int64_t rows = x.dim(0), k = x.dim(1), n = weights.dim(1), count = weights.dim(0);
  if (rows > INT_MAX || n > INT_MAX || k > INT_MAX || count > INT_MAX)
    throw Error("linear_stack: dimensions exceed cuBLAS's int range");
  const float one = 1.0f, zero = 0.0f;
  // Column-major per weight i: y[i]^T [n, rows] = W_i [n, k] · x^T [k, rows]; x is shared (stride 0).
  ELEPHANT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      rt::cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(rows), static_cast<int>(k), &one,
      weights.raw(), cuda_type(weights.dtype()), static_cast<int>(k), n * k, x.raw(), cuda_type(x.dtype()),
      static_cast<int>(k), 0, &zero, y.raw(), cuda_type(y.dtype()), static_cast<int>(n), rows * n,
      static_cast<int>(count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args) {
  if (!small_m_gemm(a, b, c, args)) gemm_cublas(a, b, c, args);
}

void linear_stack(const Tensor& x, const Tensor& weights, Tensor& y) {
  if (!small_m_linear_stack(x, weights, y)) linear_stack_cublas(x, weights, y);
}

}  // namespace elephant::ops::cuda
