#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "elephant/error.h"
#include "test_utils.h"

namespace elephant {
namespace {

// A safetensors file from a header given as JSON text, without the padding the writer adds.
std::string raw_safetensors(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((length >> (8 * i)) & 0xFF);
  return bytes + header + data;
}

std::string open_error(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const ModelError& error) {
    return error.what();
  }
  ADD_FAILURE() << "opening " << path << " did not throw ModelError";
  return {};
}

template <typename T>
Tensor tensor_of(DType dtype, const std::vector<T>& values, const Shape& shape) {
  Tensor tensor = Tensor::empty(shape, dtype);
  EXPECT_EQ(tensor.nbytes(), values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(tensor.raw(), values.data(), values.size() * sizeof(T));
  return tensor;
}

std::string bytes_of(const Tensor& tensor) {
  return std::string(static_cast<const char*>(tensor.raw()), tensor.nbytes());
}

TEST(SafetensorsTest, RoundTripsEverySupportedDtype) {
  TempDir dir;
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"f32", Tensor::from_vector<float>({1.5f, -2.f, 3.25f, 0.f, 1e-8f, -7.f}, {2, 3})},
      {"f16", tensor_of<uint16_t>(DType::F16, {0x3C00, 0xC000, 0x7BFF}, {3})},
      {"bf16", tensor_of<uint16_t>(DType::BF16, {0x3F80, 0xBF80, 0x4049, 0x0001}, {2, 2})},
      {"i64", Tensor::from_vector<int64_t>({INT64_MIN, INT64_MAX}, {2})},
      {"i32", Tensor::from_vector<int32_t>({-1, 0, 1, 2147483647}, {4, 1})},
      {"i8", tensor_of<int8_t>(DType::I8, {-128, -1, 0, 1, 127}, {5})},
      {"u8", tensor_of<uint8_t>(DType::U8, {0, 128, 255}, {1, 3})},
      {"scalar", Tensor::from_vector<float>({42.f}, {})},
      {"empty", Tensor::empty({0, 4}, DType::F32)},
  };
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, tensors);

  const std::string file_bytes = read_text_file(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, file_bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.path(), path);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  for (size_t i = 1; i < file.tensors().size(); ++i) EXPECT_LT(file.tensors()[i - 1].name, file.tensors()[i].name);

  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(file.contains(name));
    const TensorInfo& info = file.info(name);
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.dtype, expected.dtype());
    EXPECT_EQ(info.shape, expected.shape());
    EXPECT_EQ(info.nbytes, expected.nbytes());

    const Tensor loaded = file.tensor(name);
    EXPECT_EQ(loaded.dtype(), expected.dtype());
    EXPECT_EQ(loaded.shape(), expected.shape());
    EXPECT_EQ(bytes_of(loaded), bytes_of(expected));
    if (loaded.nbytes()) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(loaded.raw()) % dtype_size(loaded.dtype()), 0u);
      EXPECT_EQ(loaded.raw(), info.data) << "aligned data should be borrowed, not copied";
    }
  }
  EXPECT_FALSE(file.contains("missing"));
}

TEST(SafetensorsTest, WritesMetadataAndIgnoresItOnRead) {
  TempDir dir;
  const std::string path = dir.file("with_metadata.safetensors");
  write_safetensors(path, {{"w", Tensor::from_vector<float>({1.f, 2.f}, {2})}}, {{"format", "pt"}});
  EXPECT_CONTAINS(read_text_file(path), "\"__metadata__\":{\"format\":\"pt\"}");
  const SafetensorsFile file = SafetensorsFile::open(path);
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_EQ(file.tensors()[0].name, "w");
  EXPECT_FALSE(file.contains("__metadata__"));
}

TEST(SafetensorsTest, ReadsAHandWrittenFile) {
  TempDir dir;
  const std::string path = dir.file("hand.safetensors");
  const float values[] = {1.f, 2.f};
  const std::string header = R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  write_text_file(path, raw_safetensors(header + std::string(8 - header.size() % 8, ' '),
                                        std::string(reinterpret_cast<const char*>(values), sizeof(values))));
  const Tensor tensor = SafetensorsFile::open(path).tensor("b");
  EXPECT_EQ(tensor.data<float>()[0], 1.f);
  EXPECT_EQ(tensor.data<float>()[1], 2.f);
}

