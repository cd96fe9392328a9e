#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/tensor.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/moe.h"
#include "quantization/quantized_tensor.h"

namespace elephant::layers {

// Blocks shared by encoder-decoder architectures, on any device. Weights are in the Linear layout
// [out_features, in_features] and in the model's compute dtype (F32 on the CPU; F32, F16 or BF16 on CUDA), or
// quantized (Weight), except the router, which stays F32; hidden states are packed token-major [tokens, d_model] in
// the compute dtype.

// A Linear weight [n, k], or every expert's matrix of one kind stacked [experts, n, k] for the grouped GEMM: in the
// compute dtype, or quantized to int8 / int4 (quantization/quantized_tensor.h), the other one undefined.
struct Weight {
  Tensor dense;
  QuantizedTensor quantized;

  int64_t dim(int axis) const { return quantized.defined() ? quantized.dim(axis) : dense.dim(axis); }
};

// y = x · w^T for x [rows, k], in x's dtype; then the activation, if any (on CUDA in the projection's epilogue where
// its kernel has one).
Tensor linear(const Tensor& x, const Weight& w, std::optional<ops::Activation> activation = std::nullopt);
// The same into y [rows, n] (a view of a larger tensor may be given).
void linear(const Tensor& x, const Weight& w, Tensor& y, std::optional<ops::Activation> activation = std::nullopt);
// hidden += x · w^T: a residual add in the GEMM (beta = 1; quantized: ops::quantized_linear accumulating).
void add_linear(const Tensor& x, const Weight& w, Tensor& hidden);

struct RmsNorm {
  Tensor weight;
  float epsilon = 1e-6f;

  Tensor operator()(const Tensor& x) const;
  // The projection of the normalized rows of x [rows, d_model], in x's dtype: by a Linear weight [n, d_model] into
  // [rows, n], or by every weight of a stack [count, n, d_model] into [count, rows, n]. One launch on CUDA for a
  // decode step's few rows (ops::rms_norm_linear).
  Tensor linear(const Tensor& x, const Tensor& weights) const;
  // The same by a Linear weight in either form, into a new tensor or into y [rows, n] (a view may be given); then the
  // activation, if any (on CUDA in the projection's epilogue where its kernel has one).
  Tensor linear(const Tensor& x, const Weight& w, std::optional<ops::Activation> activation = std::nullopt) const;
  void linear(const Tensor& x, const Weight& w, Tensor& y,
              std::optional<ops::Activation> activation = std::nullopt) const;
};

struct MultiHeadAttention {
  Weight q, k, v, o;  // q, k, v: [heads * head_dim, d_model]; o: [d_model, heads * head_dim]
  // Self-attention with dense weights keeps q, k and v only stacked, [3, heads * head_dim, d_model] (q, k and v
  // undefined), so that the three projections of the same rows are one launch (project_qkv). Undefined for
  // cross-attention and for quantized weights.
  Tensor qkv;
  int num_heads = 0;
  int head_dim = 0;
};

struct DenseFeedForward {
  Weight wi;  // [d_ff, d_model]
  Weight wo;  // [d_model, d_ff]
};

// ops::grouped_gemm on whichever form the expert weights [experts, n, k] have.
void grouped_gemm(const Tensor& a, const Weight& weights, const Tensor& offsets, Tensor& out,
                  const ops::GroupedGemmArgs& args = {});

// The arguments of a MoE layer's two grouped GEMMs over rows sorted by expert: wi reads x's rows in expert order
// itself (a_rows: no gathered copy) and applies the activation; wo adds its rows, scaled by the router probability,
// to the residual rows they came from, and may stream its weights ahead (the routing ran before wi).
struct ExpertGemmArgs {
  ops::GroupedGemmArgs wi, wo;
  ExpertGemmArgs(ops::Activation activation, const Tensor& sorted_rows, const Tensor& probability);
};

// The experts' part of a top-1 MoE layer, over rows sorted by expert (ops::sort_by_expert's sorted_rows and offsets):
// inner = act(x[sorted_rows] · wi^T) in expert order, then hidden[sorted_rows[i]] += probability[sorted_rows[i]] *
// (inner[i] · wo^T). Dense experts go through ops::grouped_gemm_pair, quantized ones through two grouped GEMMs.
void add_expert_outputs(const Weight& wi, const Weight& wo, ops::Activation activation, const Tensor& x,
                        const Tensor& offsets, const Tensor& sorted_rows, const Tensor& probability, Tensor& hidden);

struct MixtureOfExperts {
  Tensor router;       // F32 [experts, d_model]: routing runs in float32
  Tensor router_bias;  // F32 [experts] or undefined
  Weight wi;           // [experts, d_ff, d_model]
  Weight wo;           // [experts, d_model, d_ff]

  int num_experts() const { return static_cast<int>(wi.dim(0)); }
};

// A dense FFN or a top-1 MoE FFN, with its activation.
struct FeedForward {
  ops::Activation activation = ops::Activation::ReLU;
  std::optional<DenseFeedForward> dense;
  std::optional<MixtureOfExperts> moe;
};

// hidden += FFN(x). For a MoE FFN, rows whose `active` flag (U8 [rows]) is 0 are left untouched and cost no
// expert work (batch pruning); no flags means every row is live.
void add_feed_forward(const FeedForward& ffn, const Tensor& x, Tensor& hidden, const Tensor* active = nullptr);
// hidden += FFN(norm(hidden)), the pre-norm sublayer. A dense FFN normalizes inside its first projection
// (RmsNorm::linear); a MoE FFN normalizes first, since its router and its gather both read the normalized rows.
void add_feed_forward(const FeedForward& ffn, const RmsNorm& norm, Tensor& hidden, const Tensor* active = nullptr);

// hidden += o(attention(q(norm(hidden)), keys, values)): keys and values already projected (k(memory), v(memory)).
void add_attention(const MultiHeadAttention& attention, const RmsNorm& norm, const Tensor& keys, const Tensor& values,
                   const ops::AttentionLayout& layout, const ops::AttentionArgs& args, Tensor& hidden);
// The same from projected queries.
void add_attention_output(const MultiHeadAttention& attention, const Tensor& queries, const Tensor& keys,
                          const Tensor& values, const ops::AttentionLayout& layout, const ops::AttentionArgs& args,
                          Tensor& hidden);
// hidden += o(context), context being an attention's output for hidden's rows.
void add_attention_projection(const MultiHeadAttention& attention, const Tensor& context, Tensor& hidden);

// Self-attention's three projections of norm(x): [3, rows, heads * head_dim] (queries, keys, values); one launch for
// the dense stack qkv.
Tensor project_qkv(const MultiHeadAttention& attention, const RmsNorm& norm, const Tensor& x);
// Matrix i of a stack [count, rows, columns], as a [rows, columns] view.
Tensor stacked(const Tensor& stack, int64_t i);

// Host token ids checked against the vocabulary (std::out_of_range naming the id), as an I32 tensor on `device`.
Tensor token_ids(const std::vector<int32_t>& ids, int64_t vocab, Device device);

// out[i] = table[ids[i]]: token embeddings; ids is I32 on the table's device (from token_ids, or from a search).
Tensor embed(const Tensor& table, const Tensor& ids);

}  // namespace elephant::layers
