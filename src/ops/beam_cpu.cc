#include "ops/backends.h"
#include "ops/beam_source.h"

namespace elephant::ops::cpu {

void beam_advance(const Tensor& values, const Tensor& indices, int step, const BeamOptions& options, BeamState& state) {
  const auto count = static_cast<int>(values.dim(1));
  const beam::Step args = beam::step_of(options, step, count);
  const beam::Source first = beam::first_source(state);
  for (int64_t s = 0; s < values.dim(0); ++s)
    beam::advance(args, values.data<float>() + s * count, indices.data<int32_t>() + s * count,
                  static_cast<int32_t>(s * options.beam_size), beam::source_at(first, s, args));
}

void beam_best_tokens(const BeamState& state, const Tensor& sources, Tensor& ids, Tensor& lengths) {
  const beam::Hypotheses hypotheses = beam::hypotheses_of(state);
  for (int64_t i = 0; i < ids.dim(0); ++i)
    lengths.data<int32_t>()[i] =
        beam::best_tokens(hypotheses, sources.data<int32_t>()[i], ids.data<int32_t>() + i * ids.dim(1));
}

}  // namespace elephant::ops::cpu
