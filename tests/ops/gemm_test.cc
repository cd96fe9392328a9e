#include "ops/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "ops/activation.h"
#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::close_elementwise;
using testref::kFloatEps;
using testref::random_tensor;
using testref::to_double;

struct Reference {
  std::vector<double> c;          // alpha * a·op(b) + beta * c0
  std::vector<double> magnitude;  // |alpha| * sum |a||b| + |beta c0|: what the rounding error scales with
};

// Direct triple loop in double. b is [n, k] when transposed, [k, n] otherwise.
Reference reference_gemm(const Tensor& a, const Tensor& b, const std::vector<double>& c0, bool transpose_b,
                         double alpha, double beta) {
  const int64_t m = a.dim(0), k = a.dim(1);
  const int64_t n = transpose_b ? b.dim(0) : b.dim(1);
  const std::vector<double> av = to_double(a), bv = to_double(b);
  Reference ref;
  ref.c.resize(static_cast<size_t>(m * n));
  ref.magnitude.resize(ref.c.size());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0, abs_sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double bv_pj = transpose_b ? bv[j * k + p] : bv[p * n + j];
        sum += av[i * k + p] * bv_pj;
        abs_sum += std::abs(av[i * k + p] * bv_pj);
      }
      const size_t idx = static_cast<size_t>(i * n + j);
      const double prior = c0.empty() ? 0.0 : c0[idx];
      ref.c[idx] = alpha * sum + (beta != 0.0 ? beta * prior : 0.0);
      ref.magnitude[idx] = std::abs(alpha) * abs_sum + std::abs(beta * prior);
    }
  return ref;
}

// Any summation order (blocked, FMA or not) of a k-term dot product has an error of at most
// gamma_k * sum |a_i b_i| with gamma_k ~= k * u; alpha, beta and the final add cost a few more roundings.
// Twice that worst-case bound still is far below the error of any wrong element (an O(|a||b|) term).
std::function<double(size_t)> gemm_tolerance(const Reference& ref, int64_t k) {
  return [&ref, k](size_t i) { return 2.0 * (static_cast<double>(k) + 4.0) * kFloatEps * ref.magnitude[i] + 1e-30; };
}

struct GemmShape {
  int64_t m, n, k;
};

const std::vector<GemmShape> kShapes = {{1, 1, 1},    {1, 7, 5},     {3, 13, 9},  {5, 3, 1},
                                        {17, 33, 65}, {64, 96, 128}, {2, 1, 300}, {31, 9, 8}};

TEST(GemmTest, MatchesReferenceWithTransposedB) {
  std::mt19937 rng(1234);
  for (const GemmShape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    const Tensor a = random_tensor({s.m, s.k}, rng);
    const Tensor b = random_tensor({s.n, s.k}, rng);
    Tensor c = Tensor::empty({s.m, s.n});
    ops::gemm(a, b, c);  // defaults: transpose_b, alpha 1, beta 0
    const Reference ref = reference_gemm(a, b, {}, true, 1.0, 0.0);
    EXPECT_TRUE(close_elementwise(c, ref.c, gemm_tolerance(ref, s.k)));
  }
}

TEST(GemmTest, MatchesReferenceWithPlainB) {
  std::mt19937 rng(99);
  for (const GemmShape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    const Tensor a = random_tensor({s.m, s.k}, rng);
    const Tensor b = random_tensor({s.k, s.n}, rng);
    Tensor c = Tensor::empty({s.m, s.n});
    ops::GemmArgs args;
    args.transpose_b = false;
    ops::gemm(a, b, c, args);
    const Reference ref = reference_gemm(a, b, {}, false, 1.0, 0.0);
    EXPECT_TRUE(close_elementwise(c, ref.c, gemm_tolerance(ref, s.k)));
  }
}

TEST(GemmTest, AlphaAndBetaAccumulateIntoC) {
  std::mt19937 rng(7);
  const std::vector<std::pair<float, float>> coefficients = {{0.5f, -1.5f}, {-2.0f, 1.0f}, {1.0f, 0.25f}, {0.0f, 3.0f}};
  for (bool transpose_b : {true, false})
    for (const auto& [alpha, beta] : coefficients)
      for (const GemmShape& s : {GemmShape{1, 9, 3}, GemmShape{6, 11, 17}, GemmShape{20, 24, 40}}) {
        SCOPED_TRACE(::testing::Message() << "transpose_b=" << transpose_b << " alpha=" << alpha << " beta=" << beta
                                          << " m=" << s.m << " n=" << s.n << " k=" << s.k);
        const Tensor a = random_tensor({s.m, s.k}, rng);
        const Tensor b = transpose_b ? random_tensor({s.n, s.k}, rng) : random_tensor({s.k, s.n}, rng);
        Tensor c = random_tensor({s.m, s.n}, rng, -2.0f, 2.0f);
        const std::vector<double> c0 = to_double(c);
        ops::GemmArgs args;
        args.transpose_b = transpose_b;
        args.alpha = alpha;
        args.beta = beta;
        ops::gemm(a, b, c, args);
        const Reference ref = reference_gemm(a, b, c0, transpose_b, alpha, beta);
        EXPECT_TRUE(close_elementwise(c, ref.c, gemm_tolerance(ref, s.k)));
      }
}

