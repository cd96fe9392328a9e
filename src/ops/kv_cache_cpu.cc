#include <cstring>
#include <vector>

#include "ops/backends.h"

namespace elephant::ops::cpu {

void gather_cache_rows(const Tensor& cache, const Tensor& rows, int64_t steps, Tensor& out) {
  const size_t slot_bytes = static_cast<size_t>(cache.dim(2)) * dtype_size(cache.dtype());
  const int32_t* index = rows.data<int32_t>();
  const auto* in = static_cast<const char*>(cache.raw());
  auto* o = static_cast<char*>(out.raw());
  for (int64_t i = 0; i < out.dim(0); ++i) {
    std::memcpy(o + static_cast<size_t>(i * out.dim(1)) * slot_bytes,
                in + static_cast<size_t>(index[i] * cache.dim(1)) * slot_bytes,
                static_cast<size_t>(steps) * slot_bytes);
  }
}

void reorder_cache_groups(const std::vector<Tensor*>& caches, const Tensor& parents, int64_t group, int64_t steps) {
  const Tensor& first = *caches.front();
  const size_t slot_bytes = static_cast<size_t>(first.dim(2)) * dtype_size(first.dtype());
  const size_t row_bytes = static_cast<size_t>(first.dim(1)) * slot_bytes,
               moved = static_cast<size_t>(steps) * slot_bytes;
  const int32_t* parent = parents.data<int32_t>();
  std::vector<char> copy(static_cast<size_t>(group) * moved);
  for (Tensor* cache : caches) {
    auto* rows = static_cast<char*>(cache->raw());
    for (int64_t begin = 0; begin < first.dim(0); begin += group) {
      for (int64_t j = 0; j < group; ++j)
        std::memcpy(copy.data() + static_cast<size_t>(j) * moved, rows + static_cast<size_t>(begin + j) * row_bytes,
                    moved);
      for (int64_t r = begin; r < begin + group; ++r)
        if (parent[r] != r)
          std::memcpy(rows + static_cast<size_t>(r) * row_bytes,
                      copy.data() + static_cast<size_t>(parent[r] - begin) * moved, moved);
    }
  }
}

void write_cache_step(const Tensor& values, const Tensor& slots, Tensor& cache) {
  const size_t slot_bytes = static_cast<size_t>(cache.dim(2)) * dtype_size(cache.dtype());
  const auto* in = static_cast<const char*>(values.raw());
  auto* o = static_cast<char*>(cache.raw());
  for (int64_t r = 0; r < values.dim(0); ++r)
    std::memcpy(o + static_cast<size_t>(r * cache.dim(1) + slots.data<int32_t>()[r]) * slot_bytes, in + r * slot_bytes,
                slot_bytes);
}

}  // namespace elephant::ops::cpu
