#include <algorithm>
#include <numeric>

#include "core/host_readback.h"
#include "decoding/search.h"
#include "ops/beam.h"
#include "ops/topk.h"

namespace elephant {

// transformers' vectorized beam search (early_stopping=False) with its bookkeeping on the model's device: per step
// only each live source's can_improve flag comes back (one byte, HostReadback), and a source's ids when it is done.
// Pipelined like greedy search: step t + 1 is queued before the host reads step t's flags, and what they decide acts
// on the sources as step t + 1 left them, which is the same: beam_advance leaves a source that cannot improve as it
// is (its rows continue themselves), and the sources done at step t + 1 are found a round later.
std::vector<std::vector<int32_t>> beam_search(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                              const SearchOptions& options) {
  const SpecialTokens& special = model.special_tokens();
  const int beam_size = options.beam_size;
  const auto sources = static_cast<int64_t>(encoded.offsets.size()) - 1;
  std::vector<std::vector<int32_t>> results(static_cast<size_t>(std::max<int64_t>(sources, 0)));
  if (sources <= 0) return results;
  auto state = model.start_decoding(encoded, beam_size, options.max_length);
  const Device device = state->device();
  const bool pipelined = options.pipeline_steps.value_or(device == Device::CUDA);

  ops::BeamOptions beam_options;
  beam_options.beam_size = beam_size;
  beam_options.eos = special.eos;
  beam_options.max_length = options.max_length;
  beam_options.length_penalty = options.length_penalty;
  ops::BeamState beams = ops::BeamState::start(sources, beam_options, special.decoder_start, device);
  // The source each of the beam state's sources decodes; -1: a done source kept in the batch as padding, its result
  // already reported.
  std::vector<int32_t> live(static_cast<size_t>(sources));
  std::iota(live.begin(), live.end(), 0);

  // The best finished hypotheses of the beam state's sources `positions` into their results.
  const auto collect = [&](const std::vector<int32_t>& all_positions) {
    std::vector<int32_t> positions;
    for (int32_t position : all_positions)
      if (live[position] >= 0) positions.push_back(position);
    if (positions.empty()) return;
    const auto count = static_cast<int64_t>(positions.size());
    Tensor ids = Tensor::empty({count, options.max_length}, DType::I32, device);
    Tensor lengths = Tensor::empty({count}, DType::I32, device);
    ops::beam_best_tokens(beams, Tensor::from_vector(positions, {count}, device), ids, lengths);
    const std::vector<int32_t> length = lengths.to_vector<int32_t>();
    const std::vector<int32_t> id = ids.to_vector<int32_t>();
    for (size_t i = 0; i < positions.size(); ++i) {
      const int32_t* first = id.data() + static_cast<int64_t>(i) * options.max_length;
      results[live[positions[i]]].assign(first, first + length[i]);
    }
  };

  // Queues step `step`: log-probs plus each row's running score, then the best 2 x beam_size of every source's beams x
  // vocab (torch.topk over the flattened scores, as transformers does; one op, ops::beam_candidates), the bookkeeping,
  // pipelined (unless it is the last step) the caches' rows following their beams, and the copy of the can_improve
  // flags into flags[step % 2]. The copy goes last: a kernel queued behind a copy started ~7 us after it on the H100,
  // one queued behind a kernel as it ended.
  HostReadback flags[2];
  const auto follow_beams = [&] { state->reorder_rows(beams.next_rows.reshape({beams.sources() * beam_size})); };
  const auto queue_step = [&](int step) {
    const int64_t live_count = beams.sources(), rows = live_count * beam_size;
    const Tensor logits = model.step(*state, beams.next_tokens.reshape({rows}));
    const int64_t vocab = logits.dim(1);
    const int count = static_cast<int>(std::min<int64_t>(2 * beam_size, beam_size * vocab));
    Tensor top_values = Tensor::empty({live_count, count}, DType::F32, device);
    Tensor top_indices = Tensor::empty({live_count, count}, DType::I32, device);
    ops::beam_candidates(logits, beams.scores.reshape({rows}), beam_size, step < options.min_length ? special.eos : -1,
                         count, top_values, top_indices);
    beam_options.vocab = vocab;
    ops::beam_advance(top_values, top_indices, step, beam_options, beams);
    if (pipelined && step + 1 < options.max_length) follow_beams();
    flags[step % 2].start(beams.can_improve);
  };

  queue_step(0);
  size_t done_before = 0;
  for (int step = 0;; ++step) {
    const bool more = step + 1 < options.max_length;  // the caches have max_length slots
    if (pipelined && more) queue_step(step + 1);
    const Tensor& step_flags = flags[step % 2].wait();
    const uint8_t* flag = step_flags.data<uint8_t>();
    const std::vector<uint8_t> improving(flag, flag + step_flags.numel());
    const auto done = static_cast<size_t>(std::count(improving.begin(), improving.end(), uint8_t{0}));
    if (done == improving.size() || !more) {
      std::vector<int32_t> all(improving.size());
      std::iota(all.begin(), all.end(), 0);
      collect(all);  // pipelined, step + 1 ran as well: it left every done source as it was
      break;
    }
    if (!pipelined) follow_beams();
    if (done != done_before) {
      done_before = done;
      std::vector<uint8_t> source_done(improving.size());
      std::vector<int32_t> finished;
      for (size_t position = 0; position < improving.size(); ++position) {
        source_done[position] = improving[position] ? 0 : 1;
        if (source_done[position]) finished.push_back(static_cast<int32_t>(position));
      }
      collect(finished);
      for (int32_t position : finished) live[position] = -1;

      // Done sources in the batch (without pruning, or as padding on a GPU) keep their rows idle: no expert work.
      const std::vector<int32_t> keep = entries_to_keep(source_done, options.prune_finished, device == Device::CUDA);
      if (keep.empty()) {
        std::vector<uint8_t> active;
        for (uint8_t improves : improving) active.insert(active.end(), static_cast<size_t>(beam_size), improves);
        state->set_active_rows(active);
      } else {
        std::vector<int32_t> kept_rows;
        std::vector<uint8_t> active;
        for (int32_t position : keep)
          for (int k = 0; k < beam_size; ++k) {
            kept_rows.push_back(position * beam_size + k);
            active.push_back(improving[position]);
          }
        // The caches' rows already follow the beams of the last step (pipelined, of step + 1), whose next_rows this
        // makes stale: the next step writes new ones before they are used.
        state->select_rows(kept_rows);
        state->set_active_rows(active);
        beams.keep_sources(Tensor::from_vector(keep, {static_cast<int64_t>(keep.size())}, device));
        std::vector<int32_t> kept_sources;
        for (int32_t position : keep) kept_sources.push_back(live[position]);
        live = std::move(kept_sources);
        done_before = keep.size() - (improving.size() - done);  // every live source is kept: the rest is padding
        // Pipelined, step + 1's flags are on their way in the old source order: the compacted ones replace them.
        if (pipelined) flags[(step + 1) % 2].start(beams.can_improve);
      }
    }
    if (!pipelined) queue_step(step + 1);
  }
  return results;
}

}  // namespace elephant