// c = act(alpha * a·b^T + beta * c): the activation follows the accumulation into c.
TEST(GemmTest, ActivationAppliesToTheAccumulatedProduct) {
  std::mt19937 rng(24);
  const Tensor a = random_tensor({3, 7}, rng, -2.0f, 2.0f);
  const Tensor b = random_tensor({5, 7}, rng, -2.0f, 2.0f);
  const Tensor c0 = random_tensor({3, 5}, rng, -2.0f, 2.0f);
  for (ops::Activation activation :
       {ops::Activation::ReLU, ops::Activation::Gelu, ops::Activation::GeluNew, ops::Activation::Silu}) {
    SCOPED_TRACE(static_cast<int>(activation));
    ops::GemmArgs args{true, 1.5f, 0.5f};
    Tensor expected = c0.clone();
    ops::gemm(a, b, expected, args);
    ops::activate(activation, expected);
    args.activation = activation;
    Tensor c = c0.clone();
    ops::gemm(a, b, c, args);
    EXPECT_TRUE(testref::bitwise_equal(c, testref::to_vector(expected)));
  }
}

// Each matrix of linear_stack's output is the linear() of its weight, against the double reference; bad shapes
// and dtypes are rejected with both shapes in the message.
TEST(GemmTest, LinearStackProjectsWithEveryWeight) {
  std::mt19937 rng(21);
  for (const GemmShape& s : {GemmShape{1, 12, 8}, GemmShape{5, 7, 33}, GemmShape{0, 4, 3}}) {
    SCOPED_TRACE(::testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    const Tensor x = random_tensor({s.m, s.k}, rng);
    const Tensor weights = random_tensor({3, s.n, s.k}, rng);
    Tensor y = testref::filled_tensor({3, s.m, s.n}, std::numeric_limits<float>::quiet_NaN());
    ops::linear_stack(x, weights, y);
    for (int64_t i = 0; i < 3; ++i) {
      const Tensor w = weights.narrow(i, 1).reshape({s.n, s.k});
      const Reference ref = reference_gemm(x, w, {}, true, 1.0, 0.0);
      EXPECT_TRUE(close_elementwise(y.narrow(i, 1).reshape({s.m, s.n}), ref.c, gemm_tolerance(ref, s.k))) << i;
    }
  }
  Tensor y = Tensor::empty({3, 2, 4});
  try {
    ops::linear_stack(random_tensor({2, 5}, rng), random_tensor({3, 4, 6}, rng), y);
    FAIL() << "a weight of the wrong width was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 4, 6]"), std::string::npos) << e.what();
  }
}

// linear() writes into uninitialized memory with beta = 0: the prior content of c must never leak in,
// not even NaN (0 * NaN would be NaN).
TEST(GemmTest, BetaZeroIgnoresPriorContentOfC) {
  std::mt19937 rng(5);
  for (bool transpose_b : {true, false}) {
    const Tensor a = random_tensor({4, 10}, rng);
    const Tensor b = transpose_b ? random_tensor({6, 10}, rng) : random_tensor({10, 6}, rng);
    Tensor c = testref::filled_tensor({4, 6}, std::numeric_limits<float>::quiet_NaN());
    ops::GemmArgs args;
    args.transpose_b = transpose_b;
    ops::gemm(a, b, c, args);
    const Reference ref = reference_gemm(a, b, {}, transpose_b, 1.0, 0.0);
    EXPECT_TRUE(close_elementwise(c, ref.c, gemm_tolerance(ref, 10)));
  }
}

TEST(GemmTest, EmptyRowsOrColumnsAreANoOp) {
  std::mt19937 rng(3);
  const Tensor a0 = random_tensor({0, 5}, rng);
  const Tensor b = random_tensor({4, 5}, rng);
  Tensor c0 = Tensor::empty({0, 4});
  EXPECT_NO_THROW(ops::gemm(a0, b, c0));
  const Tensor a = random_tensor({3, 5}, rng);
  const Tensor b0 = random_tensor({0, 5}, rng);
  Tensor c1 = Tensor::empty({3, 0});
  EXPECT_NO_THROW(ops::gemm(a, b0, c1));
}

