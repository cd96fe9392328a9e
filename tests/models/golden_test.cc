// The engine against transformers: every checkpoint under tests/goldens was made by
// tools/goldens/make_goldens.py with random weights, together with transformers' encoder outputs,
// first-step logits and generate() outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "decoding/search.h"
#include "elephant/error.h"
#include "elephant/translator.h"
#include "io/safetensors.h"
#include "models/encoder_decoder.h"
#include "test_utils.h"

namespace elephant {
namespace {

std::vector<std::string> golden_names() {
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

Golden load_golden(const std::string& name) {
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
double relative_error(const float* actual, const float* expected, int64_t n) {
  double diff = 0.0, scale = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(actual[i]) - expected[i]));
    scale = std::max(scale, std::abs(static_cast<double>(expected[i])));
  }
  return diff / std::max(scale, 1e-30);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = load_golden(GetParam());
    model_ = load_model(golden_.model_dir);
  }

  std::vector<std::vector<int32_t>> run(int beam_size, bool prune, size_t batch_size = 0) {
    SearchOptions options;
    options.beam_size = beam_size;
    options.max_length = golden_.max_new_tokens;
    options.prune_finished = prune;
    if (batch_size == 0) batch_size = golden_.sources.size();
    std::vector<std::vector<int32_t>> all;
    for (size_t begin = 0; begin < golden_.sources.size(); begin += batch_size) {
      const auto end = golden_.sources.begin() + std::min(golden_.sources.size(), begin + batch_size);
      const std::vector<std::vector<int32_t>> batch(golden_.sources.begin() + begin, end);
      for (auto& result : generate(*model_, model_->encode(batch), options)) all.push_back(std::move(result));
    }
    return all;
  }

  Golden golden_;
  std::unique_ptr<EncoderDecoderModel> model_;
};

TEST_P(GoldenTest, EncoderOutputMatchesTransformers) {
  const EncoderOutput encoded = model_->encode(golden_.sources);
  const int64_t padded = golden_.encoder_output.dim(1);
  const int64_t d_model = golden_.encoder_output.dim(2);
  ASSERT_EQ(encoded.hidden.dim(1), d_model);
  for (size_t b = 0; b < golden_.sources.size(); ++b) {
    const int64_t length = encoded.offsets[b + 1] - encoded.offsets[b];
    const float* actual = encoded.hidden.data<float>() + encoded.offsets[b] * d_model;
    const float* expected = golden_.encoder_output.data<float>() + static_cast<int64_t>(b) * padded * d_model;
    EXPECT_LE(relative_error(actual, expected, length * d_model), 1e-4) << "source " << b;
  }
}

TEST_P(GoldenTest, FirstStepLogitsMatchTransformers) {
  const EncoderOutput encoded = model_->encode(golden_.sources);
  auto state = model_->start_decoding(encoded, 1, 1);
  const std::vector<int32_t> start(golden_.sources.size(), model_->special_tokens().decoder_start);
  const Tensor logits = model_->step(*state, start);
  ASSERT_EQ(logits.shape(), golden_.first_step_logits.shape());
  const int64_t vocab = logits.dim(1);
  for (int64_t b = 0; b < logits.dim(0); ++b)
    EXPECT_LE(
        relative_error(logits.data<float>() + b * vocab, golden_.first_step_logits.data<float>() + b * vocab, vocab),
        1e-4)
        << "source " << b;
}

TEST_P(GoldenTest, GreedyTokensMatchTransformers) { EXPECT_EQ(run(1, true), golden_.expected("greedy")); }

TEST_P(GoldenTest, BeamSearchTokensMatchTransformers) { EXPECT_EQ(run(4, true), golden_.expected("beam4")); }

TEST_P(GoldenTest, BatchPruningDoesNotChangeTokens) {
  EXPECT_EQ(run(1, false), golden_.expected("greedy"));
  EXPECT_EQ(run(4, false), golden_.expected("beam4"));
}

TEST_P(GoldenTest, TokensDoNotDependOnBatchComposition) {
  EXPECT_EQ(run(1, true, 1), golden_.expected("greedy"));
  EXPECT_EQ(run(4, true, 2), golden_.expected("beam4"));
}

TEST_P(GoldenTest, TextTranslationMatchesTransformers) {
  const auto sources = golden_.json.at("sources").get<std::vector<std::string>>();
  Translator translator(golden_.model_dir);
  TranslationOptions options;
  options.max_length = golden_.max_new_tokens;
  options.max_batch_size = 3;  // several batches, sorted by length, results back in input order
  std::vector<std::string> texts;
  for (const auto& r : translator.translate(sources, options)) texts.push_back(r.text);
  EXPECT_EQ(texts, golden_.json.at("greedy_text").get<std::vector<std::string>>());
  options.beam_size = 4;
  texts.clear();
  for (const auto& r : translator.translate(sources, options)) texts.push_back(r.text);
  EXPECT_EQ(texts, golden_.json.at("beam4_text").get<std::vector<std::string>>());
}

INSTANTIATE_TEST_SUITE_P(Goldens, GoldenTest, ::testing::ValuesIn(golden_names()),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

TEST(Goldens, TranslateIdsRejectsBadOptions) {
  Translator translator(goldens_dir() + "/tiny_e4/model");
  TranslationOptions options;
  options.beam_size = 0;
  EXPECT_THROW(translator.translate_ids({{5, 1}}, options), UsageError);
  options.beam_size = 1;
  EXPECT_EQ(translator.translate_ids({{5, 1}, {}}, options).size(), 2u);
}

TEST(Goldens, AtLeastFourCheckpointsArePresent) { EXPECT_GE(golden_names().size(), 4u) << goldens_dir(); }

}  // namespace
}  // namespace elephant
