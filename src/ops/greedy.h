#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace elephant::ops {

// One greedy step's bookkeeping on the device of its tensors, so that ids stay there until a sentence is done.
// For every row r: a finished row gets `pad` as its next input; another appends best[r] to its history
// (history[r, lengths[r]++] = best[r]) and takes it as its next input, and is finished from now on if it is `eos`.
// best, tokens, lengths: I32 [rows]; finished: U8 [rows]; history: I32 [rows, max_length] (a row never appends
// past max_length: the search stops first).
void greedy_advance(const Tensor& best, int32_t eos, int32_t pad, Tensor& tokens, Tensor& finished, Tensor& lengths,
                    Tensor& history);

}  // namespace elephant::ops
