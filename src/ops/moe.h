#pragma once

#include <optional>

#include "core/tensor.h"
#include "ops/activation.h"
#include "quantization/quantized_tensor.h"

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
  // I32 [rows of the product], or null: row i of the product reads row a_rows[i] of a instead of row i, so that the
  // rows need not be gathered into expert order first (sort_by_expert's sorted_rows).
  const Tensor* a_rows = nullptr;
  // I32 [rows of the product] and F32 [rows of out], or both null: instead of being written to out[i], row i of the
  // product is added to out[out_rows[i]], scaled by out_scale[out_rows[i]] (the un-permute, the router probability
  // and the residual add of a MoE layer, in the GEMM's epilogue). The out_rows of computed rows must be distinct.
  const Tensor* out_rows = nullptr;
  const Tensor* out_scale = nullptr;
  // True when offsets and a_rows were written before the last kernel queued ahead of this GEMM (the second GEMM of a
  // MoE layer: routing ran before the first). On CUDA the GEMM then starts streaming its weights while that kernel
  // still runs (programmatic dependent launch), and waits for it only before reading a.
  bool routing_settled = false;
  // True when the next kernel queued is such a GEMM (the first GEMM of a MoE layer): on CUDA a persistent decode grid
  // then leaves one block's room on each SM, where the next GEMM's blocks start streaming their weights early.
  bool next_starts_early = false;
};

// For every expert e and row i in [offsets[e], offsets[e + 1]): out[i] = act(a[i] · weights[e]^T + bias[e]), with
// a[a_rows[i]] for a[i] and out[out_rows[i]] += out_scale[out_rows[i]] * ... for out[i] = ... when given. a: [rows,
// k], weights: [experts, n, k] (each a Linear weight), out: [rows, n]; a, weights and out share one dtype,
// accumulation is float32 (with out_rows the product row is rounded to the dtype before it is scaled and added, and
// the sum rounded once). Rows from offsets[experts] on are not touched. One launch for all experts.
void grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args = {});

// The same with quantized weights (quantization/quantized_tensor.h): an int8 or int4 stack [experts, n, k] on a's
// device, a and out in the compute dtype. The weights are dequantized inside the GEMM: on CUDA in its main loop (no
// dequantized copy anywhere), on the CPU an expert at a time into the BLAS call.
void grouped_gemm(const Tensor& a, const QuantizedTensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args = {});

// Two grouped GEMMs over the same offsets, the second reading the first's output (a MoE layer's wi and wo): the same
// as grouped_gemm(a, first, offsets, middle, first_args), then grouped_gemm(middle, second, offsets, out,
// second_args). On CUDA, where both run on CUTLASS (prefill-sized), one launch writes both GEMMs' per-expert
// arguments ahead of the first, so that the second follows the first without a kernel in between.
void grouped_gemm_pair(const Tensor& a, const Tensor& first, const Tensor& second, const Tensor& offsets,
                       Tensor& middle, Tensor& out, const GroupedGemmArgs& first_args,
                       const GroupedGemmArgs& second_args);

}  // namespace elephant::ops
