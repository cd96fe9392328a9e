// The CUDA MoE ops against the CPU backend: every dtype, decode- and prefill-sized inputs, empty experts, pruned rows,
// poisoned outputs. The CPU reference runs on float32 copies of the values the device really sees.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda_graph.h"
#include "layers/transformer_layers.h"
#include "ops/activation.h"
#include "ops/device_helpers.h"
#include "ops/moe.h"

namespace elephant {
namespace {

using testdev::poisoned;
using testdev::random_cpu;
using testdev::relative_l2_within;
using testdev::rounded_to;
using testdev::to_cpu_float;
using testdev::to_cuda;
using testdev::tolerance_for;

std::vector<uint8_t> random_flags(int64_t count, std::mt19937& rng) {
  std::bernoulli_distribution live(0.7);
  std::vector<uint8_t> flags(static_cast<size_t>(count));
  for (auto& f : flags) f = live(rng) ? 1 : 0;
  return flags;
}

Tensor int_tensor(const std::vector<int32_t>& values, Device device) {
  return Tensor::from_vector(values, {static_cast<int64_t>(values.size())}, device);
}

// offsets (num_experts + 1) for the given rows per expert; rows past the last expert are pruned.
std::vector<int32_t> offsets_for(const std::vector<int32_t>& counts) {
  std::vector<int32_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

std::string name(DType dtype) { return dtype_name(dtype); }

TEST(CudaMoe, RouteTop1MatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  struct Case {
    int64_t tokens, experts, d;
  };
  std::vector<Case> cases;
  for (int64_t tokens : {1, 7, 40, 333, 3840})
    for (int64_t experts : {1, 5, 32, 128}) cases.push_back({tokens, experts, 96});
  // Wide rows (fewer tokens per block) and a width without 16-byte weight rows.
  cases.push_back({40, 32, 1024});
  cases.push_back({17, 8, 2048});
  cases.push_back({9, 32, 4096});
  cases.push_back({50, 6, 30});
  std::mt19937 rng(21);
  int variant = 0;
  for (DType dtype : testdev::cuda_dtypes()) {
    for (const Case& tc : cases) {
      const bool with_bias = variant % 2 == 1, with_active = variant / 2 % 2 == 1;
      ++variant;
      SCOPED_TRACE(name(dtype) + " tokens=" + std::to_string(tc.tokens) + " experts=" + std::to_string(tc.experts) +
                   " d=" + std::to_string(tc.d) + (with_bias ? " bias" : "") + (with_active ? " active" : ""));
      const Tensor x = rounded_to(random_cpu({tc.tokens, tc.d}, rng), dtype);
      const Tensor w = random_cpu({tc.experts, tc.d}, rng);
      const Tensor bias = random_cpu({tc.experts}, rng, -0.5f, 0.5f);
      const Tensor active = Tensor::from_vector(random_flags(tc.tokens, rng), {tc.tokens});

      Tensor expected_expert = Tensor::empty({tc.tokens}, DType::I32);
      Tensor expected_probability = Tensor::empty({tc.tokens});
      ops::route_top1(x, w, with_bias ? &bias : nullptr, with_active ? &active : nullptr, expected_expert,
                      expected_probability);

      const Tensor w_cuda = w.to(Device::CUDA), bias_cuda = bias.to(Device::CUDA);
      const Tensor active_cuda = active.to(Device::CUDA);
      Tensor expert = int_tensor(std::vector<int32_t>(tc.tokens, -7), Device::CUDA);
      Tensor probability = poisoned({tc.tokens}, DType::F32, Device::CUDA);
      ops::route_top1(to_cuda(x, dtype), w_cuda, with_bias ? &bias_cuda : nullptr, with_active ? &active_cuda : nullptr,
                      expert, probability);

      // The logits in double give each token's margin between its best two experts: where it is within float32
      // rounding of the sums, either choice is right.
      const std::vector<float> xv = x.to_vector<float>(), wv = w.to_vector<float>(), bv = bias.to_vector<float>();
      const std::vector<int32_t> got = expert.to_vector<int32_t>(), want = expected_expert.to_vector<int32_t>();
      int compared = 0;
      for (int64_t t = 0; t < tc.tokens; ++t) {
        std::vector<double> logits(tc.experts);
        for (int64_t e = 0; e < tc.experts; ++e) {
          double sum = with_bias ? bv[e] : 0.0;
          for (int64_t i = 0; i < tc.d; ++i) sum += double(xv[t * tc.d + i]) * wv[e * tc.d + i];
          logits[e] = sum;
        }
        std::sort(logits.begin(), logits.end(), std::greater<>());
        const bool near_tie = tc.experts > 1 && logits[0] - logits[1] < 1e-5 * (1.0 + std::sqrt(double(tc.d)));
        if (near_tie && !(with_active && active.data<uint8_t>()[t] == 0)) continue;
        ++compared;
        ASSERT_EQ(got[t], want[t]) << "token " << t;
      }
      EXPECT_GT(compared, 0);
      // Float32 on both sides; the sums differ in order only (wide rows: larger logits, larger rounding).
      EXPECT_TRUE(relative_l2_within(probability, expected_probability, tc.d > 1024 ? 1e-4 : 1e-5));
    }
  }
}

void expect_sort_matches_cpu(const std::vector<int32_t>& experts_of_rows, int num_experts) {
  const auto rows = static_cast<int64_t>(experts_of_rows.size());
  Tensor expected_rows = Tensor::empty({rows}, DType::I32);
  Tensor expected_offsets = Tensor::empty({num_experts + 1}, DType::I32);
  ops::sort_by_expert(int_tensor(experts_of_rows, Device::CPU), num_experts, expected_rows, expected_offsets);

  Tensor sorted_rows = int_tensor(std::vector<int32_t>(rows, -7), Device::CUDA);
  Tensor offsets = int_tensor(std::vector<int32_t>(num_experts + 1, -7), Device::CUDA);
  ops::sort_by_expert(int_tensor(experts_of_rows, Device::CUDA), num_experts, sorted_rows, offsets);
  EXPECT_EQ(offsets.to_vector<int32_t>(), expected_offsets.to_vector<int32_t>());
  EXPECT_EQ(sorted_rows.to_vector<int32_t>(), expected_rows.to_vector<int32_t>());
}

TEST(CudaMoe, SortByExpertMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(22);
  // Up to 1024 rows one warp sorts; above, the radix sort.
  for (int64_t rows : {1, 7, 40, 333, 1024, 1025, 3840, 5000}) {
    for (int experts : {1, 5, 32, 128}) {
      SCOPED_TRACE("rows=" + std::to_string(rows) + " experts=" + std::to_string(experts));
      std::uniform_int_distribution<int32_t> pick(0, experts);  // `experts` itself: a pruned row
      std::vector<int32_t> ids(rows);
      for (auto& id : ids) id = pick(rng);
      expect_sort_matches_cpu(ids, experts);
      expect_sort_matches_cpu(std::vector<int32_t>(rows, experts), experts);      // every row pruned
      expect_sort_matches_cpu(std::vector<int32_t>(rows, experts - 1), experts);  // one expert takes all
      std::vector<int32_t> skewed(rows);
      for (auto& id : skewed) id = pick(rng) % 2 == 0 ? 0 : pick(rng);
      expect_sort_matches_cpu(skewed, experts);
    }
  }
}

TEST(CudaMoe, SortByExpertOfNoRows) {
  ELEPHANT_REQUIRE_CUDA();
  expect_sort_matches_cpu({}, 4);
}

// The one-launch routing and sort (every token in one routing block) against route_top1 + sort_by_expert on the same
// device: the same bits; also past the block's tokens (17 at d 1024, 9 at d 2048), where the op runs the two.
TEST(CudaMoe, RouteAndSortEqualsRouteThenSort) {
  ELEPHANT_REQUIRE_CUDA();
  struct Case {
    int64_t tokens, experts, d;
  };
  const std::vector<Case> cases = {{1, 32, 1024}, {7, 5, 96},    {16, 128, 1024}, {17, 32, 1024}, {8, 32, 2048},
                                   {9, 8, 2048},  {4, 32, 4096}, {3, 6, 30},      {16, 1, 96},    {12, 200, 512}};
  std::mt19937 rng(29);
  int variant = 0;
  for (DType dtype : testdev::cuda_dtypes())
    for (const Case& tc : cases) {
      const bool with_bias = variant % 2 == 1, with_active = variant / 2 % 2 == 0;
      ++variant;
      SCOPED_TRACE(name(dtype) + " tokens=" + std::to_string(tc.tokens) + " experts=" + std::to_string(tc.experts) +
                   " d=" + std::to_string(tc.d) + (with_bias ? " bias" : "") + (with_active ? " active" : ""));
      const Tensor x = to_cuda(rounded_to(random_cpu({tc.tokens, tc.d}, rng), dtype), dtype);
      const Tensor w = random_cpu({tc.experts, tc.d}, rng).to(Device::CUDA);
      const Tensor bias = random_cpu({tc.experts}, rng, -0.5f, 0.5f).to(Device::CUDA);
      const Tensor active = Tensor::from_vector(random_flags(tc.tokens, rng), {tc.tokens}).to(Device::CUDA);
      const Tensor* b = with_bias ? &bias : nullptr;
      const Tensor* a = with_active ? &active : nullptr;

      Tensor expert = Tensor::empty({tc.tokens}, DType::I32, Device::CUDA);
      Tensor expected_probability = poisoned({tc.tokens}, DType::F32, Device::CUDA);
      ops::route_top1(x, w, b, a, expert, expected_probability);
      Tensor expected_rows = Tensor::empty({tc.tokens}, DType::I32, Device::CUDA);
      Tensor expected_offsets = Tensor::empty({tc.experts + 1}, DType::I32, Device::CUDA);
      ops::sort_by_expert(expert, static_cast<int>(tc.experts), expected_rows, expected_offsets);

      Tensor probability = poisoned({tc.tokens}, DType::F32, Device::CUDA);
      Tensor rows = int_tensor(std::vector<int32_t>(tc.tokens, -7), Device::CUDA);
      Tensor offsets = int_tensor(std::vector<int32_t>(tc.experts + 1, -7), Device::CUDA);
      ops::route_and_sort_top1(x, w, b, a, probability, rows, offsets);
      EXPECT_EQ(probability.to_vector<float>(), expected_probability.to_vector<float>());
      EXPECT_EQ(rows.to_vector<int32_t>(), expected_rows.to_vector<int32_t>());
      EXPECT_EQ(offsets.to_vector<int32_t>(), expected_offsets.to_vector<int32_t>());
    }
}

// A token's routing does not depend on how many tokens route with it (the block size follows the token count): batch
// pruning, which shrinks a decode step's rows, leaves the routing of the rows it keeps bit for bit.
TEST(CudaMoe, RoutingOfATokenDoesNotDependOnTheBatch) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(31);
  for (DType dtype : testdev::cuda_dtypes()) {
    SCOPED_TRACE(name(dtype));
    const Tensor x = rounded_to(random_cpu({40, 1024}, rng), dtype);
    const Tensor w = random_cpu({32, 1024}, rng).to(Device::CUDA);
    const auto probabilities = [&](int64_t tokens) {
      Tensor probability = poisoned({tokens}, DType::F32, Device::CUDA);
      Tensor rows = Tensor::empty({tokens}, DType::I32, Device::CUDA);
      Tensor offsets = Tensor::empty({33}, DType::I32, Device::CUDA);
      ops::route_and_sort_top1(to_cuda(x.narrow(0, tokens), dtype), w, nullptr, nullptr, probability, rows, offsets);
      return probability.to_vector<float>();
    };
    const std::vector<float> all = probabilities(40);
    for (int64_t tokens : {1, 4, 5, 8, 9, 16, 17}) {
      SCOPED_TRACE(std::to_string(tokens) + " tokens");
      EXPECT_EQ(probabilities(tokens), std::vector<float>(all.begin(), all.begin() + tokens));
    }
  }
}

struct GemmCase {
  int64_t k, n;
  std::vector<int32_t> counts;  // rows per expert
  int64_t pruned;               // rows past the last expert
};

// runs > 1: the device runs again into a fresh poisoned output and must give the same bits. read_rows: the product
// reads a's rows through a_rows, a reversed order over a with one extra row, on both backends.
void expect_grouped_gemm_matches_cpu(const GemmCase& tc, DType dtype, bool with_bias,
                                     std::optional<ops::Activation> activation, std::mt19937& rng, int runs = 1,
                                     bool read_rows = false) {
  const auto experts = static_cast<int64_t>(tc.counts.size());
  const std::vector<int32_t> offsets = offsets_for(tc.counts);
  const int64_t active_rows = offsets.back();
  const int64_t rows = active_rows + tc.pruned;
  SCOPED_TRACE(name(dtype) + " k=" + std::to_string(tc.k) + " n=" + std::to_string(tc.n) +
               " experts=" + std::to_string(experts) + " rows=" + std::to_string(rows) + (with_bias ? " bias" : "") +
               (activation ? " " + ops::activation_name(*activation) : "") + (read_rows ? " a_rows" : ""));
  const Tensor a = rounded_to(random_cpu({rows + (read_rows ? 1 : 0), tc.k}, rng), dtype);
  std::vector<int32_t> reversed(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) reversed[i] = static_cast<int32_t>(rows - i);
  const Tensor w = rounded_to(random_cpu({experts, tc.n, tc.k}, rng, -0.2f, 0.2f), dtype);
  const Tensor bias = rounded_to(random_cpu({experts, tc.n}, rng), dtype);
  ops::GroupedGemmArgs cpu_args;
  cpu_args.bias = with_bias ? &bias : nullptr;
  cpu_args.activation = activation;
  const Tensor a_rows = int_tensor(reversed, Device::CPU);
  cpu_args.a_rows = read_rows ? &a_rows : nullptr;
  Tensor expected = poisoned({rows, tc.n}, DType::F32, Device::CPU);
  ops::grouped_gemm(a, w, int_tensor(offsets, Device::CPU), expected, cpu_args);

  const Tensor bias_cuda = to_cuda(bias, dtype);
  ops::GroupedGemmArgs args = cpu_args;
  args.bias = with_bias ? &bias_cuda : nullptr;
  const Tensor a_rows_cuda = int_tensor(reversed, Device::CUDA);
  args.a_rows = read_rows ? &a_rows_cuda : nullptr;
  const Tensor a_cuda = to_cuda(a, dtype), w_cuda = to_cuda(w, dtype), offsets_cuda = int_tensor(offsets, Device::CUDA);
  std::vector<float> first;
  for (int run = 0; run < runs; ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    Tensor out = poisoned({rows, tc.n}, dtype, Device::CUDA);
    ops::grouped_gemm(a_cuda, w_cuda, offsets_cuda, out, args);

    const Tensor got = to_cpu_float(out);
    if (active_rows > 0) {
      EXPECT_TRUE(
          relative_l2_within(got.narrow(0, active_rows), expected.narrow(0, active_rows), tolerance_for(dtype)));
      const std::vector<float> values = got.narrow(0, active_rows).to_vector<float>();
      if (run == 0) first = values;
      EXPECT_TRUE(values == first) << "differs from the first run";
    }
    // Rows past offsets[experts] keep their sentinel.
    const float* tail = got.data<float>() + active_rows * tc.n;
    for (int64_t i = 0; i < tc.pruned * tc.n; ++i) ASSERT_TRUE(std::isnan(tail[i])) << "pruned element " << i;
  }
}

TEST(CudaMoe, GroupedGemmSmallShapesMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  // Decode-like (a few rows per expert, empty experts), medium and large row counts, small odd-ish widths; k = 30
  // has no 16-byte rows, n = 36 no 16-byte output rows.
  const std::vector<std::vector<int32_t>> routings = {
      {1, 0, 2, 0, 1, 3}, {50, 0, 130, 20}, {0, 260, 45}, {0, 0, 5}, {17}};
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{24, 40}, {72, 40}, {32, 64}, {64, 32}, {30, 36}, {40, 44}};
  const std::vector<std::optional<ops::Activation>> activations = {
      std::nullopt, ops::Activation::ReLU, ops::Activation::Gelu, ops::Activation::GeluNew, ops::Activation::Silu};
  std::mt19937 rng(23);
  int variant = 0;
  for (DType dtype : testdev::cuda_dtypes())
    for (const auto& [k, n] : shapes)
      for (const auto& counts : routings) {
        const auto& activation = activations[variant % activations.size()];
        const bool with_bias = variant % 3 != 0;
        ++variant;
        expect_grouped_gemm_matches_cpu({k, n, counts, variant % 2 == 0 ? 0 : 3}, dtype, with_bias, activation, rng, 1,
                                        variant % 4 < 2);
      }
}

TEST(CudaMoe, GroupedGemmEveryActivationMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(24);
  for (DType dtype : testdev::cuda_dtypes())
    for (bool with_bias : {false, true})
      for (auto activation :
           {ops::Activation::ReLU, ops::Activation::Gelu, ops::Activation::GeluNew, ops::Activation::Silu})
        expect_grouped_gemm_matches_cpu({72, 40, {3, 0, 9, 1}, 2}, dtype, with_bias, activation, rng);
}

TEST(CudaMoe, GroupedGemmPaperShapesMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(25);
  // Decode (a row or two on a few experts), then medium and large blocks of rows.
  const std::vector<std::vector<int32_t>> routings = {{1, 0, 0, 2, 0, 0, 1, 0}, {40, 0, 90, 30}, {0, 300, 150}};
  int variant = 0;
  for (DType dtype : testdev::cuda_dtypes())
    for (const auto& [k, n] : std::vector<std::pair<int64_t, int64_t>>{{512, 2048}, {1024, 4096}, {4096, 1024}})
      for (const auto& counts : routings) {
        const bool with_bias = variant % 2 == 0;
        const std::optional<ops::Activation> activation =
            variant % 3 == 0 ? std::nullopt : std::optional<ops::Activation>(ops::Activation::Gelu);
        ++variant;
        expect_grouped_gemm_matches_cpu({k, n, counts, 5}, dtype, with_bias, activation, rng, 1, variant % 2 == 0);
      }
}

// More than 64 rows per expert, no bias, ReLU or no activation: on Hopper, CUTLASS's wgmma grouped GEMM (its
// problem sizes read on the device), behind a gather for a_rows; elsewhere the mma.sync kernel. Experts without rows,
// pruned rows, dimensions that are not whole 128 x 128 x 64 tiles.
TEST(CudaMoe, GroupedGemmPrefillRowsMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(31);
  const std::vector<GemmCase> cases = {
      {1024, 4096, {130, 0, 70, 200}, 5},  // the paper's wi
      {4096, 1024, {300, 150, 0}, 3},      // the paper's wo
      {72, 40, {100, 80}, 0},              // one partial tile each way
      {64, 32, {0, 0}, 200},               // every row pruned: no expert has rows
  };
  int variant = 0;
  for (DType dtype : testdev::cuda_dtypes())
    for (const GemmCase& tc : cases) {
      const std::optional<ops::Activation> activation =
          variant % 2 == 0 ? std::optional<ops::Activation>(ops::Activation::ReLU) : std::nullopt;
      ++variant;
      expect_grouped_gemm_matches_cpu(tc, dtype, false, activation, rng, 2, variant % 3 != 0);
    }
}

// 1-4 rows in all (a decode step's MoE layer at batch 1-4): the small-m kernel, one block row per expert with rows,
// reading a through a_rows or not, with bias and activation, pruned rows untouched, one expert owning every row.
TEST(CudaMoe, GroupedGemmDecodeRowsMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(32);
  const std::vector<GemmCase> cases = {
      {1024, 4096, {1}, 0},           // one token, the paper's wi
      {4096, 1024, {0, 0, 1, 0}, 0},  // one token, the paper's wo
      {1024, 512, {1, 0, 2}, 1},      // two experts, a pruned row
      {520, 200, {0, 4}, 0},          // one expert owns all four rows; n not a multiple of the block's rows
      {64, 40, {0, 0}, 3},            // every row pruned
  };
  int variant = 0;
  for (DType dtype : testdev::cuda_dtypes())
    for (const GemmCase& tc : cases) {
      const bool with_bias = variant % 2 == 1;
      const std::optional<ops::Activation> activation =
          variant % 3 == 0 ? std::nullopt : std::optional<ops::Activation>(ops::Activation::ReLU);
      expect_grouped_gemm_matches_cpu(tc, dtype, with_bias, activation, rng, 2, variant % 2 == 0);
      ++variant;
    }
}

// Decode-sized problems (a few rows in all) split k across blocks; each tile's last block sums the slices. Run twice:
// the arrival counters must be zero again for the second launch.
TEST(CudaMoe, GroupedGemmSplitKMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(28);
  const std::vector<GemmCase> cases = {
      {4096, 1024, {0, 1, 0, 0}, 1},        // one token, the paper's wo
      {1024, 4096, {1, 0, 0}, 0},           // one token, the paper's wi
      {1024, 1024, {2, 0, 3, 1, 0, 2}, 3},  // a few tokens over a few experts
      {1096, 100, {1, 0, 2, 0, 1}, 1},      // 18 k tiles (the last partial) in uneven slices; n without 16-byte rows
      {520, 200, {3, 0, 5, 8}, 0},          // 16 tokens; n a multiple of 8, not of the 64-wide tile
      {2048, 64, {16}, 0},                  // every token on one expert
      {1024, 96, {0, 0, 0, 0}, 2},          // no expert has rows
  };
  const std::vector<std::optional<ops::Activation>> activations = {std::nullopt, ops::Activation::ReLU,
                                                                   ops::Activation::Gelu, ops::Activation::Silu};
  int variant = 0;
  for (DType dtype : {DType::F16, DType::BF16})
    for (const GemmCase& tc : cases) {
      const bool with_bias = variant % 2 == 1;
      const auto& activation = activations[variant / 2 % activations.size()];
      ++variant;
      expect_grouped_gemm_matches_cpu(tc, dtype, with_bias, activation, rng, 2, variant % 3 == 0);
    }
}

// The same rows give the same outputs, up to float32 summation order, whether their tiles are split (a few rows in
// all) or not (the same rows among many others).
TEST(CudaMoe, GroupedGemmSplitKMatchesUnsplit) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(29);
  const int64_t k = 1024, n = 2048;
  const std::vector<int32_t> few = {0, 1, 0, 1, 0, 0, 0, 0}, extra = {16, 15, 16, 15, 16, 16, 16, 16};
  const auto experts = static_cast<int64_t>(few.size());
  std::vector<int32_t> many(few.size());
  for (size_t e = 0; e < few.size(); ++e) many[e] = few[e] + extra[e];
  const std::vector<int32_t> few_offsets = offsets_for(few), many_offsets = offsets_for(many);
  for (DType dtype : {DType::F16, DType::BF16}) {
    SCOPED_TRACE(name(dtype));
    // Each expert's rows of `few` lead its rows of `many`.
    const Tensor many_a = to_cuda(random_cpu({many_offsets.back(), k}, rng), dtype);
    Tensor few_a = Tensor::empty({few_offsets.back(), k}, dtype, Device::CUDA);
    for (int64_t e = 0; e < experts; ++e)
      if (few[e] > 0) few_a.narrow(few_offsets[e], few[e]).copy_from(many_a.narrow(many_offsets[e], few[e]));
    const Tensor w = to_cuda(random_cpu({experts, n, k}, rng, -0.2f, 0.2f), dtype);
    const Tensor bias = to_cuda(random_cpu({experts, n}, rng), dtype);
    ops::GroupedGemmArgs args;
    args.bias = &bias;
    args.activation = ops::Activation::Gelu;
    Tensor few_out = poisoned({few_offsets.back(), n}, dtype, Device::CUDA);
    Tensor many_out = poisoned({many_offsets.back(), n}, dtype, Device::CUDA);
    ops::grouped_gemm(few_a, w, int_tensor(few_offsets, Device::CUDA), few_out, args);
    ops::grouped_gemm(many_a, w, int_tensor(many_offsets, Device::CUDA), many_out, args);
    Tensor expected = Tensor::empty(few_out.shape(), dtype, Device::CUDA);
    for (int64_t e = 0; e < experts; ++e)
      if (few[e] > 0) expected.narrow(few_offsets[e], few[e]).copy_from(many_out.narrow(many_offsets[e], few[e]));
    // Below the CPU tolerances: a half-precision rounding of the output flips now and then, nothing more.
    EXPECT_TRUE(relative_l2_within(few_out, expected, 1e-3));
  }
}

