#pragma once

#include "core/tensor.h"

namespace elephant::ops {

// Over the last dimension, in float32 with the maximum subtracted first.
void softmax(Tensor& x);                       // in place, any floating dtype
void log_softmax(const Tensor& x, Tensor& y);  // y (F32) = x - max - log(sum(exp(x - max))), x any floating dtype

}  // namespace elephant::ops
