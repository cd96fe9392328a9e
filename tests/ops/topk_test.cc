#include "ops/topk.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "ops/device_helpers.h"
#include "ops/softmax.h"

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

// What beam search composed before ops::beam_candidates: log_softmax, EOS at -inf, the running scores, topk over
// each source's beams x vocabulary.
void composed_candidates(const Tensor& logits, const Tensor& row_values, int beam, int64_t excluded, int k,
                         Tensor& values, Tensor& indices) {
  Tensor scores = Tensor::empty(logits.shape(), DType::F32, logits.device());
  ops::log_softmax(logits, scores);
  if (excluded >= 0) ops::fill_column(scores, excluded, -INFINITY);
  ops::add_row_values(scores, row_values);
  ops::topk(scores.reshape({logits.dim(0) / beam, beam * logits.dim(1)}), k, values, indices);
}

TEST(TopkTest, BeamCandidatesEqualTheComposedOps) {
  std::mt19937 rng(14);
  for (const auto& [beam, vocab, k] : {std::tuple<int, int64_t, int>{1, 7, 2}, {2, 50, 4}, {4, 33, 8}, {3, 1, 3}}) {
    const int64_t rows = 3 * beam;
    const Tensor logits = testdev::random_cpu({rows, vocab}, rng, -4.0f, 4.0f);
    const Tensor scores = testdev::random_cpu({rows}, rng, -10.0f, 0.0f);
    for (int64_t excluded : {int64_t{-1}, vocab - 1}) {
      SCOPED_TRACE(::testing::Message() << "beam " << beam << " vocab " << vocab << " excluded " << excluded);
      Tensor values = Tensor::empty({3, k}), indices = Tensor::empty({3, k}, DType::I32);
      Tensor expected_values = Tensor::empty({3, k}), expected_indices = Tensor::empty({3, k}, DType::I32);
      ops::beam_candidates(logits, scores, beam, excluded, k, values, indices);
      composed_candidates(logits, scores, beam, excluded, k, expected_values, expected_indices);
      EXPECT_EQ(indices.to_vector<int32_t>(), expected_indices.to_vector<int32_t>());
      expect_same(values.to_vector<float>(), expected_values.to_vector<float>());
    }
  }
}

TEST(TopkTest, BeamCandidatesRejectBadArguments) {
  const Tensor logits = Tensor::zeros({4, 10}), scores = Tensor::zeros({4});
  Tensor values = Tensor::empty({2, 3}), indices = Tensor::empty({2, 3}, DType::I32);
  EXPECT_NO_THROW(ops::beam_candidates(logits, scores, 2, 9, 3, values, indices));
  EXPECT_THROW(ops::beam_candidates(logits, scores, 3, -1, 3, values, indices), std::invalid_argument);  // 4 rows
  EXPECT_THROW(ops::beam_candidates(logits, scores, 2, 10, 3, values, indices), std::invalid_argument);
  EXPECT_THROW(ops::beam_candidates(logits, scores, 2, -2, 3, values, indices), std::invalid_argument);
  EXPECT_THROW(ops::beam_candidates(logits, scores, 2, -1, 0, values, indices), std::invalid_argument);
  EXPECT_THROW(ops::beam_candidates(logits, Tensor::zeros({3}), 2, -1, 3, values, indices), std::invalid_argument);
  Tensor short_values = Tensor::empty({2, 2});
  EXPECT_THROW(ops::beam_candidates(logits, scores, 2, -1, 3, short_values, indices), std::invalid_argument);
  EXPECT_THROW(ops::beam_candidates(Tensor::zeros({4, 10}, DType::I32), scores, 2, -1, 3, values, indices),
               std::invalid_argument);
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

// The fused CUDA op against the same ops composed on CUDA (the same bits: the row statistics are log_softmax's, warp
// by warp) and against the CPU (the same candidates), with a vocabulary as long as the paper model's (rows split in
// chunks over the GPU), an odd one split in chunks (element by element), 140 rows of one chunk each (a block as wide
// as log_softmax's), and a few short ones; k = 18 takes the composed ops on CUDA too.
TEST(CudaTopkTest, BeamCandidatesEqualTheComposedOps) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(15);
  for (const auto& [beam, vocab, k, sources] : {std::tuple<int, int64_t, int, int64_t>{2, 128000, 4, 3},
                                                {2, 40001, 4, 1},
                                                {2, 8192, 4, 70},
                                                {4, 1001, 8, 3},
                                                {1, 50, 2, 3},
                                                {8, 4096, 16, 3},
                                                {9, 300, 18, 3}}) {
    const int64_t rows = sources * beam;
    const Tensor logits = testdev::random_cpu({rows, vocab}, rng, -8.0f, 8.0f);
    const Tensor scores = testdev::random_cpu({rows}, rng, -20.0f, 0.0f);
    for (int64_t excluded : {int64_t{-1}, int64_t{1}}) {
      SCOPED_TRACE(::testing::Message() << "beam " << beam << " vocab " << vocab << " sources " << sources
                                        << " excluded " << excluded);
      Tensor fused_values = testdev::poisoned({sources, k}, DType::F32, Device::CUDA);
      Tensor fused_indices = Tensor::zeros({sources, k}, DType::I32, Device::CUDA);
      Tensor composed_values = testdev::poisoned({sources, k}, DType::F32, Device::CUDA);
      Tensor composed_indices = Tensor::zeros({sources, k}, DType::I32, Device::CUDA);
      const Tensor device_logits = logits.to(Device::CUDA), device_scores = scores.to(Device::CUDA);
      ops::beam_candidates(device_logits, device_scores, beam, excluded, k, fused_values, fused_indices);
      composed_candidates(device_logits, device_scores, beam, excluded, k, composed_values, composed_indices);
      EXPECT_EQ(fused_indices.to_vector<int32_t>(), composed_indices.to_vector<int32_t>());
      EXPECT_EQ(fused_values.to_vector<float>(), composed_values.to_vector<float>());
      Tensor values = Tensor::empty({sources, k}), indices = Tensor::empty({sources, k}, DType::I32);
      ops::beam_candidates(logits, scores, beam, excluded, k, values, indices);
      EXPECT_EQ(fused_indices.to_vector<int32_t>(), indices.to_vector<int32_t>());
      EXPECT_TRUE(testdev::relative_l2_within(fused_values, values, testdev::tolerance_for(DType::F32)));
    }
  }
}

}  // namespace
}  // namespace elephant
