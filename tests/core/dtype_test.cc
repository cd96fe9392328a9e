#include "core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace elephant {
namespace {

float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint32_t bits_of(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

bool is_half_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool is_bfloat16_nan(uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }

// An independent reference for narrowing: the positive finite values of a 16-bit format increase with their bit
// patterns, so the two candidates around |v| are found by binary search, and the nearer one wins, the one with an
// even pattern on a tie. Past the largest finite value, rounding continues as if the exponent were unbounded:
// the next value up is `overflow` (65536 for half, 2^128 for bfloat16), which stands for inf.
uint16_t reference_round(float value, float (*widen)(uint16_t), uint16_t max_finite, double overflow, uint16_t inf_bits,
                         uint16_t sign_bit) {
  const uint16_t sign = std::signbit(value) ? sign_bit : 0;
  const double v = std::abs(static_cast<double>(value));
  uint16_t lo = 0, hi = max_finite;  // invariant: widen(lo) <= v
  if (v >= widen(max_finite)) {
    lo = max_finite;
  } else {
    while (hi - lo > 1) {
      const auto mid = static_cast<uint16_t>((lo + hi) / 2);
      if (static_cast<double>(widen(mid)) <= v)
        lo = mid;
      else
        hi = mid;
    }
  }
  const double below = widen(lo);
  if (below == v) return static_cast<uint16_t>(sign | lo);
  const double above = lo == max_finite ? overflow : static_cast<double>(widen(static_cast<uint16_t>(lo + 1)));
  const uint16_t up = lo == max_finite ? inf_bits : static_cast<uint16_t>(lo + 1);
  const double to_below = v - below, to_above = above - v;
  if (to_below < to_above) return static_cast<uint16_t>(sign | lo);
  if (to_above < to_below) return static_cast<uint16_t>(sign | up);
  return static_cast<uint16_t>(sign | ((lo & 1u) ? up : lo));
}

uint16_t reference_half(float value) { return reference_round(value, half_to_float, 0x7bff, 65536.0, 0x7c00, 0x8000); }

uint16_t reference_bfloat16(float value) {
  return reference_round(value, bfloat16_to_float, 0x7f7f, std::ldexp(1.0, 128), 0x7f80, 0x8000);
}

struct Known {
  float value;
  uint16_t bits;
  const char* what;
};

TEST(DtypeTest, FloatToHalfKnownPatterns) {
  const std::vector<Known> cases = {
      {0.0f, 0x0000, "zero"},
      {-0.0f, 0x8000, "negative zero"},
      {1.0f, 0x3c00, "one"},
      {-2.0f, 0xc000, "minus two"},
      {0.5f, 0x3800, "a half"},
      {0.1f, 0x2e66, "0.1 (0x2e66.6: rounds down)"},
      {65504.0f, 0x7bff, "the largest half"},
      {-65504.0f, 0xfbff, "the most negative half"},
      {0x1p-14f, 0x0400, "the smallest normal"},
      {0x1p-24f, 0x0001, "the smallest subnormal"},
      {0x3ffp-24f, 0x03ff, "the largest subnormal"},
      {-0x1p-24f, 0x8001, "a negative subnormal"},
      // Ties go to the even pattern.
      {1.0f + 0x1p-11f, 0x3c00, "tie between 0x3c00 and 0x3c01: down to even"},
      {1.0f + 0x3p-11f, 0x3c02, "tie between 0x3c01 and 0x3c02: up to even"},
      {1.0f + 0x1p-11f + 0x1p-23f, 0x3c01, "just above a tie: up"},
      {1.0f + 0x1p-11f - 0x1p-23f, 0x3c00, "just below a tie: down"},
      {2.0f - 0x1p-11f, 0x4000, "tie carrying into the exponent"},
      {0x1p-25f, 0x0000, "tie between 0 and the smallest subnormal: to zero"},
      {0x3p-25f, 0x0002, "subnormal tie between 0x0001 and 0x0002: up to even"},
      {0x5p-25f, 0x0002, "subnormal tie between 0x0002 and 0x0003: down to even"},
      {0x1p-25f * (1.0f + 0x1p-23f), 0x0001, "just above half the smallest subnormal"},
      {0x1p-26f, 0x0000, "below half the smallest subnormal: zero"},
      {-0x1p-26f, 0x8000, "underflow keeps the sign"},
      {0x7ffp-25f, 0x0400, "largest subnormal + half an ulp: tie up into the smallest normal"},
      {1e-40f, 0x0000, "a float subnormal"},
      // Overflow.
      {65519.0f, 0x7bff, "below the rounding boundary of the largest half"},
      {65520.0f, 0x7c00, "tie between 65504 and 65536: to inf"},
      {-65520.0f, 0xfc00, "negative overflow"},
      {1e6f, 0x7c00, "far past the range"},
      {std::numeric_limits<float>::max(), 0x7c00, "FLT_MAX"},
      {std::numeric_limits<float>::infinity(), 0x7c00, "inf"},
      {-std::numeric_limits<float>::infinity(), 0xfc00, "-inf"},
  };
  for (const Known& c : cases) {
    EXPECT_EQ(float_to_half(c.value), c.bits) << c.what << " (" << c.value << ")";
    EXPECT_EQ(reference_half(c.value), c.bits) << "the test's reference: " << c.what;
  }
}

TEST(DtypeTest, FloatToBfloat16KnownPatterns) {
  const std::vector<Known> cases = {
      {0.0f, 0x0000, "zero"},
      {-0.0f, 0x8000, "negative zero"},
      {1.0f, 0x3f80, "one"},
      {-2.0f, 0xc000, "minus two"},
      {3.14159274f, 0x4049, "pi (0x40490fdb: rounds down)"},
      {from_bits(0x3f808000u), 0x3f80, "tie between 0x3f80 and 0x3f81: down to even"},
      {from_bits(0x3f818000u), 0x3f82, "tie between 0x3f81 and 0x3f82: up to even"},
      {from_bits(0x3f808001u), 0x3f81, "just above a tie"},
      {from_bits(0x3f807fffu), 0x3f80, "just below a tie"},
      {from_bits(0x3fff8000u), 0x4000, "tie carrying into the exponent"},
      {from_bits(0x00010000u), 0x0001, "a subnormal"},
      {from_bits(0x00008000u), 0x0000, "subnormal tie: down to zero"},
      {from_bits(0x00018000u), 0x0002, "subnormal tie: up to even"},
      {from_bits(0x00000001u), 0x0000, "the smallest float subnormal"},
      {from_bits(0x80000001u), 0x8000, "underflow keeps the sign"},
      {from_bits(0x007f8000u), 0x0080, "largest subnormal tie: up into the smallest normal"},
      {from_bits(0x7f7f7fffu), 0x7f7f, "below the rounding boundary of the largest bfloat16"},
      {from_bits(0x7f7f8000u), 0x7f80, "tie between the largest bfloat16 and 2^128: to inf"},
      {std::numeric_limits<float>::max(), 0x7f80, "FLT_MAX"},
      {-std::numeric_limits<float>::max(), 0xff80, "-FLT_MAX"},
      {std::numeric_limits<float>::infinity(), 0x7f80, "inf"},
      {-std::numeric_limits<float>::infinity(), 0xff80, "-inf"},
  };
  for (const Known& c : cases) {
    EXPECT_EQ(float_to_bfloat16(c.value), c.bits) << c.what << " (" << c.value << ")";
    EXPECT_EQ(reference_bfloat16(c.value), c.bits) << "the test's reference: " << c.what;
  }
}

// NaN stays NaN, whatever its payload: a naive rounding turns a NaN whose payload lies in the dropped bits into
// inf (or, carrying, into the wrong sign's zero).
TEST(DtypeTest, NanStaysNan) {
  const std::vector<uint32_t> nans = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u,
                                      0x7fffffffu, 0x7f80ffffu, 0x7fbfffffu, 0x7f802000u};
  for (uint32_t bits : nans) {
    const float nan = from_bits(bits);
    ASSERT_TRUE(std::isnan(nan));
    EXPECT_TRUE(is_half_nan(float_to_half(nan))) << std::hex << bits << " -> " << float_to_half(nan);
    EXPECT_TRUE(is_bfloat16_nan(float_to_bfloat16(nan))) << std::hex << bits << " -> " << float_to_bfloat16(nan);
  }
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(half_to_float(0x7c01)));
  EXPECT_TRUE(std::isnan(bfloat16_to_float(0x7fc0)));
  EXPECT_TRUE(std::isnan(bfloat16_to_float(0x7f81)));
}

