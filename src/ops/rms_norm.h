#pragma once

#include "core/tensor.h"

namespace elephant::ops {

// T5-style layer norm over the last dimension: y = weight * x / sqrt(mean(x^2) + eps), no mean subtraction and
// no bias. x, weight and y share one dtype; the statistics are float32.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y);

}  // namespace elephant::ops
