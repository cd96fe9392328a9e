// The CUDA backend on the golden checkpoints: in fp32 against transformers' goldens with the CPU backend's
// budget (1e-4, identical tokens); in fp16/bf16 against the CPU backend with half-precision tolerances, and
// greedy tokens equal to transformers' fp32 ones at least as often as transformers' own fp16/bf16 (see below).
// SKIPPED without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/cuda_graph.h"
#include "decoding/search.h"
#include "models/encoder_decoder.h"
#include "models/golden_data.h"
#include "ops/device_helpers.h"

namespace elephant {
namespace {

class CudaGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ELEPHANT_REQUIRE_CUDA();
    golden_ = load_golden(GetParam());
  }
  std::unique_ptr<EncoderDecoderModel> load(DType dtype) {
    return load_model(golden_.model_dir, {Device::CUDA, dtype, true, {}});
  }

  Golden golden_;
};

TEST_P(CudaGoldenTest, Fp32EncoderOutputMatchesTransformers) {
  auto model = load(DType::F32);
  const EncoderOutput encoded = model->encode(golden_.sources);
  ASSERT_EQ(encoded.hidden.device(), Device::CUDA);
  expect_encoder_output_matches(golden_, encoded);
}

TEST_P(CudaGoldenTest, Fp32FirstStepLogitsMatchTransformers) {
  auto model = load(DType::F32);
  expect_first_step_logits_match(golden_, first_step_logits(*model, golden_));
}

TEST_P(CudaGoldenTest, Fp32TokensMatchTransformers) {
  auto model = load(DType::F32);
  EXPECT_EQ(generate_all(*model, golden_, 1, true), golden_.expected("greedy"));
  EXPECT_EQ(generate_all(*model, golden_, 4, true), golden_.expected("beam4"));
}

TEST_P(CudaGoldenTest, Fp32BatchPruningAndBatchCompositionDoNotChangeTokens) {
  auto model = load(DType::F32);
  EXPECT_EQ(generate_all(*model, golden_, 1, false), golden_.expected("greedy"));
  EXPECT_EQ(generate_all(*model, golden_, 4, false), golden_.expected("beam4"));
  EXPECT_EQ(generate_all(*model, golden_, 1, true, 1), golden_.expected("greedy"));
  EXPECT_EQ(generate_all(*model, golden_, 4, true, 2), golden_.expected("beam4"));
}

TEST_P(CudaGoldenTest, HalfPrecisionEncoderAndLogitsStayNearTheCpu) {
  auto cpu = load_model(golden_.model_dir);
  const Tensor cpu_hidden = cpu->encode(golden_.sources).hidden;
  const Tensor cpu_logits = first_step_logits(*cpu, golden_);
  // End to end through every layer: a few half-precision roundings per layer add up (bf16 keeps 8 mantissa bits:
  // 4.1% was seen on the 8-layer e7_deep).
  for (const auto& [dtype, bound] : {std::pair{DType::F16, 1e-2}, std::pair{DType::BF16, 6e-2}}) {
    auto model = load(dtype);
    EXPECT_TRUE(testdev::relative_l2_within(model->encode(golden_.sources).hidden, cpu_hidden, bound))
        << dtype_name(dtype) << " encoder output";
    EXPECT_TRUE(testdev::relative_l2_within(first_step_logits(*model, golden_), cpu_logits, bound))
        << dtype_name(dtype) << " first-step logits";
  }
}

TEST_P(CudaGoldenTest, HalfPrecisionPruningDoesNotChangeTokens) {
  for (const DType dtype : {DType::F16, DType::BF16}) {
    auto model = load(dtype);
    EXPECT_EQ(generate_all(*model, golden_, 1, true), generate_all(*model, golden_, 1, false)) << dtype_name(dtype);
    EXPECT_EQ(generate_all(*model, golden_, 4, true), generate_all(*model, golden_, 4, false)) << dtype_name(dtype);
  }
}

