#include "ops/relative_position.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "ops/reference_helpers.h"

namespace elephant {
namespace {

// Line by line transcription of transformers' SwitchTransformersAttention._relative_position_bucket (same as
// T5's) for one position. Tensors there are float32; the Python scalars enter the float32 ops as float32.
int64_t transformers_bucket(int64_t relative_position, bool bidirectional, int64_t num_buckets, int64_t max_distance) {
  int64_t relative_buckets = 0;
  if (bidirectional) {
    num_buckets /= 2;                                                   // num_buckets //= 2
    relative_buckets += (relative_position > 0 ? 1 : 0) * num_buckets;  // (rp > 0).to(long) * num_buckets
    relative_position = std::abs(relative_position);                    // torch.abs(rp)
  } else {
    relative_position = -std::min<int64_t>(relative_position, 0);  // -torch.min(rp, zeros_like(rp))
  }
  const int64_t max_exact = num_buckets / 2;
  const bool is_small = relative_position < max_exact;
  if (is_small) return relative_buckets + relative_position;  // torch.where(is_small, rp, ...)
  // max_exact + (torch.log(rp.float() / max_exact) / math.log(max_distance / max_exact)
  //              * (num_buckets - max_exact)).to(torch.long)
  const float ratio = static_cast<float>(relative_position) / static_cast<float>(max_exact);
  const double log_range = std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact));
  const float scaled = std::log(ratio) / static_cast<float>(log_range) * static_cast<float>(num_buckets - max_exact);
  int64_t if_large = max_exact + static_cast<int64_t>(scaled);  // .to(torch.long) truncates toward zero
  if_large = std::min<int64_t>(if_large, num_buckets - 1);      // torch.min(.., full_like(.., num_buckets - 1))
  return relative_buckets + if_large;
}

// Buckets produced by transformers 5.17 / torch 2.15 itself for relative positions -300..300, as runs:
// {first relative position of the run, bucket}. Generated offline with
//   SwitchTransformersAttention._relative_position_bucket(torch.arange(-300, 301), bidirectional, nb, md).
struct TorchTable {
  bool bidirectional;
  int num_buckets;
  int max_distance;
  std::vector<std::pair<int, int>> runs;
};

