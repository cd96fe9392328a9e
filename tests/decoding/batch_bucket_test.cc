#include <gtest/gtest.h>

#include "decoding/search.h"

namespace elephant {
namespace {

TEST(BatchBucket, PowersOfTwoAndOneAndAHalfTimesThem) {
  const std::vector<std::pair<int64_t, int64_t>> expected{{0, 0},   {1, 1},   {2, 2},   {3, 3},   {4, 4},
                                                          {5, 6},   {6, 6},   {7, 8},   {9, 12},  {13, 16},
                                                          {17, 24}, {25, 32}, {33, 48}, {95, 96}, {97, 128}};
  for (const auto& [rows, bucket] : expected) EXPECT_EQ(batch_bucket(rows), bucket) << rows;
  for (int64_t rows = 1; rows <= 1000; ++rows) {
    const int64_t bucket = batch_bucket(rows);
    EXPECT_GE(bucket, rows);
    EXPECT_LE(bucket, rows + rows / 2 + 1) << rows;  // at most half again as many rows
    EXPECT_EQ(batch_bucket(bucket), bucket);
  }
}

}  // namespace
}  // namespace elephant
