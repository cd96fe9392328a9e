#include "ops/moe_routing.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::random_tensor;
using testref::to_double;

struct ReferenceRouting {
  std::vector<int32_t> expert;
  std::vector<double> probability;
  std::vector<double> margin;  // gap between the best and second-best probability
};

// softmax over experts in double, then the first maximum (torch.argmax / torch.max semantics).
ReferenceRouting reference_route(const Tensor& logits, const std::vector<uint8_t>& active) {
  const int64_t tokens = logits.dim(0), experts = logits.dim(1);
  const std::vector<double> l = to_double(logits);
  ReferenceRouting ref;
  for (int64_t t = 0; t < tokens; ++t) {
    if (!active.empty() && !active[t]) {
      ref.expert.push_back(static_cast<int32_t>(experts));
      ref.probability.push_back(0.0);
      ref.margin.push_back(1.0);
      continue;
    }
    double max = -INFINITY;
    for (int64_t e = 0; e < experts; ++e) max = std::max(max, l[t * experts + e]);
    double sum = 0.0;
    for (int64_t e = 0; e < experts; ++e) sum += std::exp(l[t * experts + e] - max);
    int32_t best = 0;
    double best_p = -1.0, second_p = -1.0;
    for (int64_t e = 0; e < experts; ++e) {
      const double p = std::exp(l[t * experts + e] - max) / sum;
      if (p > best_p) {
        second_p = best_p;
        best_p = p;
        best = static_cast<int32_t>(e);
      } else {
        second_p = std::max(second_p, p);
      }
    }
    ref.expert.push_back(best);
    ref.probability.push_back(best_p);
    ref.margin.push_back(experts > 1 ? best_p - second_p : 1.0);
  }
  return ref;
}

// The probability is one float softmax entry: a few ulps plus the sum's relative error (<= experts * u).
constexpr double kProbabilityTolerance = 1e-6;

void expect_routing_matches(const ops::Top1Routing& got, const ReferenceRouting& ref) {
  ASSERT_EQ(got.expert.size(), ref.expert.size());
  ASSERT_EQ(got.probability.size(), ref.expert.size());
  for (size_t t = 0; t < ref.expert.size(); ++t) {
    // Random logits leave a clear winner; a near tie would make the float/double comparison meaningless.
    ASSERT_GT(ref.margin[t], 1e-5) << "test data has a near tie at token " << t;
    EXPECT_EQ(got.expert[t], ref.expert[t]) << "token " << t;
    EXPECT_NEAR(got.probability[t], ref.probability[t], kProbabilityTolerance) << "token " << t;
  }
}

TEST(MoeRoutingTest, RouteTop1MatchesReference) {
  std::mt19937 rng(700);
  for (int64_t experts : {1, 2, 3, 8, 13}) {
    for (int64_t tokens : {0, 1, 17, 64}) {
      SCOPED_TRACE(::testing::Message() << tokens << " tokens, " << experts << " experts");
      const Tensor logits = random_tensor({tokens, experts}, rng, -4.0f, 4.0f);
      expect_routing_matches(ops::route_top1(logits), reference_route(logits, {}));
    }
  }
}

TEST(MoeRoutingTest, RouteTop1LargeLogitsAreStable) {
  std::mt19937 rng(701);
  for (float scale : {100.0f, 1e4f}) {
    const Tensor logits = random_tensor({20, 8}, rng, -scale, scale);
    const ops::Top1Routing got = ops::route_top1(logits);
    expect_routing_matches(got, reference_route(logits, {}));
    for (float p : got.probability) EXPECT_TRUE(std::isfinite(p));
  }
  // Logits far above exp's overflow threshold but close to each other.
  const Tensor close = Tensor::from_vector(std::vector<float>{1000.0f, 1001.0f, 999.0f}, {1, 3});
  const ops::Top1Routing got = ops::route_top1(close);
  EXPECT_EQ(got.expert[0], 1);
  EXPECT_NEAR(got.probability[0], 1.0 / (1.0 + std::exp(-1.0) + std::exp(-2.0)), kProbabilityTolerance);
}

TEST(MoeRoutingTest, RouteTop1TiesPickTheFirstExpert) {
  const Tensor logits = Tensor::from_vector(
      std::vector<float>{
          0.5f,  2.0f,  -1.0f, 2.0f,  0.0f,   // tie between experts 1 and 3
          3.0f,  3.0f,  3.0f,  3.0f,  3.0f,   // all equal: expert 0, probability 1/5
          -1.0f, 0.0f,  0.0f,  0.0f,  7.0f,   // clear winner last
          -9.0f, -9.0f, -2.0f, -5.0f, -2.0f,  // tie between 2 and 4
      },
      {4, 5});
  const ops::Top1Routing got = ops::route_top1(logits);
  EXPECT_EQ(got.expert, (std::vector<int32_t>{1, 0, 4, 2}));
  EXPECT_NEAR(got.probability[1], 0.2, kProbabilityTolerance);
  const double e = std::exp(1.0);
  // Row 0: exp(x - 2) = e^-1.5, 1, e^-3, 1, e^-2.
  EXPECT_NEAR(got.probability[0], 1.0 / (2.0 + std::pow(e, -1.5) + std::pow(e, -3.0) + std::pow(e, -2.0)),
              kProbabilityTolerance);
}

