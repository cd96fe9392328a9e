#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace elephant {

struct CheckpointEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::string file;  // the safetensors file holding it
};

// A model directory's weights: model.safetensors, or the shards named by model.safetensors.index.json.
// The model builder loads each tensor it expects by name and shape; check_all_used() then reports
// tensors that nothing consumed, which usually means a configuration mismatch.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& model_dir);

  const std::string& model_dir() const { return model_dir_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws ModelError when absent
  const std::string& file_of(const std::string& name) const;

  // A CPU tensor in `dtype` (F32, F16 or BF16), borrowed from the mapping when stored in that dtype, else
  // converted from the stored F32/F16/BF16 (rounding to nearest even). Marks the name used.
  Tensor load(const std::string& name, const Shape& expected_shape, DType dtype = DType::F32);
  // The tensor in its stored dtype (any supported dtype), for tools that rewrite checkpoints. Marks the name used.
  Tensor load_stored(const std::string& name);

  // For tensors the builder accepts but does not load (tied duplicates). Names not in the checkpoint are ignored.
  void mark_used(const std::string& name);
  // Throws ModelError "FILE: unexpected tensor NAME (and N more)" when some tensor was never used.
  void check_all_used() const;

  std::map<std::string, int64_t> bytes_by_dtype() const;  // keyed by the safetensors spelling: "F32", "BF16", ...
  int64_t parameter_count() const;                        // sum of every tensor's element count
  std::vector<CheckpointEntry> entries() const;           // sorted by name

 private:
  struct Location {
    size_t file_index = 0;
    size_t tensor_index = 0;
    bool used = false;
  };

  Checkpoint() = default;
  void add_file(SafetensorsFile file);
  const Location& locate(const std::string& name) const;
  Location& locate_for_load(const std::string& name, const Shape* expected_shape);

  std::string model_dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Location> locations_;
};

}  // namespace elephant
