#include <algorithm>

#include "decoding/search.h"

namespace elephant {

int64_t batch_bucket(int64_t rows) {
  if (rows <= 2) return std::max<int64_t>(rows, 0);
  int64_t power = 2;
  while (power * 2 < rows) power *= 2;  // power < rows <= 2 * power
  return rows <= power + power / 2 ? power + power / 2 : 2 * power;
}

std::vector<int32_t> entries_to_keep(const std::vector<uint8_t>& done, bool prune, bool bucketed) {
  const auto size = static_cast<int64_t>(done.size());
  const auto live = static_cast<int64_t>(std::count(done.begin(), done.end(), uint8_t{0}));
  const int64_t target = !prune ? size : bucketed ? batch_bucket(live) : live;
  if (target >= size) return {};
  std::vector<int32_t> keep;
  int64_t padding = target - live;
  for (int64_t i = 0; i < size; ++i) {
    if (done[i] && padding == 0) continue;
    if (done[i]) --padding;
    keep.push_back(static_cast<int32_t>(i));
  }
  return keep;
}

}  // namespace elephant
