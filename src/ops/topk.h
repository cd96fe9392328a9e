#pragma once

#include "core/tensor.h"

namespace elephant::ops {

// The k largest values of every row of x (F32 [rows, n]) and their column indices, best first; equal values are
// ordered by index (the smaller first), NaN never beats a number. values: F32 [rows, k], indices: I32 [rows, k],
// 1 <= k <= min(n, kMaxTopK). Decoding runs it on the device, so only k candidates per row reach the host.
constexpr int kMaxTopK = 64;
void topk(const Tensor& x, int k, Tensor& values, Tensor& indices);

// x[r, :] += row_values[r] (x F32 [rows, n], row_values F32 [rows]): running beam scores added to log-probs.
void add_row_values(Tensor& x, const Tensor& row_values);

// x[:, column] = value (x F32 [rows, n]): EOS made impossible before the minimum length.
void fill_column(Tensor& x, int64_t column, float value);

// Beam search's candidates of one step: for every source (beam_size consecutive rows of logits F32 [rows, vocab]),
// the best k of log_softmax(logits[row]) + row_values[row] over its beams x vocabulary, flattened (index = beam *
// vocab + token), column `excluded` at -inf first (-1: none). The same bits as log_softmax, fill_column,
// add_row_values and topk over [sources, beam_size * vocab]; on CUDA the logits are read twice instead of written and
// read again three times. values F32, indices I32 [rows / beam_size, k].
void beam_candidates(const Tensor& logits, const Tensor& row_values, int beam_size, int64_t excluded, int k,
                     Tensor& values, Tensor& indices);

}  // namespace elephant::ops
