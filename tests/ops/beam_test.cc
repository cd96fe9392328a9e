#include "ops/beam.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "ops/device_helpers.h"
#include "ops/softmax.h"
#include "ops/topk.h"

namespace elephant {
namespace {

// ---- The reference: beam search's former host bookkeeping, one hypothesis with its whole history at a time. ----

constexpr float kExcluded = -1.0e9f;

struct Hypothesis {
  float score = kExcluded;  // finished: sum(log p) / length^penalty; running: sum(log p)
  std::vector<int32_t> tokens;
  bool finished = false;  // a real finished hypothesis, not a placeholder slot
};

struct SourceBeams {
  std::vector<Hypothesis> running;   // beam_size, best first
  std::vector<Hypothesis> finished;  // beam_size slots, best first
  bool can_improve = true;
};

struct Candidate {
  float score;
  int32_t beam;
  int32_t token;
};

std::vector<int32_t> advance_source(SourceBeams& beams, const std::vector<Candidate>& candidates, int generated,
                                    const ops::BeamOptions& options) {
  const int beam_size = options.beam_size;
  const int length = generated + 1;
  const bool last_step = length >= options.max_length;
  const auto hits_stop = [&](const Candidate& c) { return last_step || c.token == options.eos; };
  if (beams.can_improve) {
    const float penalty = static_cast<float>(std::pow(static_cast<double>(length), options.length_penalty));
    for (int i = 0; i < beam_size && i < static_cast<int>(candidates.size()); ++i) {
      const Candidate& c = candidates[i];
      if (!hits_stop(c)) continue;
      Hypothesis h{c.score / penalty, beams.running[c.beam].tokens, true};
      h.tokens.push_back(c.token);
      const auto position =
          std::upper_bound(beams.finished.begin(), beams.finished.end(), h,
                           [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
      if (position == beams.finished.end()) continue;
      beams.finished.insert(position, std::move(h));
      beams.finished.pop_back();
    }
  }
  std::vector<Hypothesis> running;
  std::vector<int32_t> parents;
  for (const Candidate& c : candidates) {
    if (static_cast<int>(running.size()) == beam_size) break;
    if (hits_stop(c) && !last_step) continue;
    Hypothesis h{hits_stop(c) ? c.score + kExcluded : c.score, beams.running[c.beam].tokens, false};
    h.tokens.push_back(c.token);
    running.push_back(std::move(h));
    parents.push_back(c.beam);
  }
  beams.running = std::move(running);
  if (beams.can_improve) {
    const float best_possible =
        beams.running.front().score / static_cast<float>(std::pow(static_cast<double>(length), options.length_penalty));
    const bool all_finished =
        std::all_of(beams.finished.begin(), beams.finished.end(), [](const Hypothesis& h) { return h.finished; });
    beams.can_improve = !all_finished || best_possible > beams.finished.back().score;
  }
  return parents;
}

std::vector<SourceBeams> reference_start(int64_t sources, int beam_size) {
  std::vector<SourceBeams> beams(static_cast<size_t>(sources));
  for (SourceBeams& b : beams) {
    b.running.resize(beam_size);
    b.running[0].score = 0.0f;
    b.finished.resize(beam_size);
  }
  return beams;
}

// ---- Helpers ----

struct Scenario {
  int64_t sources;
  int beam_size;
  int vocab;
  int max_length;
  int min_length;
  float length_penalty;
};

ops::BeamOptions options_of(const Scenario& s) {
  ops::BeamOptions o;
  o.beam_size = s.beam_size;
  o.vocab = s.vocab;
  o.eos = 1;
  o.max_length = s.max_length;
  o.length_penalty = s.length_penalty;
  return o;
}

// One step's candidates, as beam search makes them: each row's running score plus log-probs of a random
// distribution whose logits come from a few levels (so that equal scores are common), EOS impossible before
// min_length, then the best 2 x beam_size of each source's beams x vocab.
void make_candidates(const std::vector<float>& running, const Scenario& s, int step, std::mt19937& rng, Tensor& values,
                     Tensor& indices) {
  const int64_t rows = s.sources * s.beam_size;
  std::uniform_int_distribution<int> level(-8, 4);
  std::vector<float> logits(static_cast<size_t>(rows * s.vocab));
  for (float& l : logits) l = 0.5f * static_cast<float>(level(rng));
  Tensor scores = Tensor::empty({rows, s.vocab});
  ops::log_softmax(Tensor::from_vector(logits, {rows, s.vocab}), scores);
  if (step < s.min_length) ops::fill_column(scores, 1, -INFINITY);
  ops::add_row_values(scores, Tensor::from_vector(running, {rows}));
  const int count = std::min(2 * s.beam_size, s.beam_size * s.vocab);
  values = Tensor::empty({s.sources, count});
  indices = Tensor::empty({s.sources, count}, DType::I32);
  ops::topk(scores.reshape({s.sources, int64_t{s.beam_size} * s.vocab}), count, values, indices);
}

std::vector<Candidate> candidates_of(const Tensor& values, const Tensor& indices, int64_t source, int vocab) {
  std::vector<Candidate> out;
  const int64_t count = values.dim(1);
  for (int64_t j = 0; j < count; ++j) {
    const int32_t flat = indices.data<int32_t>()[source * count + j];
    if (flat < 0) break;
    out.push_back({values.data<float>()[source * count + j], flat / vocab, flat % vocab});
  }
  return out;
}

// The tokens of a beam state's hypothesis, followed back on the host: `beam` of step `step`, then `last` if >= 0.
std::vector<int32_t> follow(const ops::BeamState& state, int64_t source, int step, int32_t beam, int32_t last) {
  const int64_t beams = state.scores.dim(1), history = state.history_tokens.dim(1) * beams;
  const int32_t* tokens = state.history_tokens.data<int32_t>() + source * history;
  const int32_t* parents = state.history_parents.data<int32_t>() + source * history;
  std::vector<int32_t> out;
  if (last >= 0) out.push_back(last);
  for (int t = step; t >= 0; --t) {
    out.push_back(tokens[t * beams + beam]);
    beam = parents[t * beams + beam];
  }
  std::reverse(out.begin(), out.end());
  return out;
}

template <typename T>
std::vector<T> at(const Tensor& t, int64_t source) {
  const int64_t width = t.numel() / t.dim(0);
  return std::vector<T>(t.data<T>() + source * width, t.data<T>() + (source + 1) * width);
}

// The op's state (on the CPU) against the reference after step `step`; `advanced`: the sources that stepped.
void expect_matches_reference(const ops::BeamState& state, const std::vector<SourceBeams>& reference,
                              const std::vector<std::vector<int32_t>>& parents, const std::vector<bool>& advanced,
                              int step) {
  const int beams = static_cast<int>(state.scores.dim(1));
  for (size_t s = 0; s < reference.size(); ++s) {
    SCOPED_TRACE(::testing::Message() << "source " << s << " after step " << step);
    const SourceBeams& ref = reference[s];
    ASSERT_EQ(state.can_improve.data<uint8_t>()[s], ref.can_improve ? 1 : 0);
    for (int k = 0; k < beams; ++k) {
      const int64_t row = static_cast<int64_t>(s) * beams + k;
      EXPECT_EQ(state.scores.data<float>()[row], ref.running[k].score) << "running beam " << k;
      EXPECT_EQ(state.next_tokens.data<int32_t>()[row], ref.running[k].tokens.back()) << "running beam " << k;
      const int32_t expected_row = advanced[s] ? static_cast<int32_t>(s) * beams + parents[s][k] : row;
      EXPECT_EQ(state.next_rows.data<int32_t>()[row], expected_row) << "running beam " << k;
      if (advanced[s]) {
        EXPECT_EQ(follow(state, s, step, k, -1), ref.running[k].tokens) << "running beam " << k;
      }
      const Hypothesis& done = ref.finished[k];
      const int32_t length = state.finished_lengths.data<int32_t>()[row];
      EXPECT_EQ(state.finished_scores.data<float>()[row], done.score) << "finished slot " << k;
      EXPECT_EQ(length, done.finished ? static_cast<int32_t>(done.tokens.size()) : 0) << "finished slot " << k;
      if (length > 0) {
        EXPECT_EQ(follow(state, s, length - 2, state.finished_parents.data<int32_t>()[row],
                         state.finished_last.data<int32_t>()[row]),
                  done.tokens)
            << "finished slot " << k;
      }
    }
  }
}

// Runs a whole search of random candidates through the op and the reference, comparing them after every step, and
// the best hypotheses at the end. Adds the steps run to `steps`.
void run_against_reference(const Scenario& scenario, uint32_t seed, int& steps) {
  std::mt19937 rng(seed);
  const ops::BeamOptions options = options_of(scenario);
  ops::BeamState state = ops::BeamState::start(scenario.sources, options, 0, Device::CPU);
  std::vector<SourceBeams> reference = reference_start(scenario.sources, scenario.beam_size);
  for (int step = 0; step < scenario.max_length; ++step) {
    ++steps;
    std::vector<float> running;
    for (const SourceBeams& b : reference)
      for (const Hypothesis& h : b.running) running.push_back(h.score);
    Tensor values, indices;
    make_candidates(running, scenario, step, rng, values, indices);
    std::vector<std::vector<int32_t>> parents(reference.size());
    std::vector<bool> advanced(reference.size());
    for (size_t s = 0; s < reference.size(); ++s) {
      advanced[s] = reference[s].can_improve;
      if (advanced[s])
        parents[s] = advance_source(reference[s], candidates_of(values, indices, s, scenario.vocab), step, options);
    }
    ops::beam_advance(values, indices, step, options, state);
    expect_matches_reference(state, reference, parents, advanced, step);
    if (::testing::Test::HasFailure()) return;
    if (std::none_of(reference.begin(), reference.end(), [](const SourceBeams& b) { return b.can_improve; })) break;
  }
  std::vector<int32_t> all(static_cast<size_t>(scenario.sources));
  std::iota(all.begin(), all.end(), 0);
  Tensor ids = Tensor::empty({scenario.sources, scenario.max_length}, DType::I32);
  Tensor lengths = Tensor::empty({scenario.sources}, DType::I32);
  ops::beam_best_tokens(state, Tensor::from_vector(all, {scenario.sources}), ids, lengths);
  for (int64_t s = 0; s < scenario.sources; ++s) {
    const std::vector<int32_t>& expected = reference[s].finished.front().tokens;
    ASSERT_EQ(lengths.data<int32_t>()[s], static_cast<int32_t>(expected.size())) << "source " << s;
    const int32_t* first = ids.data<int32_t>() + s * scenario.max_length;
    EXPECT_EQ(std::vector<int32_t>(first, first + expected.size()), expected) << "source " << s;
  }
}

const std::vector<Scenario>& scenarios() {
  static const std::vector<Scenario> all = {
      {5, 4, 6, 7, 0, 1.0f}, {3, 2, 3, 5, 2, 0.6f},   {4, 3, 8, 10, 0, 2.0f}, {2, 4, 2, 6, 0, 0.0f},
      {6, 2, 5, 1, 0, 1.0f}, {1, 5, 12, 16, 3, 1.3f}, {7, 3, 4, 9, 1, -0.5f},
  };
  return all;
}

TEST(BeamTest, MatchesTheFormerHostBookkeepingOverRandomSearches) {
  int steps = 0;
  for (size_t i = 0; i < scenarios().size(); ++i)
    for (uint32_t seed = 0; seed < 20; ++seed) {
      const Scenario& s = scenarios()[i];
      SCOPED_TRACE(::testing::Message() << "scenario " << i << " seed " << seed);
      run_against_reference(s, seed, steps);
      if (HasFailure()) return;
    }
  EXPECT_GT(steps, 500);
}

TEST(BeamTest, StartsWithOnlyTheFirstBeamLive) {
  ops::BeamOptions options;
  options.beam_size = 3;
  options.max_length = 4;
  const ops::BeamState state = ops::BeamState::start(2, options, 7, Device::CPU);
  EXPECT_EQ(state.sources(), 2);
  EXPECT_EQ(state.scores.to_vector<float>(), (std::vector<float>{0, kExcluded, kExcluded, 0, kExcluded, kExcluded}));
  EXPECT_EQ(state.finished_scores.to_vector<float>(), std::vector<float>(6, kExcluded));
  EXPECT_EQ(state.finished_lengths.to_vector<int32_t>(), std::vector<int32_t>(6, 0));
  EXPECT_EQ(state.can_improve.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1}));
  EXPECT_EQ(state.next_tokens.to_vector<int32_t>(), std::vector<int32_t>(6, 7));
  EXPECT_EQ(state.history_tokens.shape(), (Shape{2, 4, 3}));
  EXPECT_THROW(ops::BeamState::start(2, ops::BeamOptions{0, 1, 1, 4, 1.0f}, 0, Device::CPU), std::invalid_argument);
}

// Two beams over tokens {0, 1 = EOS, 2}, three steps, worked by hand.
TEST(BeamTest, WorkedExample) {
  const ops::BeamOptions options{2, 3, 1, 3, 1.0f};
  ops::BeamState state = ops::BeamState::start(1, options, 0, Device::CPU);
  const auto advance = [&](int step, const std::vector<float>& values, const std::vector<int32_t>& indices) {
    ops::beam_advance(Tensor::from_vector(values, {1, 4}), Tensor::from_vector(indices, {1, 4}), step, options, state);
  };
  // Beam 0 + EOS finishes (length 1); beam 0 + 2 and beam 0 + 0 run.
  advance(0, {-0.1f, -0.5f, -0.7f, -1e9f}, {2, 1, 0, 3});
  EXPECT_EQ(state.scores.to_vector<float>(), (std::vector<float>{-0.1f, -0.7f}));
  EXPECT_EQ(state.next_tokens.to_vector<int32_t>(), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(state.next_rows.to_vector<int32_t>(), (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(state.finished_scores.to_vector<float>(), (std::vector<float>{-0.5f, kExcluded}));
  EXPECT_EQ(state.can_improve.to_vector<uint8_t>(), std::vector<uint8_t>{1});  // a finished slot is still empty
  // Beam 1 (token 0) + EOS finishes first (-0.3 / 2); beam 0 (token 2) + 2 and beam 1 + 2 run.
  advance(1, {-0.3f, -0.9f, -1.0f, -2.0f}, {4, 2, 1, 5});
  EXPECT_EQ(state.finished_scores.to_vector<float>(), (std::vector<float>{-0.3f / 2.0f, -0.5f}));
  EXPECT_EQ(state.finished_lengths.to_vector<int32_t>(), (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(state.scores.to_vector<float>(), (std::vector<float>{-0.9f, -2.0f}));
  EXPECT_EQ(state.next_rows.to_vector<int32_t>(), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(state.can_improve.to_vector<uint8_t>(), std::vector<uint8_t>{1});  // -0.9 / 2 > -0.5
  // The last step: everything stops; (2, 2, 0) at -1.2 / 3 takes the second slot, -1.4 / 3 does not make it.
  advance(2, {-1.2f, -1.4f, -3.0f, -4.0f}, {0, 4, 2, 5});
  EXPECT_EQ(state.finished_scores.to_vector<float>(), (std::vector<float>{-0.3f / 2.0f, -1.2f / 3.0f}));
  EXPECT_EQ(state.scores.to_vector<float>(), (std::vector<float>{-1.2f + kExcluded, -1.4f + kExcluded}));
  EXPECT_EQ(state.can_improve.to_vector<uint8_t>(), std::vector<uint8_t>{0});
  EXPECT_EQ(follow(state, 0, 1, state.finished_parents.data<int32_t>()[1], state.finished_last.data<int32_t>()[1]),
            (std::vector<int32_t>{2, 2, 0}));
  Tensor ids = Tensor::empty({1, 3}, DType::I32), lengths = Tensor::empty({1}, DType::I32);
  ops::beam_best_tokens(state, Tensor::from_vector(std::vector<int32_t>{0}, {1}), ids, lengths);
  EXPECT_EQ(lengths.to_vector<int32_t>(), std::vector<int32_t>{2});
  EXPECT_EQ(ids.to_vector<int32_t>()[0], 0);
  EXPECT_EQ(ids.to_vector<int32_t>()[1], 1);
}

TEST(BeamTest, ASourceThatCannotImproveKeepsItsRowsInputsAndState) {
  const ops::BeamOptions options{2, 3, 1, 4, 1.0f};
  ops::BeamState state = ops::BeamState::start(2, options, 5, Device::CPU);
  state.can_improve.data<uint8_t>()[1] = 0;
  state.next_rows.data<int32_t>()[2] = 0;  // stale, from before a step
  const ops::BeamState before{state.scores.clone(),           state.history_tokens.clone(),
                              state.history_parents.clone(),  state.finished_scores.clone(),
                              state.finished_lengths.clone(), state.finished_last.clone(),
                              state.finished_parents.clone(), state.can_improve.clone(),
                              state.next_tokens.clone(),      state.next_rows.clone()};
  ops::beam_advance(
      Tensor::from_vector(std::vector<float>{-0.1f, -0.2f, -0.3f, -0.4f, -0.1f, -0.2f, -0.3f, -0.4f}, {2, 4}),
      Tensor::from_vector(std::vector<int32_t>{0, 2, 1, 3, 0, 2, 1, 3}, {2, 4}), 0, options, state);
  EXPECT_EQ(state.next_rows.to_vector<int32_t>(), (std::vector<int32_t>{0, 0, 2, 3}));
  EXPECT_EQ(at<int32_t>(state.next_tokens, 0), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(at<int32_t>(state.next_tokens, 1), at<int32_t>(before.next_tokens, 1));
  EXPECT_EQ(at<float>(state.scores, 1), at<float>(before.scores, 1));
  EXPECT_EQ(at<int32_t>(state.history_tokens, 1), at<int32_t>(before.history_tokens, 1));
  EXPECT_EQ(at<int32_t>(state.history_parents, 1), at<int32_t>(before.history_parents, 1));
  EXPECT_EQ(at<float>(state.finished_scores, 1), at<float>(before.finished_scores, 1));
  EXPECT_EQ(at<int32_t>(state.finished_lengths, 1), at<int32_t>(before.finished_lengths, 1));
  EXPECT_EQ(state.can_improve.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 0}));
}

TEST(BeamTest, ANegativeIndexEndsTheCandidates) {
  const ops::BeamOptions options{2, 4, 1, 5, 1.0f};
  ops::BeamState state = ops::BeamState::start(2, options, 0, Device::CPU);
  // Source 0: two candidates, both run. Source 1: one, and an EOS after the end that must not finish.
  ops::beam_advance(Tensor::from_vector(std::vector<float>{-0.1f, -0.2f, NAN, NAN, -0.3f, NAN, -0.1f, NAN}, {2, 4}),
                    Tensor::from_vector(std::vector<int32_t>{2, 3, -1, -1, 2, -1, 1, -1}, {2, 4}), 0, options, state);
  EXPECT_EQ(at<float>(state.scores, 0), (std::vector<float>{-0.1f, -0.2f}));
  EXPECT_EQ(at<int32_t>(state.next_tokens, 0), (std::vector<int32_t>{2, 3}));
  // Source 1 ran out: its second beam can never win, and its row stays where it is.
  EXPECT_EQ(at<float>(state.scores, 1), (std::vector<float>{-0.3f, -INFINITY}));
  EXPECT_EQ(at<int32_t>(state.next_tokens, 1), (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(at<int32_t>(state.next_rows, 1), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(state.finished_lengths.to_vector<int32_t>(), std::vector<int32_t>(4, 0));
  EXPECT_EQ(state.can_improve.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1}));
}

TEST(BeamTest, KeepSourcesCompactsEveryTensor) {
  const Scenario scenario{4, 3, 5, 6, 0, 1.0f};
  const ops::BeamOptions options = options_of(scenario);
  ops::BeamState state = ops::BeamState::start(scenario.sources, options, 0, Device::CPU);
  std::mt19937 rng(3);
  for (int step = 0; step < 3; ++step) {
    Tensor values, indices;
    make_candidates(state.scores.to_vector<float>(), scenario, step, rng, values, indices);
    ops::beam_advance(values, indices, step, options, state);
  }
  const ops::BeamState copy{state.scores.clone(),           state.history_tokens.clone(),
                            state.history_parents.clone(),  state.finished_scores.clone(),
                            state.finished_lengths.clone(), state.finished_last.clone(),
                            state.finished_parents.clone(), state.can_improve.clone(),
                            state.next_tokens.clone(),      state.next_rows.clone()};
  const std::vector<int32_t> kept{3, 1};
  state.keep_sources(Tensor::from_vector(kept, {2}));
  EXPECT_EQ(state.sources(), 2);
  EXPECT_EQ(state.history_tokens.shape(), (Shape{2, 6, 3}));
  for (size_t i = 0; i < kept.size(); ++i) {
    EXPECT_EQ(at<float>(state.scores, i), at<float>(copy.scores, kept[i]));
    EXPECT_EQ(at<int32_t>(state.history_tokens, i), at<int32_t>(copy.history_tokens, kept[i]));
    EXPECT_EQ(at<int32_t>(state.history_parents, i), at<int32_t>(copy.history_parents, kept[i]));
    EXPECT_EQ(at<float>(state.finished_scores, i), at<float>(copy.finished_scores, kept[i]));
    EXPECT_EQ(at<int32_t>(state.finished_lengths, i), at<int32_t>(copy.finished_lengths, kept[i]));
    EXPECT_EQ(at<int32_t>(state.finished_last, i), at<int32_t>(copy.finished_last, kept[i]));
    EXPECT_EQ(at<int32_t>(state.finished_parents, i), at<int32_t>(copy.finished_parents, kept[i]));
    EXPECT_EQ(at<uint8_t>(state.can_improve, i), at<uint8_t>(copy.can_improve, kept[i]));
    EXPECT_EQ(at<int32_t>(state.next_tokens, i), at<int32_t>(copy.next_tokens, kept[i]));
  }
}

TEST(BeamTest, RejectsBadArguments) {
  const ops::BeamOptions options{2, 3, 1, 4, 1.0f};
  ops::BeamState state = ops::BeamState::start(2, options, 0, Device::CPU);
  const Tensor values = Tensor::zeros({2, 4});
  const Tensor indices = Tensor::zeros({2, 4}, DType::I32);
  EXPECT_THROW(ops::beam_advance(values, indices, 4, options, state), std::invalid_argument);   // step past the end
  EXPECT_THROW(ops::beam_advance(values, indices, -1, options, state), std::invalid_argument);  // negative step
  EXPECT_THROW(ops::beam_advance(indices, indices, 0, options, state), std::invalid_argument);  // values not F32
  EXPECT_THROW(ops::beam_advance(values, values, 0, options, state), std::invalid_argument);    // indices not I32
  EXPECT_THROW(ops::beam_advance(values, Tensor::zeros({2, 3}, DType::I32), 0, options, state), std::invalid_argument);
  EXPECT_THROW(ops::beam_advance(Tensor::zeros({3, 4}), Tensor::zeros({3, 4}, DType::I32), 0, options, state),
               std::invalid_argument);  // 3 sources, a state of 2
  EXPECT_THROW(ops::beam_advance(values, Tensor::from_vector(std::vector<int32_t>{0, 1, 6, 0, 0, 0, 0, 0}, {2, 4}), 0,
                                 options, state),
               std::invalid_argument);  // candidate 6 of 2 beams x 3 tokens
  ops::BeamOptions wider = options;
  wider.beam_size = 3;  // the state has 2 beams
  EXPECT_THROW(ops::beam_advance(values, indices, 0, wider, state), std::invalid_argument);
  ops::BeamOptions longer = options;
  longer.max_length = 5;  // the histories have 4 steps
  EXPECT_THROW(ops::beam_advance(values, indices, 0, longer, state), std::invalid_argument);
  ops::BeamState broken = state;
  broken.can_improve = Tensor::zeros({2}, DType::I32);
  EXPECT_THROW(ops::beam_advance(values, indices, 0, options, broken), std::invalid_argument);
  EXPECT_EQ(state.finished_lengths.to_vector<int32_t>(), std::vector<int32_t>(4, 0)) << "nothing written";

  Tensor ids = Tensor::empty({1, 4}, DType::I32), lengths = Tensor::empty({1}, DType::I32);
  EXPECT_THROW(ops::beam_best_tokens(state, Tensor::from_vector(std::vector<int32_t>{2}, {1}), ids, lengths),
               std::out_of_range);
  Tensor short_ids = Tensor::empty({1, 3}, DType::I32);
  EXPECT_THROW(ops::beam_best_tokens(state, Tensor::from_vector(std::vector<int32_t>{0}, {1}), short_ids, lengths),
               std::invalid_argument);
  EXPECT_THROW(ops::beam_best_tokens(ops::BeamState{}, Tensor::from_vector(std::vector<int32_t>{0}, {1}), ids, lengths),
               std::invalid_argument);
}

// ---- CUDA against the CPU ----

std::vector<const Tensor*> tensors_of(const ops::BeamState& s) {
  return {&s.scores,        &s.history_tokens,   &s.history_parents, &s.finished_scores, &s.finished_lengths,
          &s.finished_last, &s.finished_parents, &s.can_improve,     &s.next_tokens,     &s.next_rows};
}

::testing::AssertionResult same_state(const ops::BeamState& gpu, const ops::BeamState& cpu) {
  const std::vector<const Tensor*> g = tensors_of(gpu), c = tensors_of(cpu);
  for (size_t i = 0; i < g.size(); ++i) {
    const Tensor host = g[i]->to(Device::CPU);
    if (host.shape() != c[i]->shape() || host.dtype() != c[i]->dtype())
      return ::testing::AssertionFailure()
             << "tensor " << i << ": " << shape_string(host.shape()) << " vs " << shape_string(c[i]->shape());
    if (std::memcmp(host.raw(), c[i]->raw(), host.nbytes()) != 0)
      return ::testing::AssertionFailure() << "tensor " << i << " of the state differs";
  }
  return ::testing::AssertionSuccess();
}

TEST(CudaBeamTest, MatchesTheCpuOverRandomSearchesWithCompaction) {
  ELEPHANT_REQUIRE_CUDA();
  for (size_t i = 0; i < scenarios().size(); ++i)
    for (uint32_t seed = 0; seed < 5; ++seed) {
      SCOPED_TRACE(::testing::Message() << "scenario " << i << " seed " << seed);
      Scenario scenario = scenarios()[i];
      std::mt19937 rng(seed);
      ops::BeamOptions options = options_of(scenario);
      ops::BeamState cpu = ops::BeamState::start(scenario.sources, options, 0, Device::CPU);
      ops::BeamState gpu = ops::BeamState::start(scenario.sources, options, 0, Device::CUDA);
      for (int step = 0; step < scenario.max_length; ++step) {
        Tensor values, indices;
        make_candidates(cpu.scores.to_vector<float>(), scenario, step, rng, values, indices);
        ops::beam_advance(values, indices, step, options, cpu);
        ops::beam_advance(values.to(Device::CUDA), indices.to(Device::CUDA), step, options, gpu);
        ASSERT_TRUE(same_state(gpu, cpu)) << "step " << step;
        // Now and then drop the sources that are done, as pruning does.
        const std::vector<uint8_t> improving = cpu.can_improve.to_vector<uint8_t>();
        std::vector<int32_t> keep;
        for (size_t s = 0; s < improving.size(); ++s)
          if (improving[s]) keep.push_back(static_cast<int32_t>(s));
        if (keep.empty()) break;
        if (step % 2 == 1 && keep.size() < improving.size()) {
          const auto n = static_cast<int64_t>(keep.size());
          cpu.keep_sources(Tensor::from_vector(keep, {n}));
          gpu.keep_sources(Tensor::from_vector(keep, {n}, Device::CUDA));
          scenario.sources = n;
          ASSERT_TRUE(same_state(gpu, cpu)) << "kept after step " << step;
        }
      }
      std::vector<int32_t> order(static_cast<size_t>(scenario.sources));
      std::iota(order.rbegin(), order.rend(), 0);  // in reverse
      const auto n = static_cast<int64_t>(order.size());
      Tensor cpu_ids = Tensor::empty({n, scenario.max_length}, DType::I32),
             cpu_lengths = Tensor::empty({n}, DType::I32);
      Tensor gpu_ids = Tensor::empty({n, scenario.max_length}, DType::I32, Device::CUDA);
      Tensor gpu_lengths = Tensor::empty({n}, DType::I32, Device::CUDA);
      ops::beam_best_tokens(cpu, Tensor::from_vector(order, {n}), cpu_ids, cpu_lengths);
      ops::beam_best_tokens(gpu, Tensor::from_vector(order, {n}, Device::CUDA), gpu_ids, gpu_lengths);
      const std::vector<int32_t> lengths = cpu_lengths.to_vector<int32_t>();
      ASSERT_EQ(gpu_lengths.to_vector<int32_t>(), lengths);
      const std::vector<int32_t> expected = cpu_ids.to_vector<int32_t>(), actual = gpu_ids.to_vector<int32_t>();
      for (int64_t s = 0; s < n; ++s)
        for (int32_t t = 0; t < lengths[s]; ++t)
          ASSERT_EQ(actual[s * scenario.max_length + t], expected[s * scenario.max_length + t]) << s << ", " << t;
    }
}

}  // namespace
}  // namespace elephant
