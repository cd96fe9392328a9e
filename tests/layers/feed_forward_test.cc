#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "layers/transformer_layers.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/reference_helpers.h"
#include "quantization/quantized_tensor.h"

namespace elephant {
namespace {

using ops::Activation;
using testref::activate;
using testref::random_tensor;
using testref::to_double;

// y[i] = sum_j w[i, j] x[j] for a Linear weight [out, in], in double.
std::vector<double> matvec(const Tensor& w, const std::vector<double>& x) {
  const int64_t out = w.dim(0), in = w.dim(1);
  const float* wd = w.data<float>();
  std::vector<double> y(static_cast<size_t>(out), 0.0);
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j) y[i] += static_cast<double>(wd[i * in + j]) * x[j];
  return y;
}

std::vector<double> row(const Tensor& x, int64_t r) {
  const int64_t d = x.dim(-1);
  return std::vector<double>(x.data<float>() + r * d, x.data<float>() + (r + 1) * d);
}

// wo · act(wi · x) for one token.
std::vector<double> dense_ffn(const layers::DenseFeedForward& ffn, Activation activation,
                              const std::vector<double>& x) {
  std::vector<double> h = matvec(ffn.wi.dense, x);
  for (double& v : h) v = activate(activation, v);
  return matvec(ffn.wo.dense, h);
}

layers::DenseFeedForward random_dense(int64_t d_model, int64_t d_ff, std::mt19937& rng) {
  // Scaled like an initialized layer so that activations stay O(1).
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(d_model));
  const float out_scale = 1.0f / std::sqrt(static_cast<float>(d_ff));
  layers::DenseFeedForward ffn;
  ffn.wi.dense = random_tensor({d_ff, d_model}, rng, -2 * in_scale, 2 * in_scale);
  ffn.wo.dense = random_tensor({d_model, d_ff}, rng, -2 * out_scale, 2 * out_scale);
  return ffn;
}

// Two float GEMMs of length d_model and d_ff with O(1) terms: each output's error is ~1e-6 at most for the
// sizes here (the bound (k+4) u sum|ab| is ~5e-6); hidden is O(1). 2e-5 * max(1, max |ref|) leaves margin, yet
// a wrong expert, a missing router scale (p ~ 0.3-0.9) or a dropped row is off by > 1e-2.
constexpr double kRelTolerance = 2e-5;

TEST(FeedForwardTest, DenseMatchesNaivePerToken) {
  std::mt19937 rng(900);
  for (Activation activation : {Activation::ReLU, Activation::Gelu, Activation::GeluNew, Activation::Silu}) {
    for (const auto& [tokens, d_model, d_ff] :
         std::vector<std::array<int64_t, 3>>{{1, 8, 16}, {7, 13, 37}, {20, 64, 96}, {0, 8, 8}}) {
      SCOPED_TRACE(::testing::Message() << ops::activation_name(activation) << " tokens " << tokens << " d_model "
                                        << d_model << " d_ff " << d_ff);
      layers::FeedForward ffn;
      ffn.activation = activation;
      ffn.dense = random_dense(d_model, d_ff, rng);
      const Tensor x = random_tensor({tokens, d_model}, rng);
      Tensor hidden = random_tensor({tokens, d_model}, rng);
      std::vector<double> ref = to_double(hidden);
      for (int64_t t = 0; t < tokens; ++t) {
        const std::vector<double> y = dense_ffn(*ffn.dense, activation, row(x, t));
        for (int64_t i = 0; i < d_model; ++i) ref[t * d_model + i] += y[i];
      }
      layers::add_feed_forward(ffn, x, hidden);
      EXPECT_TRUE(testref::close_to_reference(hidden, ref, kRelTolerance));
    }
  }
}

struct MoeCase {
  int num_experts;
  int64_t tokens, d_model, d_ff;
  bool router_bias;
};

