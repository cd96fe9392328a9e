#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace elephant::ops {

// Self-attention caches are [rows, slots, width]: one slot per decoded step, row r's keys contiguous.

// out[i, 0:steps] = cache[rows[i], 0:steps] for every i < out.dim(0): reorders beams and drops finished rows, or
// copies into a cache with more slots. Only the `steps` written slots move.
void gather_cache_rows(const Tensor& cache, const Tensor& rows, int64_t steps, Tensor& out);

// cache[r, slots[r]] = values[r] for every row r < values.dim(0); slots is I32 [>= rows] on the cache's device, so a
// device can advance it without the host (a slot outside the cache throws on the CPU and is skipped on CUDA).
void write_cache_step(const Tensor& values, const Tensor& slots, Tensor& cache);

}  // namespace elephant::ops
