#include "ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/kv_cache.h"
#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::random_tensor;
using testref::to_double;

// A layout as host vectors: what the reference reads, and what ops::AttentionLayout::from_host builds the op's
// I32 tensors from.
struct HostLayout {
  std::vector<int32_t> query_begin;  // size: sequences + 1
  std::vector<int32_t> key_begin;
  std::vector<int32_t> key_length;
  std::vector<int32_t> query_position;

  ops::AttentionLayout build() const {
    return ops::AttentionLayout::from_host(query_begin, key_begin, key_length, query_position, Device::CPU);
  }
};

// Naive attention, one sequence and one head at a time: softmax(q·K^T + bias) V in double, reading the keys
// of sequence s at rows key_begin[s] + j.
std::vector<double> reference_attention(const Tensor& queries, const Tensor& keys, const Tensor& values,
                                        const HostLayout& layout, const ops::AttentionArgs& args) {
  const int64_t heads = args.num_heads, head_dim = args.head_dim, inner = heads * head_dim;
  const std::vector<double> q = to_double(queries), k = to_double(keys), v = to_double(values);
  const std::vector<double> bias = args.position_bias ? to_double(*args.position_bias) : std::vector<double>{};
  const int64_t bias_width = 2 * static_cast<int64_t>(args.bias_max_offset) + 1;
  std::vector<double> out(q.size(), 0.0);
  for (size_t s = 0; s < layout.key_begin.size(); ++s) {
    for (int64_t row = layout.query_begin[s]; row < layout.query_begin[s + 1]; ++row) {
      const int64_t position = layout.query_position[s] + (row - layout.query_begin[s]);
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<double> scores;
        std::vector<int64_t> key_rows;
        for (int64_t j = 0; j < layout.key_length[s]; ++j) {
          if (args.causal && j > position) continue;  // key j sits at position j
          const int64_t key_row = layout.key_begin[s] + j;
          double score = 0.0;
          for (int64_t d = 0; d < head_dim; ++d)
            score += q[row * inner + h * head_dim + d] * k[key_row * inner + h * head_dim + d];
          if (args.position_bias) {
            const int64_t column = j - position + args.bias_max_offset;
            EXPECT_TRUE(column >= 0 && column < bias_width) << "test bug: bias table too narrow";
            score += bias[h * bias_width + column];
          }
          scores.push_back(score);
          key_rows.push_back(key_row);
        }
        const double max = *std::max_element(scores.begin(), scores.end());
        double sum = 0.0;
        for (double& score : scores) sum += (score = std::exp(score - max));
        for (size_t j = 0; j < scores.size(); ++j)
          for (int64_t d = 0; d < head_dim; ++d)
            out[row * inner + h * head_dim + d] += scores[j] / sum * v[key_rows[j] * inner + h * head_dim + d];
      }
    }
  }
  return out;
}

// Each output is a convex combination of values in [-1, 1]. Scores (|q·k| <= head_dim, here < ~10) carry a
// float error of ~head_dim * u * |q||k|, which perturbs the probabilities by the same relative amount; the
// weighted sum adds ~keys * u. 1e-5 (absolute, as max(1, max |ref|) = 1) bounds that with a 10x margin for
// the sizes used, while a missing bias, a wrong key row or mask moves outputs by ~1e-2 or more.
::testing::AssertionResult check(const Tensor& out, const std::vector<double>& ref) {
  return testref::close_to_reference(out, ref, 1e-5);
}

::testing::AssertionResult matches_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const HostLayout& layout, const ops::AttentionArgs& args) {
  Tensor out = Tensor::empty(q.shape());
  ops::attention(q, k, v, layout.build(), args, out);
  return check(out, reference_attention(q, k, v, layout, args));
}

struct Heads {
  int num_heads, head_dim;
};
const std::vector<Heads> kHeads = {{1, 1}, {3, 8}, {4, 7}, {2, 64}};

