#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "ops/moe_routing.h"

namespace elephant::ops {

Top1Routing route_top1(const Tensor& router_logits, const std::vector<uint8_t>& active) {
  const int64_t tokens = router_logits.dim(0);
  const int64_t experts = router_logits.dim(1);
  if (!active.empty() && static_cast<int64_t>(active.size()) != tokens)
    throw std::invalid_argument("route_top1: " + std::to_string(active.size()) + " activity flags for " +
                                std::to_string(tokens) + " tokens");
  Top1Routing routing;
  routing.expert.resize(tokens);
  routing.probability.resize(tokens);
  const float* logits = router_logits.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (!active.empty() && !active[t]) {
      routing.expert[t] = static_cast<int32_t>(experts);
      routing.probability[t] = 0.0f;
      continue;
    }
    const float* row = logits + t * experts;
    const float max = *std::max_element(row, row + experts);
    float sum = 0.0f;
    for (int64_t e = 0; e < experts; ++e) sum += std::exp(row[e] - max);
    // The chosen expert is the one with the largest probability; probabilities are computed like
    // torch.softmax so that the scale matches to the last bit where possible.
    int64_t best = 0;
    float best_probability = -1.0f;
    for (int64_t e = 0; e < experts; ++e) {
      const float p = std::exp(row[e] - max) / sum;
      if (p > best_probability) {
        best_probability = p;
        best = e;
      }
    }
    routing.expert[t] = static_cast<int32_t>(best);
    routing.probability[t] = best_probability;
  }
  return routing;
}

ExpertGroups group_by_expert(const std::vector<int32_t>& expert, int num_experts) {
  ExpertGroups groups;
  groups.offsets.assign(num_experts + 1, 0);
  for (int32_t e : expert)
    if (e >= 0 && e < num_experts) ++groups.offsets[e + 1];
  for (int e = 0; e < num_experts; ++e) groups.offsets[e + 1] += groups.offsets[e];
  groups.rows.resize(groups.offsets[num_experts]);
  std::vector<int64_t> next(groups.offsets.begin(), groups.offsets.end() - 1);
  for (size_t row = 0; row < expert.size(); ++row) {
    const int32_t e = expert[row];
    if (e >= 0 && e < num_experts) groups.rows[next[e]++] = static_cast<int32_t>(row);
  }
  return groups;
}

void gather_rows(const Tensor& x, const int32_t* rows, int64_t count, Tensor& out) {
  const int64_t d = x.dim(-1);
  if (out.dim(0) < count || out.dim(-1) != d)
    throw std::invalid_argument("gather_rows: " + std::to_string(count) + " rows of " + shape_string(x.shape()) +
                                " into " + shape_string(out.shape()));
  const float* in = x.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < count; ++i) std::copy_n(in + static_cast<int64_t>(rows[i]) * d, d, o + i * d);
}

void scatter_scaled_add(const Tensor& y, const int32_t* rows, int64_t count, const float* scale, Tensor& out) {
  const int64_t d = out.dim(-1);
  if (y.dim(0) < count || y.dim(-1) != d)
    throw std::invalid_argument("scatter_scaled_add: " + std::to_string(count) + " rows of " + shape_string(y.shape()) +
                                " into " + shape_string(out.shape()));
  const float* in = y.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for if (count * d > 65536)
  for (int64_t i = 0; i < count; ++i) {
    const int64_t row = rows[i];
    const float s = scale[row];
    for (int64_t j = 0; j < d; ++j) o[row * d + j] += in[i * d + j] * s;
  }
}

}  // namespace elephant::ops
