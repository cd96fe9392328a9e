#pragma once

#include "core/tensor.h"

namespace elephant::ops {

// out[i] = x[rows[i]] for every i < out.dim(0); x and out are [*, d] of one dtype, rows is I32 on their device.
// Used for embeddings (rows = token ids), to put MoE rows in expert order, and to reorder beams' caches.
// An index outside x throws on the CPU; on CUDA (where the indices are not read by the host) its row is zeroed.
void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out);

}  // namespace elephant::ops
