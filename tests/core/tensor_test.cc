#include "core/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::bits_of;
using testref::half_tensor;

TEST(TensorTest, FactoriesMakeCpuTensors) {
  const Tensor e = Tensor::empty({2, 3}, DType::I32, Device::CPU);
  EXPECT_EQ(e.device(), Device::CPU);
  EXPECT_EQ(e.dtype(), DType::I32);
  EXPECT_EQ(e.shape(), (Shape{2, 3}));
  EXPECT_EQ(Tensor::empty({4}).device(), Device::CPU);  // the default device
  const Tensor z = Tensor::zeros({3, 5}, DType::BF16, Device::CPU);
  EXPECT_EQ(z.device(), Device::CPU);
  EXPECT_EQ(bits_of(z), std::vector<uint16_t>(15, 0));
  const Tensor v = Tensor::from_vector(std::vector<int64_t>{1, -2, 3}, {3}, Device::CPU);
  EXPECT_EQ(v.device(), Device::CPU);
  EXPECT_EQ(v.to_vector<int64_t>(), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, {3}), std::invalid_argument);
  EXPECT_THROW(Tensor::empty({2, -1}), std::invalid_argument);
}

TEST(TensorTest, ToVectorCopiesAndChecksTheDtype) {
  const Tensor f = Tensor::from_vector(std::vector<float>{1.5f, -2.0f, 0.25f, 8.0f}, {2, 2});
  EXPECT_EQ(f.to_vector<float>(), (std::vector<float>{1.5f, -2.0f, 0.25f, 8.0f}));
  EXPECT_EQ(f.narrow(1, 1).to_vector<float>(), (std::vector<float>{0.25f, 8.0f}));
  const Tensor i = Tensor::from_vector(std::vector<int32_t>{7, 8, 9}, {3});
  EXPECT_EQ(i.to_vector<int32_t>(), (std::vector<int32_t>{7, 8, 9}));
  const Tensor u = Tensor::from_vector(std::vector<uint8_t>{0, 255}, {2});
  EXPECT_EQ(u.to_vector<uint8_t>(), (std::vector<uint8_t>{0, 255}));
  EXPECT_TRUE(Tensor::empty({0, 3}).to_vector<float>().empty());
  EXPECT_THROW(f.to_vector<int32_t>(), std::logic_error);
  EXPECT_THROW(i.to_vector<float>(), std::logic_error);
  // A copy: changing it leaves the tensor alone.
  std::vector<float> copy = f.to_vector<float>();
  copy[0] = 100.0f;
  EXPECT_EQ(f.data<float>()[0], 1.5f);
}

TEST(TensorTest, ToTheSameDeviceSharesTheStorage) {
  const Tensor f = Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, {2});
  const Tensor same = f.to(Device::CPU);
  EXPECT_EQ(same.raw(), f.raw());
  EXPECT_EQ(same.device(), Device::CPU);
  EXPECT_EQ(same.shape(), f.shape());
}

TEST(TensorTest, CopyFromWritesIntoTheStorage) {
  Tensor dst = Tensor::zeros({3, 2});
  const Tensor row = Tensor::from_vector(std::vector<float>{4.0f, 5.0f}, {1, 2});
  Tensor middle = dst.narrow(1, 1);
  middle.copy_from(row);
  EXPECT_EQ(dst.to_vector<float>(), (std::vector<float>{0.0f, 0.0f, 4.0f, 5.0f, 0.0f, 0.0f}));
  Tensor ints = Tensor::zeros({2}, DType::I32);
  ints.copy_from(Tensor::from_vector(std::vector<int32_t>{-1, 9}, {2}));
  EXPECT_EQ(ints.to_vector<int32_t>(), (std::vector<int32_t>{-1, 9}));
  EXPECT_THROW(dst.copy_from(Tensor::zeros({2, 3})), std::invalid_argument);  // same count, other shape
  EXPECT_THROW(dst.copy_from(Tensor::zeros({3, 2}, DType::I32)), std::invalid_argument);
  EXPECT_THROW(middle.copy_from(Tensor::zeros({2})), std::invalid_argument);
  EXPECT_EQ(dst.to_vector<float>(), (std::vector<float>{0.0f, 0.0f, 4.0f, 5.0f, 0.0f, 0.0f}));
}

