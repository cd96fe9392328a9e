#pragma once

#include <vector>

#include "core/tensor.h"

namespace elephant::ops {

// Which queries attend to which keys. Queries and keys are packed token-major, [tokens, heads * head_dim]:
// sequence i owns the query rows [query_begin[i], query_begin[i + 1]) and the key/value rows
// [key_begin[i], key_begin[i] + key_length[i]). The j-th query of sequence i is at position
// query_position[i] + j, and key k at position k.
struct AttentionLayout {
  std::vector<int64_t> query_begin;  // size: sequences + 1
  std::vector<int64_t> key_begin;
  std::vector<int64_t> key_length;
  std::vector<int64_t> query_position;
};

struct AttentionArgs {
  int num_heads = 0;
  int head_dim = 0;
  bool causal = false;  // a query sees only keys at positions <= its own
  // Optional [heads, 2 * bias_max_offset + 1] bias added to the score of (query p, key k) at column
  // k - p + bias_max_offset (see relative_position_bias). Scores are not scaled by 1/sqrt(d): T5 folds it in.
  const Tensor* position_bias = nullptr;
  int bias_max_offset = 0;
};

// out[q] = softmax_k(q·k + bias) · v for every head; out is [query rows, heads * head_dim].
void attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
               const AttentionArgs& args, Tensor& out);

}  // namespace elephant::ops
