#include "ops/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "layers/transformer_layers.h"
#include "ops/gather.h"
#include "ops/reference_helpers.h"
#include "test_utils.h"

namespace elephant {
namespace {

using ops::Activation;
using testref::activate;
using testref::random_tensor;
using testref::to_double;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The fused router's outputs as host vectors.
struct Routing {
  std::vector<int32_t> expert;
  std::vector<float> probability;
};

// Activity flags as the ops take them: U8 [rows].
Tensor flags(const std::vector<uint8_t>& active) {
  return Tensor::from_vector(active, {static_cast<int64_t>(active.size())});
}

// Runs ops::route_top1 on poisoned outputs (an expert id of -7, a NaN probability), so that a row the op forgets
// to write fails the comparison.
Routing route(const Tensor& x, const Tensor& weight, const Tensor* bias = nullptr,
              const std::vector<uint8_t>* active = nullptr) {
  const int64_t tokens = x.dim(0);
  Tensor expert = Tensor::from_vector(std::vector<int32_t>(tokens, -7), {tokens});
  Tensor probability = testref::filled_tensor({tokens}, kNaN);
  const Tensor active_flags = active ? flags(*active) : Tensor();
  ops::route_top1(x, weight, bias, active ? &active_flags : nullptr, expert, probability);
  return {expert.to_vector<int32_t>(), probability.to_vector<float>()};
}

// F32 [n, n] identity. Routing x = logits through it reproduces the logits exactly (every product is x * 1 or
// x * 0, every sum adds zeros to one term), so the router's softmax and top-1 are checked on their own, at the
// softmax's tolerance.
Tensor identity(int64_t n) {
  Tensor eye = Tensor::zeros({n, n});
  for (int64_t i = 0; i < n; ++i) eye.data<float>()[i * n + i] = 1.0f;
  return eye;
}

Routing route_logits(const Tensor& logits, const std::vector<uint8_t>* active = nullptr) {
  return route(logits, identity(logits.dim(1)), nullptr, active);
}

struct ReferenceRouting {
  std::vector<int32_t> expert;
  std::vector<double> probability;
  std::vector<double> margin;  // gap between the best and second-best probability
};

// softmax over experts in double, then the first maximum (torch.argmax / torch.max semantics).
ReferenceRouting reference_route(const std::vector<double>& l, int64_t tokens, int64_t experts,
                                 const std::vector<uint8_t>& active) {
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

ReferenceRouting reference_route(const Tensor& logits, const std::vector<uint8_t>& active) {
  return reference_route(to_double(logits), logits.dim(0), logits.dim(1), active);
}

// The probability is one float softmax entry: a few ulps plus the sum's relative error (<= experts * u).
constexpr double kProbabilityTolerance = 1e-6;

void expect_routing_matches(const Routing& got, const ReferenceRouting& ref) {
  ASSERT_EQ(got.expert.size(), ref.expert.size());
  ASSERT_EQ(got.probability.size(), ref.expert.size());
  for (size_t t = 0; t < ref.expert.size(); ++t) {
    // Random logits leave a clear winner; a near tie would make the float/double comparison meaningless.
    ASSERT_GT(ref.margin[t], 1e-5) << "test data has a near tie at token " << t;
    EXPECT_EQ(got.expert[t], ref.expert[t]) << "token " << t;
    EXPECT_NEAR(got.probability[t], ref.probability[t], kProbabilityTolerance) << "token " << t;
  }
}

TEST(MoeTest, RouteTop1MatchesReference) {
  std::mt19937 rng(700);
  for (int64_t experts : {1, 2, 3, 8, 13}) {
    for (int64_t tokens : {0, 1, 17, 64}) {
      SCOPED_TRACE(::testing::Message() << tokens << " tokens, " << experts << " experts");
      const Tensor logits = random_tensor({tokens, experts}, rng, -4.0f, 4.0f);
      expect_routing_matches(route_logits(logits), reference_route(logits, {}));
    }
  }
}

// The fused router proper: logits = x · weight^T (+ bias) from hidden states, in float32, against the logits
// in double. A float dot product of length d plus the bias errs by at most (d + 3) u (sum_j |x_j w_j| + |b|);
// a logit error of delta moves a softmax probability by at most 2 delta. So the tolerance is the
// softmax's plus twice that worst-case logit bound (~1e-5 here), still far below what a missing bias, a
// transposed weight or a wrong row does (~1e-2 and more). The winner must lead by more than twice the logit
// bound so that float rounding cannot flip it.
TEST(MoeTest, FusedRouterMatchesDoubleReference) {
  std::mt19937 rng(709);
  for (int64_t experts : {1, 3, 8, 13}) {
    for (int64_t d : {1, 16, 64}) {
      for (bool with_bias : {false, true}) {
        for (bool pruned : {false, true}) {
          const int64_t tokens = 29;
          SCOPED_TRACE(::testing::Message()
                       << experts << " experts, d " << d << ", bias " << with_bias << ", pruned " << pruned);
          const float scale = 2.0f / std::sqrt(static_cast<float>(d));
          const Tensor x = random_tensor({tokens, d}, rng);
          const Tensor weight = random_tensor({experts, d}, rng, -2 * scale, 2 * scale);
          const Tensor bias = random_tensor({experts}, rng, -1.0f, 1.0f);
          std::vector<uint8_t> active;
          if (pruned) {
            std::bernoulli_distribution coin(0.5);
            for (int64_t t = 0; t < tokens; ++t) active.push_back(coin(rng) ? 1 : 0);
            active[0] = 0;
            active[1] = 1;
          }
          const std::vector<double> xv = to_double(x), wv = to_double(weight), bv = to_double(bias);
          std::vector<double> logits(static_cast<size_t>(tokens * experts));
          std::vector<double> logit_error(static_cast<size_t>(tokens), 0.0);
          for (int64_t t = 0; t < tokens; ++t)
            for (int64_t e = 0; e < experts; ++e) {
              double sum = with_bias ? bv[e] : 0.0, magnitude = with_bias ? std::abs(bv[e]) : 0.0;
              for (int64_t j = 0; j < d; ++j) {
                sum += xv[t * d + j] * wv[e * d + j];
                magnitude += std::abs(xv[t * d + j] * wv[e * d + j]);
              }
              logits[t * experts + e] = sum;
              logit_error[t] =
                  std::max(logit_error[t], (static_cast<double>(d) + 3.0) * testref::kFloatEps * magnitude);
            }
          const ReferenceRouting ref = reference_route(logits, tokens, experts, active);
          const Routing got = route(x, weight, with_bias ? &bias : nullptr, pruned ? &active : nullptr);
          ASSERT_EQ(got.expert.size(), static_cast<size_t>(tokens));
          for (int64_t t = 0; t < tokens; ++t) {
            if (pruned && !active[t]) {
              EXPECT_EQ(got.expert[t], experts) << "inactive token " << t;
              EXPECT_EQ(got.probability[t], 0.0f) << "inactive token " << t;
              continue;
            }
            double second = -INFINITY;
            for (int64_t e = 0; e < experts; ++e)
              if (e != ref.expert[t]) second = std::max(second, logits[t * experts + e]);
            if (experts > 1) {
              ASSERT_GT(logits[t * experts + ref.expert[t]] - second, 2 * logit_error[t])
                  << "test data has a near tie at token " << t;
            }
            EXPECT_EQ(got.expert[t], ref.expert[t]) << "token " << t;
            EXPECT_NEAR(got.probability[t], ref.probability[t], kProbabilityTolerance + 2 * logit_error[t])
                << "token " << t;
          }
        }
      }
    }
  }
}

TEST(MoeTest, RouteTop1LargeLogitsAreStable) {
  std::mt19937 rng(701);
  for (float scale : {100.0f, 1e4f}) {
    const Tensor logits = random_tensor({20, 8}, rng, -scale, scale);
    const Routing got = route_logits(logits);
    expect_routing_matches(got, reference_route(logits, {}));
    for (float p : got.probability) EXPECT_TRUE(std::isfinite(p));
  }
  // Logits far above exp's overflow threshold but close to each other.
  const Tensor close = Tensor::from_vector(std::vector<float>{1000.0f, 1001.0f, 999.0f}, {1, 3});
  const Routing got = route_logits(close);
  EXPECT_EQ(got.expert[0], 1);
  EXPECT_NEAR(got.probability[0], 1.0 / (1.0 + std::exp(-1.0) + std::exp(-2.0)), kProbabilityTolerance);
}

TEST(MoeTest, RouteTop1TiesPickTheFirstExpert) {
  const Tensor logits = Tensor::from_vector(
      std::vector<float>{
          0.5f,  2.0f,  -1.0f, 2.0f,  0.0f,   // tie between experts 1 and 3
          3.0f,  3.0f,  3.0f,  3.0f,  3.0f,   // all equal: expert 0, probability 1/5
          -1.0f, 0.0f,  0.0f,  0.0f,  7.0f,   // clear winner last
          -9.0f, -9.0f, -2.0f, -5.0f, -2.0f,  // tie between 2 and 4
      },
      {4, 5});
  const Routing got = route_logits(logits);
  EXPECT_EQ(got.expert, (std::vector<int32_t>{1, 0, 4, 2}));
  EXPECT_NEAR(got.probability[1], 0.2, kProbabilityTolerance);
  const double e = std::exp(1.0);
  // Row 0: exp(x - 2) = e^-1.5, 1, e^-3, 1, e^-2.
  EXPECT_NEAR(got.probability[0], 1.0 / (2.0 + std::pow(e, -1.5) + std::pow(e, -3.0) + std::pow(e, -2.0)),
              kProbabilityTolerance);

  // Through a real router: experts 1 and 3 have the same weight row, so their logits are equal bit for bit and
  // the winner is 1 (expert 4's row is negated, so it leads whenever 1 and 3 trail, and then alone).
  std::mt19937 rng(710);
  const int64_t d = 12, tokens = 40;
  Tensor weight = random_tensor({5, d}, rng);
  for (int64_t j = 0; j < d; ++j) {
    weight.data<float>()[3 * d + j] = weight.data<float>()[1 * d + j];
    weight.data<float>()[4 * d + j] = -weight.data<float>()[1 * d + j];
  }
  const Tensor x = random_tensor({tokens, d}, rng);
  const Routing tied = route(x, weight);
  int picked_pair = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    EXPECT_NE(tied.expert[t], 3) << "token " << t << ": expert 3 only ties expert 1, which comes first";
    if (tied.expert[t] == 1) ++picked_pair;
  }
  EXPECT_GT(picked_pair, 0) << "test data: no token chose the tied pair";
}

TEST(MoeTest, RouteTop1InactiveRowsGetThePastTheEndExpert) {
  std::mt19937 rng(702);
  const int64_t tokens = 12, experts = 5;
  const Tensor logits = random_tensor({tokens, experts}, rng, -4.0f, 4.0f);
  // Any nonzero flag means active.
  const std::vector<uint8_t> active = {1, 0, 0, 1, 255, 0, 1, 1, 2, 0, 1, 0};
  const Routing got = route_logits(logits, &active);
  const ReferenceRouting ref = reference_route(logits, active);
  expect_routing_matches(got, ref);
  const Routing all = route_logits(logits);
  for (int64_t t = 0; t < tokens; ++t) {
    if (active[t]) {
      EXPECT_EQ(got.expert[t], all.expert[t]);
      EXPECT_EQ(got.probability[t], all.probability[t]);
    } else {
      EXPECT_EQ(got.expert[t], experts) << t;
    }
  }
  // All inactive.
  const std::vector<uint8_t> none_active(tokens, 0);
  const Routing none = route_logits(logits, &none_active);
  EXPECT_EQ(none.expert, std::vector<int32_t>(tokens, static_cast<int32_t>(experts)));
  EXPECT_EQ(none.probability, std::vector<float>(tokens, 0.0f));

  // Through the fused router with a bias: pruning changes nothing for the active rows.
  const int64_t d = 9;
  const Tensor x = random_tensor({tokens, d}, rng);
  const Tensor weight = random_tensor({experts, d}, rng);
  const Tensor bias = random_tensor({experts}, rng);
  const Routing fused_all = route(x, weight, &bias);
  const Routing fused = route(x, weight, &bias, &active);
  for (int64_t t = 0; t < tokens; ++t) {
    if (active[t]) {
      EXPECT_EQ(fused.expert[t], fused_all.expert[t]) << t;
      EXPECT_EQ(fused.probability[t], fused_all.probability[t]) << t;
    } else {
      EXPECT_EQ(fused.expert[t], experts) << t;
      EXPECT_EQ(fused.probability[t], 0.0f) << t;
    }
  }
}

TEST(MoeTest, RouteTop1RejectsMismatchedActiveFlags) {
  std::mt19937 rng(703);
  const Tensor logits = random_tensor({4, 3}, rng);
  const std::vector<uint8_t> three(3, 1), five(5, 1);
  EXPECT_THROW(route_logits(logits, &three), std::invalid_argument);
  EXPECT_THROW(route_logits(logits, &five), std::invalid_argument);
  const Tensor eye = identity(3);
  Tensor expert = Tensor::empty({4}, DType::I32);
  Tensor probability = Tensor::empty({4});
  const Tensor i32_flags = Tensor::from_vector(std::vector<int32_t>(4, 1), {4});
  EXPECT_THROW(ops::route_top1(logits, eye, nullptr, &i32_flags, expert, probability), std::invalid_argument);
}

// route_and_sort_top1 is route_top1 then sort_by_expert of the chosen experts, inactive rows last.
TEST(MoeTest, RouteAndSortEqualsRouteThenSort) {
  std::mt19937 rng(716);
  for (int64_t tokens : {0, 1, 9, 40}) {
    SCOPED_TRACE(::testing::Message() << tokens << " tokens");
    const Tensor x = random_tensor({tokens, 6}, rng);
    const Tensor weight = random_tensor({5, 6}, rng, -2.0f, 2.0f);
    const Tensor bias = random_tensor({5}, rng);
    std::vector<uint8_t> live(static_cast<size_t>(tokens), 1);
    for (size_t t = 0; t < live.size(); t += 3) live[t] = 0;
    const Tensor active = flags(live);
    Tensor expert = Tensor::empty({tokens}, DType::I32);
    Tensor expected_probability = Tensor::empty({tokens});
    ops::route_top1(x, weight, &bias, &active, expert, expected_probability);
    Tensor expected_rows = Tensor::empty({tokens}, DType::I32), expected_offsets = Tensor::empty({6}, DType::I32);
    ops::sort_by_expert(expert, 5, expected_rows, expected_offsets);

    Tensor probability = Tensor::empty({tokens});
    Tensor rows = Tensor::empty({tokens}, DType::I32), offsets = Tensor::empty({6}, DType::I32);
    ops::route_and_sort_top1(x, weight, &bias, &active, probability, rows, offsets);
    EXPECT_EQ(probability.to_vector<float>(), expected_probability.to_vector<float>());
    EXPECT_EQ(rows.to_vector<int32_t>(), expected_rows.to_vector<int32_t>());
    EXPECT_EQ(offsets.to_vector<int32_t>(), expected_offsets.to_vector<int32_t>());
  }
}

TEST(MoeTest, RouteAndSortRejectsMismatchedArguments) {
  std::mt19937 rng(717);
  const Tensor x = random_tensor({4, 6}, rng);
  const Tensor weight = random_tensor({3, 6}, rng);
  Tensor probability = Tensor::empty({4});
  Tensor rows = Tensor::empty({4}, DType::I32), offsets = Tensor::empty({4}, DType::I32);
  EXPECT_NO_THROW(ops::route_and_sort_top1(x, weight, nullptr, nullptr, probability, rows, offsets));
  Tensor short_rows = Tensor::empty({3}, DType::I32), float_rows = Tensor::empty({4});
  EXPECT_THROW(ops::route_and_sort_top1(x, weight, nullptr, nullptr, probability, short_rows, offsets),
               std::invalid_argument);
  EXPECT_THROW(ops::route_and_sort_top1(x, weight, nullptr, nullptr, probability, float_rows, offsets),
               std::invalid_argument);
  Tensor short_offsets = Tensor::empty({3}, DType::I32);
  EXPECT_THROW(ops::route_and_sort_top1(x, weight, nullptr, nullptr, probability, rows, short_offsets),
               std::invalid_argument);
  EXPECT_THROW(ops::route_and_sort_top1(x, random_tensor({3, 5}, rng), nullptr, nullptr, probability, rows, offsets),
               std::invalid_argument);
  Tensor short_probability = Tensor::empty({5});
  EXPECT_THROW(ops::route_and_sort_top1(x, weight, nullptr, nullptr, short_probability, rows, offsets),
               std::invalid_argument);
}

TEST(MoeTest, RouteTop1RejectsMismatchedArguments) {
  std::mt19937 rng(711);
  const Tensor x = random_tensor({4, 6}, rng);
  const Tensor weight = random_tensor({3, 6}, rng);
  Tensor expert = Tensor::empty({4}, DType::I32);
  Tensor probability = Tensor::empty({4});
  EXPECT_NO_THROW(ops::route_top1(x, weight, nullptr, nullptr, expert, probability));
  EXPECT_THROW(ops::route_top1(x, random_tensor({3, 5}, rng), nullptr, nullptr, expert, probability),
               std::invalid_argument);
  const Tensor short_bias = random_tensor({2}, rng);
  EXPECT_THROW(ops::route_top1(x, weight, &short_bias, nullptr, expert, probability), std::invalid_argument);
  Tensor short_expert = Tensor::empty({3}, DType::I32);
  EXPECT_THROW(ops::route_top1(x, weight, nullptr, nullptr, short_expert, probability), std::invalid_argument);
  Tensor float_expert = Tensor::empty({4});
  EXPECT_THROW(ops::route_top1(x, weight, nullptr, nullptr, float_expert, probability), std::invalid_argument);
  Tensor short_probability = Tensor::empty({5});
  EXPECT_THROW(ops::route_top1(x, weight, nullptr, nullptr, expert, short_probability), std::invalid_argument);
  // The CPU backend computes in float32 only.
  const Tensor half_x = Tensor::zeros({4, 6}, DType::F16);
  EXPECT_THROW(ops::route_top1(half_x, weight, nullptr, nullptr, expert, probability), std::invalid_argument);
}

// Runs ops::sort_by_expert on poisoned outputs.
struct Sorted {
  std::vector<int32_t> rows;
  std::vector<int32_t> offsets;
};

Sorted sort_rows(const std::vector<int32_t>& expert, int num_experts) {
  const auto tokens = static_cast<int64_t>(expert.size());
  Tensor sorted_rows = Tensor::from_vector(std::vector<int32_t>(expert.size(), -5), {tokens});
  Tensor offsets = Tensor::from_vector(std::vector<int32_t>(num_experts + 1, -5), {num_experts + 1});
  ops::sort_by_expert(Tensor::from_vector(expert, {tokens}), num_experts, sorted_rows, offsets);
  return {sorted_rows.to_vector<int32_t>(), offsets.to_vector<int32_t>()};
}

// Direct grouping: for each expert in order, the rows routed to it in row order, then the pruned rows (id
// num_experts) in row order.
Sorted reference_sort(const std::vector<int32_t>& expert, int num_experts) {
  Sorted ref;
  ref.offsets.push_back(0);
  for (int e = 0; e <= num_experts; ++e) {
    for (size_t row = 0; row < expert.size(); ++row)
      if (expert[row] == e) ref.rows.push_back(static_cast<int32_t>(row));
    if (e < num_experts) ref.offsets.push_back(static_cast<int32_t>(ref.rows.size()));
  }
  return ref;
}

TEST(MoeTest, SortByExpertIsAStableSort) {
  std::mt19937 rng(704);
  for (int num_experts : {1, 3, 8, 16}) {
    for (size_t rows : {size_t{0}, size_t{1}, size_t{5}, size_t{100}}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows, " << num_experts << " experts");
      // Ids in [0, num_experts]: num_experts is the past-the-end id of inactive rows.
      std::uniform_int_distribution<int32_t> dist(0, num_experts);
      std::vector<int32_t> expert(rows);
      for (int32_t& e : expert) e = dist(rng);
      const Sorted got = sort_rows(expert, num_experts);
      const Sorted ref = reference_sort(expert, num_experts);
      EXPECT_EQ(got.offsets, ref.offsets);
      EXPECT_EQ(got.rows, ref.rows);
    }
  }
}

TEST(MoeTest, SortByExpertWithEmptyExpertsAndPrunedRows) {
  // Experts 0, 2 and 5 get no rows; rows routed to 6 (past the end: pruned) sort last, in row order.
  const std::vector<int32_t> expert = {3, 6, 1, 3, 4, 6, 1, 1, 3, 6};
  const Sorted got = sort_rows(expert, 6);
  EXPECT_EQ(got.offsets, (std::vector<int32_t>{0, 0, 3, 3, 6, 7, 7}));
  EXPECT_EQ(got.rows, (std::vector<int32_t>{2, 6, 7, 0, 3, 8, 4, 1, 5, 9}));
  // Everything pruned.
  const Sorted none = sort_rows({4, 4, 4}, 4);
  EXPECT_EQ(none.offsets, (std::vector<int32_t>{0, 0, 0, 0, 0}));
  EXPECT_EQ(none.rows, (std::vector<int32_t>{0, 1, 2}));
}

TEST(MoeTest, SortByExpertRejectsMismatchedShapes) {
  const Tensor expert = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 1}, {4});
  Tensor rows = Tensor::empty({4}, DType::I32);
  Tensor offsets = Tensor::empty({4}, DType::I32);
  EXPECT_NO_THROW(ops::sort_by_expert(expert, 3, rows, offsets));
  EXPECT_THROW(ops::sort_by_expert(expert, 4, rows, offsets), std::invalid_argument);  // offsets need 5 entries
  EXPECT_THROW(ops::sort_by_expert(expert, 0, rows, offsets), std::invalid_argument);
  Tensor short_rows = Tensor::empty({3}, DType::I32);
  EXPECT_THROW(ops::sort_by_expert(expert, 3, short_rows, offsets), std::invalid_argument);
  Tensor wide_rows = Tensor::empty({4}, DType::I64);
  EXPECT_THROW(ops::sort_by_expert(expert, 3, wide_rows, offsets), std::invalid_argument);
  const Tensor float_expert = Tensor::zeros({4});
  EXPECT_THROW(ops::sort_by_expert(float_expert, 3, rows, offsets), std::invalid_argument);
}

