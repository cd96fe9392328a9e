#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "elephant/error.h"

namespace elephant {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

namespace {

constexpr size_t header_length_bytes = 8;

struct FileMapping {
  void* address = nullptr;
  size_t size = 0;

  FileMapping(void* mapped_address, size_t mapped_size) : address(mapped_address), size(mapped_size) {}
  ~FileMapping() { munmap(address, size); }
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
};

std::shared_ptr<const FileMapping> map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ModelError(path + ": cannot open: " + std::strerror(errno));
  struct stat file_status {};
  if (fstat(fd, &file_status) != 0) {
    const int error = errno;
    ::close(fd);
    throw ModelError(path + ": cannot stat: " + std::strerror(error));
  }
  if (!S_ISREG(file_status.st_mode)) {
    ::close(fd);
    throw ModelError(path + ": not a regular file");
  }
  const auto size = static_cast<size_t>(file_status.st_size);
  if (size < header_length_bytes) {
    ::close(fd);
    throw ModelError(path + ": file is " + std::to_string(size) +
                     " bytes, too short for a safetensors header length (8 bytes)");
  }
  void* address = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int error = errno;
  ::close(fd);
  if (address == MAP_FAILED) throw ModelError(path + ": cannot mmap: " + std::strerror(error));
  return std::make_shared<const FileMapping>(address, size);
}

uint64_t read_little_endian_u64(const unsigned char* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// Reads a JSON integer as int64_t; false when the value is not an integer or does not fit.
bool json_to_int64(const nlohmann::json& value, int64_t* result) {
  if (value.is_number_unsigned()) {
    const auto unsigned_value = value.get<uint64_t>();
    if (unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *result = static_cast<int64_t>(unsigned_value);
    return true;
  }
  if (value.is_number_integer()) {
    *result = value.get<int64_t>();
    return true;
  }
  return false;
}

TensorInfo parse_tensor_entry(const std::string& path, const std::string& name, const nlohmann::json& entry,
                              const unsigned char* data_begin, size_t data_size) {
  const std::string where = path + ": tensor " + name;
  if (!entry.is_object()) throw ModelError(where + ": header entry is not an object: " + entry.dump());

  TensorInfo info;
  info.name = name;

  const auto dtype_entry = entry.find("dtype");
  if (dtype_entry == entry.end() || !dtype_entry->is_string())
    throw ModelError(where + " has no dtype string in the header");
  const auto dtype_spelling = dtype_entry->get<std::string>();
  if (!parse_safetensors_dtype(dtype_spelling, &info.dtype))
    throw ModelError(where + " has unsupported dtype " + dtype_spelling);

  const auto shape_entry = entry.find("shape");
  if (shape_entry == entry.end() || !shape_entry->is_array())
    throw ModelError(where + " has no shape array in the header");
  int64_t numel = 1;
  for (const auto& dim_entry : *shape_entry) {
    int64_t dim = 0;
    if (!json_to_int64(dim_entry, &dim))
      throw ModelError(where + " has an invalid dimension " + dim_entry.dump() + " in shape " + shape_entry->dump());
    if (dim < 0) throw ModelError(where + " has a negative dimension in shape " + shape_entry->dump());
    if (__builtin_mul_overflow(numel, dim, &numel))
      throw ModelError(where + " has shape " + shape_entry->dump() + " whose element count overflows");
    info.shape.push_back(dim);
  }
  int64_t expected_bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<int64_t>(dtype_size(info.dtype)), &expected_bytes))
    throw ModelError(where + " has shape " + shape_entry->dump() + " whose byte size overflows");

  const auto offsets_entry = entry.find("data_offsets");
  int64_t begin = 0;
  int64_t end = 0;
  if (offsets_entry == entry.end() || !offsets_entry->is_array() || offsets_entry->size() != 2 ||
      !json_to_int64((*offsets_entry)[0], &begin) || !json_to_int64((*offsets_entry)[1], &end) || begin < 0 || end < 0)
    throw ModelError(where + " has invalid data_offsets " +
                     (offsets_entry == entry.end() ? std::string("(missing)") : offsets_entry->dump()) +
                     ", expected [begin, end] with non-negative integers");
  if (begin > end)
    throw ModelError(where + " has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                     "] with begin > end");
  if (static_cast<uint64_t>(end) > data_size)
    throw ModelError(where + " has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                     "] past the end of the data section (" + std::to_string(data_size) +
                     " bytes); the file may be truncated");
  if (end - begin != expected_bytes)
    throw ModelError(where + " has " + std::to_string(end - begin) + " bytes of data, expected " +
                     std::to_string(expected_bytes) + " for " + dtype_spelling + " " + shape_string(info.shape));

  info.data = data_begin + begin;
  info.nbytes = static_cast<size_t>(expected_bytes);
  return info;
}

}  // namespace