// Expert e's weights: views of the stacked [experts, ...] tensors.
layers::DenseFeedForward expert_of(const layers::MixtureOfExperts& moe, int e) {
  const Tensor& wi = moe.wi.dense;
  const Tensor& wo = moe.wo.dense;
  layers::DenseFeedForward expert;
  expert.wi.dense = wi.narrow(e, 1).reshape({wi.dim(1), wi.dim(2)});
  expert.wo.dense = wo.narrow(e, 1).reshape({wo.dim(1), wo.dim(2)});
  return expert;
}

layers::MixtureOfExperts random_moe(const MoeCase& c, std::mt19937& rng) {
  layers::MixtureOfExperts moe;
  moe.router = random_tensor({c.num_experts, c.d_model}, rng);  // logits spread over several units
  if (c.router_bias) moe.router_bias = random_tensor({c.num_experts}, rng, -1.0f, 1.0f);
  moe.wi.dense = Tensor::empty({c.num_experts, c.d_ff, c.d_model});
  moe.wo.dense = Tensor::empty({c.num_experts, c.d_model, c.d_ff});
  for (int e = 0; e < c.num_experts; ++e) {
    const layers::DenseFeedForward dense = random_dense(c.d_model, c.d_ff, rng);
    layers::DenseFeedForward slot = expert_of(moe, e);
    slot.wi.dense.copy_from(dense.wi.dense);
    slot.wo.dense.copy_from(dense.wo.dense);
  }
  return moe;
}

// Activity flags as the layer takes them: U8 [rows].
Tensor flags(const std::vector<uint8_t>& active) {
  return Tensor::from_vector(active, {static_cast<int64_t>(active.size())});
}

struct NaiveMoe {
  std::vector<double> hidden;
  std::vector<int> expert_of_token;  // -1 for inactive tokens
};

// hidden[t] += p_t * expert_{e_t}(x[t]) with e_t = argmax softmax(router x[t] + bias), p_t its probability.
NaiveMoe naive_moe(const layers::MixtureOfExperts& moe, Activation activation, const Tensor& x, const Tensor& hidden,
                   const std::vector<uint8_t>& active) {
  NaiveMoe out{to_double(hidden), {}};
  const int64_t d_model = x.dim(1);
  const int num_experts = moe.num_experts();
  for (int64_t t = 0; t < x.dim(0); ++t) {
    if (!active.empty() && !active[t]) {
      out.expert_of_token.push_back(-1);
      continue;
    }
    const std::vector<double> xt = row(x, t);
    std::vector<double> logits = matvec(moe.router, xt);
    if (moe.router_bias.defined())
      for (int e = 0; e < num_experts; ++e) logits[e] += moe.router_bias.data<float>()[e];
    const double max = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (double l : logits) sum += std::exp(l - max);
    std::vector<double> p(logits.size());
    for (size_t e = 0; e < p.size(); ++e) p[e] = std::exp(logits[e] - max) / sum;
    const int best = static_cast<int>(std::max_element(p.begin(), p.end()) - p.begin());
    // Guard against test data whose float and double routing could disagree.
    std::vector<double> sorted = p;
    std::sort(sorted.rbegin(), sorted.rend());
    if (num_experts > 1) {
      EXPECT_GT(sorted[0] - sorted[1], 1e-4) << "near tie in the router at token " << t;
    }
    out.expert_of_token.push_back(best);
    const std::vector<double> y = dense_ffn(expert_of(moe, best), activation, xt);
    for (int64_t i = 0; i < d_model; ++i) out.hidden[t * d_model + i] += p[best] * y[i];
  }
  return out;
}

