#pragma once

// The CUDA fast path behind ops::beam_candidates (dispatch.cc), named here because the CPU has no counterpart: the
// CPU, and lists too long for the fused kernel, run log_softmax, fill_column, add_row_values and topk.

#include <cstdint>

#include "core/tensor.h"

namespace elephant::ops::cuda {

// Beam search's candidates with the logits read twice, when k <= 16 (longer lists do not fit 1024 threads'
// registers: K = 32 took 95 a thread): launches it and returns true, the same bits as the ops composed on CUDA.
// Otherwise returns false and does nothing. Arguments as checked by ops/dispatch.cc.
bool beam_candidates(const Tensor& logits, const Tensor& row_values, int beam_size, int64_t excluded, int k,
                     Tensor& values, Tensor& indices);

}  // namespace elephant::ops::cuda
