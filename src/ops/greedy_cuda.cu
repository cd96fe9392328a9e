#include "core/cuda/runtime.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

// One thread per row: a few hundred rows at most, and the whole step stays on the device.
__global__ void greedy_advance_kernel(const int32_t* __restrict__ best, int32_t eos, int32_t pad, int64_t rows,
                                      int64_t capacity, int32_t* __restrict__ tokens, uint8_t* __restrict__ finished,
                                      int32_t* __restrict__ lengths, int32_t* __restrict__ history) {
  rt::await_previous_kernel();
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  if (finished[r]) {
    tokens[r] = pad;
    return;
  }
  const int32_t id = best[r];
  const int32_t at = lengths[r];
  if (at < 0 || at >= capacity) return;  // the CPU throws: the search never lets a row run out of room
  history[r * capacity + at] = id;
  lengths[r] = at + 1;
  tokens[r] = id;
  if (id == eos) finished[r] = 1;
}

}  // namespace

void greedy_advance(const Tensor& best, int32_t eos, int32_t pad, Tensor& tokens, Tensor& finished, Tensor& lengths,
                    Tensor& history) {
  const int64_t rows = best.dim(0);
  rt::launch(greedy_advance_kernel, rt::blocks_for(rows, 128), 128, 0, best.data<int32_t>(), eos, pad, rows,
             history.dim(1), tokens.data<int32_t>(), finished.data<uint8_t>(), lengths.data<int32_t>(),
             history.data<int32_t>());
}

}  // namespace elephant::ops::cuda