// Encoder-style self-attention over several packed sequences of different lengths, all at position 0.
HostLayout packed_layout(const std::vector<int32_t>& lengths) {
  HostLayout layout;
  layout.query_begin.push_back(0);
  for (int32_t length : lengths) {
    layout.key_begin.push_back(layout.query_begin.back());
    layout.key_length.push_back(length);
    layout.query_position.push_back(0);
    layout.query_begin.push_back(layout.query_begin.back() + length);
  }
  return layout;
}

TEST(AttentionTest, PackedSequencesWithoutBias) {
  std::mt19937 rng(500);
  const std::vector<int32_t> lengths = {1, 5, 13, 7};
  const HostLayout layout = packed_layout(lengths);
  const int64_t tokens = layout.query_begin.back();
  for (const Heads& h : kHeads) {
    SCOPED_TRACE(::testing::Message() << h.num_heads << " heads of " << h.head_dim);
    const int64_t inner = static_cast<int64_t>(h.num_heads) * h.head_dim;
    const Tensor q = random_tensor({tokens, inner}, rng), k = random_tensor({tokens, inner}, rng),
                 v = random_tensor({tokens, inner}, rng);
    ops::AttentionArgs args;
    args.num_heads = h.num_heads;
    args.head_dim = h.head_dim;
    EXPECT_TRUE(matches_reference(q, k, v, layout, args));
  }
}

TEST(AttentionTest, PackedSequencesWithBidirectionalPositionBias) {
  std::mt19937 rng(501);
  const std::vector<int32_t> lengths = {6, 1, 11, 3};
  const HostLayout layout = packed_layout(lengths);
  const int64_t tokens = layout.query_begin.back();
  for (const Heads& h : kHeads) {
    SCOPED_TRACE(::testing::Message() << h.num_heads << " heads of " << h.head_dim);
    const int64_t inner = static_cast<int64_t>(h.num_heads) * h.head_dim;
    const Tensor q = random_tensor({tokens, inner}, rng), k = random_tensor({tokens, inner}, rng),
                 v = random_tensor({tokens, inner}, rng);
    for (int max_offset : {10, 14}) {  // exactly the longest sequence - 1, and wider
      const Tensor bias = random_tensor({h.num_heads, 2 * max_offset + 1}, rng, -3.0f, 3.0f);
      ops::AttentionArgs args;
      args.num_heads = h.num_heads;
      args.head_dim = h.head_dim;
      args.position_bias = &bias;
      args.bias_max_offset = max_offset;
      EXPECT_TRUE(matches_reference(q, k, v, layout, args)) << "max_offset " << max_offset;
    }
  }
}

TEST(AttentionTest, CausalMaskingWithAndWithoutBias) {
  std::mt19937 rng(502);
  const HostLayout layout = packed_layout({4, 9, 1, 16});
  const int64_t tokens = layout.query_begin.back();
  for (const Heads& h : kHeads) {
    SCOPED_TRACE(::testing::Message() << h.num_heads << " heads of " << h.head_dim);
    const int64_t inner = static_cast<int64_t>(h.num_heads) * h.head_dim;
    const Tensor q = random_tensor({tokens, inner}, rng), k = random_tensor({tokens, inner}, rng),
                 v = random_tensor({tokens, inner}, rng);
    const Tensor bias = random_tensor({h.num_heads, 2 * 15 + 1}, rng, -2.0f, 2.0f);
    for (bool with_bias : {false, true}) {
      ops::AttentionArgs args;
      args.num_heads = h.num_heads;
      args.head_dim = h.head_dim;
      args.causal = true;
      if (with_bias) {
        args.position_bias = &bias;
        args.bias_max_offset = 15;
      }
      Tensor out = Tensor::empty({tokens, inner});
      ops::attention(q, k, v, layout.build(), args, out);
      const std::vector<double> ref = reference_attention(q, k, v, layout, args);
      EXPECT_TRUE(check(out, ref)) << "bias " << with_bias;
      // The mask matters: the unmasked result differs.
      args.causal = false;
      EXPECT_FALSE(check(out, reference_attention(q, k, v, layout, args)));
    }
  }
}

