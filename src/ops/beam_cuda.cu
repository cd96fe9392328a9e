#include "core/cuda/runtime.cuh"
#include "ops/backends.h"
#include "ops/beam_source.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

// One thread per source: a source's step is a sequential merge of at most 2 x beam_size candidates into lists of
// beam_size, and there are a few hundred sources at most. What matters is that the step stays on the device.
__global__ void beam_advance_kernel(beam::Step step, const float* __restrict__ values,
                                    const int32_t* __restrict__ indices, int64_t sources, beam::Source first) {
  rt::await_previous_kernel();
  const int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (s >= sources) return;
  beam::advance(step, values + s * step.count, indices + s * step.count, static_cast<int32_t>(s * step.beam_size),
                beam::source_at(first, s, step));
}

// One thread per requested source, following its best hypothesis back through the history.
__global__ void beam_best_tokens_kernel(beam::Hypotheses hypotheses, const int32_t* __restrict__ sources, int64_t count,
                                        int64_t width, int32_t* __restrict__ ids, int32_t* __restrict__ lengths) {
  rt::await_previous_kernel();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  lengths[i] = beam::best_tokens(hypotheses, sources[i], ids + i * width);
}

}  // namespace

void beam_advance(const Tensor& values, const Tensor& indices, int step, const BeamOptions& options, BeamState& state) {
  const int64_t sources = values.dim(0);
  rt::launch(beam_advance_kernel, rt::blocks_for(sources, 64), 64, 0,
             beam::step_of(options, step, static_cast<int>(values.dim(1))), values.data<float>(),
             indices.data<int32_t>(), sources, beam::first_source(state));
}

void beam_best_tokens(const BeamState& state, const Tensor& sources, Tensor& ids, Tensor& lengths) {
  const int64_t count = ids.dim(0);
  rt::launch(beam_best_tokens_kernel, rt::blocks_for(count, 64), 64, 0, beam::hypotheses_of(state),
             sources.data<int32_t>(), count, ids.dim(1), ids.data<int32_t>(), lengths.data<int32_t>());
}

}  // namespace elephant::ops::cuda
