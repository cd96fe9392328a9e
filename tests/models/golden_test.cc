// The engine against transformers: every checkpoint under tests/goldens was made by
// tools/goldens/make_goldens.py with random weights, together with transformers' encoder outputs,
// first-step logits and generate() outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include "decoding/search.h"
#include "elephant/error.h"
#include "elephant/translator.h"
#include "models/encoder_decoder.h"
#include "models/golden_data.h"
#include "test_utils.h"

namespace elephant {
namespace {

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = load_golden(GetParam());
    model_ = load_model(golden_.model_dir);
  }

  std::vector<std::vector<int32_t>> run(int beam_size, bool prune, size_t batch_size = 0) {
    return generate_all(*model_, golden_, beam_size, prune, batch_size);
  }

  Golden golden_;
  std::unique_ptr<EncoderDecoderModel> model_;
};

TEST_P(GoldenTest, EncoderOutputMatchesTransformers) {
  expect_encoder_output_matches(golden_, model_->encode(golden_.sources));
}

TEST_P(GoldenTest, FirstStepLogitsMatchTransformers) {
  expect_first_step_logits_match(golden_, first_step_logits(*model_, golden_));
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

// A finished row that stays in the batch gets no expert work: its logits change (its MoE layers add nothing),
// the other rows' do not.
TEST_P(GoldenTest, InactiveRowsSkipTheirExperts) {
  if (model_->info().sparse_decoder_layers == 0) GTEST_SKIP() << "no MoE layer in this decoder";
  const EncoderOutput encoded = model_->encode({golden_.sources.at(0), golden_.sources.at(1)});
  const std::vector<int32_t> start(2, model_->special_tokens().decoder_start);
  auto all = model_->start_decoding(encoded, 1, 1);
  const Tensor expected = model_->step(*all, start);
  auto some = model_->start_decoding(encoded, 1, 1);
  some->set_active_rows({1, 0});
  ASSERT_NE(some->active_rows(), nullptr);
  const Tensor logits = model_->step(*some, start);
  const int64_t vocab = logits.dim(1);
  EXPECT_LE(relative_error(logits.data<float>(), expected.data<float>(), vocab), 1e-5);
  EXPECT_GT(relative_error(logits.data<float>() + vocab, expected.data<float>() + vocab, vocab), 1e-3);
  EXPECT_THROW(some->set_active_rows({1}), std::invalid_argument);
  some->set_active_rows({1, 1});
  EXPECT_EQ(some->active_rows(), nullptr);
}

// transformers' min_new_tokens: EOS gets -inf until then; with min = max every output has max tokens, no EOS.
TEST_P(GoldenTest, MinLengthForbidsEosUntilReached) {
  for (const int beam_size : {1, 4}) {
    SearchOptions options;
    options.beam_size = beam_size;
    options.max_length = options.min_length = 9;
    for (const auto& ids : generate(*model_, model_->encode(golden_.sources), options)) {
      EXPECT_EQ(ids.size(), 9u) << "beam " << beam_size;
      EXPECT_EQ(std::count(ids.begin(), ids.end(), model_->special_tokens().eos), 0) << "beam " << beam_size;
    }
  }
}

TEST_P(GoldenTest, TextTranslationMatchesTransformers) {
  const auto sources = golden_.json.at("sources").get<std::vector<std::string>>();
  Translator translator(golden_.model_dir, {DeviceRequest::CPU});
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
  Translator translator(goldens_dir() + "/tiny_e4/model", {DeviceRequest::CPU});
  TranslationOptions options;
  options.beam_size = 0;
  EXPECT_THROW(translator.translate_ids({{5, 1}}, options), UsageError);
  options.beam_size = 1;
  EXPECT_EQ(translator.translate_ids({{5, 1}, {}}, options).size(), 2u);
}

TEST(Goldens, TokenIdsNeedNoTokenizer) {
  TempDir dir;
  for (const auto& entry : std::filesystem::directory_iterator(goldens_dir() + "/tiny_e4/model"))
    if (entry.path().filename() != "spiece.model")
      std::filesystem::copy(entry.path(), dir.file(entry.path().filename()));
  Translator translator(dir.path(), {DeviceRequest::CPU});
  EXPECT_EQ(translator.translate_ids({{5, 1}}).size(), 1u);
  EXPECT_CONTAINS(model_error_of([&] { translator.translate({"Save"}); }), "spiece.model");
}

TEST(Goldens, AtLeastFourCheckpointsArePresent) { EXPECT_GE(golden_names().size(), 4u) << goldens_dir(); }

}  // namespace
}  // namespace elephant
