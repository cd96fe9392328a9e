#pragma once

#include <string>

#include "core/tensor.h"

namespace elephant::ops {

// The activations transformers' ACT2FN offers that Switch/T5-style FFNs use.
enum class Activation { ReLU, Gelu, GeluNew, Silu };

Activation parse_activation(const std::string& name);  // throws std::invalid_argument for unknown names
std::string activation_name(Activation activation);

void activate(Activation activation, Tensor& x);  // in place

}  // namespace elephant::ops
