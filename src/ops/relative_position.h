#pragma once

#include "core/tensor.h"

namespace elephant::ops {

struct RelativePositionArgs {
  bool bidirectional = true;  // encoder: true; decoder self-attention: false (keys after the query are invalid)
  int num_buckets = 32;
  int max_distance = 128;
};

// T5's bucketing of relative_position = key_position - query_position, computed in float32 as transformers does.
int relative_position_bucket(int relative_position, const RelativePositionArgs& args);

// Bias per head and relative position: out[h, r + max_offset] = table[bucket(r), h] for r in
// [-max_offset, max_offset]. `table` is the relative_attention_bias embedding, [num_buckets, heads].
Tensor relative_position_bias(const Tensor& table, int max_offset, const RelativePositionArgs& args);

}  // namespace elephant::ops
