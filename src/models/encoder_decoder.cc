#include "models/encoder_decoder.h"

#include <stdexcept>

namespace elephant {

Tensor EncoderDecoderModel::step(DecoderState& state, const Tensor& tokens) {
  const Device device = options().device;
  const int64_t rows = state.rows();
  if (tokens.shape() != Shape{rows} || tokens.dtype() != DType::I32 || tokens.device() != device)
    throw std::invalid_argument("step: tokens " + dtype_name(tokens.dtype()) + shape_string(tokens.shape()) + "@" +
                                to_string(tokens.device()) + " for " + std::to_string(rows) + " rows on " +
                                to_string(device));
  state.prepare_step();
  const Shape logits_shape{rows, special_tokens().vocab_size};
  DecoderState::StepGraph& recorded = state.step_graph_;
  const bool graphs = device == Device::CUDA && options().cuda_graphs && rows > 0;
  bool replay = graphs && recorded.version == state.version();
  if (graphs && !replay) {
    // New rows or layouts: the recording is stale. This step runs kernel by kernel and the next one is recorded, so
    // that first-use work (module loading, cuBLAS heuristics) never happens inside a capture and a layout used once
    // is not recorded; but a decode's first step is recorded at once when its row count has run before.
    recorded.graph = CudaGraph();
    recorded.version = state.version();
    const std::lock_guard<std::mutex> lock(warmed_mutex_);
    replay = state.steps_done() == 0 && warmed_rows_.count(rows) != 0;
  }
  Tensor logits;
  if (replay) {
    if (recorded.graph.empty()) {
      // Input and output live outside the graph, at addresses fixed for its replays.
      recorded.tokens = Tensor::empty({rows}, DType::I32, device);
      recorded.logits = Tensor::empty(logits_shape, DType::F32, device);
      recorded.graph.capture([&] { compute_step(state, recorded.tokens, recorded.logits); });
    }
    recorded.tokens.copy_from(tokens);
    recorded.graph.replay();
    logits = recorded.logits;
  } else {
    logits = Tensor::empty(logits_shape, DType::F32, device);
    compute_step(state, tokens, logits);
    if (graphs) {
      const std::lock_guard<std::mutex> lock(warmed_mutex_);
      warmed_rows_.insert(rows);
    }
  }
  state.finish_step();
  return logits;
}

}  // namespace elephant