TEST(FeedForwardTest, MixtureOfExpertsMatchesNaivePerToken) {
  std::mt19937 rng(901);
  const std::vector<MoeCase> cases = {
      {3, 30, 16, 24, false}, {3, 1, 8, 8, true},   {8, 96, 24, 40, true},
      {8, 5, 12, 20, false},  {1, 6, 9, 11, false}, {3, 0, 8, 8, false},
  };
  bool saw_idle_expert = false;
  for (const MoeCase& c : cases) {
    for (Activation activation : {Activation::ReLU, Activation::GeluNew}) {
      SCOPED_TRACE(::testing::Message() << c.num_experts << " experts, " << c.tokens << " tokens, d_model " << c.d_model
                                        << ", d_ff " << c.d_ff << ", bias " << c.router_bias << ", "
                                        << ops::activation_name(activation));
      layers::FeedForward ffn;
      ffn.activation = activation;
      ffn.moe = random_moe(c, rng);
      const Tensor x = random_tensor({c.tokens, c.d_model}, rng);
      Tensor hidden = random_tensor({c.tokens, c.d_model}, rng);
      const NaiveMoe ref = naive_moe(*ffn.moe, activation, x, hidden, {});
      const std::set<int> used(ref.expert_of_token.begin(), ref.expert_of_token.end());
      if (c.tokens >= 30) {
        EXPECT_EQ(static_cast<int>(used.size()), c.num_experts) << "every expert exercised";
      }
      if (c.tokens > 0 && static_cast<int>(used.size()) < c.num_experts) saw_idle_expert = true;
      layers::add_feed_forward(ffn, x, hidden);
      EXPECT_TRUE(testref::close_to_reference(hidden, ref.hidden, kRelTolerance));
    }
  }
  EXPECT_TRUE(saw_idle_expert) << "the cases should include experts that receive no row";
}

TEST(FeedForwardTest, MixtureOfExpertsLeavesInactiveRowsUntouched) {
  std::mt19937 rng(902);
  for (int num_experts : {3, 8}) {
    SCOPED_TRACE(::testing::Message() << num_experts << " experts");
    const MoeCase c{num_experts, 25, 16, 32, true};
    layers::FeedForward ffn;
    ffn.activation = Activation::Gelu;
    ffn.moe = random_moe(c, rng);
    const Tensor x = random_tensor({c.tokens, c.d_model}, rng);
    Tensor hidden = random_tensor({c.tokens, c.d_model}, rng);
    const std::vector<float> before = testref::to_vector(hidden);
    std::vector<uint8_t> active(c.tokens);
    std::bernoulli_distribution coin(0.6);
    for (auto& a : active) a = coin(rng) ? 1 : 0;
    active[0] = 0;
    active[1] = 1;
    const NaiveMoe ref = naive_moe(*ffn.moe, ffn.activation, x, hidden, active);
    const Tensor active_flags = flags(active);
    layers::add_feed_forward(ffn, x, hidden, &active_flags);
    EXPECT_TRUE(testref::close_to_reference(hidden, ref.hidden, kRelTolerance));
    for (int64_t t = 0; t < c.tokens; ++t) {
      if (active[t]) continue;
      for (int64_t i = 0; i < c.d_model; ++i)
        ASSERT_EQ(hidden.data<float>()[t * c.d_model + i], before[t * c.d_model + i]) << "inactive row " << t;
    }
    // Active rows did change (so the check above is not vacuous).
    EXPECT_NE(hidden.data<float>()[1 * c.d_model], before[1 * c.d_model]);

    // Every row inactive: nothing changes at all.
    Tensor untouched = Tensor::from_vector(before, {c.tokens, c.d_model});
    const Tensor none_active = flags(std::vector<uint8_t>(c.tokens, 0));
    layers::add_feed_forward(ffn, x, untouched, &none_active);
    EXPECT_TRUE(testref::bitwise_equal(untouched, before));
  }
}

