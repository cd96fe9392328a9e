// Quantized checkpoints (format version 1): what quantize_model writes, that loading it gives the model that
// load-time quantization gives, and the errors for inputs it refuses and for corrupted quantized checkpoints (each
// naming the file and the tensor or key at fault).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "elephant/error.h"
#include "elephant/quantize.h"
#include "elephant/translator.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/encoder_decoder.h"
#include "quantization/quantized_tensor.h"
#include "test_utils.h"

namespace elephant {
namespace {

namespace fs = std::filesystem;

// tiny_e4: d_model 32, d_ff 64, 4 experts; encoder layers 1 and 3 and decoder layer 1 are sparse.
std::string tiny_model() { return goldens_dir() + "/tiny_e4/model"; }
const std::string kWi = "encoder.block.1.layer.1.mlp.experts.expert_3.wi.weight";  // [64, 32]
const std::string kWo = "decoder.block.1.layer.2.mlp.experts.expert_0.wo.weight";  // [32, 64]
constexpr int kExpertMatrices = 3 * 4 * 2;

std::string quantized_copy(const TempDir& dir, int bits, int group_size = 0, const std::string& model = tiny_model()) {
  const std::string output = dir.file("int" + std::to_string(bits) + "_g" + std::to_string(group_size));
  quantize_model(model, output, {bits, group_size});
  return output;
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text_file(path)); }

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json config = read_json(dir + "/config.json");
  edit(config);
  write_text_file(dir + "/config.json", config.dump(2));
}

