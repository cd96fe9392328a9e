#pragma once

// The golden checkpoints under tests/goldens (tools/goldens/make_goldens.py, transformers on the GPU machine):
// random-weight models with their inputs, transformers' encoder outputs, first-step logits and generate() outputs.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "decoding/search.h"
#include "io/safetensors.h"
#include "models/encoder_decoder.h"
#include "test_utils.h"

namespace elephant {

inline std::vector<std::string> golden_names() {
  std::vector<std::string> names;
  if (!std::filesystem::is_directory(goldens_dir())) return names;
  for (const auto& entry : std::filesystem::directory_iterator(goldens_dir()))
    if (std::filesystem::exists(entry.path() / "golden.json")) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

struct Golden {
  std::string model_dir;
  std::vector<std::vector<int32_t>> sources;  // unpadded, EOS included
  Tensor encoder_output;                      // [batch, padded length, d_model]
  Tensor first_step_logits;                   // [batch, vocab]
  nlohmann::json json;
  int max_new_tokens = 0;

  std::vector<std::vector<int32_t>> expected(const std::string& key) const {
    return json.at(key).get<std::vector<std::vector<int32_t>>>();
  }
};

inline Golden load_golden(const std::string& name) {
  Golden g;
  const std::string dir = goldens_dir() + "/" + name;
  g.model_dir = dir + "/model";
  const SafetensorsFile data = SafetensorsFile::open(dir + "/golden.safetensors");
  const Tensor ids = data.tensor("input_ids");
  const Tensor mask = data.tensor("attention_mask");
  const int64_t batch = ids.dim(0);
  const int64_t length = ids.dim(1);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> source;
    for (int64_t t = 0; t < length; ++t)
      if (mask.data<int64_t>()[b * length + t])
        source.push_back(static_cast<int32_t>(ids.data<int64_t>()[b * length + t]));
    g.sources.push_back(source);
  }
  g.encoder_output = data.tensor("encoder_output").clone();
  g.first_step_logits = data.tensor("first_step_logits").clone();
  std::ifstream in(dir + "/golden.json");
  g.json = nlohmann::json::parse(in);
  g.max_new_tokens = g.json.at("max_new_tokens").get<int>();
  return g;
}

// max |actual - expected| relative to the largest expected magnitude: the 1e-4 budget of fp32 inference.
inline double relative_error(const float* actual, const float* expected, int64_t n) {
  double diff = 0.0, scale = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(actual[i]) - expected[i]));
    scale = std::max(scale, std::abs(static_cast<double>(expected[i])));
  }
  return diff / std::max(scale, 1e-30);
}

// The model's next-token logits for every source at the first decoder step, as a CPU tensor.
inline Tensor first_step_logits(EncoderDecoderModel& model, const Golden& golden) {
  const EncoderOutput encoded = model.encode(golden.sources);
  auto state = model.start_decoding(encoded, 1, 1);
  const std::vector<int32_t> start(golden.sources.size(), model.special_tokens().decoder_start);
  return model.step(*state, start).to(Device::CPU);
}

// Each source's packed encoder states and first-step logits against transformers' within the fp32 budget (1e-4 of
// the largest magnitude), on any device.
inline void expect_encoder_output_matches(const Golden& golden, const EncoderOutput& encoded) {
  const Tensor hidden = encoded.hidden.to(Device::CPU);
  const int64_t padded = golden.encoder_output.dim(1);
  const int64_t d_model = golden.encoder_output.dim(2);
  ASSERT_EQ(hidden.dim(1), d_model);
  for (size_t b = 0; b < golden.sources.size(); ++b) {
    const int64_t length = encoded.offsets[b + 1] - encoded.offsets[b];
    const float* actual = hidden.data<float>() + encoded.offsets[b] * d_model;
    const float* expected = golden.encoder_output.data<float>() + static_cast<int64_t>(b) * padded * d_model;
    EXPECT_LE(relative_error(actual, expected, length * d_model), 1e-4) << "source " << b;
  }
}

inline void expect_first_step_logits_match(const Golden& golden, const Tensor& logits) {
  ASSERT_EQ(logits.shape(), golden.first_step_logits.shape());
  const int64_t vocab = logits.dim(1);
  for (int64_t b = 0; b < logits.dim(0); ++b)
    EXPECT_LE(
        relative_error(logits.data<float>() + b * vocab, golden.first_step_logits.data<float>() + b * vocab, vocab),
        1e-4)
        << "source " << b;
}

// A search with `options` (max_length: the golden's) over the golden's sources, in batches of batch_size (0: one
// batch).
inline std::vector<std::vector<int32_t>> generate_all(EncoderDecoderModel& model, const Golden& golden,
                                                      SearchOptions options, size_t batch_size = 0) {
  options.max_length = golden.max_new_tokens;
  if (batch_size == 0) batch_size = golden.sources.size();
  std::vector<std::vector<int32_t>> all;
  for (size_t begin = 0; begin < golden.sources.size(); begin += batch_size) {
    const auto end = golden.sources.begin() + std::min(golden.sources.size(), begin + batch_size);
    const std::vector<std::vector<int32_t>> batch(golden.sources.begin() + begin, end);
    for (auto& result : generate(model, model.encode(batch), options)) all.push_back(std::move(result));
  }
  return all;
}

// Greedy (beam_size 1) or beam search over the golden's sources, in batches of batch_size (0: one batch).
inline std::vector<std::vector<int32_t>> generate_all(EncoderDecoderModel& model, const Golden& golden, int beam_size,
                                                      bool prune, size_t batch_size = 0) {
  SearchOptions options;
  options.beam_size = beam_size;
  options.prune_finished = prune;
  return generate_all(model, golden, options, batch_size);
}

}  // namespace elephant
