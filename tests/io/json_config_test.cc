#include "io/json_config.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "elephant/error.h"
#include "test_utils.h"

namespace elephant {
namespace {

const char* const sample_config = R"({
  "d_model": 768,
  "d_ff": 3072.0,
  "num_heads": 12,
  "name": "switch-base-8",
  "size": "big",
  "fraction": 1.5,
  "negative": -3,
  "zero": 0,
  "huge": 3000000000,
  "dropout_rate": 0.1,
  "is_encoder_decoder": true,
  "nothing": null,
  "eos_token_id": 1,
  "eos_list": [1, 2.0, 3],
  "bad_list": [1, "two"],
  "nested": {"a": 1}
})";

JsonConfig sample() { return JsonConfig::parse(sample_config, "config.json"); }

TEST(JsonConfigTest, LoadsFile) {
  TempDir dir;
  const std::string path = dir.file("config.json");
  write_text_file(path, sample_config);
  const JsonConfig config = JsonConfig::load(path);
  EXPECT_EQ(config.path(), path);
  EXPECT_EQ(config.get_int("d_model"), 768);
  EXPECT_EQ(config.json()["nested"]["a"], 1);
}

TEST(JsonConfigTest, MissingFile) {
  TempDir dir;
  const std::string path = dir.file("model/config.json");
  EXPECT_CONTAINS(model_error_of([&] { JsonConfig::load(path); }), path + ": cannot open");
}

TEST(JsonConfigTest, ParseErrorNamesFileAndPosition) {
  TempDir dir;
  const std::string path = dir.file("config.json");
  write_text_file(path, "{\n  \"d_model\": 768,\n  \"d_ff\": ,\n}");
  const std::string message = model_error_of([&] { JsonConfig::load(path); });
  EXPECT_CONTAINS(message, path + ": invalid JSON: ");
  EXPECT_CONTAINS(message, "line 3");
  EXPECT_EQ(message.find("[json.exception"), std::string::npos) << message;

  write_text_file(path, "[1, 2]");
  EXPECT_EQ(model_error_of([&] { JsonConfig::load(path); }), path + ": expected a JSON object at the top level");
}

TEST(JsonConfigTest, Integers) {
  const JsonConfig config = sample();
  EXPECT_EQ(config.get_int("d_model"), 768);
  EXPECT_EQ(config.get_int("d_ff"), 3072);
  EXPECT_EQ(config.get_int("negative"), -3);
  EXPECT_EQ(config.get_int("absent", 7), 7);
  EXPECT_EQ(config.get_int("nothing", 7), 7);
  EXPECT_EQ(config.get_int("d_model", 7), 768);
  EXPECT_EQ(config.get_positive_int("num_heads"), 12);
  EXPECT_EQ(config.get_positive_int("absent", 64), 64);
  EXPECT_EQ(config.get_non_negative_int("zero"), 0);
  EXPECT_EQ(config.get_non_negative_int("absent", 0), 0);
}

TEST(JsonConfigTest, IntegerErrors) {
  const JsonConfig config = sample();
  EXPECT_EQ(model_error_of([&] { config.get_int("size"); }), "config.json: size must be an integer, got \"big\"");
  EXPECT_EQ(model_error_of([&] { config.get_int("fraction"); }), "config.json: fraction must be an integer, got 1.5");
  EXPECT_EQ(model_error_of([&] { config.get_int("huge"); }), "config.json: huge must be an integer, got 3000000000");
  EXPECT_EQ(model_error_of([&] { config.get_int("is_encoder_decoder"); }),
            "config.json: is_encoder_decoder must be an integer, got true");
  EXPECT_EQ(model_error_of([&] { config.get_int("nothing"); }), "config.json: nothing must be an integer, got null");
  EXPECT_EQ(model_error_of([&] { config.get_int("absent"); }), "config.json: missing key absent");
  EXPECT_EQ(model_error_of([&] { config.get_int("size", 3); }), "config.json: size must be an integer, got \"big\"");
  EXPECT_EQ(model_error_of([&] { config.get_positive_int("negative"); }),
            "config.json: negative must be a positive integer, got -3");
  EXPECT_EQ(model_error_of([&] { config.get_positive_int("zero", 5); }),
            "config.json: zero must be a positive integer, got 0");
  EXPECT_EQ(model_error_of([&] { config.get_non_negative_int("negative"); }),
            "config.json: negative must be a non-negative integer, got -3");
}