// A split launch captured in a CUDA graph and replayed twice. On a thread whose first split launch is captured, the
// arrival counters are the graph's own (zeroed by the graph); else the thread's, which the launches leave zero.
void expect_split_k_graph_replays(bool eager_first) {
  std::mt19937 rng(30);
  const GemmCase tc{4096, 512, {0, 1, 1}, 1};
  const DType dtype = DType::F16;
  const auto experts = static_cast<int64_t>(tc.counts.size());
  const std::vector<int32_t> offsets = offsets_for(tc.counts);
  const int64_t active_rows = offsets.back(), rows = active_rows + tc.pruned;
  const Tensor a = rounded_to(random_cpu({rows, tc.k}, rng), dtype);
  const Tensor w = rounded_to(random_cpu({experts, tc.n, tc.k}, rng, -0.2f, 0.2f), dtype);
  const Tensor bias = rounded_to(random_cpu({experts, tc.n}, rng), dtype);
  ops::GroupedGemmArgs cpu_args;
  cpu_args.bias = &bias;
  cpu_args.activation = ops::Activation::ReLU;
  Tensor expected = Tensor::empty({rows, tc.n});
  ops::grouped_gemm(a, w, int_tensor(offsets, Device::CPU), expected, cpu_args);

  const Tensor a_cuda = to_cuda(a, dtype), w_cuda = to_cuda(w, dtype), bias_cuda = to_cuda(bias, dtype);
  const Tensor offsets_cuda = int_tensor(offsets, Device::CUDA);
  ops::GroupedGemmArgs args = cpu_args;
  args.bias = &bias_cuda;
  Tensor out = poisoned({rows, tc.n}, dtype, Device::CUDA);
  if (eager_first) ops::grouped_gemm(a_cuda, w_cuda, offsets_cuda, out, args);
  CudaGraph graph;
  graph.capture([&] { ops::grouped_gemm(a_cuda, w_cuda, offsets_cuda, out, args); });
  for (int replay = 0; replay < 2; ++replay) {
    SCOPED_TRACE("replay " + std::to_string(replay));
    out.copy_from(poisoned({rows, tc.n}, dtype, Device::CPU));
    graph.replay();
    const Tensor got = to_cpu_float(out);
    EXPECT_TRUE(relative_l2_within(got.narrow(0, active_rows), expected.narrow(0, active_rows), tolerance_for(dtype)));
    for (int64_t i = active_rows * tc.n; i < rows * tc.n; ++i)
      ASSERT_TRUE(std::isnan(got.data<float>()[i])) << "pruned element " << i;
  }
}

