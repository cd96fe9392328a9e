#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "decoding/search.h"
#include "ops/softmax.h"
#include "ops/topk.h"

namespace elephant {

namespace {

// transformers marks impossible candidates by adding this to their scores.
constexpr float kExcluded = -1.0e9f;

struct Hypothesis {
  float score = kExcluded;  // finished: sum(log p) / length^penalty; running: sum(log p)
  std::vector<int32_t> tokens;
  bool finished = false;  // a real finished hypothesis, not a placeholder slot
};

// The beams of one source, following transformers' vectorized beam search with early_stopping=False.
struct SourceBeams {
  std::vector<Hypothesis> running;   // beam_size, best first
  std::vector<Hypothesis> finished;  // beam_size slots, best first
  bool can_improve = true;           // transformers' is_early_stop_heuristic_unsatisfied
};

struct Candidate {
  float score;
  int32_t beam;
  int32_t token;
};

// One step of one source; returns, for each new running beam, the old beam it extends.
// `candidates`: the best 2 x beam_size (beam, token) extensions of the running beams, best first.
std::vector<int32_t> advance_source(SourceBeams& beams, const std::vector<Candidate>& candidates, int generated,
                                    const SearchOptions& options, int32_t eos) {
  const int beam_size = options.beam_size;
  const int length = generated + 1;  // tokens generated after this step, EOS included
  const bool last_step = length >= options.max_length;
  const auto hits_stop = [&](const Candidate& c) { return last_step || c.token == eos; };

  // Finished candidates among the top beam_size join the finished slots if they beat the worst one.
  if (beams.can_improve) {
    const float penalty = static_cast<float>(std::pow(static_cast<double>(length), options.length_penalty));
    for (int i = 0; i < beam_size && i < static_cast<int>(candidates.size()); ++i) {
      const Candidate& c = candidates[i];
      if (!hits_stop(c)) continue;
      Hypothesis h{c.score / penalty, beams.running[c.beam].tokens, true};
      h.tokens.push_back(c.token);
      const auto position =
          std::upper_bound(beams.finished.begin(), beams.finished.end(), h,
                           [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
      if (position == beams.finished.end()) continue;
      beams.finished.insert(position, std::move(h));
      beams.finished.pop_back();
    }
  }

  // The best beam_size candidates that did not stop keep running.
  std::vector<Hypothesis> running;
  std::vector<int32_t> parents;
  for (const Candidate& c : candidates) {
    if (static_cast<int>(running.size()) == beam_size) break;
    if (hits_stop(c) && !last_step) continue;
    Hypothesis h{hits_stop(c) ? c.score + kExcluded : c.score, beams.running[c.beam].tokens, false};
    h.tokens.push_back(c.token);
    running.push_back(std::move(h));
    parents.push_back(c.beam);
  }
  beams.running = std::move(running);

  // Stop once the best running beam, at its current length, cannot beat the worst finished hypothesis.
  if (beams.can_improve) {
    const float best_possible =
        beams.running.front().score / static_cast<float>(std::pow(static_cast<double>(length), options.length_penalty));
    const bool all_finished =
        std::all_of(beams.finished.begin(), beams.finished.end(), [](const Hypothesis& h) { return h.finished; });
    beams.can_improve = !all_finished || best_possible > beams.finished.back().score;
  }
  return parents;
}

}  // namespace

std::vector<std::vector<int32_t>> beam_search(EncoderDecoderModel& model, const EncoderOutput& encoded,
                                              const SearchOptions& options) {
  const SpecialTokens& special = model.special_tokens();
  const int beam_size = options.beam_size;
  const size_t sources = encoded.offsets.size() - 1;
  std::vector<std::vector<int32_t>> results(sources);
  if (sources == 0) return results;
  auto state = model.start_decoding(encoded, beam_size, options.max_length);

  std::vector<SourceBeams> beams(sources);
  for (SourceBeams& b : beams) {
    b.running.resize(beam_size);
    b.running[0].score = 0.0f;  // only the first beam is live at the start, so beams do not repeat
    b.finished.resize(beam_size);
  }
  std::vector<int32_t> live(sources);  // sources in the decoder batch, beam_size rows each
  std::iota(live.begin(), live.end(), 0);
  std::vector<int32_t> tokens(sources * beam_size, special.decoder_start);

  for (int step = 0; step < options.max_length; ++step) {
    // On the model's device: log-probs, plus each row's running score, then the best 2 x beam_size of every
    // source's beams x vocab (torch.topk over the flattened scores, as transformers does). Only those come back.
    const Tensor logits = model.step(*state, tokens);
    const int64_t vocab = logits.dim(1);
    Tensor scores = Tensor::empty(logits.shape(), DType::F32, logits.device());
    ops::log_softmax(logits, scores);
    if (step < options.min_length) ops::fill_column(scores, special.eos, -INFINITY);
    std::vector<float> running_scores;
    for (int32_t source : live)
      for (const Hypothesis& h : beams[source].running) running_scores.push_back(h.score);
    ops::add_row_values(scores, Tensor::from_vector(running_scores, {scores.dim(0)}, scores.device()));
    const auto live_count = static_cast<int64_t>(live.size());
    const int count = static_cast<int>(std::min<int64_t>(2 * beam_size, beam_size * vocab));
    Tensor top_values = Tensor::empty({live_count, count}, DType::F32, scores.device());
    Tensor top_indices = Tensor::empty({live_count, count}, DType::I32, scores.device());
    ops::topk(scores.reshape({live_count, beam_size * vocab}), count, top_values, top_indices);
    const std::vector<float> values = top_values.to_vector<float>();
    const std::vector<int32_t> indices = top_indices.to_vector<int32_t>();

    std::vector<int32_t> rows;  // old rows the next step's rows continue
    std::vector<int32_t> next_live;
    for (size_t i = 0; i < live.size(); ++i) {
      SourceBeams& b = beams[live[i]];
      const int32_t first_row = static_cast<int32_t>(i) * beam_size;
      if (!b.can_improve) {  // kept only when not pruning: its result can no longer change
        for (int k = 0; k < beam_size; ++k) rows.push_back(first_row + k);
        next_live.push_back(live[i]);
        continue;
      }
      std::vector<Candidate> candidates;
      for (int j = 0; j < count; ++j) {
        const int32_t flat = indices[i * count + j];
        if (flat < 0) break;  // fewer finite candidates than asked for
        candidates.push_back(
            {values[i * count + j], static_cast<int32_t>(flat / vocab), static_cast<int32_t>(flat % vocab)});
      }
      const std::vector<int32_t> parents = advance_source(b, candidates, step, options, special.eos);
      if (!b.can_improve && options.prune_finished) continue;
      for (int32_t parent : parents) rows.push_back(first_row + parent);
      next_live.push_back(live[i]);
    }
    const bool any_can_improve =
        std::any_of(beams.begin(), beams.end(), [](const SourceBeams& b) { return b.can_improve; });
    if (!any_can_improve || step + 1 == options.max_length) break;
    state->select_rows(rows);
    if (!options.prune_finished) {  // sources that are done stay in the batch, their rows idle: no expert work
      std::vector<uint8_t> active;
      for (int32_t source : next_live)
        for (int k = 0; k < beam_size; ++k) active.push_back(beams[source].can_improve ? 1 : 0);
      state->set_active_rows(active);
    }
    live = std::move(next_live);
    tokens.clear();
    for (int32_t source : live)
      for (const Hypothesis& h : beams[source].running) tokens.push_back(h.tokens.back());
  }
  for (size_t s = 0; s < sources; ++s) results[s] = beams[s].finished.front().tokens;
  return results;
}

}  // namespace elephant
