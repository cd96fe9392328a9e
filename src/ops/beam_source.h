#pragma once

// One source's beam bookkeeping, shared by the CPU backend (a loop over sources) and the CUDA kernel (one thread per
// source), so that both take the same decisions with the same float arithmetic.

#include <cmath>
#include <cstdint>

#include "core/host_device.h"
#include "ops/beam.h"

namespace elephant::ops::beam {

// transformers marks impossible candidates by adding this to their scores.
constexpr float kExcluded = -1.0e9f;

// What every source shares in one step. The length penalty is computed on the host (a device's pow may round
// differently).
struct Step {
  int beam_size;
  int64_t vocab;
  int32_t eos;
  int max_length;
  int generated;   // tokens generated before this one: the history slot this step writes
  bool last_step;  // every candidate stops
  float penalty;   // (generated + 1)^length_penalty
  int count;       // candidates per source
};

inline Step step_of(const BeamOptions& options, int generated, int count) {
  const int length = generated + 1;
  return {options.beam_size,
          options.vocab,
          options.eos,
          options.max_length,
          generated,
          length >= options.max_length,
          static_cast<float>(std::pow(static_cast<double>(length), options.length_penalty)),
          count};
}

// One source's slices of a BeamState (B = beam_size; histories [L, B]).
struct Source {
  float* scores;
  int32_t* history_tokens;
  int32_t* history_parents;
  float* finished_scores;
  int32_t* finished_lengths;
  int32_t* finished_last;
  int32_t* finished_parents;
  uint8_t* can_improve;
  int32_t* next_tokens;
  int32_t* next_rows;
};

// The tensors of a BeamState (host or device pointers), at source 0.
inline Source first_source(BeamState& state) {
  return {state.scores.data<float>(),
          state.history_tokens.data<int32_t>(),
          state.history_parents.data<int32_t>(),
          state.finished_scores.data<float>(),
          state.finished_lengths.data<int32_t>(),
          state.finished_last.data<int32_t>(),
          state.finished_parents.data<int32_t>(),
          state.can_improve.data<uint8_t>(),
          state.next_tokens.data<int32_t>(),
          state.next_rows.data<int32_t>()};
}

ELEPHANT_HOST_DEVICE inline Source source_at(const Source& first, int64_t source, const Step& step) {
  const int64_t beams = step.beam_size, history = static_cast<int64_t>(step.max_length) * step.beam_size;
  return {first.scores + source * beams,
          first.history_tokens + source * history,
          first.history_parents + source * history,
          first.finished_scores + source * beams,
          first.finished_lengths + source * beams,
          first.finished_last + source * beams,
          first.finished_parents + source * beams,
          first.can_improve + source,
          first.next_tokens + source * beams,
          first.next_rows + source * beams};
}

// `values` and `indices`: this source's candidates; `first_row`: its row of beam 0.
ELEPHANT_HOST_DEVICE inline void advance(const Step& step, const float* values, const int32_t* indices,
                                         int32_t first_row, const Source& s) {
  const int beams = step.beam_size;
  if (!*s.can_improve) {
    for (int k = 0; k < beams; ++k) s.next_rows[k] = first_row + k;
    return;
  }
  int count = 0;  // up to the first missing candidate (or an index outside the beams, never written by topk)
  while (count < step.count && indices[count] >= 0 && indices[count] < beams * step.vocab) ++count;
  const auto beam_of = [&](int i) { return static_cast<int32_t>(indices[i] / step.vocab); };
  const auto token_of = [&](int i) { return static_cast<int32_t>(indices[i] % step.vocab); };
  const auto stops = [&](int i) { return step.last_step || token_of(i) == step.eos; };

  // Candidates among the top beam_size that stop join the finished slots if they beat the worst one.
  for (int i = 0; i < beams && i < count; ++i) {
    if (!stops(i)) continue;
    const float score = values[i] / step.penalty;
    int at = 0;
    while (at < beams && !(score > s.finished_scores[at])) ++at;
    if (at == beams) continue;
    for (int j = beams - 1; j > at; --j) {
      s.finished_scores[j] = s.finished_scores[j - 1];
      s.finished_lengths[j] = s.finished_lengths[j - 1];
      s.finished_last[j] = s.finished_last[j - 1];
      s.finished_parents[j] = s.finished_parents[j - 1];
    }
    s.finished_scores[at] = score;
    s.finished_lengths[at] = step.generated + 1;
    s.finished_last[at] = token_of(i);
    s.finished_parents[at] = beam_of(i);
  }

  // The best beam_size candidates that did not stop keep running (at the last step, excluded ones).
  int32_t* tokens = s.history_tokens + static_cast<int64_t>(step.generated) * beams;
  int32_t* parents = s.history_parents + static_cast<int64_t>(step.generated) * beams;
  int kept = 0;
  for (int i = 0; i < count && kept < beams; ++i) {
    if (stops(i) && !step.last_step) continue;
    s.scores[kept] = stops(i) ? values[i] + kExcluded : values[i];
    tokens[kept] = token_of(i);
    parents[kept] = beam_of(i);
    s.next_tokens[kept] = token_of(i);
    s.next_rows[kept] = first_row + beam_of(i);
    ++kept;
  }
  // Only with non-finite log-probs (NaN) can candidates run out: such a beam can never win.
  for (; kept < beams; ++kept) {
    s.scores[kept] = -INFINITY;
    tokens[kept] = step.eos;
    parents[kept] = kept;
    s.next_tokens[kept] = step.eos;
    s.next_rows[kept] = first_row + kept;
  }

  // Stop once the best running beam, at its current length, cannot beat the worst finished hypothesis.
  bool all_finished = true;
  for (int j = 0; j < beams; ++j) all_finished = all_finished && s.finished_lengths[j] > 0;
  const float best_possible = s.scores[0] / step.penalty;
  *s.can_improve = (!all_finished || best_possible > s.finished_scores[beams - 1]) ? 1 : 0;
}

// What following a finished hypothesis back reads (host or device pointers, at source 0).
struct Hypotheses {
  int64_t sources;
  int beam_size;
  int max_length;
  const int32_t* history_tokens;
  const int32_t* history_parents;
  const int32_t* finished_lengths;
  const int32_t* finished_last;
  const int32_t* finished_parents;
};

inline Hypotheses hypotheses_of(const BeamState& state) {
  return {state.sources(),
          static_cast<int>(state.scores.dim(1)),
          static_cast<int>(state.history_tokens.dim(1)),
          state.history_tokens.data<int32_t>(),
          state.history_parents.data<int32_t>(),
          state.finished_lengths.data<int32_t>(),
          state.finished_last.data<int32_t>(),
          state.finished_parents.data<int32_t>()};
}

// Writes the tokens of `source`'s best finished hypothesis into ids and returns its length (0: nothing finished,
// or a source outside the state: the CPU checks, a device trusts the indices).
ELEPHANT_HOST_DEVICE inline int32_t best_tokens(const Hypotheses& h, int64_t source, int32_t* ids) {
  if (source < 0 || source >= h.sources) return 0;
  const int64_t beams = h.beam_size, history = static_cast<int64_t>(h.max_length) * h.beam_size;
  const int32_t* tokens = h.history_tokens + source * history;
  const int32_t* parents = h.history_parents + source * history;
  const int32_t length = h.finished_lengths[source * beams];
  if (length <= 0) return 0;
  ids[length - 1] = h.finished_last[source * beams];
  int32_t beam = h.finished_parents[source * beams];
  for (int32_t t = length - 2; t >= 0; --t) {
    ids[t] = tokens[t * beams + beam];
    beam = parents[t * beams + beam];
  }
  return length;
}

}  // namespace elephant::ops::beam