// out[i] = act(a[i] · weights[e]^T + bias[e]) for the rows i of expert e; rows from offsets[experts] on are
// not written. The result is checked against double: the dot product errs by at most 2 (k + 4) u sum |a w|
// (gemm_test's bound, which covers the bias add), the activations' slope is at most 1.13, and evaluating them
// costs 8 u (|y| + |z|) (activation_test's bound). A wrong expert's weights, a missing bias or activation is
// off by O(1).
TEST(MoeTest, GroupedGemmMatchesPerExpertReference) {
  std::mt19937 rng(712);
  struct Case {
    std::vector<int32_t> offsets;  // the last entry is the number of active rows
    int64_t rows, n, k;
  };
  const std::vector<Case> cases = {
      {{0, 3, 3, 7, 12}, 12, 5, 9},  // an expert without rows
      {{0, 0, 4, 4, 6}, 9, 16, 33},  // empty first and middle experts, 3 pruned rows at the end
      {{0, 1}, 1, 1, 1},             // one expert, one row
      {{0, 0, 0}, 4, 3, 2},          // every row pruned
      {{0, 20, 50}, 50, 24, 40},     // large groups
  };
  for (const Case& c : cases) {
    for (bool with_bias : {false, true}) {
      for (std::optional<Activation> activation :
           {std::optional<Activation>(), std::optional<Activation>(Activation::ReLU),
            std::optional<Activation>(Activation::GeluNew), std::optional<Activation>(Activation::Silu)}) {
        const int64_t experts = static_cast<int64_t>(c.offsets.size()) - 1;
        SCOPED_TRACE(::testing::Message()
                     << experts << " experts, rows " << c.rows << ", n " << c.n << ", k " << c.k << ", bias "
                     << with_bias << ", activation " << (activation ? ops::activation_name(*activation) : "none"));
        const Tensor a = random_tensor({c.rows, c.k}, rng);
        const Tensor weights = random_tensor({experts, c.n, c.k}, rng);
        const Tensor bias = random_tensor({experts, c.n}, rng);
        Tensor out = testref::filled_tensor({c.rows, c.n}, kNaN);
        const Tensor offsets = Tensor::from_vector(c.offsets, {experts + 1});
        ops::GroupedGemmArgs args;
        args.bias = with_bias ? &bias : nullptr;
        args.activation = activation;
        ops::grouped_gemm(a, weights, offsets, out, args);

        const std::vector<double> av = to_double(a), wv = to_double(weights), bv = to_double(bias);
        const int64_t active = c.offsets.back();
        std::vector<double> ref, tolerance;
        for (int64_t e = 0; e < experts; ++e)
          for (int64_t i = c.offsets[e]; i < c.offsets[e + 1]; ++i)
            for (int64_t j = 0; j < c.n; ++j) {
              double z = with_bias ? bv[e * c.n + j] : 0.0, magnitude = with_bias ? std::abs(z) : 0.0;
              for (int64_t p = 0; p < c.k; ++p) {
                z += av[i * c.k + p] * wv[(e * c.n + j) * c.k + p];
                magnitude += std::abs(av[i * c.k + p] * wv[(e * c.n + j) * c.k + p]);
              }
              const double y = activation ? activate(*activation, z) : z;
              ref.push_back(y);
              tolerance.push_back(1.13 * 2.0 * (static_cast<double>(c.k) + 4.0) * testref::kFloatEps * magnitude +
                                  8.0 * testref::kFloatEps * (std::abs(y) + std::abs(z)) + 1e-30);
            }
        EXPECT_TRUE(
            testref::close_elementwise(out.narrow(0, active), ref, [&tolerance](size_t i) { return tolerance[i]; }));
        // Pruned rows are not touched.
        const std::vector<float> rest = out.to_vector<float>();
        for (size_t i = static_cast<size_t>(active * c.n); i < rest.size(); ++i)
          ASSERT_TRUE(std::isnan(rest[i])) << "pruned row " << i / c.n << " was written";
      }
    }
  }
}

