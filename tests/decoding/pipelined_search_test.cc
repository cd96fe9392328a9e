// Pipelined search (the next step queued before the host reads this step's flags; beam search's default on CUDA)
// against the step-by-step order on the golden checkpoints: the same tokens, with and without pruning, whatever the
// batch, in greedy and beam search. On the CPU both orders run; the CUDA test is SKIPPED without a GPU.
#include <gtest/gtest.h>

#include <set>

#include "decoding/search.h"
#include "models/encoder_decoder.h"
#include "models/golden_data.h"
#include "ops/device_helpers.h"

namespace elephant {
namespace {

std::vector<std::vector<int32_t>> run(EncoderDecoderModel& model, const Golden& golden, int beam_size, bool prune,
                                      bool pipelined, size_t batch_size = 0, int min_length = 0) {
  SearchOptions options;
  options.beam_size = beam_size;
  options.min_length = min_length;
  options.prune_finished = prune;
  options.pipeline_steps = pipelined;
  return generate_all(model, golden, options, batch_size);
}

class PipelinedSearchTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = load_golden(GetParam());
    model_ = load_model(golden_.model_dir);
  }
  Golden golden_;
  std::unique_ptr<EncoderDecoderModel> model_;
};

// The batch's sentences finish at different steps (some at max_length), so rows are reported, go inactive and are
// compacted a step late while the others go on: each sentence's tokens are still those it gets alone.
TEST_P(PipelinedSearchTest, GreedyTokensMatchStepByStep) {
  const auto expected = golden_.expected("greedy");
  std::set<size_t> lengths;
  for (const auto& ids : expected) lengths.insert(ids.size());
  EXPECT_GE(lengths.size(), 2u) << "the sentences should finish at different steps";
  for (const bool prune : {true, false}) {
    EXPECT_EQ(run(*model_, golden_, 1, prune, true), expected) << "prune " << prune;
    EXPECT_EQ(run(*model_, golden_, 1, prune, false), expected) << "prune " << prune;
  }
  EXPECT_EQ(run(*model_, golden_, 1, true, true, 1), expected);  // each sentence alone
  EXPECT_EQ(run(*model_, golden_, 1, true, true, 2), expected);
}

TEST_P(PipelinedSearchTest, BeamTokensMatchStepByStep) {
  const auto expected = golden_.expected("beam4");
  for (const bool prune : {true, false}) {
    EXPECT_EQ(run(*model_, golden_, 4, prune, true), expected) << "prune " << prune;
    EXPECT_EQ(run(*model_, golden_, 4, prune, false), expected) << "prune " << prune;
  }
  EXPECT_EQ(run(*model_, golden_, 4, true, true, 1), expected);
}

// min_length and max_length bound the steps the same way in both orders (max_length 1: no step is queued ahead).
TEST_P(PipelinedSearchTest, LengthLimitsMatchStepByStep) {
  for (const int beam_size : {1, 4}) {
    EXPECT_EQ(run(*model_, golden_, beam_size, true, true, 0, 3), run(*model_, golden_, beam_size, true, false, 0, 3))
        << "beam " << beam_size;
    Golden short_golden = golden_;
    short_golden.max_new_tokens = 1;
    EXPECT_EQ(run(*model_, short_golden, beam_size, true, true), run(*model_, short_golden, beam_size, true, false))
        << "beam " << beam_size;
  }
}

INSTANTIATE_TEST_SUITE_P(Goldens, PipelinedSearchTest, ::testing::ValuesIn(golden_names()),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

// On the GPU, with and without CUDA graphs: the pipelined order against the step-by-step one, in float32.
TEST(PipelinedSearchCuda, TokensMatchStepByStep) {
  ELEPHANT_REQUIRE_CUDA();
  for (const std::string& name : golden_names()) {
    const Golden golden = load_golden(name);
    for (const bool graphs : {true, false}) {
      auto model = load_model(golden.model_dir, {Device::CUDA, DType::F32, graphs, {}});
      for (const int beam_size : {1, 4})
        for (const bool prune : {true, false}) {
          const auto expected = golden.expected(beam_size == 1 ? "greedy" : "beam4");
          EXPECT_EQ(run(*model, golden, beam_size, prune, true), expected)
              << name << " graphs " << graphs << " beam " << beam_size << " prune " << prune;
          EXPECT_EQ(run(*model, golden, beam_size, prune, false), expected)
              << name << " graphs " << graphs << " beam " << beam_size << " prune " << prune;
        }
      EXPECT_EQ(run(*model, golden, 1, true, true, 1), golden.expected("greedy")) << name << " graphs " << graphs;
    }
  }
}

}  // namespace
}  // namespace elephant
