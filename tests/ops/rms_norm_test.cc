#include "ops/rms_norm.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "layers/transformer_layers.h"
#include "ops/activation.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/reference_helpers.h"
#include "quantization/quantized_tensor.h"

namespace elephant {
namespace {

using testref::close_elementwise;
using testref::kFloatEps;
using testref::random_tensor;
using testref::to_double;

// y = w * x / sqrt(mean(x^2) + eps), per row of the last dimension, in double.
std::vector<double> reference_rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const int64_t d = x.dim(-1);
  const int64_t rows = d ? x.numel() / d : 0;
  const std::vector<double> xv = to_double(x), w = to_double(weight);
  std::vector<double> y(xv.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += xv[r * d + i] * xv[r * d + i];
    const double inv = 1.0 / std::sqrt(sum / static_cast<double>(d) + eps);
    for (int64_t i = 0; i < d; ++i) y[r * d + i] = w[i] * xv[r * d + i] * inv;
  }
  return y;
}

// The float sum of d squares has a relative error of at most ~d*u (sequential order), halved by the square
// root; the scaling adds a few roundings. So each element is within (d/2 + 8) u of |y| relative, which is
// at least 1e3 times smaller than any error from a wrong eps placement, a missing weight or a wrong row.
::testing::AssertionResult check(const Tensor& y, const std::vector<double>& ref, int64_t d) {
  return close_elementwise(y, ref, [&ref, d](size_t i) {
    return (0.5 * static_cast<double>(d) + 8.0) * kFloatEps * std::abs(ref[i]) + 1e-37;
  });
}

TEST(RmsNormTest, MatchesReferenceOnSeveralShapes) {
  std::mt19937 rng(42);
  for (const Shape& shape :
       {Shape{1, 1}, Shape{1, 7}, Shape{5, 13}, Shape{3, 4, 33}, Shape{64, 512}, Shape{2, 1000}, Shape{9}}) {
    for (float eps : {1e-6f, 1e-3f}) {
      SCOPED_TRACE(::testing::Message() << "shape " << shape_string(shape) << " eps " << eps);
      const Tensor x = random_tensor(shape, rng, -3.0f, 3.0f);
      const Tensor w = random_tensor({shape.back()}, rng, -2.0f, 2.0f);
      Tensor y = Tensor::empty(shape);
      ops::rms_norm(x, w, eps, y);
      EXPECT_TRUE(check(y, reference_rms_norm(x, w, eps), shape.back()));
    }
  }
}

// With tiny inputs, eps dominates mean(x^2): this checks that eps sits inside the square root and that it
// is the given eps; with huge inputs, the squares must not overflow for realistic widths.
TEST(RmsNormTest, EpsilonMattersForTinyInputsAndLargeInputsStayFinite) {
  std::mt19937 rng(43);
  for (float scale : {1e-4f, 1e-2f, 1e3f, 1e15f}) {
    SCOPED_TRACE(::testing::Message() << "scale " << scale);
    const Tensor x = random_tensor({6, 37}, rng, -scale, scale);
    const Tensor w = random_tensor({37}, rng, 0.5f, 1.5f);
    Tensor y = Tensor::empty({6, 37});
    ops::rms_norm(x, w, 1e-6f, y);
    EXPECT_TRUE(check(y, reference_rms_norm(x, w, 1e-6), 37));
  }
}

TEST(RmsNormTest, RowsAreIndependent) {
  // A row of zeros next to a row of large values: the zero row stays exactly zero (0 / sqrt(eps)).
  std::mt19937 rng(44);
  Tensor x = random_tensor({3, 10}, rng, -100.0f, 100.0f);
  std::fill_n(x.data<float>() + 10, 10, 0.0f);
  const Tensor w = random_tensor({10}, rng);
  Tensor y = Tensor::empty({3, 10});
  ops::rms_norm(x, w, 1e-6f, y);
  for (int i = 10; i < 20; ++i) EXPECT_EQ(y.data<float>()[i], 0.0f);
  EXPECT_TRUE(check(y, reference_rms_norm(x, w, 1e-6), 10));
}

TEST(RmsNormTest, EmptyRowsAreAllowed) {
  std::mt19937 rng(45);
  const Tensor x = Tensor::empty({0, 16});
  const Tensor w = random_tensor({16}, rng);
  Tensor y = Tensor::empty({0, 16});
  EXPECT_NO_THROW(ops::rms_norm(x, w, 1e-6f, y));
}

TEST(RmsNormTest, ShapeMismatchThrows) {
  std::mt19937 rng(46);
  const Tensor x = random_tensor({4, 8}, rng);
  Tensor y = Tensor::empty({4, 8});
  EXPECT_THROW(ops::rms_norm(x, random_tensor({7}, rng), 1e-6f, y), std::invalid_argument);
  Tensor wrong = Tensor::empty({4, 9});
  EXPECT_THROW(ops::rms_norm(x, random_tensor({8}, rng), 1e-6f, wrong), std::invalid_argument);
  Tensor flat = Tensor::empty({32});
  EXPECT_THROW(ops::rms_norm(x, random_tensor({8}, rng), 1e-6f, flat), std::invalid_argument);
}

TEST(RmsNormTest, LayerWrapperUsesItsWeightAndEpsilon) {
  std::mt19937 rng(47);
  layers::RmsNorm norm;
  norm.weight = random_tensor({21}, rng);
  norm.epsilon = 1e-2f;
  const Tensor x = random_tensor({5, 21}, rng, -0.1f, 0.1f);  // small, so that the epsilon matters
  const Tensor y = norm(x);
  ASSERT_EQ(y.shape(), x.shape());
  EXPECT_TRUE(check(y, reference_rms_norm(x, norm.weight, 1e-2), 21));
}

// The CPU op is rms_norm, scale_in_place and the projection, one after the other: the same bits.
TEST(RmsNormLinearTest, CpuIsRmsNormThenProjection) {
  std::mt19937 rng(48);
  for (const auto& [rows, k, n, count] : std::vector<std::array<int64_t, 4>>{
           {1, 8, 1, 0}, {3, 21, 7, 0}, {4, 64, 100, 0}, {6, 32, 5, 1}, {2, 40, 16, 3}, {0, 8, 4, 0}}) {
    for (float scale : {1.0f, 0.125f, -0.37f}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows, k " << k << ", n " << n << ", stack of " << count
                                        << ", scale " << scale);
      const Tensor x = random_tensor({rows, k}, rng, -3.0f, 3.0f);
      const Tensor g = random_tensor({k}, rng);
      const Tensor weights = count ? random_tensor({count, n, k}, rng) : random_tensor({n, k}, rng);
      Tensor normalized = Tensor::empty({rows, k});
      ops::rms_norm(x, g, 1e-6f, normalized);
      ops::scale_in_place(normalized, scale);
      const Shape y_shape = count ? Shape{count, rows, n} : Shape{rows, n};
      Tensor expected = Tensor::empty(y_shape);
      if (count)
        ops::linear_stack(normalized, weights, expected);
      else
        ops::gemm(normalized, weights, expected);
      Tensor y = Tensor::empty(y_shape);
      ops::rms_norm_linear(x, g, 1e-6f, weights, y, {scale});
      EXPECT_TRUE(testref::bitwise_equal(y, testref::to_vector(expected)));
    }
  }
}