const std::vector<TorchTable> kTorchTables = {
    {true, 32, 128, {{-300, 15}, {-90, 14}, {-63, 13}, {-45, 12}, {-31, 11}, {-22, 10}, {-15, 9}, {-11, 8},
                     {-7, 7},    {-6, 6},   {-5, 5},   {-4, 4},   {-3, 3},   {-2, 2},   {-1, 1},  {0, 0},
                     {1, 17},    {2, 18},   {3, 19},   {4, 20},   {5, 21},   {6, 22},   {7, 23},  {8, 24},
                     {12, 25},   {16, 26},  {23, 27},  {32, 28},  {46, 29},  {64, 30},  {91, 31}}},
    {false, 32, 128, {{-300, 31}, {-112, 30}, {-98, 29}, {-86, 28}, {-76, 27}, {-66, 26}, {-58, 25}, {-51, 24},
                      {-45, 23},  {-39, 22},  {-34, 21}, {-30, 20}, {-26, 19}, {-23, 18}, {-20, 17}, {-18, 16},
                      {-15, 15},  {-14, 14},  {-13, 13}, {-12, 12}, {-11, 11}, {-10, 10}, {-9, 9},   {-8, 8},
                      {-7, 7},    {-6, 6},    {-5, 5},   {-4, 4},   {-3, 3},   {-2, 2},   {-1, 1},   {0, 0}}},
    {true,
     16,
     20,
     {{-300, 7},
      {-13, 6},
      {-8, 5},
      {-5, 4},
      {-3, 3},
      {-2, 2},
      {-1, 1},
      {0, 0},
      {1, 9},
      {2, 10},
      {3, 11},
      {4, 12},
      {6, 13},
      {9, 14},
      {14, 15}}},
    {false,
     16,
     20,
     {{-300, 15},
      {-17, 14},
      {-15, 13},
      {-14, 12},
      {-12, 11},
      {-11, 10},
      {-10, 9},
      {-8, 8},
      {-7, 7},
      {-6, 6},
      {-5, 5},
      {-4, 4},
      {-3, 3},
      {-2, 2},
      {-1, 1},
      {0, 0}}},
    {true, 8, 16, {{-300, 3}, {-5, 2}, {-1, 1}, {0, 0}, {1, 5}, {2, 6}, {6, 7}}},
    {false, 8, 16, {{-300, 7}, {-11, 6}, {-7, 5}, {-5, 4}, {-3, 3}, {-2, 2}, {-1, 1}, {0, 0}}},
    {true, 64, 256, {{-300, 31}, {-215, 30}, {-181, 29}, {-152, 28}, {-127, 27}, {-107, 26}, {-90, 25}, {-76, 24},
                     {-63, 23},  {-53, 22},  {-45, 21},  {-38, 20},  {-31, 19},  {-26, 18},  {-22, 17}, {-19, 16},
                     {-15, 15},  {-14, 14},  {-13, 13},  {-12, 12},  {-11, 11},  {-10, 10},  {-9, 9},   {-8, 8},
                     {-7, 7},    {-6, 6},    {-5, 5},    {-4, 4},    {-3, 3},    {-2, 2},    {-1, 1},   {0, 0},
                     {1, 33},    {2, 34},    {3, 35},    {4, 36},    {5, 37},    {6, 38},    {7, 39},   {8, 40},
                     {9, 41},    {10, 42},   {11, 43},   {12, 44},   {13, 45},   {14, 46},   {15, 47},  {16, 48},
                     {20, 49},   {23, 50},   {27, 51},   {32, 52},   {39, 53},   {46, 54},   {54, 55},  {64, 56},
                     {77, 57},   {91, 58},   {108, 59},  {128, 60},  {153, 61},  {182, 62},  {216, 63}}},
    {false, 64, 256, {{-300, 63}, {-239, 62}, {-224, 61}, {-210, 60}, {-197, 59}, {-184, 58}, {-173, 57}, {-162, 56},
                      {-152, 55}, {-142, 54}, {-133, 53}, {-125, 52}, {-117, 51}, {-109, 50}, {-103, 49}, {-96, 48},
                      {-90, 47},  {-84, 46},  {-79, 45},  {-74, 44},  {-69, 43},  {-65, 42},  {-61, 41},  {-57, 40},
                      {-53, 39},  {-50, 38},  {-47, 37},  {-44, 36},  {-41, 35},  {-38, 34},  {-36, 33},  {-34, 32},
                      {-31, 31},  {-30, 30},  {-29, 29},  {-28, 28},  {-27, 27},  {-26, 26},  {-25, 25},  {-24, 24},
                      {-23, 23},  {-22, 22},  {-21, 21},  {-20, 20},  {-19, 19},  {-18, 18},  {-17, 17},  {-16, 16},
                      {-15, 15},  {-14, 14},  {-13, 13},  {-12, 12},  {-11, 11},  {-10, 10},  {-9, 9},    {-8, 8},
                      {-7, 7},    {-6, 6},    {-5, 5},    {-4, 4},    {-3, 3},    {-2, 2},    {-1, 1},    {0, 0}}},
    {true,
     12,
     1000,
     {{-300, 5}, {-144, 4}, {-20, 3}, {-2, 2}, {-1, 1}, {0, 0}, {1, 7}, {2, 8}, {3, 9}, {21, 10}, {145, 11}}},
    {false,
     12,
     1000,
     {{-300, 10}, {-181, 9}, {-77, 8}, {-33, 7}, {-14, 6}, {-5, 5}, {-4, 4}, {-3, 3}, {-2, 2}, {-1, 1}, {0, 0}}},
    {true, 6, 10, {{-300, 2}, {-3, 1}, {0, 0}, {1, 4}, {4, 5}}},
    {false, 6, 10, {{-300, 5}, {-6, 4}, {-4, 3}, {-2, 2}, {-1, 1}, {0, 0}}},
};

int table_bucket(const TorchTable& table, int relative_position) {
  int bucket = -1;
  for (const auto& [first, value] : table.runs)
    if (first <= relative_position) bucket = value;
  return bucket;
}

struct Config {
  bool bidirectional;
  int num_buckets;
  int max_distance;
};

std::vector<Config> all_configs() {
  std::vector<Config> configs;
  for (bool bidirectional : {true, false})
    for (const auto& [nb, md] : std::vector<std::pair<int, int>>{
             {32, 128}, {16, 20}, {8, 16}, {64, 256}, {32, 64}, {12, 1000}, {6, 10}, {4, 8}, {10, 300}, {128, 128}})
      configs.push_back({bidirectional, nb, md});
  return configs;
}

TEST(RelativePositionTest, BucketMatchesTransformersTranscription) {
  for (const Config& c : all_configs()) {
    const ops::RelativePositionArgs args{c.bidirectional, c.num_buckets, c.max_distance};
    for (int r = -300; r <= 300; ++r) {
      ASSERT_EQ(ops::relative_position_bucket(r, args),
                transformers_bucket(r, c.bidirectional, c.num_buckets, c.max_distance))
          << "relative position " << r << ", bidirectional " << c.bidirectional << ", num_buckets " << c.num_buckets
          << ", max_distance " << c.max_distance;
    }
  }
}