bool parse_safetensors_dtype(const std::string& name, DType* dtype) {
  static const std::pair<const char*, DType> supported[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I64", DType::I64},
      {"I32", DType::I32}, {"I8", DType::I8},   {"U8", DType::U8},
  };
  for (const auto& [spelling, value] : supported) {
    if (name == spelling) {
      *dtype = value;
      return true;
    }
  }
  return false;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto mapping = map_file(path);
  const auto* bytes = static_cast<const unsigned char*>(mapping->address);

  const uint64_t header_length = read_little_endian_u64(bytes);
  const size_t available = mapping->size - header_length_bytes;
  if (header_length > available)
    throw ModelError(path + ": header length " + std::to_string(header_length) + " runs past the end of the file (" +
                     std::to_string(mapping->size) + " bytes)");

  const auto* header_begin = reinterpret_cast<const char*>(bytes + header_length_bytes);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_begin, header_begin + header_length);
  } catch (const nlohmann::json::parse_error& error) {
    throw ModelError(path + ": invalid JSON header: " + error.what());
  }
  if (!header.is_object()) throw ModelError(path + ": the JSON header is not an object");

  const unsigned char* data_begin = bytes + header_length_bytes + header_length;
  const size_t data_size = available - static_cast<size_t>(header_length);

  SafetensorsFile file;
  file.path_ = path;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    file.tensors_.push_back(parse_tensor_entry(path, name, entry, data_begin, data_size));
  }
  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.index_by_name_.emplace(file.tensors_[i].name, i);
  file.mapping_ = std::shared_ptr<const void>(mapping, mapping->address);
  return file;
}

bool SafetensorsFile::contains(const std::string& name) const { return index_by_name_.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = index_by_name_.find(name);
  if (it == index_by_name_.end()) throw ModelError(path_ + ": no tensor " + name);
  return tensors_[it->second];
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& tensor_info = info(name);
  if (reinterpret_cast<uintptr_t>(tensor_info.data) % dtype_size(tensor_info.dtype) == 0)
    return Tensor::borrow(const_cast<void*>(tensor_info.data), tensor_info.shape, tensor_info.dtype, mapping_);
  Tensor copy = Tensor::empty(tensor_info.shape, tensor_info.dtype);
  std::memcpy(copy.raw(), tensor_info.data, tensor_info.nbytes);
  return copy;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const size_t size_a = dtype_size(tensors[a].second.dtype());
    const size_t size_b = dtype_size(tensors[b].second.dtype());
    if (size_a != size_b) return size_a > size_b;
    return tensors[a].first < tensors[b].first;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (size_t i : order) {
    const auto& [name, tensor] = tensors[i];
    if (name.empty() || name == "__metadata__") throw Error(path + ": invalid tensor name \"" + name + "\"");
    if (header.contains(name)) throw Error(path + ": duplicate tensor " + name);
    if (!tensor.defined()) throw Error(path + ": tensor " + name + " is undefined");
    if (tensor.device() != Device::CPU) throw Error(path + ": tensor " + name + " is not on the CPU");
    header[name] = {{"dtype", dtype_name(tensor.dtype())},
                    {"shape", tensor.shape()},
                    {"data_offsets", {offset, offset + tensor.nbytes()}}};
    offset += tensor.nbytes();
  }

  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  unsigned char header_length[header_length_bytes];
  uint64_t length = header_text.size();
  for (unsigned char& byte : header_length) {
    byte = static_cast<unsigned char>(length & 0xFF);
    length >>= 8;
  }

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
  out.write(reinterpret_cast<const char*>(header_length), sizeof(header_length));
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (size_t i : order) {
    const Tensor& tensor = tensors[i].second;
    if (tensor.nbytes())
      out.write(static_cast<const char*>(tensor.raw()), static_cast<std::streamsize>(tensor.nbytes()));
  }
  out.close();
  if (!out) throw Error(path + ": write failed: " + std::strerror(errno));
}

}  // namespace elephant
