#include "ops/softmax.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::close_elementwise;
using testref::random_tensor;
using testref::to_double;

std::vector<double> reference_log_softmax(const Tensor& x) {
  const int64_t d = x.dim(-1);
  const int64_t rows = d ? x.numel() / d : 0;
  const std::vector<double> v = to_double(x);
  std::vector<double> out(v.size());
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = v.data() + r * d;
    double max = row[0];
    for (int64_t i = 1; i < d; ++i) max = std::max(max, row[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += std::exp(row[i] - max);
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = row[i] - max - std::log(sum);
  }
  return out;
}

std::vector<double> reference_softmax(const Tensor& x) {
  std::vector<double> out = reference_log_softmax(x);
  for (double& v : out) v = std::exp(v);
  return out;
}

// Probabilities: the float difference x - max carries an error of at most u * |x - max| ~= u * |ln p| (it is
// exact when both are within a factor of 2, Sterbenz), exp and the scaling a few ulps, and the float sum of
// d terms in [0, 1] a relative error <= ~d * u. So |p - ref| <= (d + 16 + |ln ref|) * u * ref; a wrong max,
// a missing normalization or a row mix-up misses that by orders of magnitude.
::testing::AssertionResult check_softmax(const Tensor& y, const std::vector<double>& ref, int64_t d) {
  return close_elementwise(y, ref, [&ref, d](size_t i) {
    if (ref[i] < 1e-30) return 1e-30;
    return (static_cast<double>(d) + 16.0 + std::abs(std::log(ref[i]))) * testref::kFloatEps * ref[i];
  });
}

// Log-probabilities: x - max - log(sum) loses at most a few ulps of |result| plus the log of the sum's relative
// error (<= ~d*u), so 1e-5 * max(1, |ref|) holds for d <= 1000 with margin.
::testing::AssertionResult check_log_softmax(const Tensor& y, const std::vector<double>& ref) {
  return close_elementwise(y, ref, [&ref](size_t i) { return 1e-5 * std::max(1.0, std::abs(ref[i])); });
}

const std::vector<Shape> kShapes = {Shape{1, 1},    Shape{1, 7},     Shape{4, 13}, Shape{2, 3, 50},
                                    Shape{8, 1000}, Shape{300, 257}, Shape{5}};

TEST(SoftmaxTest, MatchesReferenceOnSeveralShapes) {
  std::mt19937 rng(100);
  for (const Shape& shape : kShapes) {
    SCOPED_TRACE(shape_string(shape));
    Tensor x = random_tensor(shape, rng, -6.0f, 6.0f);
    const std::vector<double> ref = reference_softmax(x);
    ops::softmax(x);
    EXPECT_TRUE(check_softmax(x, ref, shape.back()));
  }
}

TEST(SoftmaxTest, LogSoftmaxMatchesReferenceOnSeveralShapes) {
  std::mt19937 rng(101);
  for (const Shape& shape : kShapes) {
    SCOPED_TRACE(shape_string(shape));
    const Tensor x = random_tensor(shape, rng, -6.0f, 6.0f);
    Tensor y = Tensor::empty(shape);
    ops::log_softmax(x, y);
    EXPECT_TRUE(check_log_softmax(y, reference_log_softmax(x)));
  }
}

// Inputs whose exp overflows or underflows float32 unless the row maximum is subtracted first.
std::vector<Tensor> large_magnitude_inputs(std::mt19937& rng) {
  std::vector<Tensor> inputs;
  inputs.push_back(random_tensor({6, 40}, rng, -1e4f, 1e4f));        // one entry dominates each row
  inputs.push_back(random_tensor({6, 40}, rng, 995.0f, 1005.0f));    // exp(1000) overflows: max must be subtracted
  inputs.push_back(random_tensor({6, 40}, rng, -1005.0f, -995.0f));  // exp(-1000) underflows to 0 without the shift
  inputs.push_back(random_tensor({3, 9}, rng, 88.0f, 92.0f));        // around float's exp overflow threshold
  Tensor masked = random_tensor({4, 17}, rng, -3.0f, 3.0f);          // additive masks as in attention
  for (int64_t i = 0; i < masked.numel(); i += 3) masked.data<float>()[i] = -1e30f;
  inputs.push_back(masked);
  inputs.push_back(testref::filled_tensor({2, 11}, 3e4f));  // all equal and large: uniform
  return inputs;
}

TEST(SoftmaxTest, StableForLargeMagnitudes) {
  std::mt19937 rng(102);
  for (Tensor& x : large_magnitude_inputs(rng)) {
    SCOPED_TRACE(shape_string(x.shape()));
    const std::vector<double> ref = reference_softmax(x);
    const int64_t d = x.dim(-1);
    ops::softmax(x);
    EXPECT_TRUE(check_softmax(x, ref, d));
    // Every row still sums to one.
    for (int64_t r = 0; r < x.dim(0); ++r) {
      double sum = 0.0;
      for (int64_t i = 0; i < d; ++i) sum += x.data<float>()[r * d + i];
      EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << r;
    }
  }
}

TEST(SoftmaxTest, LogSoftmaxStableForLargeMagnitudes) {
  std::mt19937 rng(103);
  for (const Tensor& x : large_magnitude_inputs(rng)) {
    SCOPED_TRACE(shape_string(x.shape()));
    Tensor y = Tensor::empty(x.shape());
    ops::log_softmax(x, y);
    EXPECT_TRUE(check_log_softmax(y, reference_log_softmax(x)));
  }
}

TEST(SoftmaxTest, UniformRowGivesExactlyUniformProbabilities) {
  Tensor x = testref::filled_tensor({3, 4}, -7.5f);
  ops::softmax(x);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(x.data<float>()[i], 0.25f);
  Tensor single = testref::filled_tensor({2, 1}, 123.0f);
  ops::softmax(single);
  EXPECT_EQ(single.data<float>()[0], 1.0f);
  EXPECT_EQ(single.data<float>()[1], 1.0f);
}

TEST(SoftmaxTest, EmptyTensorsAreAllowed) {
  Tensor no_rows = Tensor::empty({0, 5});
  EXPECT_NO_THROW(ops::softmax(no_rows));
  Tensor y = Tensor::empty({0, 5});
  EXPECT_NO_THROW(ops::log_softmax(no_rows, y));
  Tensor no_columns = Tensor::empty({3, 0});
  EXPECT_NO_THROW(ops::softmax(no_columns));
  Tensor y0 = Tensor::empty({3, 0});
  EXPECT_NO_THROW(ops::log_softmax(no_columns, y0));
}

TEST(SoftmaxTest, LogSoftmaxShapeMismatchThrows) {
  std::mt19937 rng(104);
  const Tensor x = random_tensor({3, 5}, rng);
  Tensor wrong = Tensor::empty({3, 6});
  EXPECT_THROW(ops::log_softmax(x, wrong), std::invalid_argument);
  Tensor flat = Tensor::empty({15});
  EXPECT_THROW(ops::log_softmax(x, flat), std::invalid_argument);
}

}  // namespace
}  // namespace elephant
