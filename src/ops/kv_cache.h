#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace elephant::ops {

// Self-attention caches are [rows, slots, width]: one slot per decoded step, row r's keys contiguous.

// out[i, 0:steps] = cache[rows[i], 0:steps] for every i < out.dim(0): reorders beams and drops finished rows, or
// copies into a cache with more slots. Only the `steps` written slots move.
void gather_cache_rows(const Tensor& cache, const Tensor& rows, int64_t steps, Tensor& out);

// The widest group reorder_cache_groups takes: on CUDA a thread holds a word of each of the group's rows in registers.
// Wider groups (beams) gather each cache (DecoderState::reorder_rows).
constexpr int64_t kMaxCacheGroup = 8;

// Beam search's step on the caches, in place: rows come in groups of `group` consecutive rows (a source's beams, at
// most kMaxCacheGroup), and row r's first `steps` slots become those of row parents[r], a row of r's group, in every
// cache of `caches` at once (one launch on CUDA; caches of one shape and dtype, [rows, slots, width]). Each group's
// slots are read before any of them is written, and rows that continue themselves are not written. A parent outside
// its group throws on the CPU and leaves the row as it was on CUDA.
void reorder_cache_groups(const std::vector<Tensor*>& caches, const Tensor& parents, int64_t group, int64_t steps);

// cache[r, slots[r]] = values[r] for every row r < values.dim(0); slots is I32 [>= rows] on the cache's device, so a
// device can advance it without the host (a slot outside the cache throws on the CPU and is skipped on CUDA).
void write_cache_step(const Tensor& values, const Tensor& slots, Tensor& cache);

}  // namespace elephant::ops