TEST(MoeRoutingTest, RouteTop1InactiveRowsGetThePastTheEndExpert) {
  std::mt19937 rng(702);
  const int64_t tokens = 12, experts = 5;
  const Tensor logits = random_tensor({tokens, experts}, rng, -4.0f, 4.0f);
  const std::vector<uint8_t> active = {1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0};
  const ops::Top1Routing got = ops::route_top1(logits, active);
  const ReferenceRouting ref = reference_route(logits, active);
  expect_routing_matches(got, ref);
  const ops::Top1Routing all = ops::route_top1(logits);
  for (int64_t t = 0; t < tokens; ++t) {
    if (active[t]) {
      EXPECT_EQ(got.expert[t], all.expert[t]);
      EXPECT_EQ(got.probability[t], all.probability[t]);
    } else {
      EXPECT_EQ(got.expert[t], experts) << t;
    }
  }
  // All inactive.
  const ops::Top1Routing none = ops::route_top1(logits, std::vector<uint8_t>(tokens, 0));
  EXPECT_EQ(none.expert, std::vector<int32_t>(tokens, static_cast<int32_t>(experts)));
}

TEST(MoeRoutingTest, RouteTop1RejectsMismatchedActiveFlags) {
  std::mt19937 rng(703);
  const Tensor logits = random_tensor({4, 3}, rng);
  EXPECT_THROW(ops::route_top1(logits, std::vector<uint8_t>(3, 1)), std::invalid_argument);
  EXPECT_THROW(ops::route_top1(logits, std::vector<uint8_t>(5, 1)), std::invalid_argument);
}

// Direct grouping: for each expert in order, the rows routed to it in row order.
ops::ExpertGroups reference_groups(const std::vector<int32_t>& expert, int num_experts) {
  ops::ExpertGroups groups;
  groups.offsets.push_back(0);
  for (int e = 0; e < num_experts; ++e) {
    for (size_t row = 0; row < expert.size(); ++row)
      if (expert[row] == e) groups.rows.push_back(static_cast<int32_t>(row));
    groups.offsets.push_back(static_cast<int64_t>(groups.rows.size()));
  }
  return groups;
}

TEST(MoeRoutingTest, GroupByExpertIsAStableGrouping) {
  std::mt19937 rng(704);
  for (int num_experts : {1, 3, 8, 16}) {
    for (size_t rows : {size_t{0}, size_t{1}, size_t{5}, size_t{100}}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows, " << num_experts << " experts");
      // Ids in [0, num_experts]: num_experts is the past-the-end id of inactive rows.
      std::uniform_int_distribution<int32_t> dist(0, num_experts);
      std::vector<int32_t> expert(rows);
      for (int32_t& e : expert) e = dist(rng);
      const ops::ExpertGroups got = ops::group_by_expert(expert, num_experts);
      const ops::ExpertGroups ref = reference_groups(expert, num_experts);
      EXPECT_EQ(got.offsets, ref.offsets);
      EXPECT_EQ(got.rows, ref.rows);
    }
  }
}

TEST(MoeRoutingTest, GroupByExpertWithEmptyExpertsAndLeftOutRows) {
  // Experts 0, 2 and 5 get no rows; rows routed to 6 (past the end) are left out.
  const std::vector<int32_t> expert = {3, 6, 1, 3, 4, 6, 1, 1, 3, 6};
  const ops::ExpertGroups got = ops::group_by_expert(expert, 6);
  EXPECT_EQ(got.offsets, (std::vector<int64_t>{0, 0, 3, 3, 6, 7, 7}));
  EXPECT_EQ(got.rows, (std::vector<int32_t>{2, 6, 7, 0, 3, 8, 4}));
  // Everything left out.
  const ops::ExpertGroups none = ops::group_by_expert({4, 4, 4}, 4);
  EXPECT_EQ(none.offsets, (std::vector<int64_t>{0, 0, 0, 0, 0}));
  EXPECT_TRUE(none.rows.empty());
}

