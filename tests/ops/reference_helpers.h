#pragma once

// Helpers shared by the op and layer tests: seeded random tensors and comparisons of a float32 result
// against a double-precision reference computed in the test.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "ops/activation.h"

namespace elephant::testref {

// Unit roundoff of float32.
constexpr double kFloatEps = 1.0 / (1 << 24);

inline Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(shape);
  std::uniform_real_distribution<float> dist(lo, hi);
  float* data = t.numel() ? t.data<float>() : nullptr;
  for (int64_t i = 0; i < t.numel(); ++i) data[i] = dist(rng);
  return t;
}

// The activations in double precision: ReLU, exact GELU (x * Phi(x)), transformers' NewGELUActivation (tanh
// approximation), SiLU.
inline double activate(ops::Activation activation, double x) {
  switch (activation) {
    case ops::Activation::ReLU:
      return x > 0.0 ? x : 0.0;
    case ops::Activation::Gelu:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case ops::Activation::GeluNew:
      return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case ops::Activation::Silu:
      return x / (1.0 + std::exp(-x));
  }
  return NAN;
}

// The raw 16-bit patterns of an F16 or BF16 CPU tensor, and a tensor made of such patterns.
inline std::vector<uint16_t> bits_of(const Tensor& t) {
  std::vector<uint16_t> bits(static_cast<size_t>(t.numel()));
  if (t.numel()) std::memcpy(bits.data(), t.raw(), t.nbytes());
  return bits;
}

inline Tensor half_tensor(DType dtype, const std::vector<uint16_t>& bits, const Shape& shape) {
  Tensor t = Tensor::empty(shape, dtype);
  if (t.numel()) std::memcpy(t.raw(), bits.data(), t.nbytes());
  return t;
}

inline Tensor filled_tensor(const Shape& shape, float value) {
  Tensor t = Tensor::empty(shape);
  if (t.numel()) std::fill_n(t.data<float>(), t.numel(), value);
  return t;
}

inline std::vector<double> to_double(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  if (t.numel()) std::copy_n(t.data<float>(), t.numel(), out.begin());
  return out;
}

inline std::vector<float> to_vector(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (t.numel()) std::copy_n(t.data<float>(), t.numel(), out.begin());
  return out;
}

inline double max_abs(const std::vector<double>& values) {
  double m = 0.0;
  for (double v : values) m = std::max(m, std::abs(v));
  return m;
}

// Passes when |actual[i] - expected[i]| <= tolerance(i) for every i (NaN in either side fails).
inline ::testing::AssertionResult close_elementwise(const Tensor& actual, const std::vector<double>& expected,
                                                    const std::function<double(size_t)>& tolerance) {
  if (static_cast<size_t>(actual.numel()) != expected.size())
    return ::testing::AssertionFailure() << "size " << actual.numel() << " vs reference " << expected.size();
  const float* a = actual.numel() ? actual.data<float>() : nullptr;
  size_t bad = 0;
  size_t worst = 0;
  double worst_ratio = -1.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double diff = std::abs(static_cast<double>(a[i]) - expected[i]);
    const double tol = tolerance(i);
    const double ratio = std::isnan(diff) ? std::numeric_limits<double>::infinity() : diff / tol;
    if (!(diff <= tol)) ++bad;
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream msg;
  msg.precision(9);
  msg << bad << " of " << expected.size() << " elements out of tolerance; worst at flat index " << worst << ": got "
      << a[worst] << ", expected " << expected[worst] << ", tolerance " << tolerance(worst);
  return ::testing::AssertionFailure() << msg.str();
}

// max |actual - expected| <= rel * max(1, max |expected|): for results whose rounding error scales with the
// largest magnitude involved.
inline ::testing::AssertionResult close_to_reference(const Tensor& actual, const std::vector<double>& expected,
                                                     double rel) {
  const double tol = rel * std::max(1.0, max_abs(expected));
  return close_elementwise(actual, expected, [tol](size_t) { return tol; });
}

inline ::testing::AssertionResult bitwise_equal(const Tensor& actual, const std::vector<float>& expected) {
  if (static_cast<size_t>(actual.numel()) != expected.size())
    return ::testing::AssertionFailure() << "size " << actual.numel() << " vs " << expected.size();
  const float* a = actual.numel() ? actual.data<float>() : nullptr;
  for (size_t i = 0; i < expected.size(); ++i)
    if (std::memcmp(&a[i], &expected[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "differs at flat index " << i << ": " << a[i] << " vs " << expected[i];
  return ::testing::AssertionSuccess();
}

}  // namespace elephant::testref