TEST(MoeTest, GroupedGemmNeverReadsExpertsWithoutRows) {
  // Experts 0 and 2 hold NaN weights and biases; they receive no row, so nothing may turn NaN.
  std::mt19937 rng(713);
  const int64_t rows = 6, n = 5, k = 7;
  Tensor weights = random_tensor({3, n, k}, rng);
  Tensor bias = random_tensor({3, n}, rng);
  for (int64_t e : {0, 2}) {
    weights.narrow(e, 1).copy_from(testref::filled_tensor({1, n, k}, kNaN));
    bias.narrow(e, 1).copy_from(testref::filled_tensor({1, n}, kNaN));
  }
  const Tensor a = random_tensor({rows, k}, rng);
  const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, 0, rows, rows}, {4});
  Tensor out = testref::filled_tensor({rows, n}, kNaN);
  ops::GroupedGemmArgs args;
  args.bias = &bias;
  args.activation = Activation::Gelu;
  ops::grouped_gemm(a, weights, offsets, out, args);
  for (float v : out.to_vector<float>()) ASSERT_TRUE(std::isfinite(v));
}

TEST(MoeTest, GroupedGemmRejectsMismatchedShapes) {
  std::mt19937 rng(714);
  const Tensor a = random_tensor({4, 6}, rng);
  const Tensor weights = random_tensor({2, 5, 6}, rng);
  const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, 2, 4}, {3});
  Tensor out = Tensor::empty({4, 5});
  EXPECT_NO_THROW(ops::grouped_gemm(a, weights, offsets, out));
  EXPECT_THROW(ops::grouped_gemm(a, random_tensor({2, 5, 7}, rng), offsets, out), std::invalid_argument);
  EXPECT_THROW(ops::grouped_gemm(a, random_tensor({10, 6}, rng), offsets, out), std::invalid_argument);
  const Tensor short_offsets = Tensor::from_vector(std::vector<int32_t>{0, 4}, {2});
  EXPECT_THROW(ops::grouped_gemm(a, weights, short_offsets, out), std::invalid_argument);
  Tensor narrow_out = Tensor::empty({4, 4});
  EXPECT_THROW(ops::grouped_gemm(a, weights, offsets, narrow_out), std::invalid_argument);
  Tensor short_out = Tensor::empty({3, 5});
  EXPECT_THROW(ops::grouped_gemm(a, weights, offsets, short_out), std::invalid_argument);
  const Tensor wrong_bias = random_tensor({2, 4}, rng);
  ops::GroupedGemmArgs args;
  args.bias = &wrong_bias;
  EXPECT_THROW(ops::grouped_gemm(a, weights, offsets, out, args), std::invalid_argument);
  for (const Tensor& wrong_rows : {Tensor::from_vector(std::vector<int32_t>{0, 1, 2}, {3}),
                                   Tensor::from_vector(std::vector<float>{0, 1, 2, 3}, {4})}) {
    ops::GroupedGemmArgs row_args;
    row_args.a_rows = &wrong_rows;
    EXPECT_THROW(ops::grouped_gemm(a, weights, offsets, out, row_args), std::invalid_argument);
  }
}

