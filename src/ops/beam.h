#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace elephant::ops {

// Beam search's bookkeeping on the device of its tensors, following transformers' vectorized beam search with
// early_stopping=False: per step only the can_improve flags need to reach the host, and a source's ids once it is
// done.

struct BeamOptions {
  int beam_size = 1;
  int64_t vocab = 1;  // columns of the log-probs: a candidate's flat index is beam * vocab + token
  int32_t eos = 1;
  int max_length = 1;           // generated tokens, EOS included: every hypothesis stops at this length
  float length_penalty = 1.0f;  // finished scores are sum(log p) / length^length_penalty
};

// The beams of `sources` sources, B = beam_size rows each (row = source * B + beam), for at most L = max_length
// steps. Every tensor is indexed by source first, so that dropping sources is a gather_rows on each. Histories are
// back-pointers, so that reordering beams copies no ids.
struct BeamState {
  Tensor scores;            // F32 [sources, B]: the running beams' sum(log p), best first
  Tensor history_tokens;    // I32 [sources, L, B]: [s, t, k]: the token running beam k took at step t
  Tensor history_parents;   // I32 [sources, L, B]: [s, t, k]: the running beam of step t - 1 that it extends
  Tensor finished_scores;   // F32 [sources, B]: finished hypotheses, best first: sum(log p) / length^penalty
  Tensor finished_lengths;  // I32 [sources, B]: their token counts, EOS included; 0: an empty slot
  Tensor finished_last;     // I32 [sources, B]: their last token (a stopped beam has no history slot of its own)
  Tensor finished_parents;  // I32 [sources, B]: the running beam of step length - 2 they extend
  Tensor can_improve;       // U8 [sources]: 0 once no running beam can beat the worst finished hypothesis
  Tensor next_tokens;       // I32 [sources, B]: each row's input for the next step
  Tensor next_rows;         // I32 [sources, B]: the row (before the step) each row continues

  // Before the first step: only beam 0 of each source is live (so that beams do not repeat), every input is
  // `decoder_start`, nothing is finished.
  static BeamState start(int64_t sources, const BeamOptions& options, int32_t decoder_start, Device device);
  int64_t sources() const { return can_improve.dim(0); }
  // Keeps the sources `kept` (I32 [n] on the state's device), in that order: next_rows go stale until the next
  // step.
  void keep_sources(const Tensor& kept);
};

// One step of every source whose can_improve is set, from the best candidates of its beams x vocabulary: values
// F32 and indices I32 [sources, count], best first, as ops::topk gives them over the running scores plus the
// log-probs ([sources, B * vocab]); an index < 0 ends a source's candidates. `step`: tokens generated before this
// one. Updates the running and finished hypotheses and can_improve, and writes next_tokens and next_rows. A source
// that cannot improve keeps its rows (next_rows[r] = r), its inputs and its state.
void beam_advance(const Tensor& values, const Tensor& indices, int step, const BeamOptions& options, BeamState& state);

// The best finished hypothesis of each source sources[i] (I32 [n] on the state's device), followed through the
// back-pointers: ids I32 [n, L] (the first lengths[i] of row i; the rest is not written), lengths I32 [n] (0 when
// nothing finished).
void beam_best_tokens(const BeamState& state, const Tensor& sources, Tensor& ids, Tensor& lengths);

}  // namespace elephant::ops
