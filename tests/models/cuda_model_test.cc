// The CUDA backend on the golden checkpoints: in fp32 against transformers' goldens with the CPU backend's
// budget (1e-4, identical tokens); in fp16/bf16 against the CPU backend with half-precision tolerances, and fp16
// greedy tokens equal to transformers' on at least 99% of the sentences (near-ties excepted, see below).
// SKIPPED without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

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
    return load_model(golden_.model_dir, {Device::CUDA, dtype});
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

INSTANTIATE_TEST_SUITE_P(Goldens, CudaGoldenTest, ::testing::ValuesIn(golden_names()),
                         [](const ::testing::TestParamInfo<std::string>& param) { return param.param; });

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
// rounding flips near-ties: a sentence counts as matching when its tokens are identical, or when it first differs
// at a step whose fp32 margin between the two tokens is within twice the logit error that
// HalfPrecisionEncoderAndLogitsStayNearTheCpu accepts (1e-2 of the largest logit), so that the flip is explained
// by that error. At least 99% must
// match in fp16 (bf16, with 8 mantissa bits, is reported); the exact-match rates are printed and recorded.
TEST(CudaGoldens, HalfPrecisionGreedyTokensMatchTransformersExceptAtNearTies) {
  ELEPHANT_REQUIRE_CUDA();
  for (const DType dtype : {DType::F16, DType::BF16}) {
    size_t identical = 0, near_ties = 0, total = 0;
    size_t same_as_transformers_half = 0, with_half_reference = 0;  // goldens made with transformers' fp16/bf16
    for (const std::string& name : golden_names()) {
      const Golden golden = load_golden(name);
      auto model = load_model(golden.model_dir, {Device::CUDA, dtype});
      auto cpu = load_model(golden.model_dir);
      const auto greedy = generate_all(*model, golden, 1, true);
      const auto expected = golden.expected("greedy");
      const std::string half_key = dtype == DType::F16 ? "greedy_fp16" : "greedy_bf16";
      if (golden.json.contains(half_key)) {
        const auto half = golden.expected(half_key);
        for (size_t i = 0; i < half.size(); ++i) same_as_transformers_half += greedy.at(i) == half[i];
        with_half_reference += half.size();
      }
      for (size_t i = 0; i < expected.size(); ++i) {
        ++total;
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
    const double exact = total ? static_cast<double>(identical) / total : 0.0;
    const double matching = total ? static_cast<double>(identical + near_ties) / total : 0.0;
    std::printf(
        "%s greedy: %zu of %zu sentences identical to transformers (%.1f%%), %zu more differ first at a "
        "near-tie\n",
        dtype_name(dtype).c_str(), identical, total, 100.0 * exact, near_ties);
    if (with_half_reference > 0)
      std::printf("%s greedy: %zu of %zu sentences identical to transformers' own %s greedy\n",
                  dtype_name(dtype).c_str(), same_as_transformers_half, with_half_reference, dtype_name(dtype).c_str());
    ::testing::Test::RecordProperty(dtype_name(dtype) + "_greedy_identical", std::to_string(exact));
    ASSERT_GT(total, 0u);
    if (dtype == DType::F16) {
      EXPECT_GE(matching, 0.99);
    }
  }
}

}  // namespace
}  // namespace elephant
