#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "decoding/search.h"
#include "ops/topk.h"

namespace elephant {

std::vector<std::vector<int32_t>> generate(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                           const SearchOptions& options) {
  if (options.beam_size < 1) throw std::invalid_argument("beam_size must be at least 1");
  if (options.max_length < 1) throw std::invalid_argument("max_length must be at least 1");
  return options.beam_size == 1 ? greedy_search(model, encoded, options) : beam_search(model, encoded, options);
}

std::vector<std::vector<int32_t>> greedy_search(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                                const SearchOptions& options) {
  const SpecialTokens& special = model.special_tokens();
  const size_t sources = encoded.offsets.size() - 1;
  std::vector<std::vector<int32_t>> results(sources);
  if (sources == 0) return results;
  auto state = model.start_decoding(encoded, 1, options.max_length);

  std::vector<int32_t> row_to_source(sources);  // the source each live row decodes
  std::iota(row_to_source.begin(), row_to_source.end(), 0);
  std::vector<int32_t> tokens(sources, special.decoder_start);
  std::vector<uint8_t> finished(sources, 0);

  for (int step = 0; step < options.max_length && !row_to_source.empty(); ++step) {
    // The argmax (first maximum) runs on the model's device; only one id per row comes back.
    Tensor logits = model.step(*state, tokens);
    if (step < options.min_length) ops::fill_column(logits, special.eos, -INFINITY);
    Tensor best_values = Tensor::empty({logits.dim(0), 1}, DType::F32, logits.device());
    Tensor best_ids = Tensor::empty({logits.dim(0), 1}, DType::I32, logits.device());
    ops::topk(logits, 1, best_values, best_ids);
    const std::vector<int32_t> best = best_ids.to_vector<int32_t>();
    std::vector<int32_t> keep;
    for (size_t r = 0; r < row_to_source.size(); ++r) {
      const int32_t source = row_to_source[r];
      if (finished[source]) {
        tokens[r] = special.pad;  // only without pruning: the row idles, as in transformers
        continue;
      }
      const int32_t next = best[r];
      results[source].push_back(next);
      tokens[r] = next;
      if (next == special.eos)
        finished[source] = 1;
      else
        keep.push_back(static_cast<int32_t>(r));
    }
    if (std::all_of(finished.begin(), finished.end(), [](uint8_t f) { return f; })) break;
    if (!options.prune_finished && keep.size() < row_to_source.size()) {
      std::vector<uint8_t> active(row_to_source.size(), 0);
      for (int32_t r : keep) active[r] = 1;
      state->set_active_rows(active);  // finished rows idle: no expert work
    }
    if (options.prune_finished && keep.size() < row_to_source.size()) {
      state->select_rows(keep);
      std::vector<int32_t> live_sources, live_tokens;
      for (int32_t r : keep) {
        live_sources.push_back(row_to_source[r]);
        live_tokens.push_back(tokens[r]);
      }
      row_to_source = std::move(live_sources);
      tokens = std::move(live_tokens);
    }
  }
  return results;
}

}  // namespace elephant
