#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/backends.h"

namespace elephant::ops::cpu {

void topk(const Tensor& x, int k, Tensor& values, Tensor& indices) {
  const int64_t rows = x.dim(0), n = x.dim(1);
  const float* in = x.data<float>();
  float* best_values = values.data<float>();
  int32_t* best_indices = indices.data<int32_t>();
#pragma omp parallel for if (rows * n > 262144)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = in + r * n;
    // (value, index) pairs kept sorted best first; a new value enters only when strictly better than the
    // worst kept one, so among equal values the first (smallest index) stays ahead.
    std::vector<std::pair<float, int32_t>> best;
    best.reserve(static_cast<size_t>(k) + 1);
    for (int64_t i = 0; i < n; ++i) {
      const float v = row[i];
      if (std::isnan(v)) continue;
      if (static_cast<int>(best.size()) == k && !(v > best.back().first)) continue;
      const auto at = std::upper_bound(best.begin(), best.end(), v,
                                       [](float value, const std::pair<float, int32_t>& e) { return value > e.first; });
      best.insert(at, {v, static_cast<int32_t>(i)});
      if (static_cast<int>(best.size()) > k) best.pop_back();
    }
    for (int j = 0; j < k; ++j) {
      const bool have = j < static_cast<int>(best.size());
      best_values[r * k + j] = have ? best[j].first : NAN;
      best_indices[r * k + j] = have ? best[j].second : -1;
    }
  }
}

void add_row_values(Tensor& x, const Tensor& row_values) {
  const int64_t rows = x.dim(0), n = x.dim(1);
  float* data = x.data<float>();
  const float* add = row_values.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) data[r * n + i] += add[r];
}

void fill_column(Tensor& x, int64_t column, float value) {
  for (int64_t r = 0; r < x.dim(0); ++r) x.data<float>()[r * x.dim(1) + column] = value;
}

}  // namespace elephant::ops::cpu
