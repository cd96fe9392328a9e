#pragma once

#include "core/tensor.h"

namespace elephant::ops {

// hidden += y: same shape, dtype and device.
void add_in_place(Tensor& hidden, const Tensor& y);

// x *= factor.
void scale_in_place(Tensor& x, float factor);

// x += value for an I32 tensor: decode positions advance on the device.
void add_scalar(Tensor& x, int32_t value);

// y = x in y's dtype (F32, F16 or BF16; rounding to nearest even), same shape and device.
void convert(const Tensor& x, Tensor& y);
Tensor convert(const Tensor& x, DType dtype);  // x itself when it has that dtype

}  // namespace elephant::ops
