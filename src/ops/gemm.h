#pragma once

#include <optional>

#include "core/tensor.h"
#include "ops/activation.h"
#include "quantization/quantized_tensor.h"

namespace elephant::ops {

struct GemmArgs {
  bool transpose_b = true;  // b is [n, k], the layout of a Linear weight
  float alpha = 1.0f;
  float beta = 0.0f;  // c = alpha * a·op(b) + beta * c
  // b is a model weight: no kernel writes it, so a CUDA kernel may start reading it before the kernel before it on
  // the stream has finished (programmatic dependent launch, core/cuda/runtime.cuh).
  bool b_is_weight = false;
  // c = act(alpha * a·op(b) + beta * c) (a feed-forward layer's first projection): applied in the CUDA small-m
  // kernel's epilogue to the float32 sum, elsewhere by ops::activate over c.
  std::optional<Activation> activation = std::nullopt;
};

// c[m, n] = alpha * a[m, k] · op(b) + beta * c, accumulated in float32. CPU: float32 through the BLAS sgemm.
// CUDA: a weight-streaming kernel for 1-16 half-precision rows against b^T (ops/gemm_cuda.h), cuBLAS otherwise;
// a and b share one dtype (F32, F16 or BF16), c has that dtype or F32.
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args = {});

// y[..., n] = x[..., k] · weight[n, k]^T: a Linear layer without bias, output in x's dtype and device (b_is_weight).
Tensor linear(const Tensor& x, const Tensor& weight);

struct QuantizedLinearArgs {
  bool accumulate = false;  // y += x · weight^T (a residual add) instead of y = x · weight^T
};

// y[rows, n] = x[rows, k] · weight^T for a Linear weight [n, k] quantized to int8 or int4
// (quantization/quantized_tensor.h): x and y in the compute dtype, accumulated in float32. CPU: the weight
// dequantized into float32, then the BLAS sgemm. CUDA: for 1-4 rows against int8 weights the small-m kernel, each
// code times its scale as it streams in (accumulating in its epilogue); otherwise the quantized grouped GEMM
// (ops/moe.h) with one group of all rows, dequantizing in its main loop (accumulating through a separate add).
void quantized_linear(const Tensor& x, const QuantizedTensor& weight, Tensor& y, const QuantizedLinearArgs& args = {});

// y[i] = x · weights[i]^T for every Linear weight of a stack: x [rows, k], weights [count, n, k], y [count, rows, n]
// in x's dtype. One launch on CUDA (a strided batched GEMM): the query, key and value projections of the same
// rows at once. Each y[i] equals linear(x, weights[i]) up to the GEMM's summation order.
void linear_stack(const Tensor& x, const Tensor& weights, Tensor& y);

struct NormLinearArgs {
  float scale = 1.0f;  // the normalized rows times scale, rounded as scale_in_place rounds it (the tied lm_head)
  std::optional<Activation> activation = std::nullopt;  // applied to the product, as GemmArgs::activation
};

// The projection of RMS-normalized rows, a pre-norm sublayer's first step: x [rows, k] normalized as rms_norm does
// (norm_weight [k], eps), times args.scale, then projected by `weights` (model weights): a Linear weight [n, k] into
// y [rows, n] in x's dtype or F32, as gemm; or a stack [count, n, k] into y [count, rows, n] in x's dtype, as
// linear_stack; then args.activation. CPU: those ops, one after the other. CUDA: for 1-4 half-precision rows, one
// launch of the small-m kernel, which normalizes the rows itself (the same bits as the ops it replaces); otherwise
// those ops (the activation inside gemm's).
void rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weights, Tensor& y,
                     const NormLinearArgs& args = {});
// The same with a quantized Linear weight [n, k] (quantized_linear): on CUDA, for 1-4 rows against int8 weights, one
// launch of the small-m kernel; otherwise rms_norm, then quantized_linear; then args.activation over y (args.scale
// must be 1).
void rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const QuantizedTensor& weight, Tensor& y,
                     const NormLinearArgs& args = {});

}  // namespace elephant::ops
