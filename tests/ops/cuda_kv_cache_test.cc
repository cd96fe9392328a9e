// The decode-state ops on CUDA against the CPU: exact copies, in every dtype.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "ops/device_helpers.h"
#include "ops/elementwise.h"
#include "ops/gather.h"
#include "ops/kv_cache.h"

namespace elephant {
namespace {

using testdev::random_cpu;

TEST(CudaKvCache, WriteCacheStepAndGatherCacheRowsMatchTheCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(1400);
  for (const DType dtype : testdev::cuda_dtypes()) {
    for (const int64_t width : {1, 3, 64, 1024}) {
      SCOPED_TRACE(dtype_name(dtype) + " width " + std::to_string(width));
      const Tensor cache = testdev::rounded_to(random_cpu({5, 7, width}, rng), dtype);
      const Tensor values = testdev::rounded_to(random_cpu({4, width}, rng), dtype);
      const Tensor slots = Tensor::from_vector(std::vector<int32_t>{6, 0, 3, 3}, {4});
      Tensor cpu = cache.clone();
      ops::write_cache_step(values, slots, cpu);
      Tensor gpu = testdev::to_cuda(cache, dtype);
      ops::write_cache_step(testdev::to_cuda(values, dtype), slots.to(Device::CUDA), gpu);
      EXPECT_TRUE(testdev::relative_l2_within(gpu, cpu, 0.0));

      const Tensor rows = Tensor::from_vector(std::vector<int32_t>{4, 4, 0, 2}, {4});
      Tensor cpu_out = testdev::rounded_to(random_cpu({4, 9, width}, rng), dtype);
      Tensor gpu_out = testdev::to_cuda(cpu_out, dtype);
      ops::gather_cache_rows(cpu, rows, 5, cpu_out);
      ops::gather_cache_rows(gpu, rows.to(Device::CUDA), 5, gpu_out);
      EXPECT_TRUE(testdev::relative_l2_within(gpu_out, cpu_out, 0.0));
    }
  }
}

// Beam search's in-place reorder of every cache on CUDA against the CPU: 16-byte words (width 64, 1024), 4-byte words
// (width 2 in half precision, 3 in F32), bytes (width 3 in half precision), groups up to ops::kMaxCacheGroup.
TEST(CudaKvCache, ReorderCacheGroupsMatchesTheCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(1402);
  for (const DType dtype : testdev::cuda_dtypes())
    for (const int64_t width : {2, 3, 64, 1024})
      for (const int64_t group : {1, 2, 5, 8}) {
        SCOPED_TRACE(dtype_name(dtype) + " width " + std::to_string(width) + " group " + std::to_string(group));
        const int64_t rows = 3 * group;
        std::vector<int32_t> parents(static_cast<size_t>(rows));
        // The first group's rows continue themselves (the kernel leaves that group alone), the others' mix.
        for (int64_t r = 0; r < rows; ++r)
          parents[static_cast<size_t>(r)] = static_cast<int32_t>(r < group ? r : r - r % group + (r * 7 + 3) % group);
        std::vector<Tensor> cpu, gpu;
        for (int i = 0; i < 3; ++i) {
          cpu.push_back(testdev::rounded_to(random_cpu({rows, 9, width}, rng), dtype));
          gpu.push_back(testdev::to_cuda(cpu.back(), dtype));
        }
        std::vector<Tensor*> cpu_caches, gpu_caches;
        for (int i = 0; i < 3; ++i) {
          cpu_caches.push_back(&cpu[static_cast<size_t>(i)]);
          gpu_caches.push_back(&gpu[static_cast<size_t>(i)]);
        }
        const Tensor cpu_parents = Tensor::from_vector(parents, {rows});
        ops::reorder_cache_groups(cpu_caches, cpu_parents, group, 6);
        ops::reorder_cache_groups(gpu_caches, cpu_parents.to(Device::CUDA), group, 6);
        for (int i = 0; i < 3; ++i)
          EXPECT_TRUE(testdev::relative_l2_within(gpu[static_cast<size_t>(i)], cpu[static_cast<size_t>(i)], 0.0));
      }
}

// Indices are not read by the host on CUDA: out-of-range ones must neither fault nor read out of bounds.
TEST(CudaKvCache, OutOfRangeRowsAreSkippedOrZeroed) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(1401);
  const Tensor none = Tensor::empty({0, 8}, DType::F32, Device::CUDA);
  Tensor out = testdev::poisoned({2, 8}, DType::F32, Device::CUDA);
  ops::gather_rows(none, Tensor::from_vector(std::vector<int32_t>{0, 3}, {2}, Device::CUDA), out);
  EXPECT_EQ(out.to_vector<float>(), std::vector<float>(16, 0.0f));

  const Tensor cache = random_cpu({2, 3, 4}, rng).to(Device::CUDA);
  const Tensor before = random_cpu({2, 3, 4}, rng);
  Tensor gathered = before.to(Device::CUDA);
  ops::gather_cache_rows(cache, Tensor::from_vector(std::vector<int32_t>{-1, 2}, {2}, Device::CUDA), 3, gathered);
  EXPECT_EQ(gathered.to_vector<float>(), before.to_vector<float>());
}

TEST(CudaKvCache, AddScalarMatchesTheCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::vector<int32_t> values(1000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<int32_t>(i) - 300;
  Tensor gpu = Tensor::from_vector(values, {1000}, Device::CUDA);
  ops::add_scalar(gpu, 7);
  for (int32_t& v : values) v += 7;
  EXPECT_EQ(gpu.to_vector<int32_t>(), values);
}

}  // namespace
}  // namespace elephant
