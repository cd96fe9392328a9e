#include "ops/kv_cache.h"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <vector>

#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::random_tensor;

int64_t at(const Tensor& cache, int64_t row, int64_t slot, int64_t j) {
  return (row * cache.dim(1) + slot) * cache.dim(2) + j;
}

Tensor same_slot(int64_t rows, int32_t slot) {
  return Tensor::from_vector(std::vector<int32_t>(static_cast<size_t>(rows), slot), {rows});
}

TEST(KvCacheTest, WriteCacheStepWritesOneSlotPerRow) {
  std::mt19937 rng(1300);
  for (int64_t width : {1, 6, 64}) {
    for (int64_t step : {0, 3, 4}) {
      for (int64_t written_rows : {5, 3}) {  // all rows, or the first ones only
        SCOPED_TRACE(::testing::Message() << "width " << width << " step " << step << " rows " << written_rows);
        Tensor cache = random_tensor({5, 5, width}, rng);
        const std::vector<float> before = testref::to_vector(cache);
        const Tensor values = random_tensor({written_rows, width}, rng);
        ops::write_cache_step(values, same_slot(5, static_cast<int32_t>(step)), cache);
        std::vector<float> expected = before;
        for (int64_t r = 0; r < written_rows; ++r)
          for (int64_t j = 0; j < width; ++j) expected[at(cache, r, step, j)] = values.data<float>()[r * width + j];
        EXPECT_TRUE(testref::bitwise_equal(cache, expected));
      }
    }
  }
}

TEST(KvCacheTest, WriteCacheStepTakesEachRowsSlot) {
  std::mt19937 rng(1302);
  Tensor cache = random_tensor({3, 4, 2}, rng);
  std::vector<float> expected = testref::to_vector(cache);
  const Tensor values = random_tensor({3, 2}, rng);
  const std::vector<int32_t> slots{2, 0, 3};
  ops::write_cache_step(values, Tensor::from_vector(slots, {3}), cache);
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t j = 0; j < 2; ++j) expected[at(cache, r, slots[r], j)] = values.data<float>()[r * 2 + j];
  EXPECT_TRUE(testref::bitwise_equal(cache, expected));
}

TEST(KvCacheTest, WriteCacheStepChecksShapes) {
  std::mt19937 rng(1301);
  Tensor cache = random_tensor({4, 3, 6}, rng);
  const std::vector<float> before = testref::to_vector(cache);
  EXPECT_THROW(ops::write_cache_step(random_tensor({4, 6}, rng), same_slot(4, 3), cache),
               std::invalid_argument);  // no slot 3
  EXPECT_THROW(ops::write_cache_step(random_tensor({4, 6}, rng), same_slot(4, -1), cache), std::invalid_argument);
  EXPECT_THROW(ops::write_cache_step(random_tensor({5, 6}, rng), same_slot(5, 0), cache),
               std::invalid_argument);  // too many rows
  EXPECT_THROW(ops::write_cache_step(random_tensor({4, 5}, rng), same_slot(4, 0), cache),
               std::invalid_argument);  // width
  EXPECT_THROW(ops::write_cache_step(random_tensor({4, 1, 6}, rng), same_slot(4, 0), cache), std::invalid_argument);
  EXPECT_THROW(ops::write_cache_step(Tensor::zeros({4, 6}, DType::F16), same_slot(4, 0), cache), std::invalid_argument);
  EXPECT_THROW(ops::write_cache_step(random_tensor({4, 6}, rng), same_slot(3, 0), cache), std::invalid_argument);
  EXPECT_THROW(ops::write_cache_step(random_tensor({4, 6}, rng), Tensor::zeros({4}), cache), std::invalid_argument);
  Tensor flat = random_tensor({12, 6}, rng);
  EXPECT_THROW(ops::write_cache_step(random_tensor({4, 6}, rng), same_slot(4, 0), flat), std::invalid_argument);
  EXPECT_TRUE(testref::bitwise_equal(cache, before)) << "a rejected call wrote into the cache";
  EXPECT_NO_THROW(ops::write_cache_step(Tensor::empty({0, 6}), same_slot(4, 2), cache));
  EXPECT_TRUE(testref::bitwise_equal(cache, before));
}

