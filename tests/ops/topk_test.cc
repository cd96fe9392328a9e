#include "ops/topk.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "ops/device_helpers.h"

namespace elephant {
namespace {

// Rows with many exact ties (values drawn from a small set), some -inf and some NaN.
Tensor tied_rows(int64_t rows, int64_t n, std::mt19937& rng) {
  std::vector<float> v(static_cast<size_t>(rows * n));
  std::uniform_int_distribution<int> level(-20, 20);
  std::uniform_int_distribution<int> special(0, 99);
  for (auto& x : v) {
    const int s = special(rng);
    x = s == 0 ? std::nanf("") : s == 1 ? -INFINITY : static_cast<float>(level(rng)) * 0.25f;
  }
  return Tensor::from_vector(v, {rows, n});
}

// Sort by (value desc, index asc), NaN dropped.
void reference(const Tensor& x, int k, std::vector<float>& values, std::vector<int32_t>& indices) {
  const int64_t rows = x.dim(0), n = x.dim(1);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int32_t> order;
    for (int32_t i = 0; i < n; ++i)
      if (!std::isnan(x.data<float>()[r * n + i])) order.push_back(i);
    const float* row = x.data<float>() + r * n;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    for (int j = 0; j < k; ++j) {
      const bool have = j < static_cast<int>(order.size());
      values.push_back(have ? row[order[j]] : NAN);
      indices.push_back(have ? order[j] : -1);
    }
  }
}

void expect_same(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(b[i])) {
      EXPECT_TRUE(std::isnan(a[i])) << i;
    } else {
      EXPECT_EQ(a[i], b[i]) << i;
    }
  }
}

TEST(TopkTest, MatchesAStableSortWithTiesInfinitiesAndNans) {
  std::mt19937 rng(11);
  for (const auto& [rows, n] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {5, 300}, {2, 5000}}) {
    const Tensor x = tied_rows(rows, n, rng);
    for (const int k : {1, 2, 3, 8, 17, 64}) {
      if (k > n) continue;
      Tensor values = Tensor::empty({rows, k}), indices = Tensor::empty({rows, k}, DType::I32);
      ops::topk(x, k, values, indices);
      std::vector<float> expected_values;
      std::vector<int32_t> expected_indices;
      reference(x, k, expected_values, expected_indices);
      EXPECT_EQ(indices.to_vector<int32_t>(), expected_indices) << rows << "x" << n << " k " << k;
      expect_same(values.to_vector<float>(), expected_values);
    }
  }
}

TEST(TopkTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 5});
  Tensor values = Tensor::empty({2, 6}), indices = Tensor::empty({2, 6}, DType::I32);
  EXPECT_THROW(ops::topk(x, 6, values, indices), std::invalid_argument);  // k > n
  Tensor v0 = Tensor::empty({2, 0}), i0 = Tensor::empty({2, 0}, DType::I32);
  EXPECT_THROW(ops::topk(x, 0, v0, i0), std::invalid_argument);
  Tensor v = Tensor::empty({2, 2}), wrong = Tensor::empty({2, 2});
  EXPECT_THROW(ops::topk(x, 2, v, wrong), std::invalid_argument);  // indices must be I32
}

TEST(TopkTest, AddRowValuesAndFillColumn) {
  Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  ops::add_row_values(x, Tensor::from_vector(std::vector<float>{10, -1}, {2}));
  ops::fill_column(x, 1, -INFINITY);
  EXPECT_EQ(x.to_vector<float>(), (std::vector<float>{11, -INFINITY, 13, 3, -INFINITY, 5}));
  EXPECT_THROW(ops::fill_column(x, 3, 0.0f), std::invalid_argument);
  EXPECT_THROW(ops::add_row_values(x, Tensor::zeros({3})), std::invalid_argument);
}

TEST(CudaTopkTest, MatchesTheCpuExactly) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(12);
  for (const auto& [rows, n] :
       {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {96, 300}, {4, 256000}, {1, 8000}, {1, 128000}, {3, 50001}}) {
    const Tensor x = tied_rows(rows, n, rng);
    const Tensor xd = x.to(Device::CUDA);
    for (const int k : {1, 2, 4, 5, 8, 33, 64}) {
      if (k > n) continue;
      Tensor values = Tensor::empty({rows, k}), indices = Tensor::empty({rows, k}, DType::I32);
      ops::topk(x, k, values, indices);
      Tensor dv = testdev::poisoned({rows, k}, DType::F32, Device::CUDA);
      Tensor di = Tensor::zeros({rows, k}, DType::I32, Device::CUDA);
      ops::topk(xd, k, dv, di);
      EXPECT_EQ(di.to_vector<int32_t>(), indices.to_vector<int32_t>()) << rows << "x" << n << " k " << k;
      expect_same(dv.to_vector<float>(), values.to_vector<float>());
    }
  }
}

// Rows long enough to be split into chunks whose candidates are all empty or all -inf.
TEST(CudaTopkTest, ChunksWithoutFiniteValuesMatchTheCpu) {
  ELEPHANT_REQUIRE_CUDA();
  const int64_t n = 50000;
  std::vector<float> v(static_cast<size_t>(2 * n), std::nanf(""));
  v[static_cast<size_t>(n + 40000)] = -INFINITY;
  const Tensor x = Tensor::from_vector(v, {2, n});
  Tensor values = Tensor::empty({2, 3}), indices = Tensor::empty({2, 3}, DType::I32);
  ops::topk(x, 3, values, indices);
  Tensor dv = testdev::poisoned({2, 3}, DType::F32, Device::CUDA);
  Tensor di = Tensor::zeros({2, 3}, DType::I32, Device::CUDA);
  ops::topk(x.to(Device::CUDA), 3, dv, di);
  EXPECT_EQ(di.to_vector<int32_t>(), indices.to_vector<int32_t>());
  expect_same(dv.to_vector<float>(), values.to_vector<float>());
}

TEST(CudaTopkTest, AddRowValuesAndFillColumnMatchTheCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(13);
  const Tensor x = tied_rows(7, 1000, rng);
  const Tensor add = tied_rows(1, 7, rng).reshape({7});
  Tensor cpu = x.clone();
  ops::add_row_values(cpu, add);
  ops::fill_column(cpu, 999, -INFINITY);
  Tensor gpu = x.to(Device::CUDA);
  ops::add_row_values(gpu, add.to(Device::CUDA));
  ops::fill_column(gpu, 999, -INFINITY);
  expect_same(gpu.to_vector<float>(), cpu.to_vector<float>());
}

}  // namespace
}  // namespace elephant