// a_rows reads the rows in the given order: the same as gathering them first. a has more rows than the product
// (rows that no position reads), and the last sorted position is past the last expert (pruned).
TEST(MoeTest, GroupedGemmWithRowIndicesEqualsGatherThenGemm) {
  std::mt19937 rng(715);
  const Tensor a = random_tensor({7, 6}, rng);
  const Tensor weights = random_tensor({3, 5, 6}, rng);
  const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, 2, 2, 4}, {4});
  const Tensor rows = Tensor::from_vector(std::vector<int32_t>{5, 0, 6, 2, 3}, {5});
  Tensor gathered = Tensor::empty({5, 6});
  ops::gather_rows(a, rows, gathered);
  Tensor expected = testref::filled_tensor({5, 5}, kNaN);
  ops::grouped_gemm(gathered, weights, offsets, expected, {nullptr, Activation::Gelu});
  Tensor out = testref::filled_tensor({5, 5}, kNaN);
  ops::GroupedGemmArgs args;
  args.activation = Activation::Gelu;
  args.a_rows = &rows;
  ops::grouped_gemm(a, weights, offsets, out, args);
  const std::vector<float> got = out.to_vector<float>(), want = expected.to_vector<float>();
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(got[i], want[i]) << i;
  for (size_t i = 20; i < 25; ++i) EXPECT_TRUE(std::isnan(got[i])) << "pruned element " << i;
}

