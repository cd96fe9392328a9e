#include "ops/backends.h"

namespace elephant::ops::cpu {

void greedy_advance(const Tensor& best, int32_t eos, int32_t pad, Tensor& tokens, Tensor& finished, Tensor& lengths,
                    Tensor& history) {
  const int32_t* chosen = best.data<int32_t>();
  int32_t* next = tokens.data<int32_t>();
  uint8_t* done = finished.data<uint8_t>();
  int32_t* length = lengths.data<int32_t>();
  int32_t* ids = history.data<int32_t>();
  const int64_t capacity = history.dim(1);
  for (int64_t r = 0; r < best.dim(0); ++r) {
    if (done[r]) {
      next[r] = pad;
      continue;
    }
    ids[r * capacity + length[r]++] = chosen[r];
    next[r] = chosen[r];
    if (chosen[r] == eos) done[r] = 1;
  }
}

}  // namespace elephant::ops::cpu
