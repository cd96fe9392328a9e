#pragma once

// The two CUDA paths behind ops::gemm and ops::linear_stack, named so that a benchmark can time them side by side:
// cuBLAS, and the weight-streaming kernel for a few rows (small_m_gemm_cuda.cu). ops::cuda::gemm and
// ops::cuda::linear_stack try the small-m kernel first and fall back to cuBLAS; ops::rms_norm_linear (dispatch.cc)
// tries it with the norm fused and falls back to the separate ops. Arguments as checked by ops/dispatch.cc.

#include "core/tensor.h"
#include "ops/gemm.h"
#include "ops/moe.h"
#include "quantization/quantized_tensor.h"

namespace elephant::ops::cuda {

// Rows of a (or x) up to which the small-m kernels apply to half-precision weights with results in a's dtype. Up to
// kSmallMFloatMaxRows rows the kernel multiplies in float FMAs, which bounds the experts, int8 weights and float32
// results too; above, on the tensor cores. Measured on the H100 (bench_cuda_decode, fp16, 2026-11-26): at 1 row the
// FMA kernel beats cuBLAS on every decode shape (1024x1024 2.99 vs 4.09 us, 1024x4096 5.03 vs 7.35); at 8 rows it
// lost on the wider ones (4096x1024 7.47 vs 5.30, q,k,v stack 6.15 vs 4.97). The tensor-core kernel at 8 rows
// (2026-11-27): 1024x1024 2.29 vs 4.05 us, 4096x1024 3.92 vs 5.27, 1024x4096 5.90 vs 7.44, q,k,v 3.39 vs 4.95; at 16
// rows it loses on 4096x1024 only (5.79 vs 5.30).
constexpr int64_t kSmallMMaxRows = 16;
constexpr int64_t kSmallMFloatMaxRows = 4;

void gemm_cublas(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args);
void linear_stack_cublas(const Tensor& x, const Tensor& weights, Tensor& y);

// The small-m kernel, when it applies (transpose_b, F16 or BF16, at most kSmallMMaxRows rows, kSmallMFloatMaxRows
// into float32, k a multiple of 8, a and b 16-byte aligned): launches it and returns true. Otherwise returns false
// and does nothing.
bool small_m_gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args);
bool small_m_linear_stack(const Tensor& x, const Tensor& weights, Tensor& y);
// ops::grouped_gemm with half-precision experts when the whole product has at most kSmallMFloatMaxRows rows (a decode
// step's MoE layer at batch 1-4): each expert with rows streams its weights through the small-m kernel, reading its
// rows of a and writing (or adding) its rows of out as ops::grouped_gemm does. Otherwise returns false.
bool small_m_grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                          const GroupedGemmArgs& args);
// ops::quantized_linear with int8 weights (per channel or per group) when the kernel applies (at most
// kSmallMFloatMaxRows rows of F16 or BF16, k a multiple of 16, x and the codes 16-byte aligned). Otherwise returns
// false and does nothing. accumulate: y += the product (in the kernel's epilogue, beta = 1).
bool small_m_quantized_linear(const Tensor& x, const QuantizedTensor& weight, Tensor& y, bool accumulate);
// ops::rms_norm_linear with an int8 weight in one launch, under the same conditions, k at most 4096 and the norm
// weight 16-byte aligned.
bool small_m_rms_norm_quantized_linear(const Tensor& x, const Tensor& norm_weight, float eps,
                                       const QuantizedTensor& weight, Tensor& y);
// ops::rms_norm_linear in one launch, the norm inside the small-m kernel, when that kernel applies, k is at most 4096
// and the norm weight is 16-byte aligned. Otherwise returns false and does nothing.
bool small_m_rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weights, Tensor& y,
                             const NormLinearArgs& args);

}  // namespace elephant::ops::cuda