// Decoder step: one query per row at position t (different per row) against the keys 0..t, which live in a
// [rows, capacity, width] cache: key_begin[r] = r * capacity. Unwritten slots hold NaN and must not be read.
TEST(AttentionTest, DecoderStepAgainstStridedCache) {
  std::mt19937 rng(503);
  const std::vector<int64_t> steps = {0, 3, 7, 1, 7};  // position of each row's query
  const int64_t rows = static_cast<int64_t>(steps.size());
  const int64_t capacity = 8;
  for (const Heads& h : kHeads) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message() << h.num_heads << " heads of " << h.head_dim << " causal " << causal);
      const int64_t inner = static_cast<int64_t>(h.num_heads) * h.head_dim;
      Tensor key_cache = random_tensor({rows, capacity, inner}, rng);
      Tensor value_cache = random_tensor({rows, capacity, inner}, rng);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t slot = steps[r] + 1; slot < capacity; ++slot)
          for (int64_t i = 0; i < inner; ++i) {
            key_cache.data<float>()[(r * capacity + slot) * inner + i] = std::numeric_limits<float>::quiet_NaN();
            value_cache.data<float>()[(r * capacity + slot) * inner + i] = std::numeric_limits<float>::quiet_NaN();
          }
      const Tensor q = random_tensor({rows, inner}, rng);
      HostLayout layout;
      for (int64_t r = 0; r < rows; ++r) {
        layout.query_begin.push_back(static_cast<int32_t>(r));
        layout.key_begin.push_back(static_cast<int32_t>(r * capacity));
        layout.key_length.push_back(static_cast<int32_t>(steps[r] + 1));
        layout.query_position.push_back(static_cast<int32_t>(steps[r]));
      }
      layout.query_begin.push_back(static_cast<int32_t>(rows));
      const int max_offset = 7;  // the largest position, as the decoder builds it
      const Tensor bias = random_tensor({h.num_heads, 2 * max_offset + 1}, rng, -3.0f, 3.0f);
      ops::AttentionArgs args;
      args.num_heads = h.num_heads;
      args.head_dim = h.head_dim;
      args.causal = causal;
      args.position_bias = &bias;
      args.bias_max_offset = max_offset;
      const Tensor keys = key_cache.reshape({-1, inner});
      const Tensor values = value_cache.reshape({-1, inner});
      Tensor out = Tensor::empty({rows, inner});
      ops::attention(q, keys, values, layout.build(), args, out);
      EXPECT_TRUE(check(out, reference_attention(q, keys, values, layout, args)));
    }
  }
}

// A chunk of several queries that starts at position p > 0 (incremental prefill), causal: query j of the chunk
// is at position p + j and sees keys 0..p + j.
TEST(AttentionTest, QueriesAtAnOffsetPositionWithCausalMask) {
  std::mt19937 rng(504);
  const Heads h{3, 5};
  const int64_t inner = 15;
  // Sequence 0: 4 queries at positions 3..6 over 7 keys; sequence 1: 2 queries at 9..10 over 11 keys stored
  // after a gap; sequence 2: 1 query at position 0 over 1 key.
  HostLayout layout;
  layout.query_begin = {0, 4, 6, 7};
  layout.key_begin = {0, 12, 30};
  layout.key_length = {7, 11, 1};
  layout.query_position = {3, 9, 0};
  const Tensor q = random_tensor({7, inner}, rng), k = random_tensor({31, inner}, rng),
               v = random_tensor({31, inner}, rng);
  const Tensor bias = random_tensor({h.num_heads, 2 * 10 + 1}, rng, -2.0f, 2.0f);
  for (bool causal : {true, false}) {
    ops::AttentionArgs args;
    args.num_heads = h.num_heads;
    args.head_dim = h.head_dim;
    args.causal = causal;
    args.position_bias = &bias;
    args.bias_max_offset = 10;
    EXPECT_TRUE(matches_reference(q, k, v, layout, args)) << "causal " << causal;
  }
}