TEST(RelativePositionTest, BucketMatchesTableFromTransformers) {
  for (const TorchTable& table : kTorchTables) {
    const ops::RelativePositionArgs args{table.bidirectional, table.num_buckets, table.max_distance};
    for (int r = -300; r <= 300; ++r) {
      const int expected = table_bucket(table, r);
      ASSERT_EQ(ops::relative_position_bucket(r, args), expected)
          << "relative position " << r << ", bidirectional " << table.bidirectional << ", num_buckets "
          << table.num_buckets << ", max_distance " << table.max_distance;
      // The transcription agrees with the real thing too, so the test above checks what it claims.
      ASSERT_EQ(transformers_bucket(r, table.bidirectional, table.num_buckets, table.max_distance), expected)
          << "transcription, relative position " << r;
    }
  }
}

TEST(RelativePositionTest, BucketsStayInRangeAndAreMonotoneInDistance) {
  for (const Config& c : all_configs()) {
    const ops::RelativePositionArgs args{c.bidirectional, c.num_buckets, c.max_distance};
    const int half = c.bidirectional ? c.num_buckets / 2 : c.num_buckets;
    int previous_past = -1, previous_before = -1;
    for (int distance = 0; distance <= 5000; ++distance) {
      const int before = ops::relative_position_bucket(-distance, args);  // key before the query
      ASSERT_GE(before, 0);
      ASSERT_LT(before, half);
      ASSERT_GE(before, previous_before);
      previous_before = before;
      const int past = ops::relative_position_bucket(distance, args);  // key after the query
      if (c.bidirectional) {
        ASSERT_EQ(past >= half, distance > 0) << distance;
        ASSERT_LT(past, c.num_buckets);
        ASSERT_GE(past, previous_past);
        previous_past = past;
      } else {
        ASSERT_EQ(past, 0) << "unidirectional: keys after the query all share bucket 0";
      }
    }
    EXPECT_EQ(ops::relative_position_bucket(-5000, args), half - 1);
  }
}

TEST(RelativePositionTest, BiasTableLayout) {
  std::mt19937 rng(31);
  for (const Config& c : {Config{true, 32, 128}, Config{false, 32, 128}, Config{true, 16, 20}, Config{false, 8, 16}})
    for (int heads : {1, 3, 12})
      for (int max_offset : {0, 1, 7, 300}) {
        SCOPED_TRACE(::testing::Message() << "bidirectional " << c.bidirectional << " buckets " << c.num_buckets
                                          << " heads " << heads << " max_offset " << max_offset);
        const ops::RelativePositionArgs args{c.bidirectional, c.num_buckets, c.max_distance};
        const Tensor table = testref::random_tensor({c.num_buckets, heads}, rng);
        const Tensor bias = ops::relative_position_bias(table, max_offset, args);
        const int64_t width = 2 * static_cast<int64_t>(max_offset) + 1;
        ASSERT_EQ(bias.shape(), (Shape{heads, width}));
        const float* t = table.data<float>();
        const float* b = bias.data<float>();
        // out[h, r + max_offset] = table[bucket(r), h]
        for (int h = 0; h < heads; ++h)
          for (int r = -max_offset; r <= max_offset; ++r) {
            const int64_t bucket = transformers_bucket(r, c.bidirectional, c.num_buckets, c.max_distance);
            ASSERT_EQ(b[h * width + r + max_offset], t[bucket * heads + h]) << "head " << h << " offset " << r;
          }
        // The same, phrased like transformers' compute_bias: values[q, k, h] = table[bucket(k - q), h] for
        // queries and keys in [0, max_offset].
        for (int q = 0; q <= max_offset; q += std::max(1, max_offset / 5))
          for (int k = 0; k <= max_offset; ++k)
            for (int h = 0; h < heads; ++h) {
              const int64_t bucket = transformers_bucket(k - q, c.bidirectional, c.num_buckets, c.max_distance);
              ASSERT_EQ(b[h * width + (k - q) + max_offset], t[bucket * heads + h]);
            }
      }
}

TEST(RelativePositionTest, BiasRejectsATableOfTheWrongShape) {
  std::mt19937 rng(32);
  const ops::RelativePositionArgs args{true, 32, 128};
  EXPECT_THROW(ops::relative_position_bias(testref::random_tensor({16, 4}, rng), 5, args), std::invalid_argument);
  EXPECT_THROW(ops::relative_position_bias(testref::random_tensor({32}, rng), 5, args), std::invalid_argument);
  EXPECT_NO_THROW(ops::relative_position_bias(testref::random_tensor({32, 4}, rng), 5, args));
}

}  // namespace
}  // namespace elephant