// The activation follows the projection, for a Linear weight, a stack and a quantized weight; a quantized weight
// takes no scale.
TEST(RmsNormLinearTest, ActivationFollowsTheProjection) {
  std::mt19937 rng(50);
  const Tensor x = random_tensor({3, 32}, rng, -3.0f, 3.0f);
  const Tensor g = random_tensor({32}, rng);
  const Tensor w = random_tensor({6, 32}, rng), stack = random_tensor({2, 6, 32}, rng);
  const QuantizedTensor q = quantize(random_tensor({6, 32}, rng, -0.2f, 0.2f), 8, 0, "w");
  for (ops::Activation activation : {ops::Activation::ReLU, ops::Activation::Silu}) {
    SCOPED_TRACE(static_cast<int>(activation));
    const auto check = [&](const auto& weights, const Shape& shape, float scale) {
      Tensor expected = Tensor::empty(shape);
      ops::rms_norm_linear(x, g, 1e-6f, weights, expected, {scale});
      ops::activate(activation, expected);
      Tensor y = Tensor::empty(shape);
      ops::rms_norm_linear(x, g, 1e-6f, weights, y, {scale, activation});
      EXPECT_TRUE(testref::bitwise_equal(y, testref::to_vector(expected)));
    };
    check(w, {3, 6}, 0.5f);
    check(stack, {2, 3, 6}, 1.0f);
    check(q, {3, 6}, 1.0f);
  }
  Tensor y = Tensor::empty({3, 6});
  EXPECT_THROW(ops::rms_norm_linear(x, g, 1e-6f, q, y, {0.5f}), std::invalid_argument);
}

