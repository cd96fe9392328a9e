#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

#include "ops/relative_position.h"

namespace elephant::ops {

int relative_position_bucket(int relative_position, const RelativePositionArgs& args) {
  int num_buckets = args.num_buckets;
  int bucket = 0;
  int distance;
  if (args.bidirectional) {
    num_buckets /= 2;
    if (relative_position > 0) bucket += num_buckets;
    distance = std::abs(relative_position);
  } else {
    distance = -std::min(relative_position, 0);
  }
  const int max_exact = num_buckets / 2;
  if (distance < max_exact) return bucket + distance;
  // Same float32 operation order as transformers, so that positions on a bucket boundary agree.
  const float log_ratio = std::log(static_cast<float>(distance) / static_cast<float>(max_exact)) /
                          static_cast<float>(std::log(static_cast<double>(args.max_distance) / max_exact)) *
                          static_cast<float>(num_buckets - max_exact);
  const int large = max_exact + static_cast<int>(log_ratio);
  return bucket + std::min(large, num_buckets - 1);
}

Tensor relative_position_bias(const Tensor& table, int max_offset, const RelativePositionArgs& args) {
  if (table.rank() != 2 || table.dim(0) != args.num_buckets)
    throw std::invalid_argument("relative_position_bias: table " + shape_string(table.shape()) + " for " +
                                std::to_string(args.num_buckets) + " buckets");
  const int64_t heads = table.dim(1);
  const int64_t width = 2 * static_cast<int64_t>(max_offset) + 1;
  Tensor out = Tensor::empty({heads, width});
  const float* t = table.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < width; ++i) {
    const int bucket = relative_position_bucket(static_cast<int>(i) - max_offset, args);
    for (int64_t h = 0; h < heads; ++h) o[h * width + i] = t[bucket * heads + h];
  }
  return out;
}

}  // namespace elephant::ops
