#pragma once

#include "core/tensor.h"

namespace elephant::ops {

// Over the last dimension, in float32 with the maximum subtracted first.
void softmax(Tensor& x);                       // in place
void log_softmax(const Tensor& x, Tensor& y);  // y = x - max - log(sum(exp(x - max)))

}  // namespace elephant::ops