Tensor& tensor_named(std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& name) {
  const auto it = std::find_if(tensors.begin(), tensors.end(), [&](const auto& t) { return t.first == name; });
  if (it == tensors.end()) throw std::runtime_error("no tensor " + name);
  return it->second;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Token ids through the library (no tokenizer involved), greedy and beam 3.
std::vector<std::vector<int>> translate_ids(const std::string& model, Quantization quantization = Quantization::None,
                                            int group_size = 0, bool quantize_non_experts = false) {
  TranslatorOptions options;
  options.device = DeviceRequest::CPU;
  options.quantization = quantization;
  options.quantization_group_size = group_size;
  options.quantize_non_experts = quantize_non_experts;
  Translator translator(model, options);
  const std::vector<std::vector<int>> sources = {{5, 17, 42, 9, 1}, {100, 3, 1}, {7, 1}, {300, 200, 100, 50, 25, 1}};
  std::vector<std::vector<int>> ids;
  for (int beam : {1, 3}) {
    TranslationOptions translation;
    translation.beam_size = beam;
    translation.max_length = 12;
    for (auto& result : translator.translate_ids(sources, translation)) ids.push_back(result);
  }
  return ids;
}

TEST(QuantizedCheckpointTest, WritesTheDocumentedFormat) {
  TempDir dir;
  for (const int bits : {8, 4}) {
    SCOPED_TRACE(::testing::Message() << "int" << bits);
    const std::string output = quantized_copy(dir, bits);
    EXPECT_TRUE(fs::exists(output + "/spiece.model"));
    EXPECT_EQ(read_text_file(output + "/generation_config.json"),
              read_text_file(tiny_model() + "/generation_config.json"));
    EXPECT_FALSE(fs::exists(output + "/model.safetensors.index.json"));

    nlohmann::json config = read_json(output + "/config.json");
    EXPECT_EQ(config.at("elephant_quantization"),
              (nlohmann::json{{"format_version", 1}, {"bits", bits}, {"group_size", 0}, {"quantized", "experts"}}));
    config.erase("elephant_quantization");
    EXPECT_EQ(config, read_json(tiny_model() + "/config.json"));

    Checkpoint original = Checkpoint::open(tiny_model());
    Checkpoint quantized = Checkpoint::open(output);
    int expert_matrices = 0;
    for (const CheckpointEntry& entry : original.entries()) {
      if (entry.name.find(".experts.expert_") == std::string::npos) {
        EXPECT_TRUE(same_bytes(quantized.load_stored(entry.name), original.load_stored(entry.name))) << entry.name;
        continue;
      }
      ++expert_matrices;
      // Per expert, 2-D: exactly what quantize() makes of the float32 weights.
      const QuantizedTensor expected = quantize(original.load(entry.name, entry.shape), bits, 0, entry.name);
      const Tensor values = quantized.load_stored(entry.name), scales = quantized.load_stored(entry.name + "_scale");
      EXPECT_EQ(values.dtype(), bits == 8 ? DType::I8 : DType::U8) << entry.name;
      EXPECT_EQ(values.shape(), (Shape{entry.shape[0], bits == 8 ? entry.shape[1] : entry.shape[1] / 2}));
      EXPECT_EQ(scales.dtype(), DType::F16);
      EXPECT_EQ(scales.shape(), (Shape{entry.shape[0], 1}));
      EXPECT_TRUE(same_bytes(values, expected.values)) << entry.name;
      EXPECT_TRUE(same_bytes(scales, expected.scales)) << entry.name;
    }
    EXPECT_EQ(expert_matrices, kExpertMatrices);
    EXPECT_NO_THROW(quantized.check_all_used());
  }
}

TEST(QuantizedCheckpointTest, GroupScalesHaveOneColumnPerGroup) {
  TempDir dir;
  // tiny_e4's wi has 32 input features: only wo's 64 fit a group of 64, so the demo model's shapes stand in here.
  const std::string demo = std::string(ELEPHANT_SOURCE_DIR) + "/models/demo";
  const std::string output = quantized_copy(dir, 4, 128, demo);
  Checkpoint quantized = Checkpoint::open(output);
  const std::string wi = "encoder.block.1.layer.1.mlp.experts.expert_0.wi.weight";  // [512, 256]
  EXPECT_EQ(quantized.info(wi + "_scale").shape, (Shape{512, 2}));
  EXPECT_EQ(quantized.info(wi).shape, (Shape{512, 128}));
  EXPECT_EQ(read_json(output + "/config.json").at("elephant_quantization").at("group_size"), 128);
}

TEST(QuantizedCheckpointTest, LoadsLikeLoadTimeQuantization) {
  TempDir dir;
  for (const auto& [bits, quantization] :
       {std::pair<int, Quantization>{8, Quantization::Int8}, {4, Quantization::Int4}}) {
    SCOPED_TRACE(::testing::Message() << "int" << bits);
    const std::string output = quantized_copy(dir, bits);
    const auto from_checkpoint = translate_ids(output);
    EXPECT_EQ(from_checkpoint, translate_ids(tiny_model(), quantization));
    // The same quantization asked for again at load time changes nothing.
    EXPECT_EQ(from_checkpoint, translate_ids(output, quantization));
  }
}

// --non-experts: every attention and dense FFN matrix in int8 per channel too (q, k, v, o of 4 + 2 x 2 attentions,
// wi and wo of 2 + 1 dense FFNs in tiny_e4), everything else as before.
TEST(QuantizedCheckpointTest, NonExpertMatricesAreWrittenInInt8AndLoadLikeLoadTimeQuantization) {
  TempDir dir;
  const std::string output = dir.file("int4_non_experts");
  const QuantizeSummary summary = quantize_model(tiny_model(), output, {4, 0, true});
  EXPECT_EQ(summary.quantized_matrices, kExpertMatrices);
  EXPECT_EQ(summary.quantized_non_expert_matrices, (4 + 2 * 2) * 4 + (2 + 1) * 2);
  EXPECT_EQ(read_json(output + "/config.json").at("elephant_quantization").at("quantized"), "experts+non_experts");

  Checkpoint original = Checkpoint::open(tiny_model());
  Checkpoint quantized = Checkpoint::open(output);
  for (const std::string name :
       {"encoder.block.0.layer.0.SelfAttention.q.weight", "decoder.block.1.layer.1.EncDecAttention.o.weight",
        "encoder.block.0.layer.1.mlp.wi.weight", "decoder.block.0.layer.2.mlp.wo.weight"}) {
    const TensorInfo& info = original.info(name);
    const QuantizedTensor expected = quantize(original.load(name, info.shape), 8, 0, name);
    EXPECT_TRUE(same_bytes(quantized.load_stored(name), expected.values)) << name;
    EXPECT_TRUE(same_bytes(quantized.load_stored(name + "_scale"), expected.scales)) << name;
  }
  for (const std::string name : {"shared.weight", "encoder.block.1.layer.1.mlp.router.classifier.weight",
                                 "encoder.block.0.layer.0.layer_norm.weight",
                                 "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"})
    EXPECT_TRUE(same_bytes(quantized.load_stored(name), original.load_stored(name))) << name;

  const auto from_checkpoint = translate_ids(output);
  EXPECT_EQ(from_checkpoint, translate_ids(tiny_model(), Quantization::Int4, 0, true));
  EXPECT_EQ(from_checkpoint, translate_ids(output, Quantization::Int4, 0, true));  // asked again: no change

  const ModelInfo info = inspect_model(output);
  EXPECT_TRUE(info.quantized_non_experts);
  EXPECT_EQ(info.parameters, inspect_model(tiny_model()).parameters);
}

TEST(QuantizedCheckpointTest, AnotherQuantizationAtLoadTimeIsRefused) {
  TempDir dir;
  const std::string output = quantized_copy(dir, 8);
  for (const auto& [quantization, group_size] :
       {std::pair<Quantization, int>{Quantization::Int4, 0}, {Quantization::Int8, 64}}) {
    const std::string message = model_error_of([&] { translate_ids(output, quantization, group_size); });
    EXPECT_CONTAINS(message, output + " is already quantized to int8, per channel; load it without --quantize");
  }
  // --quantize-non-experts takes the checkpoint's scales; another group size is refused.
  const std::string message = model_error_of([&] { translate_ids(output, Quantization::None, 64, true); });
  EXPECT_CONTAINS(message, output +
                               " is already quantized to int8, per channel; its non-expert weights take those "
                               "scales, load it without --group-size");
}

TEST(QuantizedCheckpointTest, InspectCountsLogicalParameters) {
  TempDir dir;
  const ModelInfo original = inspect_model(tiny_model());
  EXPECT_EQ(original.quantized_bits, 0);
  for (const int bits : {8, 4}) {
    const ModelInfo info = inspect_model(quantized_copy(dir, bits));
    EXPECT_EQ(info.quantized_bits, bits);
    EXPECT_EQ(info.quantization_group_size, 0);
    EXPECT_EQ(info.parameters, original.parameters);
    EXPECT_EQ(info.expert_parameters, original.expert_parameters);
    const int64_t expert_bytes = original.expert_parameters * bits / 8;
    EXPECT_EQ(info.bytes_by_dtype.at(bits == 8 ? "I8" : "U8"), expert_bytes);
    const int64_t scale_bytes = 3 * 4 * (64 + 32) * 2;
    EXPECT_EQ(info.bytes_by_dtype.at("F16"), scale_bytes);
    EXPECT_EQ(info.bytes_by_dtype.at("F32"), original.bytes_by_dtype.at("F32") - original.expert_parameters * 4);
  }
}

TEST(QuantizedCheckpointTest, ShardsALargeCheckpointWithAnIndex) {
  TempDir dir;
  const std::string output = dir.file("sharded");
  QuantizeOptions options;
  options.bits = 4;
  options.max_shard_bytes = 64 * 1024;
  const QuantizeSummary summary = quantize_model(tiny_model(), output, options);
  EXPECT_EQ(summary.quantized_matrices, kExpertMatrices);

  const nlohmann::json index = read_json(output + "/model.safetensors.index.json");
  EXPECT_FALSE(fs::exists(output + "/model.safetensors"));
  std::set<std::string> shards;
  for (const auto& [name, shard] : index.at("weight_map").items()) shards.insert(shard.get<std::string>());
  ASSERT_GT(shards.size(), 2u);
  EXPECT_EQ(*shards.begin(), "model-00001-of-0000" + std::to_string(shards.size()) + ".safetensors");
  int64_t total = 0;
  for (const std::string& shard : shards) {
    const SafetensorsFile file = SafetensorsFile::open(output + "/" + shard);
    int64_t bytes = 0;
    for (const TensorInfo& info : file.tensors()) bytes += static_cast<int64_t>(info.nbytes);
    EXPECT_TRUE(bytes <= options.max_shard_bytes || file.tensors().size() == 1) << shard << ": " << bytes;
    total += bytes;
  }
  EXPECT_EQ(index.at("metadata").at("total_size").get<int64_t>(), total);
  EXPECT_EQ(total, summary.output_bytes);
  // A matrix and its scales share a shard.
  EXPECT_EQ(index.at("weight_map").at(kWi), index.at("weight_map").at(kWi + "_scale"));

  EXPECT_EQ(translate_ids(output), translate_ids(quantized_copy(dir, 4)));
}

TEST(QuantizedCheckpointTest, ReadsAShardedInput) {
  TempDir dir;
  const std::string sharded = dir.file("sharded_input");
  fs::create_directories(sharded);
  for (const char* name : {"config.json", "generation_config.json", "spiece.model"})
    fs::copy_file(tiny_model() + "/" + name, sharded + "/" + name);
  std::vector<std::pair<std::string, Tensor>> halves[2];
  nlohmann::json weight_map;
  {
    const SafetensorsFile file = SafetensorsFile::open(tiny_model() + "/model.safetensors");
    for (size_t i = 0; i < file.tensors().size(); ++i) {
      const std::string& name = file.tensors()[i].name;
      halves[i % 2].emplace_back(name, file.tensor(name).clone());
      weight_map[name] = "model-0000" + std::to_string(i % 2 + 1) + "-of-00002.safetensors";
    }
  }
  for (int half = 0; half < 2; ++half)
    write_safetensors(sharded + "/model-0000" + std::to_string(half + 1) + "-of-00002.safetensors", halves[half]);
  write_text_file(sharded + "/model.safetensors.index.json", nlohmann::json{{"weight_map", weight_map}}.dump());

  const std::string from_sharded = dir.file("from_sharded");
  quantize_model(sharded, from_sharded, {4});
  Checkpoint a = Checkpoint::open(from_sharded), b = Checkpoint::open(quantized_copy(dir, 4));
  ASSERT_EQ(a.entries().size(), b.entries().size());
  for (const CheckpointEntry& entry : b.entries())
    EXPECT_TRUE(same_bytes(a.load_stored(entry.name), b.load_stored(entry.name))) << entry.name;
}

// The Error (any kind) quantize_model throws for these arguments.
std::string quantize_error(const std::string& model, const std::string& output, const QuantizeOptions& options) {
  try {
    quantize_model(model, output, options);
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected an error";
  return {};
}

TEST(QuantizedCheckpointTest, RefusesBadOptionsAndOutputDirectories) {
  TempDir dir;
  EXPECT_THROW(quantize_model(tiny_model(), dir.file("a"), {5}), UsageError);
  EXPECT_THROW(quantize_model(tiny_model(), dir.file("a"), {8, 32}), UsageError);
  EXPECT_FALSE(fs::exists(dir.file("a")));

  fs::create_directories(dir.file("taken"));
  write_text_file(dir.file("taken/keep.txt"), "mine");
  EXPECT_THROW(quantize_model(tiny_model(), dir.file("taken"), {8}), UsageError);
  EXPECT_CONTAINS(quantize_error(tiny_model(), dir.file("taken"), {8}), "not empty");
  EXPECT_EQ(read_text_file(dir.file("taken/keep.txt")), "mine");
  EXPECT_CONTAINS(quantize_error(tiny_model(), dir.file("taken/keep.txt"), {8}), "not a directory");
  // The input itself is not empty either.
  EXPECT_THROW(quantize_model(tiny_model(), tiny_model(), {8}), UsageError);

  // An empty directory is fine.
  fs::create_directories(dir.file("empty"));
  EXPECT_NO_THROW(quantize_model(tiny_model(), dir.file("empty"), {8}));
}

TEST(QuantizedCheckpointTest, RefusesInputsItCannotQuantize) {
  TempDir dir;
  // Already quantized.
  const std::string quantized = quantized_copy(dir, 8);
  const std::string again = quantize_error(quantized, dir.file("again"), {4});
  EXPECT_CONTAINS(again, quantized + " is already quantized to int8, per channel");
  // Unknown or missing architecture.
  const std::string bert = dir.file("bert");
  fs::copy(tiny_model(), bert);
  edit_config(bert, [](nlohmann::json& config) { config["model_type"] = "bert"; });
  EXPECT_CONTAINS(quantize_error(bert, dir.file("out"), {8}), "config.json: unsupported model_type \"bert\"");
  edit_config(bert, [](nlohmann::json& config) { config.erase("model_type"); });
  EXPECT_CONTAINS(quantize_error(bert, dir.file("out"), {8}), "config.json: missing key model_type");
  // Input features that are not a multiple of 32 (e3_sharded: d_model 24), or of the group size (tiny_e4: d_model
  // 32 against groups of 64).
  const std::string e3 = quantize_error(goldens_dir() + "/e3_sharded/model", dir.file("out"), {8});
  EXPECT_CONTAINS(e3, "config.json: d_model 24 is not a multiple of 32");
  EXPECT_CONTAINS(quantize_error(tiny_model(), dir.file("out"), {4, 64}), "d_model 32 is not a multiple of 64");
  // With --non-experts, attention widths too (tiny_e4 with d_kv 6: 4 heads x 6 = 24 input features of o).
  const std::string narrow = dir.file("narrow");
  fs::copy(tiny_model(), narrow);
  edit_config(narrow, [](nlohmann::json& config) { config["d_kv"] = 6; });
  EXPECT_CONTAINS(quantize_error(narrow, dir.file("out"), {8, 0, true}),
                  "config.json: num_heads * d_kv 24 is not a multiple of 32: the attention o matrices have 24 input "
                  "features");
  // A missing expert.
  const std::string missing = dir.file("missing");
  fs::copy(tiny_model(), missing);
  rewrite_checkpoint(missing, [](auto& tensors) {
    tensors.erase(std::find_if(tensors.begin(), tensors.end(), [](const auto& t) { return t.first == kWo; }));
  });
  EXPECT_CONTAINS(quantize_error(missing, dir.file("out"), {8}), "missing tensor " + kWo);
  // Nothing is left behind.
  EXPECT_FALSE(fs::exists(dir.file("again")));
  EXPECT_FALSE(fs::exists(dir.file("out")));
}

// A corrupted quantized checkpoint fails to load with a message naming the file and the tensor or key.
class CorruptedQuantizedCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override { model_ = quantized_copy(dir_, 4); }
  std::string load_error() const {
    return model_error_of([&] { load_model(model_); });
  }

  TempDir dir_;
  std::string model_;
};

TEST_F(CorruptedQuantizedCheckpoint, WrongScaleShape) {
  rewrite_checkpoint(model_, [](auto& tensors) {
    tensor_named(tensors, kWi + "_scale") = Tensor::zeros({64, 2}, DType::F16);
  });
  const std::string message = load_error();
  EXPECT_CONTAINS(message, model_ + "/model.safetensors: " + kWi + ": scales are F16 [64, 2], expected F16 [64, 1]");
}

TEST_F(CorruptedQuantizedCheckpoint, PackedSizeMismatch) {
  rewrite_checkpoint(model_, [](auto& tensors) { tensor_named(tensors, kWi) = Tensor::zeros({64, 32}, DType::U8); });
  EXPECT_CONTAINS(load_error(),
                  model_ + "/model.safetensors: " + kWi + ": values are U8 [64, 32], expected U8 [64, 16]");
}

TEST_F(CorruptedQuantizedCheckpoint, WrongDtype) {
  rewrite_checkpoint(model_, [](auto& tensors) { tensor_named(tensors, kWo) = Tensor::zeros({32, 32}, DType::I8); });
  EXPECT_CONTAINS(load_error(), "model.safetensors: " + kWo + ": values are I8 [32, 32], expected U8 [32, 32]");
  rewrite_checkpoint(model_, [](auto& tensors) {
    tensor_named(tensors, kWo) = Tensor::zeros({32, 32}, DType::U8);
    tensor_named(tensors, kWo + "_scale") = Tensor::zeros({32, 1});
  });
  EXPECT_CONTAINS(load_error(), "model.safetensors: " + kWo + ": scales are F32 [32, 1], expected F16 [32, 1]");
}

TEST_F(CorruptedQuantizedCheckpoint, MissingScales) {
  rewrite_checkpoint(model_, [](auto& tensors) {
    tensors.erase(
        std::find_if(tensors.begin(), tensors.end(), [](const auto& t) { return t.first == kWi + "_scale"; }));
  });
  const std::string message = load_error();
  EXPECT_CONTAINS(message, model_ + "/model.safetensors: " + kWi + ": its scales " + kWi + "_scale are missing");
}

TEST_F(CorruptedQuantizedCheckpoint, NonExpertMatrixWithoutScales) {
  const std::string output = dir_.file("non_experts");
  quantize_model(tiny_model(), output, {8, 0, true});
  const std::string q = "decoder.block.0.layer.1.EncDecAttention.q.weight";
  rewrite_checkpoint(output, [&](auto& tensors) {
    tensors.erase(std::find_if(tensors.begin(), tensors.end(), [&](const auto& t) { return t.first == q + "_scale"; }));
  });
  EXPECT_CONTAINS(model_error_of([&] { load_model(output); }),
                  output + "/model.safetensors: " + q + ": its scales " + q + "_scale are missing");
  // A float matrix where the config says int8.
  edit_config(model_,
              [](nlohmann::json& config) { config["elephant_quantization"]["quantized"] = "experts+non_experts"; });
  EXPECT_CONTAINS(load_error(), "encoder.block.0.layer.0.SelfAttention.q.weight: its scales");
}

TEST_F(CorruptedQuantizedCheckpoint, FloatExpertLeftInAQuantizedCheckpoint) {
  rewrite_checkpoint(model_, [](auto& tensors) { tensor_named(tensors, kWi) = Tensor::zeros({64, 32}); });
  EXPECT_CONTAINS(load_error(), kWi + ": values are F32 [64, 32], expected U8 [64, 16]");
}

TEST_F(CorruptedQuantizedCheckpoint, UnknownFormatVersion) {
  edit_config(model_, [](nlohmann::json& config) { config["elephant_quantization"]["format_version"] = 2; });
  const std::string message = load_error();
  EXPECT_CONTAINS(message, model_ + "/config.json: elephant_quantization: unknown format_version 2");
  // inspect reads the config too.
  EXPECT_CONTAINS(model_error_of([&] { inspect_model(model_); }), "unknown format_version 2");
}

TEST_F(CorruptedQuantizedCheckpoint, UnsupportedBitsAndGroupSize) {
  edit_config(model_, [](nlohmann::json& config) { config["elephant_quantization"]["bits"] = 3; });
  EXPECT_CONTAINS(load_error(), model_ + "/config.json: elephant_quantization: bits 3 is not supported (8 or 4)");
  edit_config(model_, [](nlohmann::json& config) {
    config["elephant_quantization"]["bits"] = 4;
    config["elephant_quantization"]["group_size"] = 32;
  });
  EXPECT_CONTAINS(load_error(), "config.json: elephant_quantization: group_size 32 is not supported");
}

TEST_F(CorruptedQuantizedCheckpoint, MalformedQuantizationEntry) {
  edit_config(model_, [](nlohmann::json& config) { config["elephant_quantization"] = "int4"; });
  EXPECT_CONTAINS(load_error(), "config.json: elephant_quantization must be an object");
  edit_config(model_, [](nlohmann::json& config) {
    config["elephant_quantization"] = {{"format_version", 1}, {"bits", 4}, {"group_size", 0}};
  });
  EXPECT_CONTAINS(load_error(), "config.json: elephant_quantization: missing key quantized");
  edit_config(model_, [](nlohmann::json& config) { config["elephant_quantization"]["quantized"] = "everything"; });
  EXPECT_CONTAINS(load_error(), "quantized \"everything\" is not supported (\"experts\" or \"experts+non_experts\")");
}

// The right bits in the config, the wrong bits in the file: int8 values where int4 ones are expected.
TEST_F(CorruptedQuantizedCheckpoint, BitsThatDoNotMatchTheValues) {
  edit_config(model_, [](nlohmann::json& config) { config["elephant_quantization"]["bits"] = 8; });
  EXPECT_CONTAINS(load_error(), "values are U8 [");
}

}  // namespace
}  // namespace elephant