TEST(FeedForwardTest, IdleExpertsAreNeverRead) {
  // Route every token to expert 1 of 3 through a router bias; experts 0 and 2 hold NaN weights, which would
  // poison the result if they were computed or added.
  std::mt19937 rng(903);
  const MoeCase c{3, 9, 10, 14, true};
  layers::FeedForward ffn;
  ffn.activation = Activation::ReLU;
  ffn.moe = random_moe(c, rng);
  ffn.moe->router_bias = Tensor::from_vector(std::vector<float>{-50.0f, 50.0f, -50.0f}, {3});
  for (int e : {0, 2}) {
    layers::DenseFeedForward slot = expert_of(*ffn.moe, e);
    slot.wi.dense.copy_from(testref::filled_tensor({c.d_ff, c.d_model}, NAN));
    slot.wo.dense.copy_from(testref::filled_tensor({c.d_model, c.d_ff}, NAN));
  }
  const Tensor x = random_tensor({c.tokens, c.d_model}, rng);
  Tensor hidden = random_tensor({c.tokens, c.d_model}, rng);
  std::vector<double> ref = to_double(hidden);
  for (int64_t t = 0; t < c.tokens; ++t) {
    const std::vector<double> y = dense_ffn(expert_of(*ffn.moe, 1), ffn.activation, row(x, t));
    for (int64_t i = 0; i < c.d_model; ++i) ref[t * c.d_model + i] += y[i];  // p = 1 - ~e^-100 = 1
  }
  layers::add_feed_forward(ffn, x, hidden);
  EXPECT_TRUE(testref::close_to_reference(hidden, ref, kRelTolerance));
}

// Batch pruning through the layer: a row whose router would pick an expert holding NaN weights is inactive, so
// that expert receives no row and must never be read; the active rows match the reference and the inactive
// rows keep their values bit for bit.
TEST(FeedForwardTest, InactiveRowsCostNoExpertWork) {
  std::mt19937 rng(909);
  for (int num_experts : {3, 5}) {
    SCOPED_TRACE(::testing::Message() << num_experts << " experts");
    const MoeCase c{num_experts, 24, 10, 18, false};
    layers::FeedForward ffn;
    ffn.activation = Activation::Silu;
    ffn.moe = random_moe(c, rng);
    // logit e = 8 x[e]: the expert is the argmax of the first columns of x, so every expert gets rows.
    ffn.moe->router.copy_from(Tensor::zeros({num_experts, c.d_model}));
    for (int e = 0; e < num_experts; ++e) ffn.moe->router.data<float>()[e * c.d_model + e] = 8.0f;
    const Tensor x = random_tensor({c.tokens, c.d_model}, rng);
    Tensor hidden = random_tensor({c.tokens, c.d_model}, rng);
    const std::vector<float> before = testref::to_vector(hidden);
    const int poisoned = num_experts - 1;
    const NaiveMoe unpruned = naive_moe(*ffn.moe, ffn.activation, x, hidden, {});
    std::vector<uint8_t> active(c.tokens);
    for (int64_t t = 0; t < c.tokens; ++t) active[t] = unpruned.expert_of_token[t] == poisoned ? 0 : 1;
    ASSERT_GT(std::count(active.begin(), active.end(), 0), 0) << "test data: no row routed to the poisoned expert";
    ASSERT_GT(std::count(active.begin(), active.end(), 1), 0);
    layers::DenseFeedForward slot = expert_of(*ffn.moe, poisoned);
    slot.wi.dense.copy_from(testref::filled_tensor({c.d_ff, c.d_model}, NAN));
    slot.wo.dense.copy_from(testref::filled_tensor({c.d_model, c.d_ff}, NAN));

    const NaiveMoe ref = naive_moe(*ffn.moe, ffn.activation, x, hidden, active);
    const Tensor active_flags = flags(active);
    layers::add_feed_forward(ffn, x, hidden, &active_flags);
    EXPECT_TRUE(testref::close_to_reference(hidden, ref.hidden, kRelTolerance));
    for (int64_t t = 0; t < c.tokens; ++t) {
      if (active[t]) continue;
      for (int64_t i = 0; i < c.d_model; ++i)
        ASSERT_EQ(hidden.data<float>()[t * c.d_model + i], before[t * c.d_model + i]) << "inactive row " << t;
    }
  }
}