// to_dtype rounds every element as float_to_half / float_to_bfloat16 do (to nearest even) and widens exactly.
TEST(TensorTest, ToDtypeRoundsToNearestEven) {
  struct Case {
    float value;
    uint16_t half, bf16;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {0.0f, 0x0000, 0x0000},
      {-0.0f, 0x8000, 0x8000},
      {1.0f, 0x3c00, 0x3f80},
      {-2.0f, 0xc000, 0xc000},
      {1.0f + 0x1p-11f, 0x3c00, 0x3f80},  // a half tie: down to even
      {1.0f + 0x3p-11f, 0x3c02, 0x3f80},  // a half tie: up to even
      {1.0f + 0x1p-8f, 0x3c04, 0x3f80},   // a bfloat16 tie: down to even
      {1.0f + 0x3p-8f, 0x3c0c, 0x3f82},   // a bfloat16 tie: up to even
      {65504.0f, 0x7bff, 0x4780},         // the largest half
      {65520.0f, 0x7c00, 0x4780},         // a tie past the largest half: inf
      {0x1p-24f, 0x0001, 0x3380},         // the smallest half subnormal
      {0x1p-25f, 0x0000, 0x3300},         // a subnormal tie: down to zero
      {0x3p-25f, 0x0002, 0x33c0},         // a subnormal tie: up to even
      {1e-40f, 0x0000, 0x0001},           // a float subnormal
      {inf, 0x7c00, 0x7f80},
      {-inf, 0xfc00, 0xff80},
      {3.14159274f, 0x4248, 0x4049},
  };
  std::vector<float> values;
  for (const Case& c : cases) values.push_back(c.value);
  values.push_back(std::numeric_limits<float>::quiet_NaN());
  const Tensor x = Tensor::from_vector(values, {3, 6});
  const size_t nan_index = cases.size();

  const Tensor half = x.to_dtype(DType::F16);
  ASSERT_EQ(half.dtype(), DType::F16);
  ASSERT_EQ(half.shape(), x.shape());
  EXPECT_EQ(half.device(), Device::CPU);
  const Tensor bf16 = x.to_dtype(DType::BF16);
  ASSERT_EQ(bf16.dtype(), DType::BF16);
  ASSERT_EQ(bf16.shape(), x.shape());
  const std::vector<uint16_t> half_bits = bits_of(half), bf16_bits = bits_of(bf16);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(half_bits[i], cases[i].half) << "F16 of " << cases[i].value;
    EXPECT_EQ(bf16_bits[i], cases[i].bf16) << "BF16 of " << cases[i].value;
  }
  EXPECT_TRUE((half_bits[nan_index] & 0x7c00) == 0x7c00 && (half_bits[nan_index] & 0x3ff) != 0)
      << "NaN stays NaN: " << half_bits[nan_index];
  EXPECT_TRUE((bf16_bits[nan_index] & 0x7f80) == 0x7f80 && (bf16_bits[nan_index] & 0x7f) != 0)
      << "NaN stays NaN: " << bf16_bits[nan_index];

  // Widening back is exact: every narrowed value is the value its pattern stands for.
  const Tensor wide = half.to_dtype(DType::F32);
  ASSERT_EQ(wide.dtype(), DType::F32);
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(wide.data<float>()[i], half_to_float(cases[i].half)) << i;
  EXPECT_TRUE(std::isnan(wide.data<float>()[nan_index]));
  const Tensor wide_bf16 = bf16.to_float();
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(wide_bf16.data<float>()[i], bfloat16_to_float(cases[i].bf16)) << i;
  // Between the half formats: through the exact float value.
  const std::vector<uint16_t> from_half = bits_of(half.to_dtype(DType::BF16));
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(from_half[i], float_to_bfloat16(half_to_float(cases[i].half))) << i;
}

TEST(TensorTest, ToDtypeOfTheSameDtypeSharesAndOthersThrow) {
  const Tensor x = Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, {2});
  EXPECT_EQ(x.to_dtype(DType::F32).raw(), x.raw());
  const Tensor h = half_tensor(DType::F16, {0x3c00, 0x4000}, {2});
  EXPECT_EQ(h.to_dtype(DType::F16).raw(), h.raw());
  EXPECT_EQ(h.to_float().to_vector<float>(), (std::vector<float>{1.0f, 2.0f}));
  EXPECT_THROW(x.to_dtype(DType::I32), std::logic_error);
  EXPECT_THROW(Tensor::zeros({2}, DType::I32).to_dtype(DType::F16), std::logic_error);
  EXPECT_EQ(Tensor::empty({0, 4}).to_dtype(DType::BF16).shape(), (Shape{0, 4}));
}

}  // namespace
}  // namespace elephant
