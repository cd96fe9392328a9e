// models/demo end to end: `elephant quantize --bits 8 / 4` writes a checkpoint that translates exactly as the original
// does with --quantize at load time (the same quantizer, so the same weights), and whose experts take the bytes the
// format says (int4: a quarter of fp16, plus the fp16 scales).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "elephant/translator.h"
#include "io/checkpoint.h"
#include "test_utils.h"

namespace elephant {
namespace {

namespace fs = std::filesystem;

std::string demo_model() { return std::string(ELEPHANT_SOURCE_DIR) + "/models/demo"; }

// models/demo: 4 MoE layers (encoder 1, 3, 5; decoder 1) of 8 experts, wi [512, 256] and wo [256, 512], in fp16.
constexpr int64_t kExpertMatrices = 4 * 8 * 2;
constexpr int64_t kExpertParameters = kExpertMatrices * 512 * 256;
constexpr int64_t kScalesPerChannel = 4 * 8 * (512 + 256);  // one per output channel of every matrix

// Six English sentences of the demo's test set (tests/demo/transformers_outputs.json), translated to French as one
// batch.
std::vector<std::string> english_sentences() {
  std::ifstream in(std::string(ELEPHANT_SOURCE_DIR) + "/tests/demo/transformers_outputs.json");
  const nlohmann::json expected = nlohmann::json::parse(in);
  std::vector<std::string> sentences;
  for (const auto& c : expected.at("cases")) {
    if (c.at("target_lang") == "en") continue;
    sentences.push_back(c.at("source").get<std::string>());
    if (sentences.size() == 6) break;
  }
  return sentences;
}

std::vector<TranslationResult> translate_sentences(Translator& translator, int beam_size) {
  TranslationOptions options;
  options.beam_size = beam_size;
  options.max_length = 64;
  options.target_lang = "fr";
  return translator.translate(english_sentences(), options);
}

std::string quantize_demo(const TempDir& dir, int bits, int group_size = 0, bool non_experts = false) {
  const std::string output =
      dir.file("demo_int" + std::to_string(bits) + "_g" + std::to_string(group_size) + (non_experts ? "_all" : ""));
  const CliOutcome o =
      run_cli("quantize --model " + demo_model() + " --bits " + std::to_string(bits) + " --group-size " +
              std::to_string(group_size) + (non_experts ? " --non-experts" : "") + " --output " + output);
  EXPECT_EQ(o.exit_code, 0) << o.err;
  return output;
}

TEST(DemoQuantized, CheckpointTranslatesLikeLoadTimeQuantization) {
  TempDir dir;
  // The last two with the non-expert matrices in int8 too, with the experts' group size.
  for (const auto& [bits, quantization, group_size, non_experts] :
       {std::tuple<int, Quantization, int, bool>{8, Quantization::Int8, 0, false},
        {4, Quantization::Int4, 0, false},
        {4, Quantization::Int4, 128, false},
        {8, Quantization::Int8, 0, true},
        {4, Quantization::Int4, 128, true}}) {
    SCOPED_TRACE(::testing::Message() << "int" << bits << ", group size " << group_size << ", non-experts "
                                      << non_experts);
    const std::string checkpoint = quantize_demo(dir, bits, group_size, non_experts);
    Translator from_checkpoint(checkpoint, {DeviceRequest::CPU});
    EXPECT_EQ(from_checkpoint.info().quantized_bits, bits);
    EXPECT_EQ(from_checkpoint.info().quantized_non_experts, non_experts);
    if (non_experts) {
      // wo of the first dense FFN: [256, 512], so one scale per row or per 128 of its 512 input features.
      const Shape scales = Checkpoint::open(checkpoint).info("encoder.block.0.layer.1.mlp.wo.weight_scale").shape;
      EXPECT_EQ(scales, (Shape{256, group_size == 0 ? 1 : 512 / group_size}));
    }
    TranslatorOptions load_time;
    load_time.device = DeviceRequest::CPU;
    load_time.quantization = quantization;
    load_time.quantization_group_size = group_size;
    load_time.quantize_non_experts = non_experts;
    Translator at_load(demo_model(), load_time);
    for (const int beam_size : {1, 4}) {
      const std::vector<TranslationResult> a = translate_sentences(from_checkpoint, beam_size);
      const std::vector<TranslationResult> b = translate_sentences(at_load, beam_size);
      ASSERT_EQ(a.size(), 6u);
      for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_FALSE(a[i].ids.empty()) << i;
        EXPECT_EQ(a[i].ids, b[i].ids) << "beam " << beam_size << ": " << a[i].text << " / " << b[i].text;
      }
    }
  }
}

int64_t bytes_of(const std::map<std::string, int64_t>& by_dtype, const std::string& dtype) {
  const auto it = by_dtype.find(dtype);
  return it == by_dtype.end() ? 0 : it->second;
}

// --quantize-non-experts on top of int8 experts: every Linear weight in int8. The six sentences must keep fp32's
// translations but for near-ties: at least 5 of 6 identical, greedy and beam 4 (quality on the whole test split:
// README "Quality (Table 2)").
TEST(DemoQuantized, NonExpertInt8KeepsFp32Translations) {
  Translator fp32(demo_model(), {DeviceRequest::CPU});
  TranslatorOptions options;
  options.device = DeviceRequest::CPU;
  options.quantization = Quantization::Int8;
  options.quantize_non_experts = true;
  Translator all_int8(demo_model(), options);
  for (const int beam_size : {1, 4}) {
    const std::vector<TranslationResult> expected = translate_sentences(fp32, beam_size);
    const std::vector<TranslationResult> actual = translate_sentences(all_int8, beam_size);
    ASSERT_EQ(actual.size(), expected.size());
    size_t same = 0;
    for (size_t i = 0; i < actual.size(); ++i) {
      EXPECT_FALSE(actual[i].ids.empty()) << i;
      same += actual[i].ids == expected[i].ids;
    }
    std::printf("beam %d: %zu of %zu identical to fp32\n", beam_size, same, actual.size());
    EXPECT_GE(same, 5u) << "beam " << beam_size;
  }
}

TEST(DemoQuantized, QuantizedExpertsTakeTheDocumentedBytes) {
  TempDir dir;
  const Checkpoint original = Checkpoint::open(demo_model());
  const auto original_bytes = original.bytes_by_dtype();
  ASSERT_EQ(original_bytes.size(), 1u) << "the demo model is all fp16";
  const int64_t fp16_experts = kExpertParameters * 2;
  const int64_t scale_bytes = kScalesPerChannel * 2;
  const int64_t header_slack = 64 * 1024;  // names of the scale tensors and alignment
  const auto original_size = static_cast<int64_t>(fs::file_size(demo_model() + "/model.safetensors"));
  for (const int bits : {8, 4}) {
    SCOPED_TRACE(::testing::Message() << "int" << bits);
    const std::string output = quantize_demo(dir, bits);
    const auto bytes = Checkpoint::open(output).bytes_by_dtype();
    const int64_t expert_bytes = kExpertParameters * bits / 8;  // int4: fp16 / 4, int8: fp16 / 2
    EXPECT_EQ(bytes_of(bytes, bits == 8 ? "I8" : "U8"), expert_bytes);
    EXPECT_EQ(bytes_of(bytes, "F16"), original_bytes.at("F16") - fp16_experts + scale_bytes);
    const int64_t expected_data = original_bytes.at("F16") - fp16_experts + expert_bytes + scale_bytes;
    const auto size = static_cast<int64_t>(fs::file_size(output + "/model.safetensors"));
    EXPECT_GE(size, expected_data);
    EXPECT_LE(size, expected_data + header_slack);
    // 27 MiB -> 15 MiB (int4) or 19 MiB (int8): the experts are 59% of the demo's bytes in fp16.
    EXPECT_LT(size, original_size * (bits == 4 ? 0.56 : 0.71)) << size << " of " << original_size;

    for (const char* copied : {"spiece.model", "generation_config.json", "languages.json"})
      EXPECT_EQ(read_text_file(output + "/" + copied), read_text_file(demo_model() + "/" + copied)) << copied;
    EXPECT_FALSE(fs::exists(output + "/README.md"));
  }
}

}  // namespace
}  // namespace elephant