TEST(RmsNormLinearTest, ZeroWidthRowsGiveZeros) {
  const Tensor x = Tensor::empty({2, 0});
  Tensor y = Tensor::from_vector(std::vector<float>(6, 1.0f), {2, 3});
  ops::rms_norm_linear(x, Tensor::empty({0}), 1e-6f, Tensor::empty({3, 0}), y);
  EXPECT_EQ(y.to_vector<float>(), std::vector<float>(6, 0.0f));
}

TEST(RmsNormLinearTest, RejectsMismatchedArguments) {
  std::mt19937 rng(49);
  const Tensor x = random_tensor({2, 8}, rng), g = random_tensor({8}, rng);
  const Tensor w = random_tensor({5, 8}, rng), stack = random_tensor({3, 5, 8}, rng);
  Tensor y = Tensor::empty({2, 5}), y_stack = Tensor::empty({3, 2, 5});
  EXPECT_NO_THROW(ops::rms_norm_linear(x, g, 1e-6f, w, y));
  EXPECT_NO_THROW(ops::rms_norm_linear(x, g, 1e-6f, stack, y_stack));
  EXPECT_THROW(ops::rms_norm_linear(x, random_tensor({7}, rng), 1e-6f, w, y), std::invalid_argument);
  EXPECT_THROW(ops::rms_norm_linear(x, g, 1e-6f, random_tensor({5, 7}, rng), y), std::invalid_argument);
  EXPECT_THROW(ops::rms_norm_linear(x, g, 1e-6f, stack, y), std::invalid_argument);
  EXPECT_THROW(ops::rms_norm_linear(x, g, 1e-6f, w, y_stack), std::invalid_argument);
  EXPECT_THROW(ops::rms_norm_linear(x.reshape({16}), g, 1e-6f, w, y), std::invalid_argument);
  EXPECT_THROW(ops::rms_norm_linear(x, g, 1e-6f, random_tensor({8}, rng), y), std::invalid_argument);
  Tensor y_wide = Tensor::empty({2, 6});
  EXPECT_THROW(ops::rms_norm_linear(x, g, 1e-6f, w, y_wide), std::invalid_argument);
}

TEST(RmsNormLinearTest, LayerProjectsTheNormalizedRows) {
  std::mt19937 rng(50);
  const layers::RmsNorm norm{random_tensor({24}, rng), 1e-2f};
  const Tensor x = random_tensor({3, 24}, rng, -0.1f, 0.1f);
  const Tensor w = random_tensor({10, 24}, rng), stack = random_tensor({2, 10, 24}, rng);
  EXPECT_TRUE(testref::bitwise_equal(norm.linear(x, w), testref::to_vector(ops::linear(norm(x), w))));
  Tensor expected = Tensor::empty({2, 3, 10});
  ops::linear_stack(norm(x), stack, expected);
  EXPECT_TRUE(testref::bitwise_equal(norm.linear(x, stack), testref::to_vector(expected)));
}

}  // namespace
}  // namespace elephant