// Cross-attention: queries of one decoder row each against the packed encoder states of their source. Two rows
// (beams) share a source, sources are visited out of order, and there are more keys than queries.
TEST(AttentionTest, CrossAttentionWithSharedAndReorderedKeys) {
  std::mt19937 rng(505);
  const std::vector<int32_t> source_offsets = {0, 5, 6, 19};
  const std::vector<int32_t> row_source = {2, 2, 0, 1, 0};
  for (const Heads& h : kHeads) {
    SCOPED_TRACE(::testing::Message() << h.num_heads << " heads of " << h.head_dim);
    const int64_t inner = static_cast<int64_t>(h.num_heads) * h.head_dim;
    const int64_t rows = static_cast<int64_t>(row_source.size());
    HostLayout layout;
    for (int64_t r = 0; r < rows; ++r) {
      layout.query_begin.push_back(static_cast<int32_t>(r));
      layout.key_begin.push_back(source_offsets[row_source[r]]);
      layout.key_length.push_back(source_offsets[row_source[r] + 1] - source_offsets[row_source[r]]);
      layout.query_position.push_back(0);
    }
    layout.query_begin.push_back(static_cast<int32_t>(rows));
    const Tensor q = random_tensor({rows, inner}, rng), k = random_tensor({19, inner}, rng),
                 v = random_tensor({19, inner}, rng);
    ops::AttentionArgs args;
    args.num_heads = h.num_heads;
    args.head_dim = h.head_dim;
    EXPECT_TRUE(matches_reference(q, k, v, layout, args));
  }
}

// Large scores (|q·k| up to ~500): the softmax must subtract the maximum.
TEST(AttentionTest, LargeScoresStayFinite) {
  std::mt19937 rng(506);
  const HostLayout layout = packed_layout({3, 8});
  const Heads h{2, 16};
  const Tensor q = random_tensor({11, 32}, rng, -6.0f, 6.0f), k = random_tensor({11, 32}, rng, -6.0f, 6.0f),
               v = random_tensor({11, 32}, rng);
  ops::AttentionArgs args;
  args.num_heads = h.num_heads;
  args.head_dim = h.head_dim;
  Tensor out = Tensor::empty({11, 32});
  ops::attention(q, k, v, layout.build(), args, out);
  // Scores up to ~|q||k| ~ 300 carry float errors of ~1e-4, which move near-tied probabilities by as much.
  EXPECT_TRUE(testref::close_to_reference(out, reference_attention(q, k, v, layout, args), 1e-3));
}

TEST(AttentionTest, NoSequencesOrEmptyQueryRanges) {
  std::mt19937 rng(507);
  ops::AttentionArgs args;
  args.num_heads = 2;
  args.head_dim = 4;
  HostLayout none;
  none.query_begin = {0};
  Tensor empty_out = Tensor::empty({0, 8});
  EXPECT_NO_THROW(ops::attention(Tensor::empty({0, 8}), Tensor::empty({0, 8}), Tensor::empty({0, 8}), none.build(),
                                 args, empty_out));
  // A sequence without queries next to one with queries.
  HostLayout layout;
  layout.query_begin = {0, 0, 3};
  layout.key_begin = {0, 2};
  layout.key_length = {2, 4};
  layout.query_position = {0, 0};
  const Tensor q = random_tensor({3, 8}, rng), k = random_tensor({6, 8}, rng), v = random_tensor({6, 8}, rng);
  EXPECT_TRUE(matches_reference(q, k, v, layout, args));
}

