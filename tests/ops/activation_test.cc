#include "ops/activation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using ops::Activation;
using testref::close_elementwise;
using testref::to_double;

// Inputs: random values over the interesting range, plus fixed points in the tails and around 0.
Tensor make_inputs(std::mt19937& rng, int64_t random_count) {
  std::vector<float> values = {0.0f, -0.0f, 1.0f,  -1.0f,  0.5f,  -0.5f,  3.0f,   -3.0f,   1e-6f, -1e-6f,
                               6.0f, -6.0f, 10.0f, -10.0f, 30.0f, -30.0f, 100.0f, -100.0f, 1e4f,  -1e4f};
  std::uniform_real_distribution<float> dist(-8.0f, 8.0f);
  for (int64_t i = 0; i < random_count; ++i) values.push_back(dist(rng));
  return Tensor::from_vector(values, {static_cast<int64_t>(values.size())});
}

// The float formulas lose at most a few ulps of each term; the only amplification is the cancellation in
// 1 + tanh / 1 + erf for negative x, where an ulp of 1 (2u) is multiplied by 0.5 |x|. Hence
// |y - ref| <= 8u * (|ref| + |x|), some 50x below the largest gelu vs gelu_new difference (~5e-4 * |x|), so
// a mix-up of the two formulas, or of any pair, fails.
::testing::AssertionResult check(Activation activation, const Tensor& x, const Tensor& y) {
  const std::vector<double> xv = to_double(x);
  std::vector<double> ref(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) ref[i] = testref::activate(activation, xv[i]);
  return close_elementwise(
      y, ref, [&](size_t i) { return 8.0 * testref::kFloatEps * (std::abs(ref[i]) + std::abs(xv[i])) + 1e-37; });
}

const std::vector<Activation> kAll = {Activation::ReLU, Activation::Gelu, Activation::GeluNew, Activation::Silu};

TEST(ActivationTest, MatchesReference) {
  for (Activation activation : kAll) {
    SCOPED_TRACE(ops::activation_name(activation));
    std::mt19937 rng(7);
    const Tensor x = make_inputs(rng, 1001);
    Tensor y = x.clone();
    ops::activate(activation, y);
    EXPECT_TRUE(check(activation, x, y));
  }
}

TEST(ActivationTest, LargeTensorsAndOtherShapes) {
  // Past the threshold where the loop runs in parallel, and on a 3-D shape.
  for (Activation activation : kAll) {
    SCOPED_TRACE(ops::activation_name(activation));
    std::mt19937 rng(8);
    const Tensor x = testref::random_tensor({3, 171, 137}, rng, -8.0f, 8.0f);
    Tensor y = x.clone();
    ops::activate(activation, y);
    ASSERT_EQ(y.shape(), x.shape());
    EXPECT_TRUE(check(activation, x, y));
  }
}

TEST(ActivationTest, ReluIsExact) {
  std::mt19937 rng(9);
  const Tensor x = make_inputs(rng, 100);
  Tensor y = x.clone();
  ops::activate(Activation::ReLU, y);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = x.data<float>()[i];
    EXPECT_EQ(y.data<float>()[i], v > 0.0f ? v : 0.0f);
  }
}

TEST(ActivationTest, GeluAndGeluNewAreDistinguishable) {
  // Sanity check that the tolerance above can tell the two GELU variants apart.
  const Tensor x = Tensor::from_vector(std::vector<float>{-2.5f, -1.5f, 1.5f, 2.5f}, {4});
  Tensor erf_version = x.clone();
  ops::activate(Activation::Gelu, erf_version);
  EXPECT_FALSE(check(Activation::GeluNew, x, erf_version));
  Tensor tanh_version = x.clone();
  ops::activate(Activation::GeluNew, tanh_version);
  EXPECT_FALSE(check(Activation::Gelu, x, tanh_version));
}

TEST(ActivationTest, EmptyTensor) {
  Tensor empty = Tensor::empty({0, 4});
  for (Activation activation : kAll) EXPECT_NO_THROW(ops::activate(activation, empty));
}

TEST(ActivationTest, ParsesTransformersNames) {
  EXPECT_EQ(ops::parse_activation("relu"), Activation::ReLU);
  EXPECT_EQ(ops::parse_activation("gelu"), Activation::Gelu);
  EXPECT_EQ(ops::parse_activation("gelu_new"), Activation::GeluNew);
  EXPECT_EQ(ops::parse_activation("gelu_pytorch_tanh"), Activation::GeluNew);
  EXPECT_EQ(ops::parse_activation("silu"), Activation::Silu);
  EXPECT_EQ(ops::parse_activation("swish"), Activation::Silu);
  for (Activation activation : kAll) EXPECT_EQ(ops::parse_activation(ops::activation_name(activation)), activation);
}

TEST(ActivationTest, UnknownNameThrows) {
  for (const char* name : {"", "tanh", "gelu_fast", "quick_gelu", "RELU", "relu ", "gated-gelu", "sigmoid"})
    EXPECT_THROW(ops::parse_activation(name), std::invalid_argument) << "\"" << name << "\"";
}

}  // namespace
}  // namespace elephant
