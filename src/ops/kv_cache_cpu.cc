#include <cstring>

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

void write_cache_step(const Tensor& values, const Tensor& slots, Tensor& cache) {
  const size_t slot_bytes = static_cast<size_t>(cache.dim(2)) * dtype_size(cache.dtype());
  const auto* in = static_cast<const char*>(values.raw());
  auto* o = static_cast<char*>(cache.raw());
  for (int64_t r = 0; r < values.dim(0); ++r)
    std::memcpy(o + static_cast<size_t>(r * cache.dim(1) + slots.data<int32_t>()[r]) * slot_bytes, in + r * slot_bytes,
                slot_bytes);
}

}  // namespace elephant::ops::cpu
