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

}  // namespace

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
