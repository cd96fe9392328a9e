#include "ops/elementwise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/dtype.h"
#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::random_tensor;

using testref::bits_of;
using testref::half_tensor;

// Sizes on both sides of the parallel threshold (65536 elements).
const std::vector<Shape> kShapes = {{1}, {4, 9}, {3, 5, 7}, {300, 301}};

// One float add per element is correctly rounded, so the result is the float sum bit for bit.
TEST(ElementwiseTest, AddInPlaceMatchesFloatSums) {
  std::mt19937 rng(1200);
  for (const Shape& shape : kShapes) {
    SCOPED_TRACE(shape_string(shape));
    Tensor hidden = random_tensor(shape, rng, -3.0f, 3.0f);
    const Tensor y = random_tensor(shape, rng, -3.0f, 3.0f);
    std::vector<float> expected = testref::to_vector(hidden);
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += y.data<float>()[i];
    ops::add_in_place(hidden, y);
    EXPECT_TRUE(testref::bitwise_equal(hidden, expected));
  }
  Tensor empty = Tensor::empty({0, 4});
  EXPECT_NO_THROW(ops::add_in_place(empty, Tensor::empty({0, 4})));
}

TEST(ElementwiseTest, AddInPlaceChecksShapesAndDtypes) {
  std::mt19937 rng(1201);
  Tensor hidden = random_tensor({4, 9}, rng);
  const std::vector<float> before = testref::to_vector(hidden);
  EXPECT_THROW(ops::add_in_place(hidden, random_tensor({4, 8}, rng)), std::invalid_argument);
  EXPECT_THROW(ops::add_in_place(hidden, random_tensor({36}, rng)), std::invalid_argument);
  EXPECT_THROW(ops::add_in_place(hidden, Tensor::zeros({4, 9}, DType::F16)), std::invalid_argument);
  Tensor ints = Tensor::zeros({4, 9}, DType::I32);
  EXPECT_THROW(ops::add_in_place(ints, Tensor::zeros({4, 9}, DType::I32)), std::invalid_argument);
  // The CPU backend computes in float32 only.
  Tensor half = Tensor::zeros({4, 9}, DType::F16);
  EXPECT_THROW(ops::add_in_place(half, Tensor::zeros({4, 9}, DType::F16)), std::invalid_argument);
  EXPECT_TRUE(testref::bitwise_equal(hidden, before));
}

TEST(ElementwiseTest, ScaleInPlaceMatchesFloatProducts) {
  std::mt19937 rng(1202);
  for (const Shape& shape : kShapes) {
    for (float factor : {0.125f, -3.7f, 0.0f, 1.0f}) {
      SCOPED_TRACE(::testing::Message() << shape_string(shape) << " factor " << factor);
      Tensor x = random_tensor(shape, rng, -5.0f, 5.0f);
      std::vector<float> expected = testref::to_vector(x);
      for (float& v : expected) v *= factor;
      ops::scale_in_place(x, factor);
      EXPECT_TRUE(testref::bitwise_equal(x, expected));
    }
  }
  Tensor empty = Tensor::empty({0});
  EXPECT_NO_THROW(ops::scale_in_place(empty, 2.0f));
  Tensor ints = Tensor::zeros({3}, DType::I32);
  EXPECT_THROW(ops::scale_in_place(ints, 2.0f), std::invalid_argument);
  Tensor half = Tensor::zeros({3}, DType::F16);
  EXPECT_THROW(ops::scale_in_place(half, 2.0f), std::invalid_argument);
}