// out[i, 0:steps] = cache[rows[i], 0:steps]; out's other slots keep their values.
std::vector<float> reference_gather(const Tensor& cache, const std::vector<int32_t>& rows, int64_t steps,
                                    const Tensor& out_before) {
  std::vector<float> expected = testref::to_vector(out_before);
  const int64_t width = cache.dim(2);
  for (int64_t i = 0; i < out_before.dim(0); ++i)
    for (int64_t slot = 0; slot < steps; ++slot)
      for (int64_t j = 0; j < width; ++j)
        expected[at(out_before, i, slot, j)] = cache.data<float>()[at(cache, rows[i], slot, j)];
  return expected;
}

TEST(KvCacheTest, GatherCacheRowsReordersAndResizes) {
  std::mt19937 rng(1302);
  const std::vector<int32_t> rows = {3, 0, 0, 2};  // reordered, one repeated, row 1 dropped
  for (int64_t width : {1, 6, 33}) {
    for (int64_t out_slots : {4, 6, 11}) {  // fewer, as many and more slots than the cache
      for (int64_t steps : {0, 1, 4}) {
        SCOPED_TRACE(::testing::Message() << "width " << width << " out slots " << out_slots << " steps " << steps);
        const Tensor cache = random_tensor({4, 6, width}, rng);
        const Tensor out_before = testref::filled_tensor({4, out_slots, width}, -77.0f);
        Tensor out = out_before.clone();
        ops::gather_cache_rows(cache, Tensor::from_vector(rows, {4}), steps, out);
        EXPECT_TRUE(testref::bitwise_equal(out, reference_gather(cache, rows, steps, out_before)));
      }
    }
  }
  // Fewer output rows than indices: only the first out.dim(0) are used.
  const Tensor cache = random_tensor({4, 6, 5}, rng);
  const Tensor out_before = testref::filled_tensor({2, 6, 5}, -77.0f);
  Tensor out = out_before.clone();
  ops::gather_cache_rows(cache, Tensor::from_vector(rows, {4}), 6, out);
  EXPECT_TRUE(testref::bitwise_equal(out, reference_gather(cache, rows, 6, out_before)));
  // No rows.
  Tensor none = Tensor::empty({0, 6, 5});
  EXPECT_NO_THROW(ops::gather_cache_rows(cache, Tensor::from_vector(std::vector<int32_t>{}, {0}), 3, none));
}

// Parents within groups of `group` rows, some rows continuing themselves.
std::vector<int32_t> group_parents(int64_t rows, int64_t group, std::mt19937& rng) {
  std::vector<int32_t> parents(static_cast<size_t>(rows));
  std::uniform_int_distribution<int64_t> pick(0, group - 1);
  for (int64_t r = 0; r < rows; ++r)
    parents[static_cast<size_t>(r)] = static_cast<int32_t>(r - r % group + (r % 3 == 0 ? r % group : pick(rng)));
  return parents;
}

// In place, all caches at once: the same as gathering each cache's rows into a copy (reference_gather), slots past
// `steps` untouched.
TEST(KvCacheTest, ReorderCacheGroupsEqualsGatheringEachCache) {
  std::mt19937 rng(1305);
  for (int64_t group : {1, 2, 3, 8})
    for (int64_t width : {1, 6, 33})
      for (int64_t steps : {0, 1, 5}) {
        SCOPED_TRACE(::testing::Message() << "group " << group << " width " << width << " steps " << steps);
        const int64_t rows = 2 * group;
        const std::vector<int32_t> parents = group_parents(rows, group, rng);
        std::vector<Tensor> caches;
        std::vector<std::vector<float>> expected;
        for (int i = 0; i < 3; ++i) {
          caches.push_back(random_tensor({rows, 5, width}, rng));
          expected.push_back(reference_gather(caches.back(), parents, steps, caches.back()));
        }
        std::vector<Tensor*> pointers;
        for (Tensor& cache : caches) pointers.push_back(&cache);
        ops::reorder_cache_groups(pointers, Tensor::from_vector(parents, {rows}), group, steps);
        for (size_t i = 0; i < caches.size(); ++i) EXPECT_TRUE(testref::bitwise_equal(caches[i], expected[i]));
      }
}