TEST(MoeTest, GatherRowsCopiesRowsInTheGivenOrder) {
  std::mt19937 rng(705);
  for (int64_t d : {1, 7, 16, 33}) {
    SCOPED_TRACE(::testing::Message() << "width " << d);
    const Tensor x = random_tensor({9, d}, rng);
    const std::vector<int32_t> rows = {8, 0, 3, 3, 5, 0};  // any order, repeats allowed
    // out is the first rows of a larger tensor: the spare rows past it stay as they were.
    Tensor storage = testref::filled_tensor({8, d}, -123.0f);
    Tensor out = storage.narrow(0, static_cast<int64_t>(rows.size()));
    ops::gather_rows(x, Tensor::from_vector(rows, {static_cast<int64_t>(rows.size())}), out);
    for (size_t i = 0; i < rows.size(); ++i)
      for (int64_t j = 0; j < d; ++j)
        ASSERT_EQ(storage.data<float>()[i * d + j], x.data<float>()[rows[i] * d + j]) << "row " << i << " col " << j;
    for (int64_t i = static_cast<int64_t>(rows.size()) * d; i < storage.numel(); ++i)
      ASSERT_EQ(storage.data<float>()[i], -123.0f);
    // Only out.dim(0) rows are gathered: extra indices are not used.
    Tensor first_two = Tensor::empty({2, d});
    ops::gather_rows(x, Tensor::from_vector(rows, {static_cast<int64_t>(rows.size())}), first_two);
    for (int64_t j = 0; j < d; ++j) {
      ASSERT_EQ(first_two.data<float>()[j], x.data<float>()[8 * d + j]);
      ASSERT_EQ(first_two.data<float>()[d + j], x.data<float>()[j]);
    }
    // Zero rows is a no-op.
    Tensor none = Tensor::empty({0, d});
    EXPECT_NO_THROW(ops::gather_rows(x, Tensor::from_vector(rows, {static_cast<int64_t>(rows.size())}), none));
  }
}