// k = 0: the product is an empty sum, so c = beta * c (zero for beta = 0, even over garbage).
TEST(GemmTest, EmptyInnerDimensionScalesC) {
  std::mt19937 rng(4);
  for (float beta : {0.0f, 0.5f}) {
    const Tensor a = Tensor::empty({3, 0});
    const Tensor b = Tensor::empty({4, 0});
    Tensor c = random_tensor({3, 4}, rng);
    std::vector<double> expected = to_double(c);
    for (double& v : expected) v *= beta;
    ops::GemmArgs args;
    args.beta = beta;
    ops::gemm(a, b, c, args);
    EXPECT_TRUE(testref::close_to_reference(c, expected, 1e-7)) << "beta " << beta;
  }
}

TEST(GemmTest, ShapeMismatchThrows) {
  std::mt19937 rng(11);
  const Tensor a = random_tensor({3, 4}, rng);
  Tensor c = Tensor::empty({3, 5});
  // Inner dimension differs (transposed b is [n, k]).
  EXPECT_THROW(ops::gemm(a, random_tensor({5, 6}, rng), c), std::invalid_argument);
  // b given as [k, n] but declared transposed: [4, 5] transposed has k = 5.
  EXPECT_THROW(ops::gemm(a, random_tensor({4, 5}, rng), c), std::invalid_argument);
  // Plain b with the wrong inner dimension.
  ops::GemmArgs plain;
  plain.transpose_b = false;
  EXPECT_THROW(ops::gemm(a, random_tensor({5, 4}, rng), c, plain), std::invalid_argument);
  // Output of the wrong shape.
  Tensor wrong_rows = Tensor::empty({2, 5});
  Tensor wrong_cols = Tensor::empty({3, 6});
  EXPECT_THROW(ops::gemm(a, random_tensor({5, 4}, rng), wrong_rows), std::invalid_argument);
  EXPECT_THROW(ops::gemm(a, random_tensor({5, 4}, rng), wrong_cols), std::invalid_argument);
  // Not 2-D.
  Tensor c3 = Tensor::empty({1, 3, 5});
  EXPECT_THROW(ops::gemm(a, random_tensor({5, 4}, rng), c3), std::invalid_argument);
  EXPECT_THROW(ops::gemm(random_tensor({1, 3, 4}, rng), random_tensor({5, 4}, rng), c), std::invalid_argument);
  // The correct call goes through.
  EXPECT_NO_THROW(ops::gemm(a, random_tensor({5, 4}, rng), c));
}

TEST(GemmTest, LinearOnThreeDimensionalInput) {
  std::mt19937 rng(21);
  for (const Shape& x_shape : {Shape{2, 3, 7}, Shape{1, 1, 16}, Shape{4, 5, 33}}) {
    const int64_t k = x_shape.back();
    for (int64_t n : {1, 9, 24}) {
      SCOPED_TRACE(::testing::Message() << "x " << shape_string(x_shape) << " n=" << n);
      const Tensor x = random_tensor(x_shape, rng);
      const Tensor w = random_tensor({n, k}, rng);
      const Tensor y = ops::linear(x, w);
      ASSERT_EQ(y.shape(), (Shape{x_shape[0], x_shape[1], n}));
      const Reference ref = reference_gemm(x.reshape({-1, k}), w, {}, true, 1.0, 0.0);
      EXPECT_TRUE(close_elementwise(y, ref.c, gemm_tolerance(ref, k)));
    }
  }
}

TEST(GemmTest, LinearOnTwoDimensionalAndEmptyInput) {
  std::mt19937 rng(22);
  const Tensor x = random_tensor({5, 13}, rng);
  const Tensor w = random_tensor({6, 13}, rng);
  const Tensor y = ops::linear(x, w);
  ASSERT_EQ(y.shape(), (Shape{5, 6}));
  const Reference ref = reference_gemm(x, w, {}, true, 1.0, 0.0);
  EXPECT_TRUE(close_elementwise(y, ref.c, gemm_tolerance(ref, 13)));

  const Tensor empty = ops::linear(random_tensor({0, 13}, rng), w);
  EXPECT_EQ(empty.shape(), (Shape{0, 6}));
}

TEST(GemmTest, LinearWeightMismatchThrows) {
  std::mt19937 rng(23);
  EXPECT_THROW(ops::linear(random_tensor({2, 3, 7}, rng), random_tensor({4, 8}, rng)), std::invalid_argument);
}

}  // namespace
}  // namespace elephant