TEST(KvCacheTest, ReorderCacheGroupsChecksArguments) {
  std::mt19937 rng(1306);
  Tensor cache = random_tensor({4, 6, 5}, rng), other = random_tensor({4, 6, 5}, rng);
  const Tensor parents = Tensor::from_vector(std::vector<int32_t>{1, 0, 2, 2}, {4});
  std::vector<Tensor*> both = {&cache, &other};
  EXPECT_NO_THROW(ops::reorder_cache_groups(both, parents, 2, 6));
  EXPECT_NO_THROW(ops::reorder_cache_groups({}, parents, 2, 6));
  EXPECT_THROW(ops::reorder_cache_groups(both, parents, 3, 2), std::invalid_argument);  // 4 rows in groups of 3
  EXPECT_THROW(ops::reorder_cache_groups(both, parents, 0, 2), std::invalid_argument);
  Tensor nine = random_tensor({9, 6, 5}, rng);  // one row past the widest group (ops::kMaxCacheGroup)
  std::vector<Tensor*> wide = {&nine};
  EXPECT_THROW(ops::reorder_cache_groups(wide, Tensor::zeros({9}, DType::I32), 9, 2), std::invalid_argument);
  EXPECT_THROW(ops::reorder_cache_groups(both, parents, 2, 7), std::invalid_argument);  // past the slots
  EXPECT_THROW(ops::reorder_cache_groups(both, parents, 2, -1), std::invalid_argument);
  EXPECT_THROW(ops::reorder_cache_groups(both, Tensor::from_vector(std::vector<int32_t>{1, 0, 2}, {3}), 1, 2),
               std::invalid_argument);
  EXPECT_THROW(ops::reorder_cache_groups(both, Tensor::from_vector(std::vector<int64_t>{1, 0, 2, 2}, {4}), 2, 2),
               std::invalid_argument);
  Tensor wider = random_tensor({4, 6, 6}, rng);
  std::vector<Tensor*> mixed = {&cache, &wider};
  EXPECT_THROW(ops::reorder_cache_groups(mixed, parents, 2, 2), std::invalid_argument);
  Tensor half = Tensor::empty({4, 6, 5}, DType::F16);
  std::vector<Tensor*> dtypes = {&cache, &half};
  EXPECT_THROW(ops::reorder_cache_groups(dtypes, parents, 2, 2), std::invalid_argument);
  // A parent of another group: rows 2 and 3 are group [2, 4).
  const Tensor across = Tensor::from_vector(std::vector<int32_t>{1, 0, 1, 2}, {4});
  EXPECT_THROW(ops::reorder_cache_groups(both, across, 2, 2), std::out_of_range);
}

TEST(KvCacheTest, GatherCacheRowsChecksArguments) {
  std::mt19937 rng(1303);
  const Tensor cache = random_tensor({4, 6, 5}, rng);
  const Tensor rows = Tensor::from_vector(std::vector<int32_t>{1, 2, 3}, {3});
  Tensor out = testref::filled_tensor({3, 6, 5}, -77.0f);
  EXPECT_THROW(ops::gather_cache_rows(cache, rows, 7, out), std::invalid_argument);  // past the cache's slots
  EXPECT_THROW(ops::gather_cache_rows(cache, rows, -1, out), std::invalid_argument);
  Tensor short_out = Tensor::empty({3, 2, 5});
  EXPECT_THROW(ops::gather_cache_rows(cache, rows, 3, short_out), std::invalid_argument);  // past out's slots
  Tensor narrow = Tensor::empty({3, 6, 4});
  EXPECT_THROW(ops::gather_cache_rows(cache, rows, 3, narrow), std::invalid_argument);
  Tensor many = Tensor::empty({4, 6, 5});
  EXPECT_THROW(ops::gather_cache_rows(cache, rows, 3, many), std::invalid_argument);  // 3 indices for 4 rows
  EXPECT_THROW(ops::gather_cache_rows(cache, Tensor::from_vector(std::vector<int64_t>{1, 2, 3}, {3}), 3, out),
               std::invalid_argument);
  Tensor half = Tensor::empty({3, 6, 5}, DType::F16);
  EXPECT_THROW(ops::gather_cache_rows(cache, rows, 3, half), std::invalid_argument);
  Tensor flat = Tensor::empty({3, 30});
  EXPECT_THROW(ops::gather_cache_rows(cache, rows, 3, flat), std::invalid_argument);
  EXPECT_THROW(ops::gather_cache_rows(cache, Tensor::from_vector(std::vector<int32_t>{1, 4, 0}, {3}), 3, out),
               std::out_of_range);
  EXPECT_THROW(ops::gather_cache_rows(cache, Tensor::from_vector(std::vector<int32_t>{-1, 0, 0}, {3}), 3, out),
               std::out_of_range);
  Tensor fresh = testref::filled_tensor({3, 6, 5}, -77.0f);
  EXPECT_NO_THROW(ops::gather_cache_rows(cache, rows, 6, fresh));
}

}  // namespace
}  // namespace elephant
