#pragma once

#include <optional>

#include "core/tensor.h"
#include "ops/activation.h"

namespace elephant::ops {

// The steps of a top-1 MoE layer. Everything stays on the device: the number of rows each expert receives is
// read from `offsets` by the kernels, never by the host, so a layer runs without one host synchronization.

// Router: logits = x · weight^T (+ bias) in float32 (weight F32 [experts, d], bias F32 [experts] or null), then
// softmax and top-1 (the first maximum on ties, as torch.max). expert: I32 [tokens], the chosen expert, or
// `experts` (past the last one) where active (U8 [tokens], optional) is 0: batch pruning. probability: F32 [tokens],
// the softmax probability of the chosen expert (0 for inactive rows).
void route_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active, Tensor& expert,
                Tensor& probability);

// A stable sort of the rows by expert id (ids outside [0, experts) count as pruned, `experts`). sorted_rows: I32
// [tokens], the row indices in expert order, rows past the last expert at the end. offsets: I32 [experts + 1], expert e
// owns sorted positions [offsets[e], offsets[e + 1]); offsets[experts] is the number of active rows.
void sort_by_expert(const Tensor& expert, int num_experts, Tensor& sorted_rows, Tensor& offsets);

// route_top1, then sort_by_expert of the chosen experts, for the layer that needs only their results: on CUDA one
// launch for a decode-sized batch.
void route_and_sort_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active,
                         Tensor& probability, Tensor& sorted_rows, Tensor& offsets);

struct GroupedGemmArgs {
  const Tensor* bias = nullptr;          // [experts, n] in the dtype of a, or null
  std::optional<Activation> activation;  // applied after the bias
  // I32 [rows of out], or null: row i of the product reads row a_rows[i] of a instead of row i, so that the rows
  // need not be gathered into expert order first (sort_by_expert's sorted_rows).
  const Tensor* a_rows = nullptr;
};

// For every expert e and row i in [offsets[e], offsets[e + 1]): out[i] = act(a[i] · weights[e]^T + bias[e]), with
// a[a_rows[i]] for a[i] when a_rows is given. a: [rows, k], weights: [experts, n, k] (each a Linear weight), out:
// [rows, n]; a, weights and out share one dtype, accumulation is float32. Rows from offsets[experts] on are not
// touched. One launch for all experts.
void grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args = {});

// hidden[sorted_rows[i]] += probability[sorted_rows[i]] * y[i] for i < offsets[experts]: un-permute the expert
// outputs, scale them by the router probability and add them to the residual stream, in one pass.
void scatter_scaled_add(const Tensor& y, const Tensor& sorted_rows, const Tensor& probability, const Tensor& offsets,
                        Tensor& hidden);

}  // namespace elephant::ops
