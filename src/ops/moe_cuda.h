#pragma once

// The CUDA fast path behind ops::route_and_sort_top1 (dispatch.cc), named here because the CPU has no counterpart:
// the CPU, and CUDA batches larger than one routing block, run route_top1 and sort_by_expert.

#include "core/tensor.h"

namespace elephant::ops::cuda {

// Routes and sorts in one launch when every token fits one routing block (16 tokens at d_model <= 1536): launches it
// and returns true. Otherwise returns false and does nothing. Arguments as checked by ops/dispatch.cc.
bool route_and_sort_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active,
                         Tensor& probability, Tensor& sorted_rows, Tensor& offsets);

}  // namespace elephant::ops::cuda