TEST(JsonConfigTest, FloatsBoolsStrings) {
  const JsonConfig config = sample();
  EXPECT_FLOAT_EQ(config.get_float("dropout_rate"), 0.1f);
  EXPECT_FLOAT_EQ(config.get_float("d_model"), 768.f);
  EXPECT_FLOAT_EQ(config.get_float("absent", 2.5f), 2.5f);
  EXPECT_TRUE(config.get_bool("is_encoder_decoder"));
  EXPECT_FALSE(config.get_bool("absent", false));
  EXPECT_EQ(config.get_string("name"), "switch-base-8");
  EXPECT_EQ(config.get_string("absent", "relu"), "relu");
  EXPECT_EQ(config.get_string("nothing", "relu"), "relu");

  EXPECT_EQ(model_error_of([&] { config.get_float("name"); }),
            "config.json: name must be a number, got \"switch-base-8\"");
  EXPECT_EQ(model_error_of([&] { config.get_bool("d_model"); }), "config.json: d_model must be true or false, got 768");
  EXPECT_EQ(model_error_of([&] { config.get_string("num_heads"); }), "config.json: num_heads must be a string, got 12");
  EXPECT_EQ(model_error_of([&] { config.get_string("absent"); }), "config.json: missing key absent");

  const JsonConfig large = JsonConfig::parse(R"({"x": 1e300})", "big.json");
  EXPECT_EQ(model_error_of([&] { large.get_float("x"); }), "big.json: x must be a finite float, got 1e+300");
}

TEST(JsonConfigTest, IntOrIntList) {
  const JsonConfig config = sample();
  EXPECT_EQ(config.get_int_list_or_int("eos_token_id"), (std::vector<int>{1}));
  EXPECT_EQ(config.get_int_list_or_int("eos_list"), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(config.get_int_list_or_int("absent", {5}), (std::vector<int>{5}));
  EXPECT_EQ(model_error_of([&] { config.get_int_list_or_int("bad_list"); }),
            "config.json: bad_list must be an integer or a list of integers, got [1,\"two\"]");
  EXPECT_EQ(model_error_of([&] { config.get_int_list_or_int("name"); }),
            "config.json: name must be an integer or a list of integers, got \"switch-base-8\"");
}

TEST(JsonConfigTest, HasAndIsNull) {
  const JsonConfig config = sample();
  EXPECT_TRUE(config.has("d_model"));
  EXPECT_TRUE(config.has("nothing"));
  EXPECT_FALSE(config.has("absent"));
  EXPECT_TRUE(config.is_null("nothing"));
  EXPECT_FALSE(config.is_null("d_model"));
  EXPECT_FALSE(config.is_null("absent"));
}

TEST(JsonConfigTest, NestedObjectsNameTheirKey) {
  const JsonConfig config = sample();
  const JsonConfig nested = config.get_object("nested");
  EXPECT_EQ(nested.path(), "config.json: nested");
  EXPECT_EQ(nested.get_int("a"), 1);
  EXPECT_EQ(model_error_of([&] { nested.get_int("b"); }), "config.json: nested: missing key b");
  EXPECT_EQ(model_error_of([&] { config.get_object("name"); }),
            "config.json: name must be an object, got \"switch-base-8\"");
  EXPECT_EQ(model_error_of([&] { config.get_object("absent"); }), "config.json: missing key absent");
}

}  // namespace
}  // namespace elephant
