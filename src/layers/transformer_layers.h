#pragma once

#include <optional>
#include <vector>

#include "core/tensor.h"
#include "ops/activation.h"
#include "ops/attention.h"

namespace elephant::layers {

// Blocks shared by encoder-decoder architectures. Weights are float32 tensors in the Linear layout
// [out_features, in_features]; hidden states are packed token-major [tokens, d_model].

struct RmsNorm {
  Tensor weight;
  float epsilon = 1e-6f;

  Tensor operator()(const Tensor& x) const;
};

struct MultiHeadAttention {
  Tensor q, k, v, o;  // q, k, v: [heads * head_dim, d_model]; o: [d_model, heads * head_dim]
  int num_heads = 0;
  int head_dim = 0;
};

struct DenseFeedForward {
  Tensor wi;  // [d_ff, d_model]
  Tensor wo;  // [d_model, d_ff]
};

struct MixtureOfExperts {
  Tensor router;       // [num_experts, d_model], run in float32
  Tensor router_bias;  // [num_experts] or undefined
  std::vector<DenseFeedForward> experts;
};

// A dense FFN or a top-1 MoE FFN, with its activation.
struct FeedForward {
  ops::Activation activation = ops::Activation::ReLU;
  std::optional<DenseFeedForward> dense;
  std::optional<MixtureOfExperts> moe;
};

// hidden += FFN(x). For a MoE FFN, rows whose `active` flag is 0 are left untouched (batch pruning);
// an empty `active` means every row is live.
void add_feed_forward(const FeedForward& ffn, const Tensor& x, Tensor& hidden, const std::vector<uint8_t>& active = {});

// hidden += o(attention(q(x), k(memory), v(memory))): self-attention when memory is x.
void add_attention(const MultiHeadAttention& attention, const Tensor& x, const Tensor& keys, const Tensor& values,
                   const ops::AttentionLayout& layout, const ops::AttentionArgs& args, Tensor& hidden);

// hidden += y, elementwise.
void add_in_place(Tensor& hidden, const Tensor& y);

// out[i] = table[ids[i]]: token embeddings.
Tensor embed(const Tensor& table, const std::vector<int32_t>& ids);

}  // namespace elephant::layers
