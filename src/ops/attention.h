#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace elephant::ops {

// Which queries attend to which keys. Queries and keys are packed token-major, [tokens, heads * head_dim]:
// sequence i owns the query rows [query_begin[i], query_begin[i + 1]) and the key/value rows
// [key_begin[i], key_begin[i] + key_length[i]). The j-th query of sequence i is at position
// query_position[i] + j, and key k at position k. The arrays are I32 tensors on the device of the
// queries, so a device can update them between steps without the host.
struct AttentionLayout {
  Tensor query_begin;     // [sequences + 1]
  Tensor key_begin;       // [sequences]
  Tensor key_length;      // [sequences]
  Tensor query_position;  // [sequences]
  // Upper bounds, known on the host, that size the launch: the longest query run and key run.
  int64_t max_queries = 0;
  int64_t max_keys = 0;

  int64_t sequences() const { return key_begin.defined() ? key_begin.dim(0) : 0; }

  // Builds the arrays on the host and copies them to `device`.
  static AttentionLayout from_host(const std::vector<int32_t>& query_begin, const std::vector<int32_t>& key_begin,
                                   const std::vector<int32_t>& key_length, const std::vector<int32_t>& query_position,
                                   Device device);
  // The same, written into the leading elements of `storage`'s arrays (allocated on first use, reallocated only
  // when too small), so that a layout rebuilt for as many or fewer sequences keeps its device addresses, as a
  // replayed CUDA graph needs. The result's arrays are views of storage's.
  static AttentionLayout from_host(const std::vector<int32_t>& query_begin, const std::vector<int32_t>& key_begin,
                                   const std::vector<int32_t>& key_length, const std::vector<int32_t>& query_position,
                                   Device device, AttentionLayout& storage);
};

struct AttentionArgs {
  int num_heads = 0;
  int head_dim = 0;
  bool causal = false;  // a query sees only keys at positions <= its own
  // Optional F32 [heads, 2 * bias_max_offset + 1] bias added to the score of (query p, key k) at column
  // k - p + bias_max_offset (see relative_position_bias). Scores are not scaled by 1/sqrt(d): T5 folds it in.
  // Every distance a layout can produce must have a column: the caller sizes bias_max_offset for it.
  const Tensor* position_bias = nullptr;
  int bias_max_offset = 0;
};

// out[q] = softmax_k(q·k + bias) · v for every head; out is [query rows, heads * head_dim]. queries, keys,
// values and out share one dtype; scores, softmax and the weighted sum are float32.
void attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
               const AttentionArgs& args, Tensor& out);

// A decoder's self-attention step in one op: first appends each query's own key and value (new_keys and
// new_values, rows like the queries') to its sequence's keys, then attention(queries, key_cache, value_cache). The
// j-th query row of sequence i writes key row key_begin[i] + query_position[i] + j, which must lie within the
// sequence's keys (checked on the CPU; skipped on a device when outside) and be no other sequence's key.
void attention_with_append(const Tensor& queries, const Tensor& new_keys, const Tensor& new_values, Tensor& key_cache,
                           Tensor& value_cache, const AttentionLayout& layout, const AttentionArgs& args, Tensor& out);

}  // namespace elephant::ops