TEST(MoeRoutingTest, GatherRowsCopiesRowsInTheGivenOrder) {
  std::mt19937 rng(705);
  for (int64_t d : {1, 7, 16, 33}) {
    SCOPED_TRACE(::testing::Message() << "width " << d);
    const Tensor x = random_tensor({9, d}, rng);
    const std::vector<int32_t> rows = {8, 0, 3, 3, 5, 0};  // any order, repeats allowed
    // out has spare rows past `count`: they stay as they were.
    Tensor out = testref::filled_tensor({8, d}, -123.0f);
    ops::gather_rows(x, rows.data(), static_cast<int64_t>(rows.size()), out);
    for (size_t i = 0; i < rows.size(); ++i)
      for (int64_t j = 0; j < d; ++j)
        ASSERT_EQ(out.data<float>()[i * d + j], x.data<float>()[rows[i] * d + j]) << "row " << i << " col " << j;
    for (int64_t i = static_cast<int64_t>(rows.size()) * d; i < out.numel(); ++i)
      ASSERT_EQ(out.data<float>()[i], -123.0f);
    // Zero rows is a no-op.
    Tensor none = Tensor::empty({0, d});
    EXPECT_NO_THROW(ops::gather_rows(x, rows.data(), 0, none));
  }
}

TEST(MoeRoutingTest, GatherRowsRejectsASmallOrNarrowOutput) {
  std::mt19937 rng(706);
  const Tensor x = random_tensor({5, 4}, rng);
  const std::vector<int32_t> rows = {0, 1, 2};
  Tensor small = Tensor::empty({2, 4});
  EXPECT_THROW(ops::gather_rows(x, rows.data(), 3, small), std::invalid_argument);
  Tensor narrow = Tensor::empty({3, 5});
  EXPECT_THROW(ops::gather_rows(x, rows.data(), 3, narrow), std::invalid_argument);
}

TEST(MoeRoutingTest, ScatterScaledAddMatchesReference) {
  std::mt19937 rng(707);
  for (int64_t d : {1, 7, 64, 2050}) {  // 2050 * 40 rows crosses the parallel threshold
    SCOPED_TRACE(::testing::Message() << "width " << d);
    const int64_t total_rows = 50;
    std::vector<int32_t> all(total_rows);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    const std::vector<int32_t> rows(all.begin(), all.begin() + 40);  // distinct, shuffled; 10 rows untouched
    const Tensor y = random_tensor({40, d}, rng);
    std::vector<float> scale(total_rows);
    std::uniform_real_distribution<float> dist(0.0f, 1.0f);
    for (float& s : scale) s = dist(rng);
    Tensor out = random_tensor({total_rows, d}, rng);
    const std::vector<float> before = testref::to_vector(out);
    ops::scatter_scaled_add(y, rows.data(), 40, scale.data(), out);

    std::vector<double> ref(before.begin(), before.end());
    for (size_t i = 0; i < rows.size(); ++i)
      for (int64_t j = 0; j < d; ++j)
        ref[rows[i] * d + j] += static_cast<double>(scale[rows[i]]) * y.data<float>()[i * d + j];
    // One product and one sum, each correctly rounded: |err| <= 2u * (|out| + |scale y|) <= 2u * 2.
    EXPECT_TRUE(testref::close_elementwise(out, ref, [](size_t) { return 4.0 * testref::kFloatEps; }));
    for (size_t i = 40; i < all.size(); ++i)
      for (int64_t j = 0; j < d; ++j)
        ASSERT_EQ(out.data<float>()[all[i] * d + j], before[all[i] * d + j]) << "untouched row " << all[i];
  }
}

TEST(MoeRoutingTest, ScatterScaledAddUsesTheScaleOfTheDestinationRow) {
  // y row i goes to out row rows[i] and is scaled by scale[rows[i]], not scale[i].
  const Tensor y = Tensor::from_vector(std::vector<float>{1.0f, 2.0f, 10.0f, 20.0f}, {2, 2});
  Tensor out = Tensor::zeros({3, 2});
  const std::vector<int32_t> rows = {2, 0};
  const std::vector<float> scale = {0.5f, 100.0f, 3.0f};
  ops::scatter_scaled_add(y, rows.data(), 2, scale.data(), out);
  EXPECT_EQ(testref::to_vector(out), (std::vector<float>{5.0f, 10.0f, 0.0f, 0.0f, 3.0f, 6.0f}));
}

TEST(MoeRoutingTest, ScatterScaledAddRejectsMismatchedShapes) {
  std::mt19937 rng(708);
  Tensor out = Tensor::zeros({4, 3});
  const std::vector<int32_t> rows = {0, 1, 2};
  const std::vector<float> scale(4, 1.0f);
  EXPECT_THROW(ops::scatter_scaled_add(random_tensor({2, 3}, rng), rows.data(), 3, scale.data(), out),
               std::invalid_argument);
  EXPECT_THROW(ops::scatter_scaled_add(random_tensor({3, 4}, rng), rows.data(), 3, scale.data(), out),
               std::invalid_argument);
}

}  // namespace
}  // namespace elephant
