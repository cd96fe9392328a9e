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

// Which entries stay after some finished: none (keep the batch as it is) when nothing shrinks, else every live
// entry and, bucketed, the first finished ones as padding up to the bucket, in order.
TEST(EntriesToKeep, LiveEntriesAndPaddingUpToTheBucket) {
  const std::vector<uint8_t> done{1, 0, 1, 1, 0, 0, 1, 0, 0, 1};  // 5 live of 10
  EXPECT_EQ(entries_to_keep(done, false, true), std::vector<int32_t>{});
  EXPECT_EQ(entries_to_keep(done, false, false), std::vector<int32_t>{});
  EXPECT_EQ(entries_to_keep(done, true, false), (std::vector<int32_t>{1, 4, 5, 7, 8}));
  EXPECT_EQ(entries_to_keep(done, true, true), (std::vector<int32_t>{0, 1, 4, 5, 7, 8}));  // bucket 6
  // 7 live of 8: the bucket (8) is the batch, which keeps its size.
  EXPECT_EQ(entries_to_keep({0, 0, 1, 0, 0, 0, 0, 0}, true, true), std::vector<int32_t>{});
  EXPECT_EQ(entries_to_keep({0, 0, 1, 0, 0, 0, 0, 0}, true, false), (std::vector<int32_t>{0, 1, 3, 4, 5, 6, 7}));
  // Nothing finished: nothing to do either way.
  EXPECT_EQ(entries_to_keep({0, 0, 0}, true, false), std::vector<int32_t>{});
}

}  // namespace
}  // namespace elephant
