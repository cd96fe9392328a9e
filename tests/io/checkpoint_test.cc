#include "io/checkpoint.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "elephant/error.h"
#include "io/safetensors.h"
#include "ops/reference_helpers.h"
#include "test_utils.h"

namespace elephant {
namespace {

using testref::half_tensor;

std::vector<float> values_of(const Tensor& tensor) {
  const float* data = tensor.data<float>();
  return std::vector<float>(data, data + tensor.numel());
}

TEST(CheckpointTest, LoadsSingleFileAsFloat32) {
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"),
                    {{"f32", Tensor::from_vector<float>({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}, {2, 3})},
                     {"f16", half_tensor(DType::F16, {0x3C00, 0xC000, 0x3800}, {3})},
                     {"bf16", half_tensor(DType::BF16, {0x3F80, 0xC040}, {1, 2})},
                     {"ids", Tensor::from_vector<int64_t>({7, 8}, {2})}});
  Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(checkpoint.model_dir(), dir.path());
  EXPECT_TRUE(checkpoint.contains("f16"));
  EXPECT_FALSE(checkpoint.contains("nope"));

  const Tensor f32 = checkpoint.load("f32", {2, 3});
  EXPECT_EQ(f32.dtype(), DType::F32);
  EXPECT_EQ(values_of(f32), (std::vector<float>{1.f, 2.f, 3.f, 4.f, 5.f, 6.f}));
  EXPECT_EQ(f32.raw(), checkpoint.info("f32").data) << "aligned F32 should be borrowed";

  const Tensor f16 = checkpoint.load("f16", {3});
  EXPECT_EQ(f16.dtype(), DType::F32);
  EXPECT_EQ(values_of(f16), (std::vector<float>{1.f, -2.f, 0.5f}));

  const Tensor bf16 = checkpoint.load("bf16", {1, 2});
  EXPECT_EQ(bf16.shape(), (Shape{1, 2}));
  EXPECT_EQ(values_of(bf16), (std::vector<float>{1.f, -3.f}));

  const Tensor ids = checkpoint.load_stored("ids");
  EXPECT_EQ(ids.dtype(), DType::I64);
  EXPECT_EQ(ids.data<int64_t>()[1], 8);

  EXPECT_NO_THROW(checkpoint.check_all_used());
}

TEST(CheckpointTest, ConvertsMisalignedHalfData) {
  TempDir dir;
  const uint16_t bits[] = {0x3C00, 0x4000, 0xC200};
  // A 61-byte header puts the data at an odd offset.
  std::string header = R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}})";
  header.append(61 - header.size(), ' ');
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  write_text_file(dir.file("model.safetensors"),
                  bytes + header + std::string(reinterpret_cast<const char*>(bits), sizeof(bits)));
  Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(values_of(checkpoint.load("h", {3})), (std::vector<float>{1.f, 2.f, -3.f}));
}

