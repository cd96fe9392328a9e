#include "ops/beam.h"

#include <initializer_list>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/beam_source.h"
#include "ops/gather.h"

namespace elephant::ops {

BeamState BeamState::start(int64_t sources, const BeamOptions& options, int32_t decoder_start, Device device) {
  if (sources < 0 || options.beam_size < 1 || options.max_length < 1)
    throw std::invalid_argument("BeamState::start: " + std::to_string(sources) + " sources of " +
                                std::to_string(options.beam_size) + " beams, max_length " +
                                std::to_string(options.max_length));
  const int64_t beams = options.beam_size, rows = sources * beams;
  std::vector<float> scores(static_cast<size_t>(rows), beam::kExcluded);
  for (int64_t s = 0; s < sources; ++s) scores[s * beams] = 0.0f;
  std::vector<int32_t> rows_in_place(static_cast<size_t>(rows));
  std::iota(rows_in_place.begin(), rows_in_place.end(), 0);
  BeamState state;
  state.scores = Tensor::from_vector(scores, {sources, beams}, device);
  state.history_tokens = Tensor::zeros({sources, options.max_length, beams}, DType::I32, device);
  state.history_parents = Tensor::zeros({sources, options.max_length, beams}, DType::I32, device);
  state.finished_scores =
      Tensor::from_vector(std::vector<float>(scores.size(), beam::kExcluded), {sources, beams}, device);
  state.finished_lengths = Tensor::zeros({sources, beams}, DType::I32, device);
  state.finished_last = Tensor::zeros({sources, beams}, DType::I32, device);
  state.finished_parents = Tensor::zeros({sources, beams}, DType::I32, device);
  state.can_improve = Tensor::from_vector(std::vector<uint8_t>(static_cast<size_t>(sources), 1), {sources}, device);
  state.next_tokens =
      Tensor::from_vector(std::vector<int32_t>(static_cast<size_t>(rows), decoder_start), {sources, beams}, device);
  state.next_rows = Tensor::from_vector(rows_in_place, {sources, beams}, device);
  return state;
}

void BeamState::keep_sources(const Tensor& kept) {
  if (kept.rank() != 1)
    throw std::invalid_argument("BeamState::keep_sources: sources " + shape_string(kept.shape()) + ", expected [n]");
  for (Tensor* t : {&scores, &history_tokens, &history_parents, &finished_scores, &finished_lengths, &finished_last,
                    &finished_parents, &can_improve, &next_tokens, &next_rows}) {
    Shape shape = t->shape();
    shape[0] = kept.dim(0);
    Tensor out = Tensor::empty(shape, t->dtype(), t->device());
    gather_rows(*t, kept, out);
    *t = out;
  }
}

}  // namespace elephant::ops
