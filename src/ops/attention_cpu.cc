#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "ops/backends.h"

namespace elephant::ops::cpu {

void attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
               const AttentionArgs& args, Tensor& out) {
  const int64_t heads = args.num_heads;
  const int64_t head_dim = args.head_dim;
  const int64_t inner = heads * head_dim;
  const int64_t sequences = layout.sequences();
  const int32_t* query_begin = layout.query_begin.data<int32_t>();
  const int32_t* key_begin = layout.key_begin.data<int32_t>();
  const int32_t* key_length = layout.key_length.data<int32_t>();
  const int32_t* query_position = layout.query_position.data<int32_t>();
  const float* q = queries.data<float>();
  const float* k = keys.data<float>();
  const float* v = values.data<float>();
  float* o = out.data<float>();
  const float* bias = args.position_bias ? args.position_bias->data<float>() : nullptr;
  const int64_t bias_width = 2 * static_cast<int64_t>(args.bias_max_offset) + 1;

  // One work item per (query row, head): decode steps have one query per sequence, so parallelizing
  // over sequences alone would leave cores idle.
  const int64_t rows = query_begin[sequences];
  std::vector<int64_t> row_sequence(static_cast<size_t>(rows), -1);  // -1: a row of no sequence
  for (int64_t s = 0; s < sequences; ++s)
    for (int64_t r = query_begin[s]; r < query_begin[s + 1]; ++r) row_sequence[r] = s;

#pragma omp parallel
  {
    std::vector<float> scores;
#pragma omp for collapse(2) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t s = row_sequence[r];
        if (s < 0) continue;
        const int64_t position = query_position[s] + (r - query_begin[s]);
        const int64_t visible = args.causal ? std::min<int64_t>(key_length[s], position + 1) : key_length[s];
        const float* qh = q + r * inner + h * head_dim;
        const float* kh = k + key_begin[s] * inner + h * head_dim;
        const float* vh = v + key_begin[s] * inner + h * head_dim;
        const float* bias_h = bias ? bias + h * bias_width + args.bias_max_offset - position : nullptr;
        scores.resize(static_cast<size_t>(visible));
        float max = -INFINITY;
        for (int64_t j = 0; j < visible; ++j) {
          float dot = 0.0f;
          const float* kj = kh + j * inner;
          for (int64_t d = 0; d < head_dim; ++d) dot += qh[d] * kj[d];
          if (bias_h) dot += bias_h[j];
          scores[j] = dot;
          max = std::max(max, dot);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < visible; ++j) sum += (scores[j] = std::exp(scores[j] - max));
        const float inv = 1.0f / sum;
        float* oh = o + r * inner + h * head_dim;
        std::fill(oh, oh + head_dim, 0.0f);
        for (int64_t j = 0; j < visible; ++j) {
          const float p = scores[j] * inv;
          const float* vj = vh + j * inner;
          for (int64_t d = 0; d < head_dim; ++d) oh[d] += p * vj[d];
        }
      }
    }
  }
}

void attention_with_append(const Tensor& queries, const Tensor& new_keys, const Tensor& new_values, Tensor& key_cache,
                           Tensor& value_cache, const AttentionLayout& layout, const AttentionArgs& args, Tensor& out) {
  const int32_t* query_begin = layout.query_begin.data<int32_t>();
  const int32_t* key_begin = layout.key_begin.data<int32_t>();
  const int32_t* query_position = layout.query_position.data<int32_t>();
  const int64_t inner = queries.dim(1);
  for (auto [rows, cache] : {std::pair<const Tensor*, Tensor*>{&new_keys, &key_cache}, {&new_values, &value_cache}}) {
    for (int64_t s = 0; s < layout.sequences(); ++s)
      for (int64_t r = query_begin[s]; r < query_begin[s + 1]; ++r)
        std::memcpy(cache->data<float>() + (key_begin[s] + query_position[s] + r - query_begin[s]) * inner,
                    rows->data<float>() + r * inner, static_cast<size_t>(inner) * sizeof(float));
  }
  cpu::attention(queries, key_cache, value_cache, layout, args, out);
}

}  // namespace elephant::ops::cpu
