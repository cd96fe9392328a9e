#include "io/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "elephant/error.h"

namespace elephant {

namespace fs = std::filesystem;

namespace {

nlohmann::json read_index_file(const std::string& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw ModelError(index_path + ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& error) {
    throw ModelError(index_path + ": invalid JSON: " + error.what());
  }
}

// The distinct shard file names of an index, in first-seen order, checked to exist.
std::vector<std::string> shard_names(const std::string& index_path, const nlohmann::json& weight_map,
                                     const std::string& model_dir) {
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& [tensor_name, shard] : weight_map.items()) {
    if (!shard.is_string())
      throw ModelError(index_path + ": weight_map entry for " + tensor_name + " is not a file name: " + shard.dump());
    const auto shard_name = shard.get<std::string>();
    if (!seen.insert(shard_name).second) continue;
    if (!fs::is_regular_file(fs::path(model_dir) / shard_name))
      throw ModelError(index_path + ": shard " + shard_name + " (holding " + tensor_name + ") does not exist in " +
                       model_dir);
    shards.push_back(shard_name);
  }
  return shards;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& model_dir) {
  if (!fs::is_directory(model_dir)) throw ModelError(model_dir + ": model directory does not exist");

  Checkpoint checkpoint;
  checkpoint.model_dir_ = model_dir;
  const std::string index_path = (fs::path(model_dir) / "model.safetensors.index.json").string();
  const std::string single_path = (fs::path(model_dir) / "model.safetensors").string();

  if (fs::exists(index_path)) {
    const nlohmann::json index = read_index_file(index_path);
    const auto weight_map = index.is_object() ? index.find("weight_map") : index.end();
    if (weight_map == index.end() || !weight_map->is_object()) throw ModelError(index_path + ": no weight_map object");
    if (weight_map->empty()) throw ModelError(index_path + ": weight_map is empty");

    for (const std::string& shard_name : shard_names(index_path, *weight_map, model_dir))
      checkpoint.add_file(SafetensorsFile::open((fs::path(model_dir) / shard_name).string()));

    for (const auto& [tensor_name, shard] : weight_map->items()) {
      const auto shard_name = shard.get<std::string>();
      const auto it = checkpoint.locations_.find(tensor_name);
      const std::string shard_path = (fs::path(model_dir) / shard_name).string();
      if (it == checkpoint.locations_.end() || checkpoint.files_[it->second.file_index].path() != shard_path)
        throw ModelError(index_path + ": tensor " + tensor_name + " is mapped to " + shard_name +
                         ", which does not contain it");
    }
  } else if (fs::exists(single_path)) {
    checkpoint.add_file(SafetensorsFile::open(single_path));
  } else {
    throw ModelError("no model.safetensors or model.safetensors.index.json in " + model_dir);
  }
  return checkpoint;
}

void Checkpoint::add_file(SafetensorsFile file) {
  const size_t file_index = files_.size();
  const auto& infos = file.tensors();
  for (size_t i = 0; i < infos.size(); ++i) {
    const auto [it, inserted] = locations_.emplace(infos[i].name, Location{file_index, i, false});
    if (!inserted)
      throw ModelError(file.path() + ": tensor " + infos[i].name + " also appears in " +
                       files_[it->second.file_index].path());
  }
  files_.push_back(std::move(file));
}

bool Checkpoint::contains(const std::string& name) const { return locations_.count(name) != 0; }

const Checkpoint::Location& Checkpoint::locate(const std::string& name) const {
  const auto it = locations_.find(name);
  if (it == locations_.end()) throw ModelError(model_dir_ + ": missing tensor " + name);
  return it->second;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  const Location& location = locate(name);
  return files_[location.file_index].tensors()[location.tensor_index];
}

const std::string& Checkpoint::file_of(const std::string& name) const { return files_[locate(name).file_index].path(); }

Checkpoint::Location& Checkpoint::locate_for_load(const std::string& name, const Shape* expected_shape) {
  const auto it = locations_.find(name);
  if (it == locations_.end()) {
    std::string message = model_dir_ + ": missing tensor " + name;
    if (expected_shape) message += " (expected shape " + shape_string(*expected_shape) + ")";
    throw ModelError(message);
  }
  return it->second;
}

Tensor Checkpoint::load(const std::string& name, const Shape& expected_shape, DType dtype) {
  Location& location = locate_for_load(name, &expected_shape);
  const SafetensorsFile& file = files_[location.file_index];
  const TensorInfo& tensor_info = file.tensors()[location.tensor_index];
  if (tensor_info.shape != expected_shape)
    throw ModelError(file.path() + ": tensor " + name + " has shape " + shape_string(tensor_info.shape) +
                     ", expected " + shape_string(expected_shape));
  if (tensor_info.dtype != DType::F32 && tensor_info.dtype != DType::F16 && tensor_info.dtype != DType::BF16)
    throw ModelError(file.path() + ": tensor " + name + " has dtype " + dtype_name(tensor_info.dtype) +
                     ", expected a floating-point dtype (F32, F16 or BF16)");
  const Tensor stored = file.tensor(name);
  Tensor tensor = stored.dtype() == dtype ? stored : stored.to_dtype(dtype);
  location.used = true;
  return tensor;
}

Tensor Checkpoint::load_stored(const std::string& name) {
  Location& location = locate_for_load(name, nullptr);
  Tensor tensor = files_[location.file_index].tensor(name);
  location.used = true;
  return tensor;
}

void Checkpoint::mark_used(const std::string& name) {
  const auto it = locations_.find(name);
  if (it != locations_.end()) it->second.used = true;
}

void Checkpoint::check_all_used() const {
  const std::pair<const std::string, Location>* first_unused = nullptr;
  size_t unused_count = 0;
  for (const auto& entry : locations_) {
    if (entry.second.used) continue;
    if (!first_unused) first_unused = &entry;
    ++unused_count;
  }
  if (!first_unused) return;
  std::string message = files_[first_unused->second.file_index].path() + ": unexpected tensor " + first_unused->first;
  if (unused_count > 1) message += " (and " + std::to_string(unused_count - 1) + " more)";
  throw ModelError(message);
}

std::map<std::string, int64_t> Checkpoint::bytes_by_dtype() const {
  std::map<std::string, int64_t> bytes;
  for (const auto& file : files_)
    for (const auto& tensor_info : file.tensors())
      bytes[dtype_name(tensor_info.dtype)] += static_cast<int64_t>(tensor_info.nbytes);
  return bytes;
}

int64_t Checkpoint::parameter_count() const {
  int64_t count = 0;
  for (const auto& file : files_)
    for (const auto& tensor_info : file.tensors()) count += shape_numel(tensor_info.shape);
  return count;
}

std::vector<CheckpointEntry> Checkpoint::entries() const {
  std::vector<CheckpointEntry> result;
  result.reserve(locations_.size());
  for (const auto& [name, location] : locations_) {
    const SafetensorsFile& file = files_[location.file_index];
    const TensorInfo& tensor_info = file.tensors()[location.tensor_index];
    result.push_back({name, tensor_info.dtype, tensor_info.shape, file.path()});
  }
  return result;
}

}  // namespace elephant