TEST(CudaMoe, GroupedGemmSplitKReplaysInCudaGraph) {
  ELEPHANT_REQUIRE_CUDA();
  {
    SCOPED_TRACE("this thread, after an eager launch");
    expect_split_k_graph_replays(true);
  }
  // A new thread has a stream and counters of its own.
  std::thread thread([] {
    SCOPED_TRACE("a new thread, captured first");
    try {
      expect_split_k_graph_replays(false);
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  });
  thread.join();
}

// out_rows / out_scale: the wo GEMM adds its rows, scaled, to the residual rows they came from (the un-permute in the
// epilogue), on the split-k, tensor-core and general paths. Destination rows of pruned positions keep their values.
TEST(CudaMoe, GroupedGemmAddToRowsMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(26);
  const std::vector<GemmCase> cases = {
      {4096, 1024, {0, 1, 0, 0}, 1},        // one token, the paper's wo (split-k)
      {1024, 1024, {2, 0, 3, 1, 0, 2}, 3},  // a few tokens (split-k)
      {512, 1024, {40, 0, 90, 30}, 5},      // medium and large tiles
      {512, 1024, {200, 0, 130, 70}, 5},    // many rows per expert (wgmma on Hopper, then a scatter-add)
      {520, 200, {3, 0, 5, 8}, 0},          // n a multiple of 8, not of the tile
      {1096, 100, {1, 0, 2, 0, 1}, 1},      // n without 16-byte rows
      {30, 36, {3, 0, 9, 1}, 2},            // k without 16-byte rows: the general path
  };
  for (DType dtype : testdev::cuda_dtypes())
    for (const GemmCase& tc : cases) {
      const auto experts = static_cast<int64_t>(tc.counts.size());
      const std::vector<int32_t> offsets = offsets_for(tc.counts);
      const int64_t rows = offsets.back() + tc.pruned;
      SCOPED_TRACE(name(dtype) + " k=" + std::to_string(tc.k) + " n=" + std::to_string(tc.n) +
                   " rows=" + std::to_string(rows));
      const Tensor a = rounded_to(random_cpu({rows, tc.k}, rng), dtype);
      const Tensor w = rounded_to(random_cpu({experts, tc.n, tc.k}, rng, -0.05f, 0.05f), dtype);
      const Tensor hidden0 = rounded_to(random_cpu({rows, tc.n}, rng), dtype);
      std::vector<int32_t> targets(static_cast<size_t>(rows));
      std::iota(targets.begin(), targets.end(), 0);
      std::shuffle(targets.begin(), targets.end(), rng);
      const Tensor scale = random_cpu({rows}, rng, 0.05f, 1.0f);

      Tensor expected = hidden0.clone();
      const Tensor targets_cpu = int_tensor(targets, Device::CPU);
      ops::GroupedGemmArgs cpu_args;
      cpu_args.out_rows = &targets_cpu;
      cpu_args.out_scale = &scale;
      ops::grouped_gemm(a, w, int_tensor(offsets, Device::CPU), expected, cpu_args);

      Tensor hidden = to_cuda(hidden0, dtype);
      const Tensor targets_cuda = int_tensor(targets, Device::CUDA), scale_cuda = scale.to(Device::CUDA);
      ops::GroupedGemmArgs args;
      args.out_rows = &targets_cuda;
      args.out_scale = &scale_cuda;
      args.routing_settled = true;  // as a MoE layer's wo GEMM runs (the offsets were copied before any kernel here)
      ops::grouped_gemm(to_cuda(a, dtype), to_cuda(w, dtype), int_tensor(offsets, Device::CUDA), hidden, args);
      const Tensor got = to_cpu_float(hidden);
      EXPECT_TRUE(relative_l2_within(got, expected, tolerance_for(dtype)));
      for (int64_t i = offsets.back(); i < rows; ++i)
        for (int64_t j = 0; j < tc.n; ++j)
          ASSERT_EQ(got.data<float>()[targets[i] * tc.n + j], hidden0.data<float>()[targets[i] * tc.n + j])
              << "untouched row " << targets[i];
    }
}

// route and sort (one op), expert FFN (wi + activation reading the rows in expert order, wo adding to the rows they
// came from): one MoE layer, all on the device.
Tensor moe_layer(const Tensor& x, const Tensor& router, const Tensor& active, const Tensor& wi, const Tensor& wo,
                 ops::Activation activation) {
  const Device device = x.device();
  const int64_t tokens = x.dim(0), d_ff = wi.dim(1);
  const int experts = static_cast<int>(router.dim(0));
  Tensor probability = Tensor::empty({tokens}, DType::F32, device);
  Tensor sorted_rows = Tensor::empty({tokens}, DType::I32, device);
  Tensor offsets = Tensor::empty({experts + 1}, DType::I32, device);
  ops::route_and_sort_top1(x, router, nullptr, &active, probability, sorted_rows, offsets);
  Tensor inner = Tensor::empty({tokens, d_ff}, x.dtype(), device);
  const layers::ExpertGemmArgs args(activation, sorted_rows, probability);
  ops::grouped_gemm(x, wi, offsets, inner, args.wi);
  Tensor hidden = x.clone();
  ops::grouped_gemm(inner, wo, offsets, hidden, args.wo);
  return hidden;
}

// A MoE layer's shape: tokens of width d through experts with d_ff hidden features.
struct MoeCase {
  int64_t tokens, d, d_ff, experts;
};

TEST(CudaMoe, MoeLayerMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(27);
  for (DType dtype : testdev::cuda_dtypes())
    for (const MoeCase& tc :
         std::vector<MoeCase>{{40, 32, 64, 8}, {7, 40, 56, 4}, {96, 512, 2048, 8}, {1200, 256, 512, 8}}) {
      SCOPED_TRACE(name(dtype) + " tokens=" + std::to_string(tc.tokens) + " d=" + std::to_string(tc.d) +
                   " d_ff=" + std::to_string(tc.d_ff) + " experts=" + std::to_string(tc.experts));
      const Tensor x = rounded_to(random_cpu({tc.tokens, tc.d}, rng), dtype);
      const Tensor router = random_cpu({tc.experts, tc.d}, rng);
      const Tensor active = Tensor::from_vector(random_flags(tc.tokens, rng), {tc.tokens});
      const float scale_in = 1.0f / std::sqrt(float(tc.d)), scale_out = 1.0f / std::sqrt(float(tc.d_ff));
      const Tensor wi = rounded_to(random_cpu({tc.experts, tc.d_ff, tc.d}, rng, -scale_in, scale_in), dtype);
      const Tensor wo = rounded_to(random_cpu({tc.experts, tc.d, tc.d_ff}, rng, -scale_out, scale_out), dtype);

      const Tensor expected = moe_layer(x, router, active, wi, wo, ops::Activation::ReLU);
      const Tensor got = moe_layer(to_cuda(x, dtype), router.to(Device::CUDA), active.to(Device::CUDA),
                                   to_cuda(wi, dtype), to_cuda(wo, dtype), ops::Activation::ReLU);
      EXPECT_TRUE(relative_l2_within(got, expected, tolerance_for(dtype)));
    }
}

// The pair runs the same kernels as the two calls (on Hopper at more than 64 rows per expert: both on CUTLASS, their
// arguments written by one launch), so both outputs must be the same bits; decode-sized rows take the two calls.
TEST(CudaMoe, GroupedGemmPairEqualsTwoCalls) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(29);
  for (DType dtype : testdev::cuda_dtypes())
    for (const MoeCase& tc : std::vector<MoeCase>{{1200, 256, 512, 8}, {40, 32, 64, 8}}) {
      SCOPED_TRACE(name(dtype) + " tokens=" + std::to_string(tc.tokens));
      const Tensor x = to_cuda(random_cpu({tc.tokens, tc.d}, rng), dtype);
      const Tensor router = random_cpu({tc.experts, tc.d}, rng).to(Device::CUDA);
      const Tensor wi = to_cuda(random_cpu({tc.experts, tc.d_ff, tc.d}, rng, -0.1f, 0.1f), dtype);
      const Tensor wo = to_cuda(random_cpu({tc.experts, tc.d, tc.d_ff}, rng, -0.05f, 0.05f), dtype);
      Tensor probability = Tensor::empty({tc.tokens}, DType::F32, Device::CUDA);
      Tensor sorted_rows = Tensor::empty({tc.tokens}, DType::I32, Device::CUDA);
      Tensor offsets = Tensor::empty({tc.experts + 1}, DType::I32, Device::CUDA);
      ops::route_and_sort_top1(x, router, nullptr, nullptr, probability, sorted_rows, offsets);
      const layers::ExpertGemmArgs args(ops::Activation::ReLU, sorted_rows, probability);

      Tensor inner = poisoned({tc.tokens, tc.d_ff}, dtype, Device::CUDA);
      Tensor hidden = x.clone();
      ops::grouped_gemm(x, wi, offsets, inner, args.wi);
      ops::grouped_gemm(inner, wo, offsets, hidden, args.wo);
      Tensor pair_inner = poisoned({tc.tokens, tc.d_ff}, dtype, Device::CUDA);
      Tensor pair_hidden = x.clone();
      ops::grouped_gemm_pair(x, wi, wo, offsets, pair_inner, pair_hidden, args.wi, args.wo);
      EXPECT_EQ(to_cpu_float(pair_inner).to_vector<float>(), to_cpu_float(inner).to_vector<float>());
      EXPECT_EQ(to_cpu_float(pair_hidden).to_vector<float>(), to_cpu_float(hidden).to_vector<float>());
    }
}

}  // namespace
}  // namespace elephant
