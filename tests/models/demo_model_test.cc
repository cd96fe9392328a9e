// The shipped demo model (models/demo) on the CPU against transformers: 20 fixed test sentences, one per
// direction, greedy and beam 4 (tests/demo/transformers_outputs.json, made by tools/train/make_demo_golden.py).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "elephant/translator.h"
#include "test_utils.h"

namespace elephant {
namespace {

TEST(DemoModel, TranslationsMatchTransformers) {
  const std::string root = std::string(ELEPHANT_SOURCE_DIR);
  std::ifstream in(root + "/tests/demo/transformers_outputs.json");
  ASSERT_TRUE(in) << "tests/demo/transformers_outputs.json is missing";
  const nlohmann::json expected = nlohmann::json::parse(in);
  ASSERT_EQ(expected.at("cases").size(), 20u);

  Translator translator(root + "/models/demo");
  for (const int beam_size : {1, 4}) {
    const std::string key = "beam" + std::to_string(beam_size);
    for (const auto& c : expected.at("cases")) {
      TranslationOptions options;
      options.beam_size = beam_size;
      options.max_length = expected.at("max_length").get<int>();
      options.target_lang = c.at("target_lang").get<std::string>();
      const TranslationResult result = translator.translate({c.at("source").get<std::string>()}, options).at(0);
      EXPECT_EQ(result.ids, c.at(key).at("ids").get<std::vector<int>>()) << key << ": " << c.at("source");
      EXPECT_EQ(result.text, c.at(key).at("text").get<std::string>()) << key << ": " << c.at("source");
    }
  }
}

}  // namespace
}  // namespace elephant