TEST(AttentionTest, InvalidLayoutsThrow) {
  std::mt19937 rng(508);
  ops::AttentionArgs args;
  args.num_heads = 2;
  args.head_dim = 4;
  const Tensor q = random_tensor({3, 8}, rng), k = random_tensor({5, 8}, rng), v = random_tensor({5, 8}, rng);
  Tensor out = Tensor::empty({3, 8});
  HostLayout good;
  good.query_begin = {0, 3};
  good.key_begin = {0};
  good.key_length = {5};
  good.query_position = {0};
  EXPECT_NO_THROW(ops::attention(q, k, v, good.build(), args, out));

  HostLayout keys_past_end = good;
  keys_past_end.key_begin = {1};
  EXPECT_THROW(ops::attention(q, k, v, keys_past_end.build(), args, out), std::invalid_argument);
  HostLayout negative_begin = good;
  negative_begin.key_begin = {-1};
  negative_begin.key_length = {2};
  EXPECT_THROW(ops::attention(q, k, v, negative_begin.build(), args, out), std::invalid_argument);
  HostLayout queries_past_end = good;
  queries_past_end.query_begin = {0, 4};
  EXPECT_THROW(ops::attention(q, k, v, queries_past_end.build(), args, out), std::invalid_argument);
  // Arrays of inconsistent lengths: from_host refuses to build them, and attention refuses such tensors.
  HostLayout missing_entries = good;
  missing_entries.query_position = {};
  EXPECT_THROW(ops::attention(q, k, v, missing_entries.build(), args, out), std::invalid_argument);
  ops::AttentionLayout missing_tensor = good.build();
  missing_tensor.query_position = Tensor::from_vector(std::vector<int32_t>{}, {0});
  EXPECT_THROW(ops::attention(q, k, v, missing_tensor, args, out), std::invalid_argument);
  HostLayout short_query_begin = good;
  short_query_begin.query_begin = {3};
  EXPECT_THROW(ops::attention(q, k, v, short_query_begin.build(), args, out), std::invalid_argument);
  ops::AttentionLayout short_tensor = good.build();
  short_tensor.query_begin = Tensor::from_vector(std::vector<int32_t>{3}, {1});
  EXPECT_THROW(ops::attention(q, k, v, short_tensor, args, out), std::invalid_argument);

  ops::AttentionArgs wrong_heads = args;
  wrong_heads.head_dim = 3;
  EXPECT_THROW(ops::attention(q, k, v, good.build(), wrong_heads, out), std::invalid_argument);
  Tensor wrong_out = Tensor::empty({2, 8});
  EXPECT_THROW(ops::attention(q, k, v, good.build(), args, wrong_out), std::invalid_argument);
  EXPECT_THROW(ops::attention(q, k, random_tensor({4, 8}, rng), good.build(), args, out), std::invalid_argument);
}

TEST(AttentionTest, LayoutFromHostBuildsI32ArraysAndBounds) {
  const ops::AttentionLayout layout =
      ops::AttentionLayout::from_host({0, 4, 4, 6}, {0, 12, 30}, {7, 11, 1}, {3, 0, 9}, Device::CPU);
  EXPECT_EQ(layout.sequences(), 3);
  for (const Tensor* array : {&layout.query_begin, &layout.key_begin, &layout.key_length, &layout.query_position}) {
    EXPECT_EQ(array->dtype(), DType::I32);
    EXPECT_EQ(array->device(), Device::CPU);
  }
  EXPECT_EQ(layout.query_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 4, 4, 6}));
  EXPECT_EQ(layout.key_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 12, 30}));
  EXPECT_EQ(layout.key_length.to_vector<int32_t>(), (std::vector<int32_t>{7, 11, 1}));
  EXPECT_EQ(layout.query_position.to_vector<int32_t>(), (std::vector<int32_t>{3, 0, 9}));
  EXPECT_EQ(layout.max_queries, 4);  // the longest query run, an empty one in the middle
  EXPECT_EQ(layout.max_keys, 11);

  const ops::AttentionLayout none = ops::AttentionLayout::from_host({0}, {}, {}, {}, Device::CPU);
  EXPECT_EQ(none.sequences(), 0);
  EXPECT_EQ(none.max_queries, 0);
  EXPECT_EQ(none.max_keys, 0);
  EXPECT_EQ(ops::AttentionLayout().sequences(), 0);

  EXPECT_THROW(ops::AttentionLayout::from_host({0, 1}, {0, 0}, {1, 1}, {0, 0}, Device::CPU), std::invalid_argument);
  EXPECT_THROW(ops::AttentionLayout::from_host({0, 1, 2}, {0, 0}, {1}, {0, 0}, Device::CPU), std::invalid_argument);
  EXPECT_THROW(ops::AttentionLayout::from_host({0, 1, 2}, {0, 0}, {1, 1}, {0}, Device::CPU), std::invalid_argument);
}

