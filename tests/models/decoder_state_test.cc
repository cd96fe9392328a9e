#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "models/encoder_decoder.h"
#include "ops/device_helpers.h"
#include "ops/reference_helpers.h"

namespace elephant {
namespace {

using testref::random_tensor;
using testref::to_vector;

// A snapshot of everything select_rows must preserve, taken before the call, to compare against after it.
struct Snapshot {
  std::vector<int64_t> source_offsets;
  std::vector<int32_t> row_source;
  int steps_done = 0;
  struct Layer {
    int64_t slots;  // the self caches' slot count
    std::vector<float> self_keys, self_values, cross_keys, cross_values;
  };
  std::vector<Layer> layers;
};

Snapshot snapshot(DecoderState& state) {
  Snapshot s{state.source_offsets(), state.row_source(), state.steps_done(), {}};
  for (DecoderState::Layer& layer : state.layers())
    s.layers.push_back({layer.self_keys.dim(1), to_vector(layer.self_keys), to_vector(layer.self_values),
                        to_vector(layer.cross_keys), to_vector(layer.cross_values)});
  return s;
}

constexpr int64_t kWidth = 6;  // heads * head_dim

constexpr int kMaxSteps = 40;

// 3 sources of 3, 5 and 2 tokens, `rows_per_source` beams each, `layers` layers of random caches with `slots`
// slots; the cache slots at or past steps_done are NaN (never written by the decoder).
DecoderState make_state(int rows_per_source, int slots, int steps_done, int layers, std::mt19937& rng,
                        std::vector<int64_t> offsets = {0, 3, 8, 10}) {
  const int64_t capacity = slots;
  DecoderState state(offsets, rows_per_source, kMaxSteps);
  const int64_t rows = state.rows();
  for (int l = 0; l < layers; ++l) {
    DecoderState::Layer layer;
    layer.self_keys = random_tensor({rows, capacity, kWidth}, rng);
    layer.self_values = random_tensor({rows, capacity, kWidth}, rng);
    for (Tensor* cache : {&layer.self_keys, &layer.self_values})
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t slot = steps_done; slot < capacity; ++slot)
          for (int64_t i = 0; i < kWidth; ++i)
            cache->data<float>()[(r * capacity + slot) * kWidth + i] = std::numeric_limits<float>::quiet_NaN();
    layer.cross_keys = random_tensor({offsets.back(), kWidth}, rng);
    layer.cross_values = random_tensor({offsets.back(), kWidth}, rng);
    state.layers().push_back(layer);
  }
  for (int s = 0; s < steps_done; ++s) state.advance();
  return state;
}

// Checks the state after select_rows(rows) against the snapshot taken before it.
void expect_selected(DecoderState& state, const Snapshot& before, const std::vector<int32_t>& rows) {
  ASSERT_EQ(state.rows(), static_cast<int64_t>(rows.size()));
  ASSERT_EQ(state.row_source().size(), rows.size());
  EXPECT_EQ(state.steps_done(), before.steps_done);
  const int filled = before.steps_done;
  const auto& offsets = state.source_offsets();

  // Sources still referenced, and nothing else, remain.
  std::set<int32_t> referenced;
  for (int32_t r : rows) referenced.insert(before.row_source[r]);
  ASSERT_EQ(offsets.size(), referenced.size() + 1);
  EXPECT_EQ(offsets.front(), 0);
  int64_t expected_tokens = 0;
  for (int32_t s : referenced) expected_tokens += before.source_offsets[s + 1] - before.source_offsets[s];
  EXPECT_EQ(offsets.back(), expected_tokens);
  std::set<int32_t> new_sources(state.row_source().begin(), state.row_source().end());
  EXPECT_EQ(new_sources.size(), referenced.size()) << "every kept source is referenced by a row";

  for (size_t l = 0; l < before.layers.size(); ++l) {
    DecoderState::Layer& layer = state.layers()[l];
    const Snapshot::Layer& old = before.layers[l];
    // The selected caches keep room for the steps already done (their slot count may differ).
    const int64_t capacity = layer.self_keys.dim(1);
    ASSERT_EQ(layer.self_keys.rank(), 3);
    ASSERT_GE(capacity, filled);
    ASSERT_EQ(layer.self_keys.shape(), (Shape{static_cast<int64_t>(rows.size()), capacity, kWidth}));
    ASSERT_EQ(layer.self_values.shape(), layer.self_keys.shape());
    ASSERT_EQ(layer.cross_keys.shape(), (Shape{offsets.back(), kWidth}));
    ASSERT_EQ(layer.cross_values.shape(), layer.cross_keys.shape());
    for (size_t i = 0; i < rows.size(); ++i) {
      // Self caches: row i is old row rows[i], in the filled slots.
      for (int64_t slot = 0; slot < filled; ++slot)
        for (int64_t j = 0; j < kWidth; ++j) {
          const int64_t now = (static_cast<int64_t>(i) * capacity + slot) * kWidth + j;
          const int64_t then = (static_cast<int64_t>(rows[i]) * old.slots + slot) * kWidth + j;
          ASSERT_EQ(layer.self_keys.data<float>()[now], old.self_keys[then]) << "layer " << l << " row " << i;
          ASSERT_EQ(layer.self_values.data<float>()[now], old.self_values[then]) << "layer " << l << " row " << i;
        }
      // Cross memory: the source that row i now points to holds the tokens of its old source.
      const int32_t old_source = before.row_source[rows[i]];
      const int32_t new_source = state.row_source()[i];
      ASSERT_GE(new_source, 0);
      ASSERT_LT(static_cast<size_t>(new_source) + 1, offsets.size());
      const int64_t length = before.source_offsets[old_source + 1] - before.source_offsets[old_source];
      ASSERT_EQ(offsets[new_source + 1] - offsets[new_source], length) << "row " << i;
      for (int64_t t = 0; t < length; ++t)
        for (int64_t j = 0; j < kWidth; ++j) {
          const int64_t now = (offsets[new_source] + t) * kWidth + j;
          const int64_t then = (before.source_offsets[old_source] + t) * kWidth + j;
          ASSERT_EQ(layer.cross_keys.data<float>()[now], old.cross_keys[then]) << "layer " << l << " row " << i;
          ASSERT_EQ(layer.cross_values.data<float>()[now], old.cross_values[then]) << "layer " << l << " row " << i;
        }
    }
  }
}

TEST(DecoderStateTest, ConstructorAssignsBeamsToSources) {
  DecoderState state({0, 3, 8, 10}, 2, 6);
  EXPECT_EQ(state.rows(), 6);
  EXPECT_EQ(state.row_source(), (std::vector<int32_t>{0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(state.max_steps(), 6);
  EXPECT_EQ(state.steps_done(), 0);
  state.advance();
  state.advance();
  EXPECT_EQ(state.steps_done(), 2);
}

TEST(DecoderStateTest, ReordersBeamsKeepingAllSources) {
  std::mt19937 rng(1100);
  DecoderState state = make_state(2, 6, 3, 2, rng);
  const Snapshot before = snapshot(state);
  const std::vector<int32_t> rows = {1, 1, 3, 2, 4, 5};  // beam reordering within each source, all kept
  state.select_rows(rows);
  expect_selected(state, before, rows);
  EXPECT_EQ(state.source_offsets(), before.source_offsets);
  EXPECT_EQ(state.row_source(), (std::vector<int32_t>{0, 0, 1, 1, 2, 2}));
  // The cross memory is unchanged.
  EXPECT_TRUE(testref::bitwise_equal(state.layers()[1].cross_keys, before.layers[1].cross_keys));
}

TEST(DecoderStateTest, DropsUnreferencedSourcesAndCompactsMemory) {
  std::mt19937 rng(1101);
  // Drop the first, the middle, the last, two of them, and reorder rows across sources.
  const std::vector<std::vector<int32_t>> selections = {
      {3, 2, 3, 5},  // source 0 dropped
      {0, 5, 4, 1},  // source 1 dropped
      {2, 1},        // source 2 dropped
      {4, 5, 5},     // only source 2 left
      {5, 0},        // sources visited out of order: 2 then 0
      {2},           // a single row
  };
  for (const auto& rows : selections) {
    SCOPED_TRACE(::testing::PrintToString(rows));
    DecoderState state = make_state(2, 6, 3, 2, rng);
    const Snapshot before = snapshot(state);
    state.select_rows(rows);
    expect_selected(state, before, rows);
  }
  // One worked example in full.
  DecoderState state = make_state(2, 6, 3, 1, rng);
  const Snapshot before = snapshot(state);
  state.select_rows({5, 0});
  EXPECT_EQ(state.source_offsets(), (std::vector<int64_t>{0, 3, 5}));  // source 0 (3 tokens), source 2 (2)
  EXPECT_EQ(state.row_source(), (std::vector<int32_t>{1, 0}));
  std::vector<float> expected(before.layers[0].cross_values.begin(),
                              before.layers[0].cross_values.begin() + 3 * kWidth);
  expected.insert(expected.end(), before.layers[0].cross_values.begin() + 8 * kWidth,
                  before.layers[0].cross_values.end());
  EXPECT_TRUE(testref::bitwise_equal(state.layers()[0].cross_values, expected));
}

TEST(DecoderStateTest, SuccessiveSelectionsCompose) {
  std::mt19937 rng(1102);
  DecoderState state = make_state(3, 5, 2, 2, rng, {0, 4, 5, 9, 16});  // 4 sources, 12 rows
  const Snapshot original = snapshot(state);
  const std::vector<int32_t> first = {11, 0, 4, 9, 10, 1, 2};  // sources 3, 0, 1, 3, 3, 0, 0: drops 2
  state.select_rows(first);
  expect_selected(state, original, first);
  state.advance();  // the decoder writes slot 2 of every row before the next selection
  for (DecoderState::Layer& layer : state.layers())
    for (Tensor* cache : {&layer.self_keys, &layer.self_values})
      for (int64_t r = 0; r < state.rows(); ++r)
        for (int64_t j = 0; j < kWidth; ++j)
          cache->data<float>()[(r * cache->dim(1) + 2) * kWidth + j] = static_cast<float>(100 * r + j);
  const Snapshot middle = snapshot(state);
  const std::vector<int32_t> second = {6, 2, 5, 6};  // original rows 2, 4, 1, 2: sources 0 and 1, drops 3
  state.select_rows(second);
  expect_selected(state, middle, second);
  // Composed: the new rows come from original rows first[second[i]].
  for (size_t i = 0; i < second.size(); ++i) {
    const int32_t origin = first[second[i]];
    const int32_t old_source = original.row_source[origin];
    const int32_t new_source = state.row_source()[i];
    EXPECT_EQ(state.source_offsets()[new_source + 1] - state.source_offsets()[new_source],
              original.source_offsets[old_source + 1] - original.source_offsets[old_source]);
    EXPECT_EQ(state.layers()[0].self_keys.data<float>()[(i * state.layers()[0].self_keys.dim(1) + 1) * kWidth],
              original.layers[0].self_keys[(origin * original.layers[0].slots + 1) * kWidth]);
    EXPECT_EQ(state.layers()[1].cross_keys.data<float>()[state.source_offsets()[new_source] * kWidth + 3],
              original.layers[1].cross_keys[original.source_offsets[old_source] * kWidth + 3]);
  }
}

TEST(DecoderStateTest, SelectBeforeAnyStepAndSelectNothing) {
  std::mt19937 rng(1103);
  DecoderState fresh = make_state(2, 4, 0, 1, rng);
  const Snapshot before = snapshot(fresh);
  fresh.select_rows({4, 4});
  expect_selected(fresh, before, {4, 4});

  DecoderState state = make_state(2, 4, 2, 2, rng);
  state.select_rows({});
  EXPECT_EQ(state.rows(), 0);
  EXPECT_EQ(state.source_offsets(), (std::vector<int64_t>{0}));
  for (DecoderState::Layer& layer : state.layers()) {
    EXPECT_EQ(layer.cross_keys.dim(0), 0);
    EXPECT_EQ(layer.self_keys.dim(0), 0);
  }
}

TEST(DecoderStateTest, WithoutLayers) {
  DecoderState state({0, 2, 5}, 3, 4);
  state.select_rows({5, 3});
  EXPECT_EQ(state.row_source(), (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(state.source_offsets(), (std::vector<int64_t>{0, 3}));
}

// Drives the state like the decoder does (reserve a slot, write it for every row, advance), with beam
// reorderings and row drops in between, against a plain model of what every row's cache should hold.
TEST(DecoderStateTest, ReserveNextStepGrowsGeometricallyAndKeepsWrittenSlots) {
  std::mt19937 rng(1105);
  const int layers = 2;
  DecoderState state({0, 3, 8, 10}, 2, kMaxSteps);
  for (int l = 0; l < layers; ++l) {
    DecoderState::Layer layer;
    layer.self_keys = Tensor::empty({state.rows(), 0, kWidth});  // as start_decoding makes them
    layer.self_values = Tensor::empty({state.rows(), 0, kWidth});
    layer.cross_keys = random_tensor({10, kWidth}, rng);
    layer.cross_values = random_tensor({10, kWidth}, rng);
    state.layers().push_back(layer);
  }
  // model[l][row][step * kWidth + j]: keys; values hold the negated keys.
  std::vector<std::vector<std::vector<float>>> model(layers, std::vector<std::vector<float>>(state.rows()));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  int64_t previous_slots = 0;
  int reallocations = 0;
  for (int step = 0; step < kMaxSteps; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    state.reserve_next_step();
    const int64_t slots = state.layers()[0].self_keys.dim(1);
    ASSERT_GT(slots, step);
    ASSERT_LE(slots, kMaxSteps);
    if (slots != previous_slots) {
      ++reallocations;
      EXPECT_GE(slots, std::min<int64_t>(kMaxSteps, 2 * previous_slots)) << "growth must be geometric";
      previous_slots = slots;
    }
    for (int l = 0; l < layers; ++l) {
      DecoderState::Layer& layer = state.layers()[l];
      ASSERT_EQ(layer.self_keys.shape(), (Shape{state.rows(), slots, kWidth}));
      ASSERT_EQ(layer.self_values.shape(), layer.self_keys.shape());
      for (int64_t r = 0; r < state.rows(); ++r) {
        for (int64_t i = 0; i < step * kWidth; ++i) {
          ASSERT_EQ(layer.self_keys.data<float>()[r * slots * kWidth + i], model[l][r][i])
              << "layer " << l << " row " << r;
          ASSERT_EQ(layer.self_values.data<float>()[r * slots * kWidth + i], -model[l][r][i]);
        }
        for (int64_t j = 0; j < kWidth; ++j) {  // this step's key and value
          const float value = dist(rng);
          layer.self_keys.data<float>()[(r * slots + step) * kWidth + j] = value;
          layer.self_values.data<float>()[(r * slots + step) * kWidth + j] = -value;
          model[l][r].push_back(value);
        }
      }
    }
    state.advance();
    if (step == 6 || step == 20 || step == 33) {  // reorder beams, dropping a row or a source now and then
      std::vector<int32_t> rows;
      for (int64_t r = state.rows() - 1; r >= 0; --r) rows.push_back(static_cast<int32_t>(r));
      if (step == 20) rows.pop_back();
      if (step == 33) rows = {rows[0], rows[0], rows[1]};
      state.select_rows(rows);
      for (auto& layer_model : model) {
        std::vector<std::vector<float>> selected;
        for (int32_t r : rows) selected.push_back(layer_model[r]);
        layer_model = selected;
      }
    }
  }
  EXPECT_EQ(state.steps_done(), kMaxSteps);
  EXPECT_LE(reallocations, 6) << "a cache grown one slot at a time would be reallocated every step";
  EXPECT_THROW(state.reserve_next_step(), std::logic_error);
}

TEST(DecoderStateTest, ReserveNextStepKeepsCachesThatHaveRoom) {
  std::mt19937 rng(1106);
  DecoderState state = make_state(2, 6, 3, 2, rng);
  const Snapshot before = snapshot(state);
  state.reserve_next_step();
  for (size_t l = 0; l < before.layers.size(); ++l) {
    EXPECT_EQ(state.layers()[l].self_keys.dim(1), 6);
    // Slots 0..2 are written; 3 is free (NaN here, never read): nothing changes.
    EXPECT_TRUE(testref::bitwise_equal(state.layers()[l].self_keys, before.layers[l].self_keys));
    EXPECT_TRUE(testref::bitwise_equal(state.layers()[l].self_values, before.layers[l].self_values));
  }
}

TEST(DecoderStateTest, OutOfRangeRowThrowsAndLeavesTheStateAlone) {
  std::mt19937 rng(1104);
  DecoderState state = make_state(2, 6, 3, 2, rng);
  const Snapshot before = snapshot(state);
  EXPECT_THROW(state.select_rows({0, 6}), std::out_of_range);
  EXPECT_THROW(state.select_rows({-1}), std::out_of_range);
  EXPECT_THROW(state.select_rows({1, 2, 100}), std::out_of_range);
  EXPECT_EQ(state.rows(), 6);
  EXPECT_EQ(state.row_source(), before.row_source);
  EXPECT_EQ(state.source_offsets(), before.source_offsets);
  EXPECT_TRUE(testref::bitwise_equal(state.layers()[0].cross_keys, before.layers[0].cross_keys));
  EXPECT_TRUE(testref::bitwise_equal(state.layers()[1].self_values, before.layers[1].self_values));
}

void expect_layout_arrays_on(const ops::AttentionLayout& layout, Device device) {
  for (const Tensor* array : {&layout.query_begin, &layout.key_begin, &layout.key_length, &layout.query_position}) {
    ASSERT_TRUE(array->defined());
    EXPECT_EQ(array->dtype(), DType::I32);
    EXPECT_EQ(array->device(), device);
  }
}

// The self-attention args of the test layers: 2 heads of 3.
ops::AttentionArgs self_args() {
  ops::AttentionArgs args;
  args.num_heads = 2;
  args.head_dim = 3;
  return args;
}

// attend_self writes each row's step into slot steps_done and attends over the row's slots up to it; the layouts
// point every row at its own slots and at its source's encoder states.
TEST(DecoderStateTest, AttendSelfAndLayoutsFollowRowsAndSources) {
  std::mt19937 rng(1107);
  DecoderState state = make_state(2, 4, 1, 1, rng);  // 6 rows, 4 slots, 1 step done
  const Tensor queries = random_tensor({state.rows(), kWidth}, rng);
  const Tensor keys = random_tensor({state.rows(), kWidth}, rng);
  const Tensor values = random_tensor({state.rows(), kWidth}, rng);
  DecoderState::Layer& layer = state.layers()[0];
  Tensor out = Tensor::empty({state.rows(), kWidth});
  state.attend_self(layer, queries, keys, values, self_args(), out);
  for (int64_t r = 0; r < state.rows(); ++r)
    for (int64_t j = 0; j < kWidth; ++j) {
      EXPECT_EQ(layer.self_keys.data<float>()[(r * 4 + 1) * kWidth + j], keys.data<float>()[r * kWidth + j]);
      EXPECT_EQ(layer.self_values.data<float>()[(r * 4 + 1) * kWidth + j], values.data<float>()[r * kWidth + j]);
    }
  // The attention saw the written slots 0 and 1 (unwritten ones are NaN).
  Tensor expected = Tensor::empty({state.rows(), kWidth});
  ops::attention(queries, layer.self_keys.reshape({-1, kWidth}), layer.self_values.reshape({-1, kWidth}),
                 state.self_attention_layout(), self_args(), expected);
  EXPECT_TRUE(testref::bitwise_equal(out, to_vector(expected)));
  EXPECT_THROW(state.attend_self(layer, queries, random_tensor({2, kWidth}, rng), values, self_args(), out),
               std::invalid_argument);
  EXPECT_THROW(state.attend_self(layer, random_tensor({6, 4}, rng), keys, values, self_args(), out),
               std::invalid_argument);
  DecoderState full = make_state(2, 4, 4, 1, rng);  // every slot written: no room for this step
  EXPECT_THROW(full.attend_self(full.layers()[0], queries, keys, values, self_args(), out), std::invalid_argument);

  const ops::AttentionLayout self = state.self_attention_layout();
  expect_layout_arrays_on(self, Device::CPU);
  EXPECT_EQ(self.query_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(self.key_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 4, 8, 12, 16, 20}));
  EXPECT_EQ(self.key_length.to_vector<int32_t>(), (std::vector<int32_t>(6, 2)));
  EXPECT_EQ(self.query_position.to_vector<int32_t>(), (std::vector<int32_t>(6, 1)));
  EXPECT_EQ(self.max_queries, 1);
  EXPECT_EQ(self.max_keys, 4);  // the slots: a bound for every later step of this layout too
  const ops::AttentionLayout cross = state.cross_attention_layout();
  expect_layout_arrays_on(cross, Device::CPU);
  EXPECT_EQ(cross.query_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(cross.key_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 0, 3, 3, 8, 8}));
  EXPECT_EQ(cross.key_length.to_vector<int32_t>(), (std::vector<int32_t>{3, 3, 5, 5, 2, 2}));
  EXPECT_EQ(cross.query_position.to_vector<int32_t>(), (std::vector<int32_t>(6, 0)));
  EXPECT_EQ(cross.max_queries, 1);
  EXPECT_EQ(cross.max_keys, 5);
}

// The self layout is kept and moved forward by advance() (on the layout's device), rebuilt when rows are selected
// or the caches grow; the next step's keys go to the next slot.
TEST(DecoderStateTest, AdvanceMovesTheKeptLayoutAndStoresFollow) {
  std::mt19937 rng(1108);
  DecoderState state = make_state(2, 4, 1, 1, rng);  // 6 rows, 4 slots, 1 step done
  const Tensor before_begin = state.self_attention_layout().key_begin;
  state.advance();
  const ops::AttentionLayout& self = state.self_attention_layout();
  EXPECT_EQ(self.key_begin.raw(), before_begin.raw()) << "advance() must not rebuild the layout";
  EXPECT_EQ(self.key_length.to_vector<int32_t>(), (std::vector<int32_t>(6, 3)));
  EXPECT_EQ(self.query_position.to_vector<int32_t>(), (std::vector<int32_t>(6, 2)));
  const Tensor keys = random_tensor({state.rows(), kWidth}, rng);
  DecoderState::Layer& layer = state.layers()[0];
  Tensor out = Tensor::empty({state.rows(), kWidth});
  state.attend_self(layer, keys, keys, keys, self_args(), out);
  for (int64_t r = 0; r < state.rows(); ++r)
    EXPECT_EQ(layer.self_keys.data<float>()[(r * 4 + 2) * kWidth], keys.data<float>()[r * kWidth]) << r;

  state.select_rows({5, 0});
  const ops::AttentionLayout& after = state.self_attention_layout();
  EXPECT_EQ(after.key_begin.to_vector<int32_t>(), (std::vector<int32_t>{0, 4}));
  EXPECT_EQ(after.key_length.to_vector<int32_t>(), (std::vector<int32_t>(2, 3)));
  EXPECT_EQ(state.cross_attention_layout().key_length.to_vector<int32_t>(), (std::vector<int32_t>{2, 3}));
}

// A CUDA graph replays a step on fixed addresses: reordering beams and dropping finished sources must move data
// within the same buffers (while the caches do not grow).
TEST(DecoderStateTest, SelectRowsKeepsEveryBufferInPlace) {
  std::mt19937 rng(1109);
  DecoderState state = make_state(2, 8, 3, 2, rng);  // 6 rows, 8 slots, 3 steps done, 2 layers
  const auto addresses = [&] {
    std::vector<const void*> a;
    for (DecoderState::Layer& layer : state.layers())
      for (const Tensor* t : {&layer.self_keys, &layer.self_values, &layer.cross_keys, &layer.cross_values})
        a.push_back(t->raw());
    for (const ops::AttentionLayout* l : {&state.self_attention_layout(), &state.cross_attention_layout()})
      for (const Tensor* t : {&l->query_begin, &l->key_begin, &l->key_length, &l->query_position})
        a.push_back(t->raw());
    return a;
  };
  const std::vector<const void*> before = addresses();
  const Snapshot old = snapshot(state);
  state.select_rows({1, 1, 4, 5});  // source 0 reorders its beams, source 1 is dropped, source 2 keeps both
  EXPECT_EQ(addresses(), before);
  EXPECT_EQ(state.layers()[0].self_keys.dim(0), 4);
  EXPECT_EQ(state.layers()[0].cross_keys.dim(0), 5);  // 3 + 2 tokens
  for (int64_t slot = 0; slot < 3; ++slot)
    for (int64_t j = 0; j < kWidth; ++j) {
      // New row 2 is old row 4 (source 2's first beam).
      EXPECT_EQ(state.layers()[1].self_values.data<float>()[(2 * 8 + slot) * kWidth + j],
                old.layers[1].self_values[(4 * 8 + slot) * kWidth + j]);
    }
}

// reorder_rows moves only the written slots of each row's self caches, within their buffers; sources, memory,
// layouts and activity flags stay.
TEST(DecoderStateTest, ReorderRowsMovesWrittenSlotsInPlace) {
  std::mt19937 rng(1110);
  DecoderState state = make_state(2, 6, 3, 2, rng);  // 6 rows, 6 slots (3 written), 2 layers
  state.set_active_rows({1, 1, 0, 0, 1, 1});
  const Snapshot before = snapshot(state);
  const void* keys_address = state.layers()[1].self_keys.raw();
  const void* layout_address = state.self_attention_layout().key_begin.raw();
  const std::vector<int32_t> parents = {1, 1, 3, 2, 4, 4};
  state.reorder_rows(Tensor::from_vector(parents, {6}));
  EXPECT_EQ(state.row_source(), before.row_source);
  EXPECT_EQ(state.source_offsets(), before.source_offsets);
  EXPECT_EQ(state.steps_done(), before.steps_done);
  EXPECT_EQ(state.layers()[1].self_keys.raw(), keys_address);
  EXPECT_EQ(state.self_attention_layout().key_begin.raw(), layout_address);
  ASSERT_NE(state.active_rows(), nullptr);
  EXPECT_EQ(state.active_rows()->to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1, 0, 0, 1, 1}));
  for (size_t l = 0; l < before.layers.size(); ++l) {
    DecoderState::Layer& layer = state.layers()[l];
    const Snapshot::Layer& old = before.layers[l];
    ASSERT_EQ(layer.self_keys.shape(), (Shape{6, 6, kWidth}));
    EXPECT_TRUE(testref::bitwise_equal(layer.cross_keys, old.cross_keys));
    EXPECT_TRUE(testref::bitwise_equal(layer.cross_values, old.cross_values));
    std::vector<float> keys = old.self_keys, values = old.self_values;  // unwritten slots (NaN) do not move
    for (int64_t r = 0; r < 6; ++r)
      for (int64_t i = 0; i < 3 * kWidth; ++i) {
        keys[r * 6 * kWidth + i] = old.self_keys[parents[r] * 6 * kWidth + i];
        values[r * 6 * kWidth + i] = old.self_values[parents[r] * 6 * kWidth + i];
      }
    EXPECT_TRUE(testref::bitwise_equal(layer.self_keys, keys)) << "layer " << l;
    EXPECT_TRUE(testref::bitwise_equal(layer.self_values, values)) << "layer " << l;
  }
}

// reorder_rows(parents) on `state`: row r's first `steps_done` slots of every cache become row parents[r]'s, bit for
// bit; the other slots stay.
void expect_reorder_moves_written_slots(DecoderState& state, const std::vector<int32_t>& parents, int64_t steps_done) {
  const Snapshot before = snapshot(state);
  state.reorder_rows(Tensor::from_vector(parents, {static_cast<int64_t>(parents.size())}));
  for (size_t l = 0; l < before.layers.size(); ++l) {
    const DecoderState::Layer& layer = state.layers()[l];
    const Snapshot::Layer& old = before.layers[l];
    const int64_t row = layer.self_keys.dim(1) * kWidth;
    std::vector<float> keys = old.self_keys, values = old.self_values;
    for (int64_t r = 0; r < static_cast<int64_t>(parents.size()); ++r)
      for (int64_t i = 0; i < steps_done * kWidth; ++i) {
        keys[r * row + i] = old.self_keys[parents[r] * row + i];
        values[r * row + i] = old.self_values[parents[r] * row + i];
      }
    EXPECT_TRUE(testref::bitwise_equal(layer.self_keys, keys)) << "layer " << l;
    EXPECT_TRUE(testref::bitwise_equal(layer.self_values, values)) << "layer " << l;
  }
}

// A search keeps each source's rows together, as many for every source: reorder_rows then moves all caches in place
// at once (ops::reorder_cache_groups). Where sources have unequal row counts it gathers each cache: the same result.
TEST(DecoderStateTest, ReorderRowsOfUnequalSources) {
  std::mt19937 rng(1112);
  DecoderState state = make_state(2, 6, 3, 2, rng);  // 3 sources of 2 rows
  EXPECT_EQ(state.source_group_rows(), 2);
  state.select_rows({0, 1, 2, 4});  // source 0 keeps 2 rows, sources 1 and 2 one each
  EXPECT_EQ(state.source_group_rows(), 0);
  expect_reorder_moves_written_slots(state, {1, 1, 2, 3}, 3);
}

// More beams a source than ops::reorder_cache_groups takes: reorder_rows gathers each cache, with the same result.
TEST(DecoderStateTest, ReorderRowsOfWideGroups) {
  std::mt19937 rng(1113);
  DecoderState state = make_state(9, 6, 3, 2, rng);  // 3 sources of 9 rows
  ASSERT_EQ(state.source_group_rows(), 9);
  const int64_t rows = state.rows();
  std::vector<int32_t> parents(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) parents[static_cast<size_t>(r)] = static_cast<int32_t>(r - r % 9 + (r * 5) % 9);
  expect_reorder_moves_written_slots(state, parents, 3);
}

TEST(DecoderStateTest, ReorderRowsRejectsRowsOfOtherSourcesAndBadTensors) {
  std::mt19937 rng(1111);
  DecoderState state = make_state(2, 6, 3, 1, rng);
  const Snapshot before = snapshot(state);
  const auto reorder = [&](const std::vector<int32_t>& parents) {
    state.reorder_rows(Tensor::from_vector(parents, {static_cast<int64_t>(parents.size())}));
  };
  EXPECT_THROW(reorder({2, 1, 2, 3, 4, 5}), std::out_of_range);  // row 0 (source 0) would continue source 1
  EXPECT_THROW(reorder({0, 1, 2, 3, 4, 6}), std::out_of_range);
  EXPECT_THROW(reorder({-1, 1, 2, 3, 4, 5}), std::out_of_range);
  EXPECT_THROW(reorder({0, 1, 2, 3, 4}), std::invalid_argument);
  EXPECT_THROW(state.reorder_rows(Tensor::zeros({6})), std::invalid_argument);  // F32
  EXPECT_THROW(state.reorder_rows(Tensor()), std::invalid_argument);
  EXPECT_TRUE(testref::bitwise_equal(state.layers()[0].self_keys, before.layers[0].self_keys));
  // Before any step there is nothing to move.
  DecoderState fresh = make_state(2, 4, 0, 1, rng);
  const Snapshot fresh_before = snapshot(fresh);
  fresh.reorder_rows(Tensor::from_vector(std::vector<int32_t>{1, 0, 2, 2, 5, 5}, {6}));
  EXPECT_TRUE(testref::bitwise_equal(fresh.layers()[0].self_keys, fresh_before.layers[0].self_keys));
}

TEST(CudaDecoderStateTest, ReorderRowsMatchesTheCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(1112);
  DecoderState cpu = make_state(3, 8, 5, 2, rng);  // 9 rows, 8 slots (5 written), 2 layers
  DecoderState gpu({0, 3, 8, 10}, 3, kMaxSteps, Device::CUDA);
  for (DecoderState::Layer& layer : cpu.layers())
    gpu.layers().push_back({layer.self_keys.to(Device::CUDA), layer.self_values.to(Device::CUDA),
                            layer.cross_keys.to(Device::CUDA), layer.cross_values.to(Device::CUDA)});
  for (int s = 0; s < 5; ++s) gpu.advance();
  const std::vector<int32_t> parents = {2, 0, 0, 5, 5, 4, 8, 6, 7};
  cpu.reorder_rows(Tensor::from_vector(parents, {9}));
  gpu.reorder_rows(Tensor::from_vector(parents, {9}, Device::CUDA));
  for (size_t l = 0; l < cpu.layers().size(); ++l) {
    EXPECT_TRUE(
        testref::bitwise_equal(gpu.layers()[l].self_keys.to(Device::CPU), to_vector(cpu.layers()[l].self_keys)));
    EXPECT_TRUE(
        testref::bitwise_equal(gpu.layers()[l].self_values.to(Device::CPU), to_vector(cpu.layers()[l].self_values)));
  }
}

}  // namespace
}  // namespace elephant