TEST(MoeTest, GatherRowsRejectsASmallOrNarrowOutput) {
  std::mt19937 rng(706);
  const Tensor x = random_tensor({5, 4}, rng);
  const Tensor rows = Tensor::from_vector(std::vector<int32_t>{0, 1, 2}, {3});
  // Fewer indices than output rows.
  Tensor large = Tensor::empty({4, 4});
  EXPECT_THROW(ops::gather_rows(x, rows, large), std::invalid_argument);
  Tensor narrow = Tensor::empty({3, 5});
  EXPECT_THROW(ops::gather_rows(x, rows, narrow), std::invalid_argument);
  Tensor fits = Tensor::empty({3, 4});
  const Tensor wide_rows = Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {3});
  EXPECT_THROW(ops::gather_rows(x, wide_rows, fits), std::invalid_argument);
  EXPECT_THROW(ops::gather_rows(x, Tensor::from_vector(std::vector<int32_t>{0, 5, 1}, {3}), fits), std::out_of_range);
  EXPECT_THROW(ops::gather_rows(x, Tensor::from_vector(std::vector<int32_t>{-1, 0, 1}, {3}), fits), std::out_of_range);
  EXPECT_NO_THROW(ops::gather_rows(x, rows, fits));
}

// out_rows: product row i is added to out[out_rows[i]], scaled by out_scale of that row. Rows past
// offsets[experts] are pruned: a's rows there hold NaN and must not be read, and their destination rows stay as
// they were.
TEST(MoeTest, GroupedGemmAddsScaledRowsToOutRows) {
  std::mt19937 rng(707);
  for (int64_t n : {1, 7, 64, 2050}) {  // 2050 * 40 rows crosses the parallel threshold
    SCOPED_TRACE(::testing::Message() << "width " << n);
    const int64_t total_rows = 50, active = 40, k = 5;
    std::vector<int32_t> all(total_rows);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);  // distinct, shuffled; the last 10 rows are pruned
    Tensor a = random_tensor({total_rows, k}, rng);
    a.narrow(active, total_rows - active).copy_from(testref::filled_tensor({total_rows - active, k}, kNaN));
    const Tensor weights = random_tensor({3, n, k}, rng);
    const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, 13, 13, static_cast<int32_t>(active)}, {4});
    Tensor product = Tensor::empty({total_rows, n});
    ops::grouped_gemm(a, weights, offsets, product);
    std::vector<float> scale(total_rows);
    std::uniform_real_distribution<float> dist(0.0f, 1.0f);
    for (float& v : scale) v = dist(rng);
    Tensor out = random_tensor({total_rows, n}, rng);
    const std::vector<float> before = testref::to_vector(out);
    const Tensor rows = Tensor::from_vector(all, {total_rows}), scales = Tensor::from_vector(scale, {total_rows});
    ops::GroupedGemmArgs args;
    args.out_rows = &rows;
    args.out_scale = &scales;
    ops::grouped_gemm(a, weights, offsets, out, args);

    std::vector<double> ref(before.begin(), before.end());
    for (int64_t i = 0; i < active; ++i)
      for (int64_t j = 0; j < n; ++j)
        ref[all[i] * n + j] += static_cast<double>(scale[all[i]]) * product.data<float>()[i * n + j];
    // The same product (the same GEMM calls), then one product and one sum, each correctly rounded.
    EXPECT_TRUE(testref::close_elementwise(
        out, ref, [&](size_t i) { return 4.0 * testref::kFloatEps * (1.0 + std::abs(ref[i])); }));
    for (int64_t i = active; i < total_rows; ++i)
      for (int64_t j = 0; j < n; ++j)
        ASSERT_EQ(out.data<float>()[all[i] * n + j], before[all[i] * n + j]) << "untouched row " << all[i];
  }
}

