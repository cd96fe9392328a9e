#include <algorithm>
#include <stdexcept>

#include "models/encoder_decoder.h"

namespace elephant {

DecoderState::DecoderState(std::vector<int64_t> source_offsets, int rows_per_source, int max_steps)
    : source_offsets_(std::move(source_offsets)), max_steps_(max_steps) {
  const int sources = static_cast<int>(source_offsets_.size()) - 1;
  for (int s = 0; s < sources; ++s)
    for (int b = 0; b < rows_per_source; ++b) row_source_.push_back(s);
}

namespace {

// Copies rows of a [rows, slots, width] cache into one with `slots` slots, only the slots already written.
Tensor copy_cache_rows(const Tensor& cache, const std::vector<int32_t>& rows, int filled, int64_t slots) {
  const int64_t old_slots = cache.dim(1);
  const int64_t width = cache.dim(2);
  Tensor out = Tensor::empty({static_cast<int64_t>(rows.size()), slots, width});
  const float* in = cache.data<float>();
  float* o = out.data<float>();
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy_n(in + rows[i] * old_slots * width, filled * width, o + i * slots * width);
  return out;
}

// Keeps the packed token ranges of the sources in `kept`.
Tensor select_source_tokens(const Tensor& memory, const std::vector<int64_t>& offsets,
                            const std::vector<int32_t>& kept) {
  const int64_t width = memory.dim(1);
  int64_t tokens = 0;
  for (int32_t s : kept) tokens += offsets[s + 1] - offsets[s];
  Tensor out = Tensor::empty({tokens, width});
  const float* in = memory.data<float>();
  float* o = out.data<float>();
  for (int32_t s : kept) {
    const int64_t n = (offsets[s + 1] - offsets[s]) * width;
    o = std::copy_n(in + offsets[s] * width, n, o);
  }
  return out;
}

}  // namespace

void DecoderState::select_rows(const std::vector<int32_t>& rows) {
  for (int32_t r : rows)
    if (r < 0 || r >= this->rows())
      throw std::out_of_range("DecoderState::select_rows: row " + std::to_string(r) + " of " +
                              std::to_string(this->rows()));
  // Sources still referenced, in order; their new indices.
  const size_t old_sources = source_offsets_.size() - 1;
  std::vector<int32_t> new_index(old_sources, -1);
  for (int32_t r : rows) new_index[row_source_[r]] = 0;
  std::vector<int32_t> kept;
  for (size_t s = 0; s < old_sources; ++s)
    if (new_index[s] == 0) {
      new_index[s] = static_cast<int32_t>(kept.size());
      kept.push_back(static_cast<int32_t>(s));
    }

  for (Layer& layer : layers_) {
    layer.self_keys = copy_cache_rows(layer.self_keys, rows, steps_done_, layer.self_keys.dim(1));
    layer.self_values = copy_cache_rows(layer.self_values, rows, steps_done_, layer.self_values.dim(1));
    if (kept.size() != old_sources) {
      layer.cross_keys = select_source_tokens(layer.cross_keys, source_offsets_, kept);
      layer.cross_values = select_source_tokens(layer.cross_values, source_offsets_, kept);
    }
  }
  if (kept.size() != old_sources) {
    std::vector<int64_t> offsets{0};
    for (int32_t s : kept) offsets.push_back(offsets.back() + source_offsets_[s + 1] - source_offsets_[s]);
    source_offsets_ = std::move(offsets);
  }
  std::vector<int32_t> row_source(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) row_source[i] = new_index[row_source_[rows[i]]];
  row_source_ = std::move(row_source);
}

void DecoderState::reserve_next_step() {
  if (steps_done_ >= max_steps_)
    throw std::logic_error("DecoderState: all " + std::to_string(max_steps_) + " steps are used");
  std::vector<int32_t> all_rows(row_source_.size());
  for (size_t r = 0; r < all_rows.size(); ++r) all_rows[r] = static_cast<int32_t>(r);
  for (Layer& layer : layers_) {
    const int64_t slots = layer.self_keys.dim(1);
    if (steps_done_ < slots) continue;
    const int64_t grown = std::min<int64_t>(max_steps_, std::max<int64_t>(16, 2 * slots));
    layer.self_keys = copy_cache_rows(layer.self_keys, all_rows, steps_done_, grown);
    layer.self_values = copy_cache_rows(layer.self_values, all_rows, steps_done_, grown);
  }
}

}  // namespace elephant
