#include <algorithm>
#include <stdexcept>

#include "layers/transformer_layers.h"
#include "models/encoder_decoder.h"
#include "ops/elementwise.h"
#include "ops/gather.h"
#include "ops/kv_cache.h"

namespace elephant {

DecoderState::DecoderState(std::vector<int64_t> source_offsets, int rows_per_source, int max_steps, Device device)
    : source_offsets_(std::move(source_offsets)), max_steps_(max_steps), device_(device) {
  const int sources = static_cast<int>(source_offsets_.size()) - 1;
  for (int s = 0; s < sources; ++s)
    for (int b = 0; b < rows_per_source; ++b) row_source_.push_back(s);
}

namespace {

// Copies rows of a [rows, slots, width] cache into a new one with `slots` slots, only the slots already written.
Tensor copy_cache_rows(const Tensor& cache, const std::vector<int32_t>& rows, int filled, int64_t slots) {
  const auto count = static_cast<int64_t>(rows.size());
  Tensor out = Tensor::empty({count, slots, cache.dim(2)}, cache.dtype(), cache.device());
  ops::gather_cache_rows(cache, Tensor::from_vector(rows, {count}, cache.device()), filled, out);
  return out;
}

// Puts the written slots of the old rows `rows` of `cache` (a view of the first rows of its buffer) into the first
// rows.size() rows of the same buffer, through a compact copy, and returns the view of those rows: a cache keeps
// its address for the whole decode, as a CUDA graph replaying the step needs.
Tensor select_cache_rows(const Tensor& cache, const std::vector<int32_t>& rows, int filled) {
  const auto count = static_cast<int64_t>(rows.size());
  Tensor kept = cache.narrow(0, count);
  if (filled == 0 || count == 0) return kept;
  const Tensor compact = copy_cache_rows(cache, rows, filled, filled);
  std::vector<int32_t> in_order(rows.size());
  for (size_t i = 0; i < in_order.size(); ++i) in_order[i] = static_cast<int32_t>(i);
  ops::gather_cache_rows(compact, Tensor::from_vector(in_order, {count}, cache.device()), filled, kept);
  return kept;
}

// Keeps the packed token ranges of the sources in `kept`, moved to the start of the same buffer.
Tensor select_source_tokens(const Tensor& memory, const std::vector<int64_t>& offsets,
                            const std::vector<int32_t>& kept) {
  std::vector<int32_t> tokens;
  for (int32_t s : kept)
    for (int64_t t = offsets[s]; t < offsets[s + 1]; ++t) tokens.push_back(static_cast<int32_t>(t));
  const auto count = static_cast<int64_t>(tokens.size());
  Tensor compact = Tensor::empty({count, memory.dim(1)}, memory.dtype(), memory.device());
  ops::gather_rows(memory, Tensor::from_vector(tokens, {count}, memory.device()), compact);
  Tensor out = memory.narrow(0, count);
  out.copy_from(compact);
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
    layer.self_keys = select_cache_rows(layer.self_keys, rows, steps_done_);
    layer.self_values = select_cache_rows(layer.self_values, rows, steps_done_);
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
  self_layout_slots_ = -1;
  cross_layout_built_ = false;
  active_ = Tensor();
  ++version_;
}

void DecoderState::set_active_rows(const std::vector<uint8_t>& active) {
  if (static_cast<int64_t>(active.size()) != rows())
    throw std::invalid_argument("DecoderState::set_active_rows: " + std::to_string(active.size()) + " flags for " +
                                std::to_string(rows()) + " rows");
  const bool was_defined = active_.defined();
  if (std::all_of(active.begin(), active.end(), [](uint8_t a) { return a != 0; })) {
    active_ = Tensor();
  } else {
    // Written into a buffer kept for the decode: new flags for the same rows leave a recorded step valid.
    if (!active_storage_.defined() || active_storage_.dim(0) < rows())
      active_storage_ = Tensor::empty({rows()}, DType::U8, device_);
    active_ = active_storage_.narrow(0, rows());
    active_.copy_from(Tensor::from_vector(active, {rows()}));
  }
  if (active_.defined() != was_defined) ++version_;
}

void DecoderState::reserve_next_step() {
  if (steps_done_ >= max_steps_)
    throw std::logic_error("DecoderState: all " + std::to_string(max_steps_) + " steps are used");
  std::vector<int32_t> all_rows;
  for (Layer& layer : layers_) {
    const int64_t slots = layer.self_keys.dim(1);
    if (steps_done_ < slots) continue;
    if (all_rows.empty())
      for (size_t r = 0; r < row_source_.size(); ++r) all_rows.push_back(static_cast<int32_t>(r));
    const int64_t grown = std::min<int64_t>(max_steps_, std::max<int64_t>(16, 2 * slots));
    layer.self_keys = copy_cache_rows(layer.self_keys, all_rows, steps_done_, grown);
    layer.self_values = copy_cache_rows(layer.self_values, all_rows, steps_done_, grown);
    ++version_;
  }
}

void DecoderState::prepare_step() {
  reserve_next_step();
  self_attention_layout();
  cross_attention_layout();
}

void DecoderState::attend_self(Layer& layer, const Tensor& queries, const Tensor& keys, const Tensor& values,
                               const ops::AttentionArgs& args, Tensor& out) {
  // On a device the layout's slot is not checked: the host's steps_done is.
  const int64_t width = layer.self_keys.dim(2);
  const Shape step{rows(), width};
  if (steps_done_ >= layer.self_keys.dim(1) || queries.shape() != step || keys.shape() != step ||
      values.shape() != step)
    throw std::invalid_argument("DecoderState::attend_self: queries " + shape_string(queries.shape()) + ", keys " +
                                shape_string(keys.shape()) + ", values " + shape_string(values.shape()) +
                                " into slot " + std::to_string(steps_done_) + " of " +
                                shape_string(layer.self_keys.shape()));
  Tensor key_cache = layer.self_keys.reshape({-1, width});
  Tensor value_cache = layer.self_values.reshape({-1, width});
  ops::attention_with_append(queries, keys, values, key_cache, value_cache, self_attention_layout(), args, out);
}

const ops::AttentionLayout& DecoderState::self_attention_layout() {
  const int64_t slots = layers_.empty() ? 0 : layers_.front().self_keys.dim(1);
  if (slots != self_layout_slots_) build_self_layout(slots);
  return self_layout_;
}

const ops::AttentionLayout& DecoderState::cross_attention_layout() {
  if (!cross_layout_built_) build_cross_layout();
  return cross_layout_;
}

void DecoderState::advance_positions() {
  if (self_layout_slots_ >= 0 && rows() > 0) {
    ops::add_scalar(self_layout_.key_length, 1);
    ops::add_scalar(self_layout_.query_position, 1);
  }
}

// Row r's keys are its own slots [r * slots, r * slots + steps_done]; max_keys bounds every later step too.
void DecoderState::build_self_layout(int64_t slots) {
  std::vector<int32_t> query_begin, key_begin, key_length, query_position;
  for (int64_t r = 0; r < rows(); ++r) {
    query_begin.push_back(static_cast<int32_t>(r));
    key_begin.push_back(static_cast<int32_t>(r * slots));
    key_length.push_back(steps_done_ + 1);
    query_position.push_back(steps_done_);
  }
  query_begin.push_back(static_cast<int32_t>(rows()));
  self_layout_ =
      ops::AttentionLayout::from_host(query_begin, key_begin, key_length, query_position, device_, self_storage_);
  self_layout_.max_keys = std::max<int64_t>(self_layout_.max_keys, slots);
  self_layout_slots_ = slots;
  ++version_;
}

void DecoderState::build_cross_layout() {
  std::vector<int32_t> query_begin, key_begin, key_length, query_position;
  for (int64_t r = 0; r < rows(); ++r) {
    const int32_t source = row_source_[r];
    query_begin.push_back(static_cast<int32_t>(r));
    key_begin.push_back(static_cast<int32_t>(source_offsets_[source]));
    key_length.push_back(static_cast<int32_t>(source_offsets_[source + 1] - source_offsets_[source]));
    query_position.push_back(0);
  }
  query_begin.push_back(static_cast<int32_t>(rows()));
  cross_layout_ =
      ops::AttentionLayout::from_host(query_begin, key_begin, key_length, query_position, device_, cross_storage_);
  cross_layout_built_ = true;
  ++version_;
}

Tensor EncoderDecoderModel::step(DecoderState& state, const std::vector<int32_t>& tokens) {
  return step(state, layers::token_ids(tokens, special_tokens().vocab_size, state.device()));
}

void DecoderState::reorder_rows(const Tensor& parents) {
  if (!parents.defined() || parents.dtype() != DType::I32 || parents.device() != device_ ||
      parents.shape() != Shape{rows()})
    throw std::invalid_argument("DecoderState::reorder_rows: parents " +
                                (parents.defined() ? dtype_name(parents.dtype()) + shape_string(parents.shape()) + "@" +
                                                         to_string(parents.device())
                                                   : std::string("undefined")) +
                                " for " + std::to_string(rows()) + " rows on " + to_string(device_));
  if (device_ == Device::CPU)
    for (int64_t r = 0; r < rows(); ++r) {
      const int32_t parent = parents.data<int32_t>()[r];
      if (parent < 0 || parent >= rows() || row_source_[parent] != row_source_[r])
        throw std::out_of_range("DecoderState::reorder_rows: row " + std::to_string(r) + " of source " +
                                std::to_string(row_source_[r]) + " continues row " + std::to_string(parent) + " of " +
                                std::to_string(rows()) + ", not a row of that source");
    }
  if (steps_done_ == 0 || rows() == 0 || layers_.empty()) return;
  // A search keeps a source's rows together, the same number for every source: then all caches move in place in one
  // op, a group of rows at a time. Other layouts, and more than kMaxCacheGroup beams, gather each cache and back.
  const int64_t group = source_group_rows();
  if (group > 0 && group <= ops::kMaxCacheGroup) {
    std::vector<Tensor*> caches;
    for (Layer& layer : layers_) caches.insert(caches.end(), {&layer.self_keys, &layer.self_values});
    ops::reorder_cache_groups(caches, parents, group, steps_done_);
    return;
  }
  // The self layout's query_begin is 0..rows (one query per row): the identity that copies the reordered slots
  // back, already on the device.
  const Tensor& in_place = self_attention_layout().query_begin;
  for (Layer& layer : layers_)
    for (Tensor* cache : {&layer.self_keys, &layer.self_values}) {
      Tensor reordered = Tensor::empty({rows(), steps_done_, cache->dim(2)}, cache->dtype(), device_);
      ops::gather_cache_rows(*cache, parents, steps_done_, reordered);
      ops::gather_cache_rows(reordered, in_place, steps_done_, *cache);
    }
}

int64_t DecoderState::source_group_rows() const {
  const auto count = static_cast<int64_t>(row_source_.size());
  int64_t group = 1;
  while (group < count && row_source_[group] == row_source_[0]) ++group;
  if (count % group != 0) return 0;
  for (int64_t r = 0; r < count; ++r) {
    const bool starts_group = r % group == 0;
    // Sources rise from group to group, so that each is one group.
    if (starts_group ? r > 0 && row_source_[r] <= row_source_[r - 1] : row_source_[r] != row_source_[r - 1]) return 0;
  }
  return group;
}

}  // namespace elephant