// The pair is the two calls: the same products, bit for bit; a second GEMM that does not fit the first's output is
// rejected by name before anything runs.
TEST(MoeTest, GroupedGemmPairEqualsTwoCalls) {
  std::mt19937 rng(708);
  const int64_t rows = 30, d = 6, d_ff = 10;
  const Tensor x = random_tensor({rows, d}, rng);
  const Tensor wi = random_tensor({3, d_ff, d}, rng), wo = random_tensor({3, d, d_ff}, rng);
  const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, 9, 9, 26}, {4});  // 4 rows pruned
  std::vector<int32_t> order(rows);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  const Tensor sorted = Tensor::from_vector(order, {rows});
  const Tensor probability = random_tensor({rows}, rng);
  const layers::ExpertGemmArgs args(ops::Activation::ReLU, sorted, probability);

  Tensor inner = Tensor::zeros({rows, d_ff}), hidden = x.clone();
  ops::grouped_gemm(x, wi, offsets, inner, args.wi);
  ops::grouped_gemm(inner, wo, offsets, hidden, args.wo);
  Tensor pair_inner = Tensor::zeros({rows, d_ff}), pair_hidden = x.clone();
  ops::grouped_gemm_pair(x, wi, wo, offsets, pair_inner, pair_hidden, args.wi, args.wo);
  EXPECT_EQ(pair_inner.to_vector<float>(), inner.to_vector<float>());
  EXPECT_EQ(pair_hidden.to_vector<float>(), hidden.to_vector<float>());

  const Tensor wrong_wo = random_tensor({3, d, d_ff + 1}, rng);
  Tensor untouched = Tensor::zeros({rows, d_ff});
  EXPECT_CONTAINS(error_of<std::invalid_argument>([&] {
                    ops::grouped_gemm_pair(x, wi, wrong_wo, offsets, untouched, pair_hidden, args.wi, args.wo);
                  }),
                  "grouped_gemm");
  EXPECT_EQ(untouched.to_vector<float>(), std::vector<float>(rows * d_ff, 0.0f)) << "nothing ran";
}

TEST(MoeTest, GroupedGemmOutRowsUseTheScaleOfTheDestinationRow) {
  // Product row i (here a's row i: the weight is the identity) goes to out row out_rows[i] and is scaled by
  // out_scale[out_rows[i]], not out_scale[i].
  const Tensor a = Tensor::from_vector(std::vector<float>{1.0f, 2.0f, 10.0f, 20.0f, kNaN, kNaN}, {3, 2});
  const Tensor identity = Tensor::from_vector(std::vector<float>{1.0f, 0.0f, 0.0f, 1.0f}, {1, 2, 2});
  Tensor out = Tensor::zeros({3, 2});
  const Tensor rows = Tensor::from_vector(std::vector<int32_t>{2, 0, 1}, {3});  // row 1 is pruned
  const Tensor scale = Tensor::from_vector(std::vector<float>{0.5f, 100.0f, 3.0f}, {3});
  const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, 2}, {2});
  ops::GroupedGemmArgs args;
  args.out_rows = &rows;
  args.out_scale = &scale;
  ops::grouped_gemm(a, identity, offsets, out, args);
  EXPECT_EQ(testref::to_vector(out), (std::vector<float>{5.0f, 10.0f, 0.0f, 0.0f, 3.0f, 6.0f}));
}

