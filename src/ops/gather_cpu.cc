#include <cstring>

#include "ops/backends.h"

namespace elephant::ops::cpu {

void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) {
  const int64_t count = out.dim(0);
  const size_t row_bytes = out.nbytes() / static_cast<size_t>(count);
  const int32_t* index = rows.data<int32_t>();
  const auto* in = static_cast<const char*>(x.raw());
  auto* o = static_cast<char*>(out.raw());
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(o + i * row_bytes, in + static_cast<size_t>(index[i]) * row_bytes, row_bytes);
  }
}

}  // namespace elephant::ops::cpu
