#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace elephant {

// One entry of a safetensors header. `data` points into the file's read-only mapping.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// A memory-mapped .safetensors file: an 8-byte little-endian header length, a JSON header mapping each
// tensor name to its dtype, shape and data_offsets, then the raw data. The header is fully validated at
// open time. Tensors returned by `tensor()` borrow the mapping, which stays alive as long as they do.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws ModelError when absent

  // The tensor in its stored dtype, borrowing the mapping; an aligned copy when the stored data is not
  // aligned to the element size.
  Tensor tensor(const std::string& name) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  std::shared_ptr<const void> mapping_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_by_name_;
};

// Parses a safetensors dtype spelling ("F32", "BF16", ...); returns false for dtypes elephant does not support.
bool parse_safetensors_dtype(const std::string& name, DType* dtype);

// Writes a safetensors file that the Python library reads back: the header is padded with spaces to a
// multiple of 8 bytes and tensors are laid out by decreasing element size, so each stays aligned.
// `metadata`, when not empty, is stored as the header's "__metadata__" (e.g. {{"format", "pt"}}).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace elephant