// Narrowing rounds each element to nearest even (float_to_half / float_to_bfloat16, tested bit by bit in
// dtype_test); widening is exact.
TEST(ElementwiseTest, ConvertRoundsToNearestEvenAndWidensExactly) {
  std::mt19937 rng(1203);
  Tensor x = random_tensor({5, 41}, rng, -70000.0f, 70000.0f);  // past the half range: some overflow to inf
  // Values whose rounding is known: 1 + 2^-11 is a half tie (to 1.0), 1 + 2^-8 a bfloat16 tie (to 1.0).
  x.data<float>()[0] = 1.0f + 0x1p-11f;
  x.data<float>()[1] = 1.0f + 0x1p-8f;
  x.data<float>()[2] = 65504.0f;
  x.data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> values = testref::to_vector(x);

  Tensor half = Tensor::empty({5, 41}, DType::F16);
  ops::convert(x, half);
  Tensor bf16 = Tensor::empty({5, 41}, DType::BF16);
  ops::convert(x, bf16);
  const std::vector<uint16_t> half_bits = bits_of(half), bf16_bits = bits_of(bf16);
  for (size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(half_bits[i], float_to_half(values[i])) << "element " << i << " = " << values[i];
    ASSERT_EQ(bf16_bits[i], float_to_bfloat16(values[i])) << "element " << i << " = " << values[i];
  }
  EXPECT_EQ(half_bits[0], 0x3C00);
  EXPECT_EQ(bf16_bits[1], 0x3F80);
  EXPECT_EQ(half_bits[2], 0x7BFF);
  EXPECT_TRUE(std::isnan(half_to_float(half_bits[3])));
  EXPECT_TRUE(std::isnan(bfloat16_to_float(bf16_bits[3])));

  // Back to float32: exact (NaN stays NaN).
  const auto same = [](float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; };
  Tensor wide = testref::filled_tensor({5, 41}, -1.0f);
  ops::convert(half, wide);
  for (size_t i = 0; i < values.size(); ++i)
    ASSERT_TRUE(same(wide.data<float>()[i], half_to_float(half_bits[i]))) << i << ": " << wide.data<float>()[i];
  wide = testref::filled_tensor({5, 41}, -1.0f);
  ops::convert(bf16, wide);
  for (size_t i = 0; i < values.size(); ++i)
    ASSERT_TRUE(same(wide.data<float>()[i], bfloat16_to_float(bf16_bits[i]))) << i << ": " << wide.data<float>()[i];

  // Between the two half formats: through the exact float value.
  const Tensor small = random_tensor({64}, rng, -100.0f, 100.0f);
  const Tensor small_half = ops::convert(small, DType::F16);
  ASSERT_EQ(small_half.dtype(), DType::F16);
  const Tensor small_bf16 = ops::convert(small_half, DType::BF16);
  ASSERT_EQ(small_bf16.dtype(), DType::BF16);
  ASSERT_EQ(small_bf16.shape(), (Shape{64}));
  const std::vector<uint16_t> from_half = bits_of(small_half), to_bf16 = bits_of(small_bf16);
  for (size_t i = 0; i < from_half.size(); ++i)
    ASSERT_EQ(to_bf16[i], float_to_bfloat16(half_to_float(from_half[i]))) << i;
  // F32 into F32 copies.
  Tensor copy = Tensor::empty({64});
  ops::convert(small, copy);
  EXPECT_TRUE(testref::bitwise_equal(copy, testref::to_vector(small)));
}

TEST(ElementwiseTest, ConvertToItsOwnDtypeReturnsTheTensor) {
  const Tensor x = Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, {2});
  EXPECT_EQ(ops::convert(x, DType::F32).raw(), x.raw());
  const Tensor half = half_tensor(DType::F16, {0x3C00, 0xC000}, {2});
  EXPECT_EQ(ops::convert(half, DType::F16).raw(), half.raw());
  const Tensor widened = ops::convert(half, DType::F32);
  EXPECT_EQ(widened.dtype(), DType::F32);
  EXPECT_TRUE(testref::bitwise_equal(widened, {1.0f, -2.0f}));
}

TEST(ElementwiseTest, ConvertChecksShapesAndDtypes) {
  const Tensor x = Tensor::zeros({3, 4});
  Tensor wrong_shape = Tensor::empty({4, 3}, DType::F16);
  EXPECT_THROW(ops::convert(x, wrong_shape), std::invalid_argument);
  Tensor ints = Tensor::empty({3, 4}, DType::I32);
  EXPECT_THROW(ops::convert(x, ints), std::invalid_argument);
  Tensor out = Tensor::empty({3, 4});
  EXPECT_THROW(ops::convert(Tensor::zeros({3, 4}, DType::I8), out), std::invalid_argument);
  EXPECT_THROW(ops::convert(x, DType::U8), std::invalid_argument);
  Tensor empty = Tensor::empty({0, 4}, DType::BF16);
  EXPECT_NO_THROW(ops::convert(Tensor::empty({0, 4}), empty));
}

}  // namespace
}  // namespace elephant
