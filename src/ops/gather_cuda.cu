// out[i] = x[rows[i]] as raw bytes: copies in the widest unit (16, 8, 4, 2 or 1 bytes) that both base
// pointers and the row width allow. lanes_per_row threads share a row; narrow rows pack several into a block.

#include <algorithm>
#include <cstdint>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

constexpr int kThreads = 256;

// An index outside x cannot throw on the device; its output row is zeroed rather than read out of bounds.
template <typename U>
__global__ void gather_kernel(const U* __restrict__ x, const int32_t* __restrict__ rows, U* __restrict__ out,
                              int64_t out_rows, int64_t x_rows, int64_t units, int lanes_per_row) {
  rt::await_previous_kernel();
  const int rows_per_block = blockDim.x / lanes_per_row;
  const int local = threadIdx.x / lanes_per_row;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * rows_per_block + local;
  if (local >= rows_per_block || i >= out_rows) return;
  const int32_t r = rows[i];
  U* dst = out + i * units;
  if (r < 0 || r >= x_rows) {
    for (int64_t u = threadIdx.x % lanes_per_row; u < units; u += lanes_per_row) dst[u] = U{};
    return;
  }
  const U* src = x + static_cast<int64_t>(r) * units;
  for (int64_t u = threadIdx.x % lanes_per_row; u < units; u += lanes_per_row) dst[u] = src[u];
}

template <typename U>
void launch(const Tensor& x, const int32_t* rows, Tensor& out, int64_t row_bytes) {
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U));
  const int lanes_per_row = static_cast<int>(std::min<int64_t>(units, kThreads));
  const int rows_per_block = kThreads / lanes_per_row;
  const int64_t out_rows = out.dim(0);
  const int64_t blocks = (out_rows + rows_per_block - 1) / rows_per_block;
  if (blocks > 0x7fffffff) throw Error("gather_rows: too many rows for one launch");
  rt::launch(gather_kernel<U>, static_cast<unsigned>(blocks), kThreads, 0, static_cast<const U*>(x.raw()), rows,
             static_cast<U*>(out.raw()), out_rows, x.dim(0), units, lanes_per_row);
}

}  // namespace

void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) {
  const int64_t row_bytes = static_cast<int64_t>(out.nbytes()) / out.dim(0);  // x may have no rows
  if (row_bytes == 0) return;
  const int32_t* r = rows.data<int32_t>();
  const uintptr_t all =
      reinterpret_cast<uintptr_t>(x.raw()) | reinterpret_cast<uintptr_t>(out.raw()) | static_cast<uintptr_t>(row_bytes);
  if (all % 16 == 0) {
    launch<uint4>(x, r, out, row_bytes);
  } else if (all % 8 == 0) {
    launch<uint2>(x, r, out, row_bytes);
  } else if (all % 4 == 0) {
    launch<uint32_t>(x, r, out, row_bytes);
  } else if (all % 2 == 0) {
    launch<uint16_t>(x, r, out, row_bytes);
  } else {
    launch<uint8_t>(x, r, out, row_bytes);
  }
}

}  // namespace elephant::ops::cuda