TEST(FeedForwardTest, ActiveFlagsMustBeU8PerRow) {
  std::mt19937 rng(910);
  const MoeCase c{3, 6, 8, 12, true};
  layers::FeedForward ffn;
  ffn.activation = Activation::ReLU;
  ffn.moe = random_moe(c, rng);
  const Tensor x = random_tensor({c.tokens, c.d_model}, rng);
  Tensor hidden = random_tensor({c.tokens, c.d_model}, rng);
  const std::vector<float> before = testref::to_vector(hidden);
  const Tensor too_few = flags(std::vector<uint8_t>(c.tokens - 1, 1));
  EXPECT_THROW(layers::add_feed_forward(ffn, x, hidden, &too_few), std::invalid_argument);
  const Tensor too_many = flags(std::vector<uint8_t>(c.tokens + 1, 1));
  EXPECT_THROW(layers::add_feed_forward(ffn, x, hidden, &too_many), std::invalid_argument);
  const Tensor wrong_dtype = Tensor::from_vector(std::vector<int32_t>(c.tokens, 1), {c.tokens});
  EXPECT_THROW(layers::add_feed_forward(ffn, x, hidden, &wrong_dtype), std::invalid_argument);
  EXPECT_TRUE(testref::bitwise_equal(hidden, before)) << "a rejected call changed hidden";
  // All flags set is the same as no flags.
  const Tensor all = flags(std::vector<uint8_t>(c.tokens, 1));
  Tensor with_flags = Tensor::from_vector(before, {c.tokens, c.d_model});
  layers::add_feed_forward(ffn, x, with_flags, &all);
  layers::add_feed_forward(ffn, x, hidden);
  EXPECT_TRUE(testref::bitwise_equal(with_flags, testref::to_vector(hidden)));
  // No rows at all, with (empty) flags.
  Tensor no_rows = Tensor::empty({0, c.d_model});
  const Tensor no_flags = flags({});
  EXPECT_NO_THROW(layers::add_feed_forward(ffn, Tensor::empty({0, c.d_model}), no_rows, &no_flags));
}

// A layout as host vectors, for the reference; build() makes the op's I32 tensors.
struct HostLayout {
  std::vector<int32_t> query_begin, key_begin, key_length, query_position;

  ops::AttentionLayout build() const {
    return ops::AttentionLayout::from_host(query_begin, key_begin, key_length, query_position, Device::CPU);
  }
};

// Naive multi-head attention through the layer: hidden += o · softmax(q x · K^T + bias) V per sequence and head.
std::vector<double> naive_attention_layer(const layers::MultiHeadAttention& attn, const Tensor& x, const Tensor& keys,
                                          const Tensor& values, const HostLayout& layout,
                                          const ops::AttentionArgs& args, const Tensor& hidden) {
  const int64_t heads = attn.num_heads, head_dim = attn.head_dim, inner = heads * head_dim;
  const int64_t d_model = x.dim(1);
  std::vector<double> out = to_double(hidden);
  const std::vector<double> k = to_double(keys), v = to_double(values);
  const std::vector<double> bias = args.position_bias ? to_double(*args.position_bias) : std::vector<double>{};
  const int64_t bias_width = 2 * static_cast<int64_t>(args.bias_max_offset) + 1;
  for (size_t s = 0; s + 1 < layout.query_begin.size(); ++s) {
    for (int64_t r = layout.query_begin[s]; r < layout.query_begin[s + 1]; ++r) {
      const int64_t position = layout.query_position[s] + (r - layout.query_begin[s]);
      const std::vector<double> q = matvec(attn.q.dense, row(x, r));
      std::vector<double> context(static_cast<size_t>(inner), 0.0);
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<double> scores;
        for (int64_t j = 0; j < layout.key_length[s]; ++j) {
          const int64_t key_row = layout.key_begin[s] + j;
          double score = 0.0;
          for (int64_t d = 0; d < head_dim; ++d) score += q[h * head_dim + d] * k[key_row * inner + h * head_dim + d];
          if (args.position_bias) score += bias[h * bias_width + (j - position) + args.bias_max_offset];
          if (args.causal && j > position) score = -INFINITY;
          scores.push_back(score);
        }
        const double max = *std::max_element(scores.begin(), scores.end());
        double sum = 0.0;
        for (double& sc : scores) sum += (sc = std::exp(sc - max));
        for (int64_t j = 0; j < layout.key_length[s]; ++j)
          for (int64_t d = 0; d < head_dim; ++d)
            context[h * head_dim + d] += scores[j] / sum * v[(layout.key_begin[s] + j) * inner + h * head_dim + d];
      }
      const std::vector<double> y = matvec(attn.o.dense, context);
      for (int64_t i = 0; i < d_model; ++i) out[r * d_model + i] += y[i];
    }
  }
  return out;
}

