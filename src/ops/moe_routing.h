#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace elephant::ops {

// Top-1 routing decisions, one per token.
struct Top1Routing {
  std::vector<int32_t> expert;     // chosen expert; num_experts for inactive rows (they are never computed)
  std::vector<float> probability;  // softmax probability of the chosen expert, which scales its output
};

// Router softmax in float32 and top-1 (first maximum on ties, as torch.max) over logits [tokens, experts].
// Rows with active[row] == 0 get the past-the-end expert id; an empty `active` means every row is active.
Top1Routing route_top1(const Tensor& router_logits, const std::vector<uint8_t>& active = {});

// Rows grouped by expert: rows[offsets[e] .. offsets[e + 1]) are the rows routed to expert e, in row order.
// Rows routed past the last expert are left out.
struct ExpertGroups {
  std::vector<int32_t> rows;
  std::vector<int64_t> offsets;  // size num_experts + 1
};

// A stable counting sort on the expert id.
ExpertGroups group_by_expert(const std::vector<int32_t>& expert, int num_experts);

// out[i] = x[rows[i]] for i < rows.size(); out is [rows.size(), d].
void gather_rows(const Tensor& x, const int32_t* rows, int64_t count, Tensor& out);

// out[rows[i]] += scale[rows[i]] * y[i]: un-permute expert outputs, scale by the router probability and
// add them to the residual stream, in one pass.
void scatter_scaled_add(const Tensor& y, const int32_t* rows, int64_t count, const float* scale, Tensor& out);

}  // namespace elephant::ops