// Every finite half and bfloat16 widens exactly and narrows back to itself.
TEST(DtypeTest, EveryValueRoundTrips) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    if (is_half_nan(bits)) {
      ASSERT_TRUE(std::isnan(half_to_float(bits))) << std::hex << h;
      continue;
    }
    ASSERT_EQ(float_to_half(half_to_float(bits)), bits) << std::hex << h;
  }
  for (uint32_t b = 0; b <= 0xffffu; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    ASSERT_EQ(bits_of(bfloat16_to_float(bits)), b << 16) << "widening is a shift: " << std::hex << b;
    if (is_bfloat16_nan(bits)) continue;
    ASSERT_EQ(float_to_bfloat16(bfloat16_to_float(bits)), bits) << std::hex << b;
  }
  // Known widenings, subnormals included.
  EXPECT_EQ(half_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(half_to_float(0x03ff), 0x3ffp-24f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(bits_of(half_to_float(0x8000)), 0x80000000u);
}

// Random floats across the whole range, and the ties and near-ties around every half and bfloat16 boundary of a
// few binades, against the binary-search reference.
TEST(DtypeTest, NarrowingMatchesTheReference) {
  std::mt19937 rng(1400);
  std::uniform_int_distribution<uint32_t> any_bits;
  std::vector<float> values;
  for (int i = 0; i < 200000; ++i) {
    const float f = from_bits(any_bits(rng));
    if (!std::isnan(f)) values.push_back(f);
  }
  // Half: every pattern of the exponents 2^-25 .. 2^-13 (subnormals and the first normals) and 2^15 (the top),
  // with the low 13 bits set to the tie and its neighbours.
  for (int exponent : {102, 103, 110, 112, 113, 114, 127, 142}) {
    for (uint32_t mantissa = 0; mantissa < (1u << 23); mantissa += 0x2000u)
      for (uint32_t low : {0x0fffu, 0x1000u, 0x1001u, 0x0001u, 0x1fffu})
        values.push_back(from_bits((static_cast<uint32_t>(exponent) << 23) | mantissa | low));
  }
  // bfloat16: ties and neighbours in the low 16 bits, in the subnormal, normal and top binades.
  for (uint32_t exponent : {0u, 1u, 127u, 200u, 254u})
    for (uint32_t mantissa = 0; mantissa < (1u << 23); mantissa += 0x10000u)
      for (uint32_t low : {0x7fffu, 0x8000u, 0x8001u, 0x0001u, 0xffffu})
        values.push_back(from_bits((exponent << 23) | mantissa | low));
  size_t checked = 0;
  for (float v : values) {
    for (float s : {v, -v}) {
      ASSERT_EQ(float_to_half(s), reference_half(s)) << std::hex << bits_of(s) << " (" << s << ")";
      ASSERT_EQ(float_to_bfloat16(s), reference_bfloat16(s)) << std::hex << bits_of(s) << " (" << s << ")";
      ++checked;
    }
  }
  EXPECT_GT(checked, 400000u);
}

TEST(DtypeTest, SizesNamesAndFloatingKinds) {
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_EQ(dtype_size(DType::I32), 4u);
  EXPECT_EQ(dtype_size(DType::I8), 1u);
  EXPECT_EQ(dtype_size(DType::U8), 1u);
  EXPECT_EQ(dtype_name(DType::BF16), "BF16");
  for (DType d : {DType::F32, DType::F16, DType::BF16}) EXPECT_TRUE(is_floating(d)) << dtype_name(d);
  for (DType d : {DType::I64, DType::I32, DType::I8, DType::U8}) EXPECT_FALSE(is_floating(d)) << dtype_name(d);
}

}  // namespace
}  // namespace elephant