TEST(MoeTest, GroupedGemmRejectsBadOutRows) {
  std::mt19937 rng(708);
  const Tensor a = random_tensor({4, 3}, rng);
  const Tensor weights = random_tensor({1, 3, 3}, rng);
  const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, 3}, {2});
  Tensor out = Tensor::zeros({5, 3});
  const Tensor rows = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3}, {4});
  const Tensor scale = testref::filled_tensor({5}, 1.0f);
  const auto call = [&](const Tensor* out_rows, const Tensor* out_scale, const Tensor& offs) {
    ops::GroupedGemmArgs args;
    args.out_rows = out_rows;
    args.out_scale = out_scale;
    ops::grouped_gemm(a, weights, offs, out, args);
  };
  EXPECT_NO_THROW(call(&rows, &scale, offsets));
  EXPECT_THROW(call(&rows, nullptr, offsets), std::invalid_argument);
  EXPECT_THROW(call(nullptr, &scale, offsets), std::invalid_argument);
  const Tensor short_rows = Tensor::from_vector(std::vector<int32_t>{0, 1, 2}, {3});
  EXPECT_THROW(call(&short_rows, &scale, offsets), std::invalid_argument);
  const Tensor float_rows = testref::filled_tensor({4}, 1.0f);
  EXPECT_THROW(call(&float_rows, &scale, offsets), std::invalid_argument);
  const Tensor short_scale = testref::filled_tensor({4}, 1.0f);
  EXPECT_THROW(call(&rows, &short_scale, offsets), std::invalid_argument);
  const Tensor int_scale = Tensor::from_vector(std::vector<int32_t>(5, 1), {5});
  EXPECT_THROW(call(&rows, &int_scale, offsets), std::invalid_argument);
  const Tensor outside = Tensor::from_vector(std::vector<int32_t>{0, 5, 1, 2}, {4});
  EXPECT_THROW(call(&outside, &scale, offsets), std::invalid_argument);
  const Tensor past_the_rows = Tensor::from_vector(std::vector<int32_t>{0, 5}, {2});
  EXPECT_THROW(call(&rows, &scale, past_the_rows), std::invalid_argument);
}

// The steps as the MoE layer chains them, on rows of which some are pruned: route, sort, the grouped GEMM wi reading
// the rows in expert order, the grouped GEMM wo adding to the rows they came from. Checked against a per-row double
// reference (the hidden += p * act(x W1^T) W2^T of the chosen expert, nothing for pruned rows).
TEST(MoeTest, StepsComposeToATop1Layer) {
  std::mt19937 rng(715);
  const int64_t tokens = 21, d = 8, d_ff = 12;
  const int experts = 4;
  const Tensor x = random_tensor({tokens, d}, rng);
  const Tensor router = random_tensor({experts, d}, rng, -2.0f, 2.0f);
  const Tensor wi = random_tensor({experts, d_ff, d}, rng, -0.7f, 0.7f);
  const Tensor wo = random_tensor({experts, d, d_ff}, rng, -0.6f, 0.6f);
  std::vector<uint8_t> active(tokens, 1);
  for (int64_t t : {0, 5, 6, 20}) active[t] = 0;
  Tensor hidden = random_tensor({tokens, d}, rng);
  const std::vector<double> before = to_double(hidden);

  Tensor expert = Tensor::empty({tokens}, DType::I32);
  Tensor probability = Tensor::empty({tokens});
  const Tensor active_flags = flags(active);
  ops::route_top1(x, router, nullptr, &active_flags, expert, probability);
  Tensor sorted_rows = Tensor::empty({tokens}, DType::I32);
  Tensor offsets = Tensor::empty({experts + 1}, DType::I32);
  ops::sort_by_expert(expert, experts, sorted_rows, offsets);
  EXPECT_EQ(offsets.to_vector<int32_t>().back(), tokens - 4);
  Tensor inner = Tensor::empty({tokens, d_ff});
  const layers::ExpertGemmArgs args(Activation::ReLU, sorted_rows, probability);
  ops::grouped_gemm(x, wi, offsets, inner, args.wi);
  ops::grouped_gemm(inner, wo, offsets, hidden, args.wo);

  const std::vector<double> xv = to_double(x), rv = to_double(router), wiv = to_double(wi), wov = to_double(wo);
  std::vector<double> ref = before;
  const std::vector<int32_t> chosen = expert.to_vector<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (!active[t]) continue;
    std::vector<double> logits(experts, 0.0);
    for (int e = 0; e < experts; ++e)
      for (int64_t j = 0; j < d; ++j) logits[e] += xv[t * d + j] * rv[e * d + j];
    const ReferenceRouting routing = reference_route(logits, 1, experts, {});
    ASSERT_GT(routing.margin[0], 1e-4) << "test data has a near tie at token " << t;
    const int e = routing.expert[0];
    ASSERT_EQ(chosen[t], e) << "token " << t;
    std::vector<double> h(static_cast<size_t>(d_ff), 0.0);
    for (int64_t i = 0; i < d_ff; ++i) {
      for (int64_t j = 0; j < d; ++j) h[i] += wiv[(e * d_ff + i) * d + j] * xv[t * d + j];
      h[i] = std::max(h[i], 0.0);
    }
    for (int64_t i = 0; i < d; ++i) {
      double out = 0.0;
      for (int64_t j = 0; j < d_ff; ++j) out += wov[(e * d + i) * d_ff + j] * h[j];
      ref[t * d + i] += routing.probability[0] * out;
    }
  }
  // As feed_forward_test: two O(1) float GEMMs of length <= 12 and the router probability (<= 1e-6 off).
  EXPECT_TRUE(testref::close_to_reference(hidden, ref, 2e-5));
  for (int64_t t : {0, 5, 6, 20})
    for (int64_t i = 0; i < d; ++i) ASSERT_EQ(hidden.data<float>()[t * d + i], before[t * d + i]) << "pruned " << t;
}

}  // namespace
}  // namespace elephant