// Steps replayed from CUDA graphs run the same kernels on the same shapes as steps launched one by one: the tokens
// are identical, with pruning (the batch shrinks through several buckets, each a new capture) and without.
TEST_P(CudaGoldenTest, CudaGraphsDoNotChangeTokens) {
  for (const DType dtype : {DType::F32, DType::F16}) {
    auto replayed = load_model(golden_.model_dir, {Device::CUDA, dtype, true, {}});
    auto launched = load_model(golden_.model_dir, {Device::CUDA, dtype, false, {}});
    for (const int beam : {1, 4})
      for (const bool prune : {true, false})
        EXPECT_EQ(generate_all(*replayed, golden_, beam, prune), generate_all(*launched, golden_, beam, prune))
            << dtype_name(dtype) << " beam " << beam << (prune ? " pruned" : " unpruned");
  }
}

INSTANTIATE_TEST_SUITE_P(Goldens, CudaGoldenTest, ::testing::ValuesIn(golden_names()),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

// Step by step, through what invalidates a recorded step: rows selected (a new batch size), rows made inactive
// (new flags in the same buffer: no new capture) and the first inactive row (the flags appear). Each step's logits
// from the graph equal those of the same step launched kernel by kernel, bit for bit.
// Two decodes on the same models: in the first, the replayed model runs its first step kernel by kernel and records
// the second; in the second decode (a row count it has run before), the first step is recorded at once.
TEST(CudaGraphSteps, ReplayedStepsEqualLaunchedSteps) {
  ELEPHANT_REQUIRE_CUDA();
  const Golden golden = load_golden(golden_names().front());
  auto replayed = load_model(golden.model_dir, {Device::CUDA, DType::F32, true, {}});
  auto launched = load_model(golden.model_dir, {Device::CUDA, DType::F32, false, {}});
  const EncoderOutput encoded_replayed = replayed->encode(golden.sources);
  const EncoderOutput encoded_launched = launched->encode(golden.sources);
  const int max_steps = 12;
  const int32_t vocab = replayed->special_tokens().vocab_size;
  for (int decode = 0; decode < 2; ++decode) {
    SCOPED_TRACE("decode " + std::to_string(decode));
    auto state_replayed = replayed->start_decoding(encoded_replayed, 2, max_steps);
    auto state_launched = launched->start_decoding(encoded_launched, 2, max_steps);
    for (int step = 0; step < max_steps; ++step) {
      const int64_t rows = state_replayed->rows();
      std::vector<int32_t> tokens(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) tokens[r] = static_cast<int32_t>((7 * step + 13 * r + 3 + decode) % vocab);
      const std::vector<float> a = replayed->step(*state_replayed, tokens).to_vector<float>();
      const std::vector<float> b = launched->step(*state_launched, tokens).to_vector<float>();
      ASSERT_EQ(a, b) << "step " << step << ", " << rows << " rows";
      if (step == 4 || step == 8) {  // drop the first row and the last one, reorder the rest
        std::vector<int32_t> keep;
        for (int64_t r = rows - 2; r >= 1; --r) keep.push_back(static_cast<int32_t>(r));
        state_replayed->select_rows(keep);
        state_launched->select_rows(keep);
      }
      if (step == 5 || step == 6) {
        std::vector<uint8_t> active(static_cast<size_t>(state_replayed->rows()), 1);
        active[static_cast<size_t>(step - 5)] = 0;
        state_replayed->set_active_rows(active);
        state_launched->set_active_rows(active);
      }
    }
  }
}

// The capture statistics bench_translate prints count each recording: a decode's first step with a new row count
// runs kernel by kernel and the second is recorded; the next decode with as many rows records its first step; replays
// record nothing.
TEST(CudaGraphSteps, CaptureStatsCountEachRecording) {
  ELEPHANT_REQUIRE_CUDA();
  const Golden golden = load_golden(golden_names().front());
  auto model = load_model(golden.model_dir, {Device::CUDA, DType::F32, true, {}});
  const EncoderOutput encoded = model->encode(golden.sources);
  reset_cuda_graph_capture_stats();
  for (int decode = 0; decode < 2; ++decode) {
    auto state = model->start_decoding(encoded, 1, 4);
    for (int step = 0; step < 4; ++step)
      model->step(*state, std::vector<int32_t>(static_cast<size_t>(state->rows()), 5 + step));
    const CudaGraphCaptureStats stats = cuda_graph_capture_stats();
    EXPECT_EQ(stats.captures, decode + 1) << "decode " << decode;
    EXPECT_GT(stats.record_seconds, 0.0);
    EXPECT_GT(stats.instantiate_seconds, 0.0);
  }
}

// The fp32 logit margin, on the CPU, between the token transformers chose and the one the half-precision run
// chose, at the first step where they differ (teacher-forced on transformers' prefix), relative to the largest logit
// magnitude: how close to a tie that step was.
double divergence_margin(EncoderDecoderModel& cpu, const std::vector<int32_t>& source,
                         const std::vector<int32_t>& expected, const std::vector<int32_t>& actual) {
  size_t d = 0;
  while (d < expected.size() && d < actual.size() && expected[d] == actual[d]) ++d;
  if (d == expected.size() || d == actual.size()) return 0.0;  // one stopped early at a near-tie with EOS
  const EncoderOutput encoded = cpu.encode({source});
  auto state = cpu.start_decoding(encoded, 1, static_cast<int>(d) + 1);
  Tensor logits;
  for (size_t step = 0; step <= d; ++step)
    logits = cpu.step(*state, {step == 0 ? cpu.special_tokens().decoder_start : expected[step - 1]});
  const float* row = logits.data<float>();
  double scale = 0.0;
  for (int64_t v = 0; v < logits.dim(1); ++v) scale = std::max(scale, std::abs(static_cast<double>(row[v])));
  return (static_cast<double>(row[expected[d]]) - row[actual[d]]) / std::max(scale, 1e-30);
}

// Over all goldens together. Random-weight models have nearly flat next-token distributions, so half-precision
// rounding flips near-ties, in transformers too: its own fp16 greedy (recorded by make_goldens.py on the GPU
// machine) equals its fp32 greedy on 23 of these 24 sentences, its bf16 on 18. A sentence of the engine counts as
// matching when its tokens are identical to transformers' fp32 ones, or when it first differs at a step whose fp32
// margin between the two tokens is within twice the logit error that HalfPrecisionEncoderAndLogitsStayNearTheCpu
// accepts (1e-2 of the largest logit), so that the flip is explained by that error. The engine must match at least
// as often as transformers' own half precision is identical to its fp32. (The 99% fp16 criterion on real sentences
// is DemoModel.CudaFp16GreedyMatchesFp32OnTheTestSet.)
TEST(CudaGoldens, HalfPrecisionGreedyTokensMatchTransformersAsOftenAsItsOwnHalfPrecision) {
  ELEPHANT_REQUIRE_CUDA();
  for (const DType dtype : {DType::F16, DType::BF16}) {
    size_t identical = 0, near_ties = 0, total = 0;
    size_t reference_identical = 0;  // transformers' own fp16/bf16 greedy against its fp32 greedy
    for (const std::string& name : golden_names()) {
      const Golden golden = load_golden(name);
      auto model = load_model(golden.model_dir, {Device::CUDA, dtype, true, {}});
      auto cpu = load_model(golden.model_dir);
      const auto greedy = generate_all(*model, golden, 1, true);
      const auto expected = golden.expected("greedy");
      const auto reference_half = golden.expected(dtype == DType::F16 ? "greedy_fp16" : "greedy_bf16");
      ASSERT_EQ(reference_half.size(), expected.size()) << name;
      for (size_t i = 0; i < expected.size(); ++i) {
        ++total;
        reference_identical += reference_half[i] == expected[i];
        if (greedy.at(i) == expected[i]) {
          ++identical;
        } else {
          const double margin = divergence_margin(*cpu, golden.sources[i], expected[i], greedy[i]);
          std::printf("%s %s sentence %zu differs; fp32 margin at the first difference: %.4f of the largest logit\n",
                      dtype_name(dtype).c_str(), name.c_str(), i, margin);
          if (margin < 2e-2) ++near_ties;
        }
      }
    }
    ASSERT_GT(total, 0u);
    std::printf(
        "%s greedy: %zu of %zu sentences identical to transformers' fp32 (transformers' own %s: %zu), %zu more "
        "differ first at a near-tie\n",
        dtype_name(dtype).c_str(), identical, total, dtype_name(dtype).c_str(), reference_identical, near_ties);
    ::testing::Test::RecordProperty(dtype_name(dtype) + "_greedy_identical", std::to_string(identical));
    EXPECT_GE(identical + near_ties, reference_identical) << dtype_name(dtype);
  }
}

}  // namespace
}  // namespace elephant