// The pre-norm form, hidden += FFN(norm(hidden)), is the FFN of the normalized rows: the same bits on the CPU,
// the dense FFN's norm inside its wi projection and the MoE FFN's before its router.
TEST(FeedForwardTest, NormalizingFormEqualsFfnOfNormalizedRows) {
  std::mt19937 rng(907);
  const int64_t tokens = 5, d_model = 16, d_ff = 24;
  const layers::RmsNorm norm{random_tensor({d_model}, rng, 0.5f, 1.5f), 1e-6f};
  for (bool sparse : {false, true}) {
    SCOPED_TRACE(sparse ? "MoE" : "dense");
    layers::FeedForward ffn;
    if (sparse)
      ffn.moe = random_moe({4, tokens, d_model, d_ff, false}, rng);
    else
      ffn.dense = random_dense(d_model, d_ff, rng);
    Tensor hidden = random_tensor({tokens, d_model}, rng, -2.0f, 2.0f);
    Tensor expected = hidden.clone();
    layers::add_feed_forward(ffn, norm(expected), expected);
    layers::add_feed_forward(ffn, norm, hidden);
    EXPECT_TRUE(testref::bitwise_equal(hidden, testref::to_vector(expected)));
  }
}

TEST(FeedForwardTest, AddAttentionMatchesNaive) {
  std::mt19937 rng(904);
  const int64_t d_model = 20;
  for (const auto& [heads, head_dim] : std::vector<std::pair<int, int>>{{1, 8}, {4, 5}, {2, 16}}) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message() << heads << " heads of " << head_dim << ", causal " << causal);
      const int64_t inner = static_cast<int64_t>(heads) * head_dim;
      const float scale_in = 1.0f / std::sqrt(static_cast<float>(d_model));
      const float scale_out = 1.0f / std::sqrt(static_cast<float>(inner));
      layers::MultiHeadAttention attn;
      attn.num_heads = heads;
      attn.head_dim = head_dim;
      attn.q.dense = random_tensor({inner, d_model}, rng, -2 * scale_in, 2 * scale_in);
      attn.k.dense = random_tensor({inner, d_model}, rng, -2 * scale_in, 2 * scale_in);
      attn.v.dense = random_tensor({inner, d_model}, rng, -2 * scale_in, 2 * scale_in);
      attn.o.dense = random_tensor({d_model, inner}, rng, -2 * scale_out, 2 * scale_out);
      // Three packed sequences, self-attention with a position bias.
      HostLayout layout;
      layout.query_begin = {0, 5, 6, 15};
      layout.key_begin = {0, 5, 6};
      layout.key_length = {5, 1, 9};
      layout.query_position = {0, 0, 0};
      Tensor hidden = random_tensor({15, d_model}, rng, -2.0f, 2.0f);
      const layers::RmsNorm norm{random_tensor({d_model}, rng, 0.5f, 1.5f), 1e-6f};
      const Tensor x = norm(hidden);  // the queries' input; the memory here too
      const Tensor keys = ops::linear(x, attn.k.dense);
      const Tensor values = ops::linear(x, attn.v.dense);
      const Tensor bias = random_tensor({heads, 2 * 8 + 1}, rng, -2.0f, 2.0f);
      ops::AttentionArgs args;
      args.num_heads = heads;
      args.head_dim = head_dim;
      args.causal = causal;
      args.position_bias = &bias;
      args.bias_max_offset = 8;
      const std::vector<double> ref = naive_attention_layer(attn, x, keys, values, layout, args, hidden);
      layers::add_attention(attn, norm, keys, values, layout.build(), args, hidden);
      EXPECT_TRUE(testref::close_to_reference(hidden, ref, kRelTolerance));
    }
  }
}

