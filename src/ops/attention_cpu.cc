#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "ops/attention.h"

namespace elephant::ops {

void attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
               const AttentionArgs& args, Tensor& out) {
  const int64_t heads = args.num_heads;
  const int64_t head_dim = args.head_dim;
  const int64_t inner = heads * head_dim;
  const size_t sequences = layout.key_begin.size();
  if (queries.dim(-1) != inner || keys.dim(-1) != inner || values.shape() != keys.shape() ||
      out.shape() != queries.shape() || layout.query_begin.size() != sequences + 1 ||
      layout.key_length.size() != sequences || layout.query_position.size() != sequences ||
      layout.query_begin.back() > queries.dim(0))
    throw std::invalid_argument("attention: queries " + shape_string(queries.shape()) + ", keys " +
                                shape_string(keys.shape()) + ", values " + shape_string(values.shape()) + ", out " +
                                shape_string(out.shape()) + " do not match the layout");
  for (size_t s = 0; s < sequences; ++s) {
    if (layout.key_begin[s] < 0 || layout.key_begin[s] + layout.key_length[s] > keys.dim(0))
      throw std::invalid_argument("attention: keys of sequence " + std::to_string(s) + " out of range of " +
                                  shape_string(keys.shape()));
    // Every (query, key) distance must have a column in the bias table.
    const int64_t first = layout.query_position[s];
    const int64_t last = first + layout.query_begin[s + 1] - layout.query_begin[s] - 1;
    if (args.position_bias && (last > args.bias_max_offset || layout.key_length[s] - 1 - first > args.bias_max_offset))
      throw std::invalid_argument("attention: position bias covers distances up to " +
                                  std::to_string(args.bias_max_offset) + ", sequence " + std::to_string(s) +
                                  " needs more");
  }
  if (args.position_bias && args.position_bias->shape() != Shape{heads, 2 * args.bias_max_offset + 1})
    throw std::invalid_argument("attention: position bias " + shape_string(args.position_bias->shape()) + " for " +
                                std::to_string(heads) + " heads and offsets up to " +
                                std::to_string(args.bias_max_offset));

  const float* q = queries.data<float>();
  const float* k = keys.data<float>();
  const float* v = values.data<float>();
  float* o = out.data<float>();
  const float* bias = args.position_bias ? args.position_bias->data<float>() : nullptr;
  const int64_t bias_width = 2 * static_cast<int64_t>(args.bias_max_offset) + 1;

  // One work item per (query row, head): decode steps have one query per sequence, so parallelizing
  // over sequences alone would leave cores idle.
  std::vector<int64_t> row_sequence(static_cast<size_t>(layout.query_begin.back()));
  for (size_t s = 0; s < sequences; ++s)
    for (int64_t r = layout.query_begin[s]; r < layout.query_begin[s + 1]; ++r) row_sequence[r] = s;
  const int64_t rows = layout.query_begin.back();

#pragma omp parallel
  {
    std::vector<float> scores;
#pragma omp for collapse(2) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t s = row_sequence[r];
        const int64_t position = layout.query_position[s] + (r - layout.query_begin[s]);
        const int64_t visible = args.causal ? std::min(layout.key_length[s], position + 1) : layout.key_length[s];
        const float* qh = q + r * inner + h * head_dim;
        const float* kh = k + layout.key_begin[s] * inner + h * head_dim;
        const float* vh = v + layout.key_begin[s] * inner + h * head_dim;
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

}  // namespace elephant::ops