// Rebuilt into the same storage, a layout keeps its arrays' addresses while it does not grow.
TEST(AttentionTest, LayoutFromHostReusesItsStorage) {
  ops::AttentionLayout storage;
  const ops::AttentionLayout first =
      ops::AttentionLayout::from_host({0, 1, 2, 3}, {0, 5, 9}, {5, 4, 2}, {4, 3, 1}, Device::CPU, storage);
  const ops::AttentionLayout fewer = ops::AttentionLayout::from_host({0, 1}, {5}, {4}, {3}, Device::CPU, storage);
  EXPECT_EQ(fewer.query_begin.raw(), first.query_begin.raw());
  EXPECT_EQ(fewer.key_length.raw(), first.key_length.raw());
  EXPECT_EQ(fewer.sequences(), 1);
  EXPECT_EQ(fewer.key_begin.to_vector<int32_t>(), (std::vector<int32_t>{5}));
  EXPECT_EQ(fewer.max_keys, 4);
  const ops::AttentionLayout more =
      ops::AttentionLayout::from_host({0, 1, 2, 3, 4}, {0, 1, 2, 3}, {1, 1, 1, 1}, {0, 0, 0, 0}, Device::CPU, storage);
  EXPECT_EQ(more.sequences(), 4);
  EXPECT_EQ(more.query_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

// The host bounds size the work: a layout whose runs exceed them, or whose arrays are not I32, is rejected.
TEST(AttentionTest, LayoutBoundsAndArrayTypesAreChecked) {
  std::mt19937 rng(509);
  ops::AttentionArgs args;
  args.num_heads = 2;
  args.head_dim = 4;
  const Tensor q = random_tensor({3, 8}, rng), k = random_tensor({5, 8}, rng), v = random_tensor({5, 8}, rng);
  Tensor out = Tensor::empty({3, 8});
  HostLayout good;
  good.query_begin = {0, 1, 3};
  good.key_begin = {0, 2};
  good.key_length = {2, 3};
  good.query_position = {0, 0};
  EXPECT_TRUE(matches_reference(q, k, v, good, args));

  ops::AttentionLayout few_keys = good.build();
  few_keys.max_keys = 2;
  EXPECT_THROW(ops::attention(q, k, v, few_keys, args, out), std::invalid_argument);
  ops::AttentionLayout few_queries = good.build();
  few_queries.max_queries = 1;
  EXPECT_THROW(ops::attention(q, k, v, few_queries, args, out), std::invalid_argument);
  ops::AttentionLayout wide = good.build();
  wide.key_length = Tensor::from_vector(std::vector<int64_t>{2, 3}, {2});
  EXPECT_THROW(ops::attention(q, k, v, wide, args, out), std::invalid_argument);
  ops::AttentionLayout undefined = good.build();
  undefined.query_position = Tensor();
  EXPECT_THROW(ops::attention(q, k, v, undefined, args, out), std::invalid_argument);
  // A query run that goes backwards.
  HostLayout backwards = good;
  backwards.query_begin = {0, 2, 1};
  EXPECT_THROW(ops::attention(q, k, v, backwards.build(), args, out), std::invalid_argument);
}

// ---- attention_with_append ----

// The copies attention_with_append documents, done by hand: query row r of sequence s to key row key_begin[s] +
// query_position[s] + r - query_begin[s].
void append_rows(const Tensor& rows, const HostLayout& layout, Tensor& cache) {
  const int64_t inner = rows.dim(1);
  for (size_t s = 0; s < layout.key_begin.size(); ++s)
    for (int64_t r = layout.query_begin[s]; r < layout.query_begin[s + 1]; ++r)
      std::copy_n(
          rows.data<float>() + r * inner, inner,
          cache.data<float>() + (layout.key_begin[s] + layout.query_position[s] + r - layout.query_begin[s]) * inner);
}

// A decode step as the decoder ran it before the op existed: write_cache_step for keys and values, then attention
// over the [rows, capacity, width] caches. The fused op gives the same bits in the caches and the output; the
// slots it must write start as NaN, so that one it skipped shows in the output.
TEST(AttentionTest, AppendEqualsWriteCacheStepThenAttention) {
  std::mt19937 rng(510);
  const std::vector<int32_t> steps = {0, 3, 7, 1, 7};
  const int64_t rows = static_cast<int64_t>(steps.size());
  const int64_t capacity = 8;
  for (const Heads& h : kHeads) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message() << h.num_heads << " heads of " << h.head_dim << " causal " << causal);
      const int64_t inner = static_cast<int64_t>(h.num_heads) * h.head_dim;
      HostLayout layout;
      Tensor key_cache = random_tensor({rows, capacity, inner}, rng);
      Tensor value_cache = random_tensor({rows, capacity, inner}, rng);
      for (int64_t r = 0; r < rows; ++r) {
        layout.query_begin.push_back(static_cast<int32_t>(r));
        layout.key_begin.push_back(static_cast<int32_t>(r * capacity));
        layout.key_length.push_back(steps[r] + 1);
        layout.query_position.push_back(steps[r]);
        for (Tensor* cache : {&key_cache, &value_cache})
          std::fill(cache->data<float>() + (r * capacity + steps[r]) * inner,
                    cache->data<float>() + (r + 1) * capacity * inner, std::numeric_limits<float>::quiet_NaN());
      }
      layout.query_begin.push_back(static_cast<int32_t>(rows));
      const Tensor q = random_tensor({rows, inner}, rng), new_k = random_tensor({rows, inner}, rng),
                   new_v = random_tensor({rows, inner}, rng);
      const Tensor bias = random_tensor({h.num_heads, 2 * 7 + 1}, rng, -3.0f, 3.0f);
      ops::AttentionArgs args;
      args.num_heads = h.num_heads;
      args.head_dim = h.head_dim;
      args.causal = causal;
      args.position_bias = &bias;
      args.bias_max_offset = 7;
      const ops::AttentionLayout built = layout.build();

      Tensor key_steps = key_cache.clone(), value_steps = value_cache.clone();
      ops::write_cache_step(new_k, built.query_position, key_steps);
      ops::write_cache_step(new_v, built.query_position, value_steps);
      Tensor expected = Tensor::empty({rows, inner});
      ops::attention(q, key_steps.reshape({-1, inner}), value_steps.reshape({-1, inner}), built, args, expected);

      Tensor fused_keys = key_cache.reshape({-1, inner}), fused_values = value_cache.reshape({-1, inner});
      Tensor out = Tensor::empty({rows, inner});
      ops::attention_with_append(q, new_k, new_v, fused_keys, fused_values, built, args, out);
      EXPECT_TRUE(testref::bitwise_equal(out, testref::to_vector(expected)));
      EXPECT_TRUE(testref::bitwise_equal(fused_keys, testref::to_vector(key_steps)));
      EXPECT_TRUE(testref::bitwise_equal(fused_values, testref::to_vector(value_steps)));
      EXPECT_TRUE(check(out, reference_attention(q, fused_keys, fused_values, layout, args)));
    }
  }
}