TEST(CheckpointTest, ShardedViaIndex) {
  TempDir dir;
  write_safetensors(dir.file("model-00001-of-00002.safetensors"),
                    {{"encoder.w", Tensor::from_vector<float>({1.f, 2.f}, {2})},
                     {"shared.weight", half_tensor(DType::BF16, {0x3F80, 0x4000, 0x4040, 0x4080}, {2, 2})}});
  write_safetensors(dir.file("model-00002-of-00002.safetensors"),
                    {{"decoder.w", Tensor::from_vector<float>({3.f, 4.f, 5.f}, {3})}});
  write_text_file(dir.file("model.safetensors.index.json"), R"({
    "metadata": {"total_size": 28},
    "weight_map": {
      "encoder.w": "model-00001-of-00002.safetensors",
      "shared.weight": "model-00001-of-00002.safetensors",
      "decoder.w": "model-00002-of-00002.safetensors"
    }
  })");
  // A stray single file is ignored when an index exists.
  write_safetensors(dir.file("model.safetensors"), {{"ignored", Tensor::zeros({1})}});

  Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_FALSE(checkpoint.contains("ignored"));
  EXPECT_EQ(values_of(checkpoint.load("encoder.w", {2})), (std::vector<float>{1.f, 2.f}));
  EXPECT_EQ(values_of(checkpoint.load("decoder.w", {3})), (std::vector<float>{3.f, 4.f, 5.f}));
  EXPECT_EQ(checkpoint.file_of("decoder.w"), dir.file("model-00002-of-00002.safetensors"));

  EXPECT_EQ(checkpoint.parameter_count(), 2 + 4 + 3);
  const std::map<std::string, int64_t> expected_bytes = {{"F32", 20}, {"BF16", 8}};
  EXPECT_EQ(checkpoint.bytes_by_dtype(), expected_bytes);

  const std::vector<CheckpointEntry> entries = checkpoint.entries();
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].name, "decoder.w");
  EXPECT_EQ(entries[1].name, "encoder.w");
  EXPECT_EQ(entries[2].name, "shared.weight");
  EXPECT_EQ(entries[2].dtype, DType::BF16);
  EXPECT_EQ(entries[2].shape, (Shape{2, 2}));
  EXPECT_EQ(entries[2].file, dir.file("model-00001-of-00002.safetensors"));

  EXPECT_EQ(model_error_of([&] { checkpoint.check_all_used(); }),
            dir.file("model-00001-of-00002.safetensors") + ": unexpected tensor shared.weight");
  checkpoint.mark_used("shared.weight");
  checkpoint.mark_used("not.in.checkpoint");
  EXPECT_NO_THROW(checkpoint.check_all_used());
}

TEST(CheckpointTest, MissingModelDirectory) {
  TempDir dir;
  const std::string missing = dir.file("no_such_model");
  EXPECT_EQ(model_error_of([&] { Checkpoint::open(missing); }), missing + ": model directory does not exist");
}

TEST(CheckpointTest, NoWeightsFile) {
  TempDir dir;
  write_text_file(dir.file("config.json"), "{}");
  EXPECT_EQ(model_error_of([&] { Checkpoint::open(dir.path()); }),
            "no model.safetensors or model.safetensors.index.json in " + dir.path());
}

TEST(CheckpointTest, MissingTensor) {
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"a", Tensor::zeros({2})}});
  Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(model_error_of([&] {
              checkpoint.load("encoder.block.0.layer.0.weight", {4, 8});
            }),
            dir.path() + ": missing tensor encoder.block.0.layer.0.weight (expected shape [4, 8])");
}

TEST(CheckpointTest, WrongShape) {
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"w", Tensor::zeros({2, 3})}});
  Checkpoint checkpoint = Checkpoint::open(dir.path());
  EXPECT_EQ(model_error_of([&] {
              checkpoint.load("w", {3, 2});
            }),
            dir.file("model.safetensors") + ": tensor w has shape [2, 3], expected [3, 2]");
  EXPECT_CONTAINS(model_error_of([&] { checkpoint.check_all_used(); }), "unexpected tensor w");
}

TEST(CheckpointTest, NonFloatDtypeCannotBeLoadedAsFloat) {
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"q", Tensor::from_vector<int32_t>({1, 2}, {2})}});
  Checkpoint checkpoint = Checkpoint::open(dir.path());
  const std::string message = model_error_of([&] { checkpoint.load("q", {2}); });
  EXPECT_CONTAINS(message, dir.file("model.safetensors") + ": tensor q has dtype I32");
}

TEST(CheckpointTest, UnsupportedDtypeInFile) {
  TempDir dir;
  const std::string header = R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  write_text_file(dir.file("model.safetensors"), bytes + header + std::string(8, '\0'));
  EXPECT_EQ(model_error_of([&] { Checkpoint::open(dir.path()); }),
            dir.file("model.safetensors") + ": tensor w has unsupported dtype F64");
}

