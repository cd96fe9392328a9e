#include <algorithm>
#include <vector>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

// Both ops move whole slots of `width` elements; slots are copied as 4-byte words when the width allows it
// (every head dimension in practice), else byte by byte.
template <typename Word>
__global__ void gather_cache_rows_kernel(const Word* __restrict__ cache, int64_t cache_rows,
                                         const int32_t* __restrict__ rows, int64_t in_slots, int64_t out_slots,
                                         int64_t steps, int64_t slot_words, Word* __restrict__ out) {
  rt::await_previous_kernel();
  const int64_t i = blockIdx.y;
  if (rows[i] < 0 || rows[i] >= cache_rows) return;  // the CPU throws; here the row is left as it was
  const int64_t words = steps * slot_words;
  const Word* from = cache + rows[i] * in_slots * slot_words;
  Word* to = out + i * out_slots * slot_words;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < words; w += int64_t(gridDim.x) * blockDim.x)
    to[w] = from[w];
}

template <typename Word>
__global__ void write_cache_step_kernel(const Word* __restrict__ values, int64_t slots,
                                        const int32_t* __restrict__ slot_of_row, int64_t slot_words,
                                        Word* __restrict__ cache) {
  rt::await_previous_kernel();
  const int64_t r = blockIdx.y;
  const int64_t step = slot_of_row[r];
  if (step < 0 || step >= slots) return;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < slot_words; w += int64_t(gridDim.x) * blockDim.x)
    cache[(r * slots + step) * slot_words + w] = values[r * slot_words + w];
}

// A launch's caches (the paper model's 12 decoder layers have 24): more take more launches.
constexpr int kLaunchCaches = 32;
constexpr int kMaxGroup = static_cast<int>(kMaxCacheGroup);  // a word of each row in registers

struct CachePointers {
  void* at[kLaunchCaches];
};

// One thread per word of a group's written slots (blockIdx.y the group, blockIdx.z the cache): it reads that word of
// every row another row continues before it writes any, so the reorder is in place, at most one read and one write
// per word, where gathering into a copy and back read and wrote every word twice. A group whose rows all continue
// themselves is left alone.
template <typename Word>
__global__ void reorder_cache_groups_kernel(CachePointers caches, const int32_t* __restrict__ parents, int group,
                                            int64_t row_words, int64_t words) {
  rt::await_previous_kernel();
  Word* cache = static_cast<Word*>(caches.at[blockIdx.z]);
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * group;
  int parent[kMaxGroup];
  unsigned sources = 0;  // bit q: a row continues row q, which is read
#pragma unroll
  for (int j = 0; j < kMaxGroup; ++j) {
    const int p = j < group ? parents[begin + j] - static_cast<int>(begin) : j;
    parent[j] = p >= 0 && p < group ? p : j;  // the CPU throws; here the row is left as it was
    if (parent[j] != j) sources |= 1u << parent[j];
  }
  if (!sources) return;  // every row continues itself
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < words; w += int64_t(gridDim.x) * blockDim.x) {
    Word v[kMaxGroup];
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) {
      if (sources >> j & 1u) v[j] = cache[(begin + j) * row_words + w];
    }
    // Each value goes to the rows that continue its row: constant indices keep v in registers.
#pragma unroll
    for (int q = 0; q < kMaxGroup; ++q)
#pragma unroll
      for (int j = 0; j < kMaxGroup; ++j)
        if (j < group && parent[j] == q && q != j) cache[(begin + j) * row_words + w] = v[q];
  }
}

template <typename Word>
void launch_reorder(const std::vector<Tensor*>& caches, const Tensor& parents, int64_t group, int64_t steps) {
  const Tensor& first = *caches.front();
  const int64_t slot_words = first.dim(2) * static_cast<int64_t>(dtype_size(first.dtype())) / sizeof(Word);
  const int64_t words = steps * slot_words;
  for (size_t done = 0; done < caches.size(); done += kLaunchCaches) {
    CachePointers pointers{};
    const size_t count = std::min(caches.size() - done, static_cast<size_t>(kLaunchCaches));
    for (size_t i = 0; i < count; ++i) pointers.at[i] = caches[done + i]->raw();
    const dim3 grid(std::min<unsigned>(rt::blocks_for(words, 256), 64), static_cast<unsigned>(first.dim(0) / group),
                    static_cast<unsigned>(count));
    rt::launch(reorder_cache_groups_kernel<Word>, grid, 256, 0, pointers, parents.data<int32_t>(),
               static_cast<int>(group), first.dim(1) * slot_words, words);
  }
}

}  // namespace

void reorder_cache_groups(const std::vector<Tensor*>& caches, const Tensor& parents, int64_t group, int64_t steps) {
  const Tensor& first = *caches.front();
  const int64_t slot_bytes = first.dim(2) * static_cast<int64_t>(dtype_size(first.dtype()));
  const bool aligned =
      std::all_of(caches.begin(), caches.end(), [](const Tensor* c) { return rt::is_aligned(c->raw()); });
  if (slot_bytes % 16 == 0 && aligned)
    launch_reorder<uint4>(caches, parents, group, steps);
  else if (slot_bytes % 4 == 0)
    launch_reorder<uint32_t>(caches, parents, group, steps);
  else
    launch_reorder<uint8_t>(caches, parents, group, steps);
}

void gather_cache_rows(const Tensor& cache, const Tensor& rows, int64_t steps, Tensor& out) {
  const int64_t slot_bytes = cache.dim(2) * static_cast<int64_t>(dtype_size(cache.dtype()));
  const dim3 grid(std::min<unsigned>(rt::blocks_for(steps * slot_bytes / 4 + 1, 256), 64),
                  static_cast<unsigned>(out.dim(0)));
  if (slot_bytes % 4 == 0) {
    rt::launch(gather_cache_rows_kernel<uint32_t>, grid, 256, 0, static_cast<const uint32_t*>(cache.raw()),
               cache.dim(0), rows.data<int32_t>(), cache.dim(1), out.dim(1), steps, slot_bytes / 4,
               static_cast<uint32_t*>(out.raw()));
  } else {
    rt::launch(gather_cache_rows_kernel<uint8_t>, grid, 256, 0, static_cast<const uint8_t*>(cache.raw()), cache.dim(0),
               rows.data<int32_t>(), cache.dim(1), out.dim(1), steps, slot_bytes, static_cast<uint8_t*>(out.raw()));
  }
}

void write_cache_step(const Tensor& values, const Tensor& slots, Tensor& cache) {
  const int64_t slot_bytes = cache.dim(2) * static_cast<int64_t>(dtype_size(cache.dtype()));
  const dim3 grid(std::min<unsigned>(rt::blocks_for(slot_bytes / 4 + 1, 256), 16),
                  static_cast<unsigned>(values.dim(0)));
  if (slot_bytes % 4 == 0) {
    rt::launch(write_cache_step_kernel<uint32_t>, grid, 256, 0, static_cast<const uint32_t*>(values.raw()),
               cache.dim(1), slots.data<int32_t>(), slot_bytes / 4, static_cast<uint32_t*>(cache.raw()));
  } else {
    rt::launch(write_cache_step_kernel<uint8_t>, grid, 256, 0, static_cast<const uint8_t*>(values.raw()), cache.dim(1),
               slots.data<int32_t>(), slot_bytes, static_cast<uint8_t*>(cache.raw()));
  }
}

}  // namespace elephant::ops::cuda