TEST(FeedForwardTest, AddAttentionCrossAttentionToOtherMemory) {
  // Decoder rows attending to packed encoder memory of their source: keys come from a different tensor.
  std::mt19937 rng(905);
  const int64_t d_model = 12, heads = 3, head_dim = 4, inner = 12;
  layers::MultiHeadAttention attn;
  attn.num_heads = heads;
  attn.head_dim = head_dim;
  attn.q.dense = random_tensor({inner, d_model}, rng, -0.5f, 0.5f);
  attn.k.dense = random_tensor({inner, d_model}, rng, -0.5f, 0.5f);
  attn.v.dense = random_tensor({inner, d_model}, rng, -0.5f, 0.5f);
  attn.o.dense = random_tensor({d_model, inner}, rng, -0.5f, 0.5f);
  const Tensor memory = random_tensor({11, d_model}, rng);
  const Tensor keys = ops::linear(memory, attn.k.dense);
  const Tensor values = ops::linear(memory, attn.v.dense);
  HostLayout layout;  // rows 0, 1 -> source 1 (tokens 4..10); row 2 -> source 0 (tokens 0..3)
  layout.query_begin = {0, 1, 2, 3};
  layout.key_begin = {4, 4, 0};
  layout.key_length = {7, 7, 4};
  layout.query_position = {0, 0, 0};
  ops::AttentionArgs args;
  args.num_heads = static_cast<int>(heads);
  args.head_dim = static_cast<int>(head_dim);
  Tensor hidden = random_tensor({3, d_model}, rng);
  const layers::RmsNorm norm{random_tensor({d_model}, rng, 0.5f, 1.5f), 1e-6f};
  const std::vector<double> ref = naive_attention_layer(attn, norm(hidden), keys, values, layout, args, hidden);
  layers::add_attention(attn, norm, keys, values, layout.build(), args, hidden);
  EXPECT_TRUE(testref::close_to_reference(hidden, ref, kRelTolerance));
}

// --quantize-non-experts: a Linear weight held quantized must compute what its dequantized float32 weight computes,
// through every layer entry that takes one (the dense FFN with and without its norm, the attention projections,
// self-attention's q, k and v, which are not stacked when quantized).
layers::Weight quantized_weight(const Shape& shape, std::mt19937& rng) {
  layers::Weight w;
  w.quantized = quantize(random_tensor(shape, rng, -0.3f, 0.3f), 8, 0, "w");
  return w;
}

layers::Weight dequantized(const layers::Weight& w) {
  layers::Weight dense;
  dense.dense = dequantize(w.quantized);
  return dense;
}

