#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "models/encoder_decoder.h"

namespace elephant {

struct SearchOptions {
  int beam_size = 1;            // 1: greedy
  int max_length = 256;         // generated tokens, EOS included
  int min_length = 0;           // EOS is not allowed before this many tokens (transformers' min_new_tokens)
  float length_penalty = 1.0f;  // finished beam scores are sum(log p) / length^length_penalty
  bool prune_finished = true;   // drop finished sources from the decoder batch
  // Queue each step on the device before the host reads the previous step's finished flags, so that the device does
  // not idle while they come back and the host decides: reporting, pruning and stopping then act a step late, and
  // the step after the last sentence finished is computed for nothing. Unset: on CUDA only; the CPU computes
  // synchronously and would only gain the extra step. Tokens are the same either way. Unpipelined, the H100's CUPTI
  // timeline (2026-11-27) showed the GPU idle through every step's graph launch of a greedy search; beam search
  // gained 15% at batch 1 and 11% at batch 8 (2026-11-26).
  std::optional<bool> pipeline_steps;
};

// Generates a target for every encoded source. Each result holds the generated ids, ending with EOS when
// the model produced it before max_length. Greedy and beam search follow transformers' generate()
// (num_beams, length_penalty, early_stopping=False) so that the tokens are identical.
std::vector<std::vector<int32_t>> generate(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                           const SearchOptions& options);

// The decoder batch sizes a search compacts to on a GPU, where each size costs a CUDA graph capture: 1, 2, 3, 4, 6,
// 8, 12, 16, 24, ... (powers of two and 1.5 times them), the smallest one >= rows.
int64_t batch_bucket(int64_t rows);

// After some entries of a decoder batch (sentences, or a sentence's beams) finished (done[i] != 0): the entries the
// batch keeps, in order, or none when it keeps its size and its finished entries only go inactive (always without
// pruning). Bucketed (on a GPU) it shrinks to batch_bucket(live entries): every live entry and, as inactive
// padding, the first finished ones; otherwise to the live entries alone.
std::vector<int32_t> entries_to_keep(const std::vector<uint8_t>& done, bool prune, bool bucketed);

std::vector<std::vector<int32_t>> greedy_search(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                                const SearchOptions& options);
std::vector<std::vector<int32_t>> beam_search(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                              const SearchOptions& options);

}  // namespace elephant
