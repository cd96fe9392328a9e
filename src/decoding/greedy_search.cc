#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "core/host_readback.h"
#include "decoding/search.h"
#include "ops/gather.h"
#include "ops/greedy.h"
#include "ops/topk.h"

namespace elephant {

std::vector<std::vector<int32_t>> generate(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                           const SearchOptions& options) {
  if (options.beam_size < 1) throw std::invalid_argument("beam_size must be at least 1");
  if (options.max_length < 1) throw std::invalid_argument("max_length must be at least 1");
  return options.beam_size == 1 ? greedy_search(model, encoded, options) : beam_search(model, encoded, options);
}

// Tokens, finished flags and each row's generated ids live on the model's device; per step only the finished flags
// come back (one byte a row, without waiting for the whole device: HostReadback), and a sentence's ids when it is
// done. Pipelined, step t + 1 is queued before the host reads step t's flags, so that the device does not wait for
// the host: what step t's flags decide (reporting, compacting the batch, stopping) then acts on the rows as step t + 1
// left them. The results are the same: a row that finished at step t keeps its history and length (greedy_advance
// only feeds it pad), and the rows that finished at step t + 1 are still live by step t's flags, found a round later.
std::vector<std::vector<int32_t>> greedy_search(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                                const SearchOptions& options) {
  const SpecialTokens& special = model.special_tokens();
  const auto sources = static_cast<int64_t>(encoded.offsets.size()) - 1;
  std::vector<std::vector<int32_t>> results(static_cast<size_t>(std::max<int64_t>(sources, 0)));
  if (sources <= 0) return results;
  auto state = model.start_decoding(encoded, 1, options.max_length);
  const Device device = state->device();
  const bool pipelined = options.pipeline_steps.value_or(device == Device::CUDA);  // see SearchOptions

  // The source each row decodes; -1: a finished row kept in the batch as padding, its result already reported.
  std::vector<int32_t> row_to_source(static_cast<size_t>(sources));
  std::iota(row_to_source.begin(), row_to_source.end(), 0);
  Tensor tokens =
      Tensor::from_vector(std::vector<int32_t>(row_to_source.size(), special.decoder_start), {sources}, device);
  Tensor finished = Tensor::zeros({sources}, DType::U8, device);
  Tensor lengths = Tensor::zeros({sources}, DType::I32, device);
  Tensor history = Tensor::empty({sources, options.max_length}, DType::I32, device);

  // The ids of rows `rows` into their sources' results: only those rows' histories and lengths leave the device.
  const auto collect = [&](const std::vector<int32_t>& rows) {
    if (rows.empty()) return;
    const auto count = static_cast<int64_t>(rows.size());
    const Tensor picked = Tensor::from_vector(rows, {count}, device);
    Tensor done_lengths = Tensor::empty({count}, DType::I32, device);
    Tensor done_ids = Tensor::empty({count, options.max_length}, DType::I32, device);
    ops::gather_rows(lengths, picked, done_lengths);
    ops::gather_rows(history, picked, done_ids);
    const std::vector<int32_t> length = done_lengths.to_vector<int32_t>();
    const std::vector<int32_t> ids = done_ids.to_vector<int32_t>();
    for (size_t i = 0; i < rows.size(); ++i) {
      const int32_t* first = ids.data() + static_cast<int64_t>(i) * options.max_length;
      results[row_to_source[rows[i]]].assign(first, first + std::clamp(length[i], 0, options.max_length));
    }
  };

  // Queues step `step` on the device: the model, the argmax (first maximum), the bookkeeping, and the copy of the
  // finished flags into flags[step % 2] (pipelined, step + 1's copy is queued before the host reads step's).
  HostReadback flags[2];
  const auto queue_step = [&](int step) {
    Tensor logits = model.step(*state, tokens);
    if (step < options.min_length) ops::fill_column(logits, special.eos, -INFINITY);
    const int64_t rows = logits.dim(0);
    Tensor best_values = Tensor::empty({rows, 1}, DType::F32, device);
    Tensor best = Tensor::empty({rows, 1}, DType::I32, device);
    ops::topk(logits, 1, best_values, best);
    ops::greedy_advance(best.reshape({rows}), special.eos, special.pad, tokens, finished, lengths, history);
    flags[step % 2].start(finished);
  };

  queue_step(0);
  for (int step = 0;; ++step) {
    const bool more = step + 1 < options.max_length;  // the caches have max_length slots
    if (pipelined && more) queue_step(step + 1);
    const Tensor& step_flags = flags[step % 2].wait();
    const uint8_t* flag = step_flags.data<uint8_t>();
    const std::vector<uint8_t> done(flag, flag + step_flags.numel());
    const bool last = !more || std::all_of(done.begin(), done.end(), [](uint8_t d) { return d != 0; });
    // The rows that finished since the last look (or every row still owing its result, at the end) report now;
    // a row that stays in the batch afterwards is padding (source -1).
    std::vector<int32_t> report;
    for (size_t r = 0; r < done.size(); ++r)
      if (row_to_source[r] >= 0 && (done[r] || last)) report.push_back(static_cast<int32_t>(r));
    collect(report);
    if (last) break;  // pipelined, step + 1 ran as well: it only fed the finished rows pad
    if (!report.empty()) {
      for (int32_t r : report) row_to_source[r] = -1;
      // Finished rows idle in the batch: no expert work, pad as input (transformers); pruned, only those that pad it
      // to its bucket stay.
      std::vector<int32_t> keep = entries_to_keep(done, options.prune_finished, device == Device::CUDA);
      if (!keep.empty()) {
        state->select_rows(keep);
        const auto kept = static_cast<int64_t>(keep.size());
        const Tensor kept_rows = Tensor::from_vector(keep, {kept}, device);
        const auto compact = [&](Tensor& t, const Shape& shape) {
          Tensor out = Tensor::empty(shape, t.dtype(), device);
          ops::gather_rows(t, kept_rows, out);
          t = out;
        };
        compact(tokens, {kept});
        compact(finished, {kept});
        compact(lengths, {kept});
        compact(history, {kept, options.max_length});
        std::vector<int32_t> kept_sources;
        for (int32_t r : keep) kept_sources.push_back(row_to_source[r]);
        row_to_source = std::move(kept_sources);
        // Pipelined, step + 1's flags are on their way in the old row order: the compacted ones replace them.
        if (pipelined) flags[(step + 1) % 2].start(finished);
      } else {
        keep.resize(done.size());
        std::iota(keep.begin(), keep.end(), 0);
      }
      std::vector<uint8_t> active;
      for (int32_t r : keep) active.push_back(done[r] ? 0 : 1);
      state->set_active_rows(active);
    }
    if (!pipelined) queue_step(step + 1);
  }
  return results;
}

}  // namespace elephant
