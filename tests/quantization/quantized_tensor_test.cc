// quantize / dequantize: the error bound of symmetric rounding, exact round trips, and the packed storage layout
// that quantized_tensor.h documents (which is also the on-disk format of a quantized checkpoint).
#include "quantization/quantized_tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "elephant/error.h"
#include "ops/reference_helpers.h"
#include "quantization/quantized_layout.h"
#include "test_utils.h"

namespace elephant {
namespace {

struct Scheme {
  int bits;
  int64_t group_size;
};

const std::vector<Scheme>& schemes() {
  static const std::vector<Scheme> all = {{8, 0}, {8, 64}, {8, 128}, {4, 0}, {4, 64}, {4, 128}};
  return all;
}

float qmax_of(int bits) { return bits == 8 ? 127.0f : 7.0f; }

// The stored scale of (flattened) row `row`, group `group`.
float scale_at(const QuantizedTensor& q, int64_t row, int64_t group) {
  return half_to_float(static_cast<const uint16_t*>(q.scales.raw())[row * q.groups() + group]);
}

// Random weights whose rows differ in magnitude by three orders (0.05 to 50), so that per-row scales matter.
Tensor random_weights(const Shape& shape, std::mt19937& rng) {
  Tensor w = testref::random_tensor(shape, rng);
  const int64_t k = shape.back();
  for (int64_t row = 0; row < w.numel() / k; ++row) {
    const float magnitude = 0.05f * std::pow(10.0f, static_cast<float>(row % 4));
    for (int64_t j = 0; j < k; ++j) w.data<float>()[row * k + j] *= magnitude;
  }
  return w;
}

// Every element within the group's range (|w| <= qmax * scale) is within half a step of its dequantized value
// (rounding to the nearest code), up to the float32 rounding of w / scale (a few ulp of a code, i.e. 1e-4 of a
// step); an element past it (int4's clipping) dequantizes to +-qmax * scale. int8 scales are max |w| / 127 rounded
// to fp16 (half an fp16 ulp, 2^-11 relative, plus the float32 division's rounding); int4 scales are max |w| / 7
// times a clipping factor in [0.6, 1].
TEST(QuantizedTensorTest, RoundTripErrorIsAtMostHalfAStep) {
  std::mt19937 rng(901);
  for (const Scheme& s : schemes()) {
    for (const Shape& shape : {Shape{6, 256}, Shape{3, 5, 128}}) {
      SCOPED_TRACE(::testing::Message() << "int" << s.bits << ", group " << s.group_size << ", shape "
                                        << shape_string(shape));
      const Tensor w = random_weights(shape, rng);
      const QuantizedTensor q = quantize(w, s.bits, s.group_size, "w");
      EXPECT_EQ(q.shape, shape);
      const Tensor dq = dequantize(q);
      ASSERT_EQ(dq.shape(), shape);
      const int64_t k = shape.back(), group = s.group_size ? s.group_size : k;
      const double qmax = qmax_of(s.bits), slack = 1.0 / 2048.0 + 1e-6;
      for (int64_t row = 0; row < w.numel() / k; ++row) {
        for (int64_t g = 0; g < k / group; ++g) {
          const float scale = scale_at(q, row, g);
          double amax = 0.0;
          for (int64_t j = g * group; j < (g + 1) * group; ++j) {
            const double x = w.data<float>()[row * k + j], y = dq.data<float>()[row * k + j];
            amax = std::max(amax, std::abs(x));
            if (std::abs(x) <= qmax * scale) {
              ASSERT_LE(std::abs(x - y), scale * (0.5 + 1e-4)) << "row " << row << ", feature " << j;
            } else {
              ASSERT_NEAR(std::abs(y), qmax * scale, 1e-6 * scale) << "clipped: row " << row << ", feature " << j;
            }
          }
          const double ideal = amax / qmax;
          const double lowest = s.bits == 8 ? ideal : 0.6 * ideal;
          EXPECT_GE(scale, lowest * (1.0 - slack)) << "row " << row << ", group " << g;
          EXPECT_LE(scale, ideal * (1.0 + slack)) << "row " << row << ", group " << g;
        }
      }
    }
  }
}

// int4 picks, per group, the scale with the least squared error among its clipping candidates: never more error
// than max |w| / 7 (the unclipped scale) gives, and clearly less on normally distributed weights (trained weights
// are roughly normal: a few large ones stretch the unclipped scale).
TEST(QuantizedTensorTest, Int4ScalesNeverAddErrorOverTheUnclippedScale) {
  std::mt19937 rng(905);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (int64_t group_size : {0, 64, 128}) {
    Tensor w = Tensor::empty({8, 256});
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = normal(rng);
    const Tensor dq = dequantize(quantize(w, 4, group_size, "w"));
    const int64_t k = 256, group = group_size ? group_size : k;
    double chosen = 0.0, unclipped = 0.0;
    for (int64_t row = 0; row < 8; ++row)
      for (int64_t g = 0; g < k / group; ++g) {
        const float* x = w.data<float>() + row * k + g * group;
        double amax = 0.0;
        for (int64_t j = 0; j < group; ++j) amax = std::max(amax, static_cast<double>(std::abs(x[j])));
        const float scale = half_to_float(float_to_half(static_cast<float>(amax / 7.0)));
        for (int64_t j = 0; j < group; ++j) {
          const double code = std::clamp(std::nearbyint(x[j] / scale), -7.0f, 7.0f);
          unclipped += std::pow(x[j] - code * scale, 2);
          chosen += std::pow(x[j] - dq.data<float>()[row * k + g * group + j], 2);
        }
      }
    EXPECT_LE(chosen, unclipped * (1.0 + 1e-6)) << "group " << group_size;
    EXPECT_LT(chosen, 0.95 * unclipped) << "group " << group_size << ": clipping should pay on random weights";
  }
}

// A zero row (or a zero group) keeps scale 0 and code 0: it dequantizes to exact zeros, never NaN.
TEST(QuantizedTensorTest, ZeroRowsAndGroupsStayZero) {
  std::mt19937 rng(902);
  for (const Scheme& s : schemes()) {
    SCOPED_TRACE(::testing::Message() << "int" << s.bits << ", group " << s.group_size);
    Tensor w = testref::random_tensor({4, 256}, rng);
    std::fill_n(w.data<float>() + 256, 256, 0.0f);      // row 1
    std::fill_n(w.data<float>() + 3 * 256, 128, 0.0f);  // the first half of row 3
    const QuantizedTensor q = quantize(w, s.bits, s.group_size, "w");
    const Tensor dq = dequantize(q);
    for (int64_t j = 0; j < 256; ++j) ASSERT_EQ(dq.data<float>()[256 + j], 0.0f) << j;
    for (int64_t g = 0; g < q.groups(); ++g) EXPECT_EQ(scale_at(q, 1, g), 0.0f);
    const auto* bytes = static_cast<const uint8_t*>(q.values.raw());
    const int64_t row_bytes = s.bits == 8 ? 256 : 128;
    for (int64_t b = 0; b < row_bytes; ++b)
      ASSERT_EQ(bytes[row_bytes + b], s.bits == 8 ? 0x00 : 0x88) << "byte " << b << " of the zero row";
    if (s.group_size != 0) {
      for (int64_t j = 0; j < 128; ++j) ASSERT_EQ(dq.data<float>()[3 * 256 + j], 0.0f) << j;
    }
  }
}

// Weights that are codes times an fp16 scale, with the largest code (qmax) in every group, come back bit for bit.
TEST(QuantizedTensorTest, RepresentableWeightsRoundTripExactly) {
  std::mt19937 rng(903);
  const std::vector<float> scales = {0.0078125f, 0.375f, 1.5f, half_to_float(0x2E66), half_to_float(0x4A3D)};
  for (const Scheme& s : schemes()) {
    SCOPED_TRACE(::testing::Message() << "int" << s.bits << ", group " << s.group_size);
    const int qmax = static_cast<int>(qmax_of(s.bits));
    const int64_t n = 5, k = 256, group = s.group_size ? s.group_size : k;
    std::uniform_int_distribution<int> code(-qmax, qmax);
    std::vector<float> w(static_cast<size_t>(n * k));
    for (int64_t row = 0; row < n; ++row)
      for (int64_t j = 0; j < k; ++j) {
        const int c = j % group == 7 ? (row % 2 ? -qmax : qmax) : code(rng);
        w[row * k + j] = static_cast<float>(c) * scales[row];
      }
    const Tensor weights = Tensor::from_vector(w, {n, k});
    const QuantizedTensor q = quantize(weights, s.bits, s.group_size, "w");
    EXPECT_TRUE(testref::bitwise_equal(dequantize(q), w));
    for (int64_t row = 0; row < n; ++row) EXPECT_EQ(scale_at(q, row, 0), scales[row]);
  }
}

// int8, by the header's words: "Byte 4t + j of each 16-byte half-block holds feature (2t, 2t + 1, 2t + 8, 2t + 9)[j]
// of that half." Written out by hand for one 32-feature block:
const int kInt8FeatureOfByte[32] = {0,  1,  8,  9,  2,  3,  10, 11, 4,  5,  12, 13, 6,  7,  14, 15,
                                    16, 17, 24, 25, 18, 19, 26, 27, 20, 21, 28, 29, 22, 23, 30, 31};

// int4: "Little-endian 32-bit word t of each 16-byte block holds, from its lowest nibble up, features 2t, 2t + 8,
// 16 + 2t, 16 + 2t + 8, 2t + 1, 2t + 9, 16 + 2t + 1, 16 + 2t + 9", with q + 8 in each nibble.
const int kInt4FeatureOfNibble[4][8] = {{0, 8, 16, 24, 1, 9, 17, 25},
                                        {2, 10, 18, 26, 3, 11, 19, 27},
                                        {4, 12, 20, 28, 5, 13, 21, 29},
                                        {6, 14, 22, 30, 7, 15, 23, 31}};

// A [2, 64] matrix of known codes times a scale: code(f) of feature f of row 0, its negation in row 1; the second
// 32-feature block holds different codes than the first, so that a block offset error shows.
std::vector<int> known_codes(int bits, int64_t row) {
  const int qmax = static_cast<int>(qmax_of(bits));
  std::vector<int> codes(64);
  for (int f = 0; f < 64; ++f) codes[f] = bits == 8 ? (f == 31 ? qmax : f - 15 - (f / 32) * 20) : f % 15 - 7;
  if (row == 1)
    for (int& c : codes) c = -c;
  return codes;
}

QuantizedTensor quantize_known_codes(int bits, float scale) {
  std::vector<float> w;
  for (int64_t row = 0; row < 2; ++row)
    for (int c : known_codes(bits, row)) w.push_back(static_cast<float>(c) * scale);
  return quantize(Tensor::from_vector(w, {2, 64}), bits, 0, "known codes");
}

TEST(QuantizedTensorTest, Int8LayoutIsTheDocumentedPermutation) {
  const QuantizedTensor q = quantize_known_codes(8, 0.5f);
  EXPECT_EQ(q.values.dtype(), DType::I8);
  EXPECT_EQ(q.values.shape(), (Shape{2, 64}));
  EXPECT_EQ(q.scales.shape(), (Shape{2, 1}));
  const auto* bytes = static_cast<const int8_t*>(q.values.raw());
  for (int64_t row = 0; row < 2; ++row) {
    EXPECT_EQ(scale_at(q, row, 0), 0.5f);
    const std::vector<int> codes = known_codes(8, row);
    for (int block = 0; block < 2; ++block)
      for (int b = 0; b < 32; ++b)
        ASSERT_EQ(bytes[row * 64 + block * 32 + b], codes[block * 32 + kInt8FeatureOfByte[b]])
            << "row " << row << ", block " << block << ", byte " << b;
  }
  // Spot checks, by hand: row 0, byte 2 is feature 8 (code -7); byte 17 is feature 17 (code 2); byte 31 is
  // feature 31 (code 127); byte 32 + 4 is feature 32 + 2 of the second block (code 34 - 35 = -1).
  EXPECT_EQ(bytes[2], -7);
  EXPECT_EQ(bytes[17], 2);
  EXPECT_EQ(bytes[31], 127);
  EXPECT_EQ(bytes[36], -1);
  EXPECT_EQ(bytes[64 + 31], -127);
}

TEST(QuantizedTensorTest, Int4LayoutIsTheDocumentedPermutation) {
  const QuantizedTensor q = quantize_known_codes(4, 0.25f);
  EXPECT_EQ(q.values.dtype(), DType::U8);
  EXPECT_EQ(q.values.shape(), (Shape{2, 32}));
  const auto* bytes = static_cast<const uint8_t*>(q.values.raw());
  for (int64_t row = 0; row < 2; ++row) {
    EXPECT_EQ(scale_at(q, row, 0), 0.25f);
    const std::vector<int> codes = known_codes(4, row);
    for (int block = 0; block < 2; ++block)
      for (int t = 0; t < 4; ++t) {
        uint32_t word = 0;
        std::memcpy(&word, bytes + row * 32 + block * 16 + 4 * t, 4);  // little-endian, as the GPU loads it
        for (int nibble = 0; nibble < 8; ++nibble)
          ASSERT_EQ(static_cast<int>((word >> (4 * nibble)) & 0xf) - 8,
                    codes[block * 32 + kInt4FeatureOfNibble[t][nibble]])
              << "row " << row << ", block " << block << ", word " << t << ", nibble " << nibble;
      }
  }
  // By hand: byte 0 holds feature 0 (code -7 -> 1) low and feature 8 (code 1 -> 9) high: 0x91. Byte 2 holds
  // features 1 (code -6 -> 2) and 9 (code 2 -> 10): 0xa2.
  EXPECT_EQ(bytes[0], 0x91);
  EXPECT_EQ(bytes[2], 0xa2);
}

// A stack quantizes matrix by matrix: each matrix of quantize([E, n, k]) is quantize of that matrix alone, bit for
// bit (what makes a checkpoint's per-expert tensors equal to load-time quantization of the stacked experts).
TEST(QuantizedTensorTest, StackQuantizesLikeItsMatrices) {
  std::mt19937 rng(904);
  for (const Scheme& s : schemes()) {
    SCOPED_TRACE(::testing::Message() << "int" << s.bits << ", group " << s.group_size);
    const Tensor stack = random_weights({3, 6, 128}, rng);
    const QuantizedTensor q = quantize(stack, s.bits, s.group_size, "stack");
    for (int64_t e = 0; e < 3; ++e) {
      const QuantizedTensor one = quantize(stack.narrow(e, 1).reshape({6, 128}), s.bits, s.group_size, "one");
      EXPECT_EQ(std::memcmp(one.values.raw(), q.values.narrow(e, 1).raw(), one.values.nbytes()), 0) << e;
      EXPECT_EQ(std::memcmp(one.scales.raw(), q.scales.narrow(e, 1).raw(), one.scales.nbytes()), 0) << e;
    }
  }
}

TEST(QuantizedTensorTest, RejectsUnsupportedShapesAndSchemes) {
  const Tensor w = Tensor::zeros({4, 96});
  EXPECT_NO_THROW(quantize(w, 8, 0, "w"));
  EXPECT_CONTAINS(error_of<Error>([] { quantize(Tensor::zeros({4, 40}), 8, 0, "layer.wi"); }), "layer.wi");
  EXPECT_CONTAINS(error_of<Error>([&] { quantize(w, 8, 64, "layer.wo"); }), "layer.wo");  // 96: not a multiple of 64
  EXPECT_CONTAINS(error_of<Error>([&] { quantize(w, 5, 0, "x"); }), "5 bits");
  EXPECT_CONTAINS(error_of<Error>([&] { quantize(w, 4, 32, "x"); }), "group size 32");
}

TEST(QuantizedTensorTest, CheckQuantizedNamesTheTensorAndBothShapes) {
  QuantizedTensor q = quantize(Tensor::zeros({8, 64}), 4, 0, "w");
  EXPECT_NO_THROW(check_quantized(q, "w"));
  QuantizedTensor wide = q;
  wide.values = Tensor::zeros({8, 64}, DType::U8);
  const std::string values = model_error_of([&] { check_quantized(wide, "file: tensor"); });
  EXPECT_CONTAINS(values, "file: tensor");
  EXPECT_CONTAINS(values, "U8 [8, 64], expected U8 [8, 32]");
  QuantizedTensor grouped = q;
  grouped.group_size = 64;
  grouped.scales = Tensor::zeros({8, 2}, DType::F16);
  EXPECT_CONTAINS(model_error_of([&] { check_quantized(grouped, "t"); }), "F16 [8, 2], expected F16 [8, 1]");
}

TEST(QuantizedTensorTest, TiledCodesPutEachTileInOneBlockAndComeBack) {
  std::mt19937 rng(905);
  const QuantizedTensor q = quantize(random_weights({2, 128, 192}, rng), 8, 0, "stack");
  const Tensor tiled = tile_codes(q.values);
  const auto* row_major = q.values.data<int8_t>();
  const auto* t = tiled.data<int8_t>();
  for (int64_t m = 0; m < 2; ++m)
    for (int64_t row = 0; row < 128; ++row)
      for (int64_t b = 0; b < 192; ++b)
        ASSERT_EQ(t[quantized_layout::tiled_offset(m, row, b, 128, 192)], row_major[(m * 128 + row) * 192 + b])
            << m << " " << row << " " << b;
  // Row 70, byte 130 of matrix 1: row tile 1 of 2, byte tile 2 of 3 -> block (1 * 2 + 1) * 3 + 2 = 11, at 6 * 64 + 2.
  EXPECT_EQ(quantized_layout::tiled_offset(1, 70, 130, 128, 192), 11 * 4096 + 6 * 64 + 2);
  const Tensor back = untile_codes(tiled);
  EXPECT_EQ(std::memcmp(back.raw(), q.values.raw(), q.values.nbytes()), 0);
}

TEST(QuantizedTensorTest, OnlyInt8ExpertStacksOfWholeTilesAreTiledOnCuda) {
  EXPECT_EQ(cuda_layout(8, {4, 128, 64}), PackedLayout::Tiled);
  EXPECT_EQ(cuda_layout(4, {4, 128, 64}), PackedLayout::RowMajor);  // int4 gained nothing from tiles
  EXPECT_EQ(cuda_layout(8, {128, 64}), PackedLayout::RowMajor);     // Linear weights: the small-m kernel's rows
  EXPECT_EQ(cuda_layout(8, {4, 96, 64}), PackedLayout::RowMajor);   // n not whole tiles
  EXPECT_EQ(cuda_layout(8, {4, 128, 96}), PackedLayout::RowMajor);  // k not whole tiles
  const QuantizedTensor q = quantize(Tensor::zeros({2, 128, 64}), 8, 0, "w");
  EXPECT_EQ(q.layout, PackedLayout::RowMajor);
  EXPECT_EQ(q.to(Device::CPU).layout, PackedLayout::RowMajor);
}

TEST(QuantizedTensorTest, TileCodesRejectsCodesItCannotTile) {
  EXPECT_CONTAINS(error_of<Error>([] { tile_codes(Tensor::zeros({2, 96, 64}, DType::I8)); }), "I8 [2, 96, 64]");
  EXPECT_CONTAINS(error_of<Error>([] { untile_codes(Tensor::zeros({2, 64, 64}, DType::U8)); }), "untile_codes");
}

}  // namespace
}  // namespace elephant