// Layouts beyond decode steps: a chunk of three queries appends three keys, a sequence without a query appends
// nothing, and key rows outside every sequence (the gaps) stay as they were.
TEST(AttentionTest, AppendWritesEachQueryRowAtItsPosition) {
  std::mt19937 rng(511);
  HostLayout layout;
  layout.query_begin = {0, 3, 3, 4};
  layout.key_begin = {1, 9, 14};
  layout.key_length = {6, 4, 1};
  layout.query_position = {2, 1, 0};
  for (const Heads& h : kHeads) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message() << h.num_heads << " heads of " << h.head_dim << " causal " << causal);
      const int64_t inner = static_cast<int64_t>(h.num_heads) * h.head_dim;
      const Tensor q = random_tensor({4, inner}, rng), new_k = random_tensor({4, inner}, rng),
                   new_v = random_tensor({4, inner}, rng);
      const Tensor keys = random_tensor({16, inner}, rng), values = random_tensor({16, inner}, rng);
      ops::AttentionArgs args;
      args.num_heads = h.num_heads;
      args.head_dim = h.head_dim;
      args.causal = causal;
      Tensor expected_keys = keys.clone(), expected_values = values.clone();
      append_rows(new_k, layout, expected_keys);
      append_rows(new_v, layout, expected_values);
      Tensor expected = Tensor::empty({4, inner});
      ops::attention(q, expected_keys, expected_values, layout.build(), args, expected);

      Tensor key_cache = keys.clone(), value_cache = values.clone();
      Tensor out = Tensor::empty({4, inner});
      ops::attention_with_append(q, new_k, new_v, key_cache, value_cache, layout.build(), args, out);
      EXPECT_TRUE(testref::bitwise_equal(out, testref::to_vector(expected)));
      EXPECT_TRUE(testref::bitwise_equal(key_cache, testref::to_vector(expected_keys)));
      EXPECT_TRUE(testref::bitwise_equal(value_cache, testref::to_vector(expected_values)));
    }
  }
}

