#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace elephant {

enum class DType { F32, F16, BF16, I64, I32, I8, U8 };

size_t dtype_size(DType dtype);
std::string dtype_name(DType dtype);  // the safetensors spelling: "F32", "BF16", ...

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::I64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}
template <>
constexpr DType dtype_of<int8_t>() {
  return DType::I8;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::U8;
}

bool is_floating(DType dtype);  // F32, F16 or BF16

// Exact widening conversions of stored half-precision values.
float half_to_float(uint16_t bits);
float bfloat16_to_float(uint16_t bits);
// Narrowing conversions, rounding to nearest even as the CUDA intrinsics do (__float2half_rn, __float2bfloat16).
uint16_t float_to_half(float value);
uint16_t float_to_bfloat16(float value);

}  // namespace elephant