TEST(CheckpointTest, UnexpectedTensorsAreCounted) {
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"used", Tensor::zeros({1})},
                                                    {"extra.a", Tensor::zeros({1})},
                                                    {"extra.b", Tensor::zeros({1})},
                                                    {"extra.c", Tensor::zeros({1})}});
  Checkpoint checkpoint = Checkpoint::open(dir.path());
  checkpoint.load("used", {1});
  EXPECT_EQ(model_error_of([&] { checkpoint.check_all_used(); }),
            dir.file("model.safetensors") + ": unexpected tensor extra.a (and 2 more)");
}

TEST(CheckpointTest, IndexNamingMissingShard) {
  TempDir dir;
  write_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"a", Tensor::zeros({1})}});
  const std::string index = dir.file("model.safetensors.index.json");
  write_text_file(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}})");
  const std::string message = model_error_of([&] { Checkpoint::open(dir.path()); });
  EXPECT_CONTAINS(message, index + ": shard model-00002-of-00002.safetensors");
  EXPECT_CONTAINS(message, "does not exist");
}

TEST(CheckpointTest, IndexNamingTensorAbsentFromItsShard) {
  TempDir dir;
  write_safetensors(dir.file("shard1.safetensors"), {{"a", Tensor::zeros({1})}});
  write_safetensors(dir.file("shard2.safetensors"), {{"b", Tensor::zeros({1})}});
  const std::string index = dir.file("model.safetensors.index.json");
  write_text_file(index, R"({"weight_map": {"a": "shard1.safetensors", "b": "shard1.safetensors",
                                            "c": "shard2.safetensors"}})");
  EXPECT_EQ(model_error_of([&] { Checkpoint::open(dir.path()); }),
            index + ": tensor b is mapped to shard1.safetensors, which does not contain it");
}

TEST(CheckpointTest, InvalidIndexFile) {
  TempDir dir;
  const std::string index = dir.file("model.safetensors.index.json");
  write_text_file(index, "{\"weight_map\": ");
  EXPECT_CONTAINS(model_error_of([&] { Checkpoint::open(dir.path()); }), index + ": invalid JSON");
  write_text_file(index, R"({"metadata": {}})");
  EXPECT_EQ(model_error_of([&] { Checkpoint::open(dir.path()); }), index + ": no weight_map object");
  write_text_file(index, R"({"weight_map": {}})");
  EXPECT_EQ(model_error_of([&] { Checkpoint::open(dir.path()); }), index + ": weight_map is empty");
  write_text_file(index, R"({"weight_map": {"a": 3}})");
  EXPECT_CONTAINS(model_error_of([&] { Checkpoint::open(dir.path()); }), "weight_map entry for a is not a file name");
}

TEST(CheckpointTest, TensorInTwoShards) {
  TempDir dir;
  write_safetensors(dir.file("s1.safetensors"), {{"a", Tensor::zeros({1})}});
  write_safetensors(dir.file("s2.safetensors"), {{"a", Tensor::zeros({1})}, {"b", Tensor::zeros({1})}});
  write_text_file(dir.file("model.safetensors.index.json"),
                  R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  const std::string message = model_error_of([&] { Checkpoint::open(dir.path()); });
  EXPECT_CONTAINS(message, "tensor a also appears in");
}

TEST(CheckpointTest, CorruptShardIsReportedByName) {
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"a", Tensor::zeros({64})}});
  std::string bytes = read_text_file(dir.file("model.safetensors"));
  bytes.resize(bytes.size() - 4);
  write_text_file(dir.file("model.safetensors"), bytes);
  const std::string message = model_error_of([&] { Checkpoint::open(dir.path()); });
  EXPECT_CONTAINS(message, dir.file("model.safetensors") + ": tensor a");
  EXPECT_CONTAINS(message, "truncated");
}

}  // namespace
}  // namespace elephant