// The message of the std::invalid_argument that f throws; empty when it throws none.
template <typename F>
std::string invalid_argument_message(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(AttentionTest, AppendRejectsBadArguments) {
  std::mt19937 rng(512);
  ops::AttentionArgs args;
  args.num_heads = 2;
  args.head_dim = 4;
  HostLayout good;
  good.query_begin = {0, 1, 2};
  good.key_begin = {0, 4};
  good.key_length = {2, 3};
  good.query_position = {1, 2};
  const Tensor q = random_tensor({2, 8}, rng), new_k = random_tensor({2, 8}, rng), new_v = random_tensor({2, 8}, rng);
  Tensor key_cache = random_tensor({8, 8}, rng), value_cache = random_tensor({8, 8}, rng);
  Tensor out = Tensor::empty({2, 8});
  const auto message = [&](const Tensor& k, const Tensor& v, Tensor& keys, Tensor& values, const HostLayout& layout) {
    return invalid_argument_message(
        [&] { ops::attention_with_append(q, k, v, keys, values, layout.build(), args, out); });
  };
  const auto expect_names = [](const std::string& what, const std::string& name) {
    EXPECT_NE(what.find(name), std::string::npos) << "'" << what << "' does not name " << name;
  };
  EXPECT_EQ(message(new_k, new_v, key_cache, value_cache, good), "");
  const std::vector<float> written = testref::to_vector(key_cache);

  expect_names(message(random_tensor({3, 8}, rng), new_v, key_cache, value_cache, good), "new_keys");
  expect_names(message(new_k, random_tensor({2, 4}, rng), key_cache, value_cache, good), "new_values");
  expect_names(message(new_k, new_v.to_dtype(DType::F16), key_cache, value_cache, good), "new_values");
  Tensor narrow_keys = random_tensor({8, 4}, rng);
  expect_names(message(new_k, new_v, narrow_keys, value_cache, good), "key_cache");
  Tensor short_values = random_tensor({7, 8}, rng);
  expect_names(message(new_k, new_v, key_cache, short_values, good), "value_cache");
  // The slot of sequence 1's query is past its keys, before them, or its keys are past the caches' rows.
  HostLayout past_keys = good;
  past_keys.query_position = {1, 3};
  expect_names(message(new_k, new_v, key_cache, value_cache, past_keys), "key_cache");
  HostLayout negative = good;
  negative.query_position = {-1, 2};
  expect_names(message(new_k, new_v, key_cache, value_cache, negative), "key_cache");
  HostLayout past_cache = good;
  past_cache.key_begin = {0, 6};
  expect_names(message(new_k, new_v, key_cache, value_cache, past_cache), "key_cache");
  EXPECT_TRUE(testref::bitwise_equal(key_cache, written)) << "a rejected call wrote the cache";
}

}  // namespace
}  // namespace elephant