TEST(FeedForwardTest, QuantizedLinearWeightsComputeTheirDequantizedWeights) {
  std::mt19937 rng(907);
  const int64_t d_model = 64, d_ff = 96, heads = 2, head_dim = 32, inner = heads * head_dim, rows = 7;
  const layers::RmsNorm norm{random_tensor({d_model}, rng, 0.5f, 1.5f), 1e-6f};
  const Tensor hidden0 = random_tensor({rows, d_model}, rng, -2.0f, 2.0f);

  layers::FeedForward quantized_ffn, dense_ffn;
  quantized_ffn.dense =
      layers::DenseFeedForward{quantized_weight({d_ff, d_model}, rng), quantized_weight({d_model, d_ff}, rng)};
  dense_ffn.dense =
      layers::DenseFeedForward{dequantized(quantized_ffn.dense->wi), dequantized(quantized_ffn.dense->wo)};
  Tensor a = hidden0.clone(), b = hidden0.clone();
  layers::add_feed_forward(quantized_ffn, norm, a);
  layers::add_feed_forward(dense_ffn, norm, b);
  EXPECT_TRUE(testref::close_to_reference(a, to_double(b), kRelTolerance));
  layers::add_feed_forward(quantized_ffn, hidden0, a);
  layers::add_feed_forward(dense_ffn, hidden0, b);
  EXPECT_TRUE(testref::close_to_reference(a, to_double(b), kRelTolerance));

  layers::MultiHeadAttention quantized_attention, dense_attention;
  quantized_attention.q = quantized_weight({inner, d_model}, rng);
  quantized_attention.k = quantized_weight({inner, d_model}, rng);
  quantized_attention.v = quantized_weight({inner, d_model}, rng);
  quantized_attention.o = quantized_weight({d_model, inner}, rng);
  dense_attention.o = dequantized(quantized_attention.o);
  dense_attention.qkv = Tensor::empty({3, inner, d_model});
  const layers::Weight* projections[] = {&quantized_attention.q, &quantized_attention.k, &quantized_attention.v};
  for (int i = 0; i < 3; ++i) layers::stacked(dense_attention.qkv, i).copy_from(dequantize(projections[i]->quantized));
  EXPECT_TRUE(testref::close_to_reference(layers::project_qkv(quantized_attention, norm, hidden0),
                                          to_double(layers::project_qkv(dense_attention, norm, hidden0)),
                                          kRelTolerance));
  const Tensor context = random_tensor({rows, inner}, rng);
  a = hidden0.clone();
  b = hidden0.clone();
  layers::add_attention_projection(quantized_attention, context, a);
  layers::add_attention_projection(dense_attention, context, b);
  EXPECT_TRUE(testref::close_to_reference(a, to_double(b), kRelTolerance));
  EXPECT_TRUE(testref::close_to_reference(layers::linear(hidden0, quantized_attention.k),
                                          to_double(ops::linear(hidden0, dequantize(quantized_attention.k.quantized))),
                                          kRelTolerance));
}

TEST(FeedForwardTest, AddInPlaceAddsAndChecksShapes) {
  std::mt19937 rng(906);
  Tensor hidden = random_tensor({4, 9}, rng);
  const Tensor y = random_tensor({4, 9}, rng);
  std::vector<float> expected = testref::to_vector(hidden);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += y.data<float>()[i];
  ops::add_in_place(hidden, y);
  EXPECT_TRUE(testref::bitwise_equal(hidden, expected));
  EXPECT_THROW(ops::add_in_place(hidden, random_tensor({4, 8}, rng)), std::invalid_argument);
  EXPECT_THROW(ops::add_in_place(hidden, random_tensor({36}, rng)), std::invalid_argument);
}

TEST(FeedForwardTest, EmbedLooksUpRows) {
  std::mt19937 rng(907);
  const Tensor table = random_tensor({10, 7}, rng);
  const std::vector<int32_t> ids = {3, 0, 9, 3};
  const Tensor out = layers::embed(table, layers::token_ids(ids, 10, Device::CPU));
  ASSERT_EQ(out.shape(), (Shape{4, 7}));
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < 7; ++j) EXPECT_EQ(out.data<float>()[i * 7 + j], table.data<float>()[ids[i] * 7 + j]);
  EXPECT_EQ(layers::embed(table, layers::token_ids({}, 10, Device::CPU)).shape(), (Shape{0, 7}));
}

TEST(FeedForwardTest, OutOfRangeTokenIdThrows) {
  EXPECT_THROW(layers::token_ids({1, 10}, 10, Device::CPU), std::out_of_range);
  EXPECT_THROW(layers::token_ids({-1}, 10, Device::CPU), std::out_of_range);
  EXPECT_THROW(layers::token_ids({2, 3, 1000000}, 10, Device::CPU), std::out_of_range);
  EXPECT_NO_THROW(layers::token_ids({0, 9}, 10, Device::CPU));
  // Ids that did not go through token_ids are still caught by the CPU gather.
  std::mt19937 rng(908);
  const Tensor table = random_tensor({10, 7}, rng);
  EXPECT_THROW(layers::embed(table, Tensor::from_vector(std::vector<int32_t>{10}, {1})), std::out_of_range);
}

}  // namespace
}  // namespace elephant