TEST(SafetensorsTest, BorrowedTensorKeepsTheMappingAlive) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, {{"w", Tensor::from_vector<float>({4.f, 5.f, 6.f}, {3})}});
  Tensor tensor;
  {
    const SafetensorsFile file = SafetensorsFile::open(path);
    tensor = file.tensor("w");
  }
  EXPECT_EQ(tensor.data<float>()[2], 6.f);
}

TEST(SafetensorsTest, MisalignedDataIsCopiedToAlignedMemory) {
  TempDir dir;
  const std::string path = dir.file("misaligned.safetensors");
  const float values[] = {1.f, -2.f, 3.f};
  // An 8 + 61 byte prefix leaves the data at an odd address.
  std::string header = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  header.append(61 - header.size(), ' ');
  write_text_file(path, raw_safetensors(header, std::string(reinterpret_cast<const char*>(values), sizeof(values))));

  const SafetensorsFile file = SafetensorsFile::open(path);
  ASSERT_NE(reinterpret_cast<uintptr_t>(file.info("x").data) % 4, 0u);
  const Tensor tensor = file.tensor("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tensor.raw()) % 4, 0u);
  EXPECT_NE(tensor.raw(), file.info("x").data);
  EXPECT_EQ(tensor.data<float>()[0], 1.f);
  EXPECT_EQ(tensor.data<float>()[1], -2.f);
  EXPECT_EQ(tensor.data<float>()[2], 3.f);
}

TEST(SafetensorsTest, MissingFile) {
  TempDir dir;
  const std::string path = dir.file("absent.safetensors");
  EXPECT_CONTAINS(open_error(path), path);
}

TEST(SafetensorsTest, FileShorterThanEightBytes) {
  TempDir dir;
  const std::string path = dir.file("short.safetensors");
  write_text_file(path, "abc");
  const std::string message = open_error(path);
  EXPECT_CONTAINS(message, path);
  EXPECT_CONTAINS(message, "3 bytes");
  write_text_file(path, "");
  EXPECT_CONTAINS(open_error(path), path);
}

TEST(SafetensorsTest, HeaderLengthPastEndOfFile) {
  TempDir dir;
  const std::string path = dir.file("long_header.safetensors");
  std::string bytes = raw_safetensors("{}", "");
  bytes[0] = 100;
  write_text_file(path, bytes);
  const std::string message = open_error(path);
  EXPECT_CONTAINS(message, path);
  EXPECT_CONTAINS(message, "header length 100");

  bytes[7] = '\xFF';  // a huge length must not overflow the bounds check
  write_text_file(path, bytes);
  EXPECT_CONTAINS(open_error(path), "runs past the end of the file");
}

TEST(SafetensorsTest, InvalidJsonHeader) {
  TempDir dir;
  const std::string path = dir.file("bad_json.safetensors");
  write_text_file(path, raw_safetensors(R"({"x": {"dtype": "F32",)", ""));
  const std::string message = open_error(path);
  EXPECT_CONTAINS(message, path);
  EXPECT_CONTAINS(message, "invalid JSON header");

  write_text_file(path, raw_safetensors("[1, 2]", ""));
  EXPECT_CONTAINS(open_error(path), "not an object");
}

TEST(SafetensorsTest, UnsupportedDtype) {
  TempDir dir;
  for (const std::string dtype : {"F64", "F8_E4M3", "BOOL"}) {
    const std::string path = dir.file(dtype + ".safetensors");
    write_text_file(path, raw_safetensors(R"({"weight":{"dtype":")" + dtype + R"(","shape":[1],"data_offsets":[0,8]}})",
                                          std::string(8, '\0')));
    EXPECT_EQ(open_error(path), path + ": tensor weight has unsupported dtype " + dtype);
  }
}

TEST(SafetensorsTest, TruncatedData) {
  TempDir dir;
  const std::string path = dir.file("truncated.safetensors");
  write_safetensors(path, {{"a", Tensor::zeros({4})}, {"b", Tensor::zeros({16})}});
  std::string bytes = read_text_file(path);
  bytes.resize(bytes.size() - 10);
  write_text_file(path, bytes);
  const std::string message = open_error(path);
  EXPECT_CONTAINS(message, path + ": tensor ");
  EXPECT_CONTAINS(message, "truncated");
}

TEST(SafetensorsTest, BadDataOffsets) {
  TempDir dir;
  const std::string path = dir.file("offsets.safetensors");
  const auto header_with = [](const std::string& entry) { return R"({"t":)" + entry + "}"; };

  write_text_file(
      path, raw_safetensors(header_with(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})"), std::string(8, '\0')));
  EXPECT_CONTAINS(open_error(path), "tensor t has data_offsets [8, 4] with begin > end");

  write_text_file(
      path, raw_safetensors(header_with(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), std::string(8, '\0')));
  EXPECT_CONTAINS(open_error(path), "tensor t has 8 bytes of data, expected 12 for F32 [3]");

  write_text_file(
      path, raw_safetensors(header_with(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,4]})"), std::string(8, '\0')));
  EXPECT_CONTAINS(open_error(path), "tensor t has invalid data_offsets");

  write_text_file(
      path, raw_safetensors(header_with(R"({"dtype":"F32","shape":[1],"data_offsets":[0]})"), std::string(8, '\0')));
  EXPECT_CONTAINS(open_error(path), "tensor t has invalid data_offsets");

  write_text_file(path, raw_safetensors(header_with(R"({"dtype":"F32","shape":[1]})"), std::string(8, '\0')));
  EXPECT_CONTAINS(open_error(path), "tensor t has invalid data_offsets (missing)");

  write_text_file(path, raw_safetensors(header_with(R"({"shape":[1],"data_offsets":[0,4]})"), std::string(8, '\0')));
  EXPECT_CONTAINS(open_error(path), "tensor t has no dtype");

  write_text_file(path, raw_safetensors(header_with("7"), std::string(8, '\0')));
  EXPECT_CONTAINS(open_error(path), "tensor t: header entry is not an object");
}

TEST(SafetensorsTest, BadShapes) {
  TempDir dir;
  const std::string path = dir.file("shapes.safetensors");
  const auto header_with_shape = [](const std::string& shape) {
    return R"({"t":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,0]}})";
  };

  write_text_file(path, raw_safetensors(header_with_shape("[2,-1]"), ""));
  std::string message = open_error(path);
  EXPECT_CONTAINS(message, path + ": tensor t has a negative dimension in shape [2,-1]");

  write_text_file(path, raw_safetensors(header_with_shape("[4294967296,4294967296]"), ""));
  EXPECT_CONTAINS(open_error(path), "tensor t has shape [4294967296,4294967296] whose element count overflows");

  write_text_file(path, raw_safetensors(header_with_shape("[3037000499,3037000499]"), ""));
  EXPECT_CONTAINS(open_error(path), "whose byte size overflows");

  write_text_file(path, raw_safetensors(header_with_shape("[18446744073709551615]"), ""));
  EXPECT_CONTAINS(open_error(path), "tensor t has an invalid dimension");

  write_text_file(path, raw_safetensors(header_with_shape("[1.5]"), ""));
  EXPECT_CONTAINS(open_error(path), "tensor t has an invalid dimension");

  write_text_file(path, raw_safetensors(header_with_shape("\"2x3\""), ""));
  EXPECT_CONTAINS(open_error(path), "tensor t has no shape array");
}

TEST(SafetensorsTest, UnknownTensorNameIsAnError) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, {{"w", Tensor::zeros({1})}});
  const SafetensorsFile file = SafetensorsFile::open(path);
  try {
    file.tensor("v");
    FAIL() << "expected ModelError";
  } catch (const ModelError& error) {
    EXPECT_EQ(std::string(error.what()), path + ": no tensor v");
  }
}

TEST(SafetensorsTest, WriterRejectsDuplicateNames) {
  TempDir dir;
  EXPECT_THROW(write_safetensors(dir.file("dup.safetensors"), {{"w", Tensor::zeros({1})}, {"w", Tensor::zeros({2})}}),
               Error);
}

TEST(SafetensorsTest, ParsesDtypeSpellings) {
  DType dtype = DType::F32;
  for (DType expected : {DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I8, DType::U8}) {
    ASSERT_TRUE(parse_safetensors_dtype(dtype_name(expected), &dtype));
    EXPECT_EQ(dtype, expected);
  }
  EXPECT_FALSE(parse_safetensors_dtype("F64", &dtype));
  EXPECT_FALSE(parse_safetensors_dtype("f32", &dtype));
}

}  // namespace
}  // namespace elephant
