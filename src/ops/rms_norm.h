#pragma once

#include "core/tensor.h"

namespace elephant::ops {

// T5-style layer norm: y = weight * x / sqrt(mean(x^2) + eps), no mean subtraction and no bias.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y);

}  // namespace elephant::ops
