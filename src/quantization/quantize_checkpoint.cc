// `elephant quantize`: a Hugging Face Switch Transformers checkpoint rewritten with int8 / int4 experts.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "elephant/error.h"
#include "elephant/quantize.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "models/switch_transformers.h"
#include "quantization/quantized_checkpoint.h"

namespace elephant {

namespace fs = std::filesystem;

namespace {

// Copied as they are when the input has them; README.md is not (it describes the original).
const char* const kCopiedFiles[] = {"spiece.model", "generation_config.json", "languages.json"};

void check_options(const QuantizeOptions& options) {
  if (!supported_bits(options.bits))
    throw UsageError("--bits " + std::to_string(options.bits) + ": experts are quantized to 8 or 4 bits");
  if (!supported_group_size(options.group_size))
    throw UsageError("--group-size " + std::to_string(options.group_size) +
                     ": supported are 0 (one scale per output channel), 64 and 128");
  if (options.max_shard_bytes <= 0)
    throw UsageError("the shard size must be positive, got " + std::to_string(options.max_shard_bytes));
}

// Quantized weights store k in blocks of 32 features, and a group never straddles two.
void check_input_features(const JsonConfig& json, const std::string& key, int64_t k, const std::string& matrices,
                          int64_t group_size) {
  const int64_t multiple = std::max<int64_t>(kQuantBlock, group_size);
  if (k % multiple != 0)
    throw ModelError(json.path() + ": " + key + " " + std::to_string(k) + " is not a multiple of " +
                     std::to_string(multiple) + ": the " + matrices + " matrices have " + std::to_string(k) +
                     " input features, and quantized weights need whole blocks of 32" +
                     (group_size ? " and groups of " + std::to_string(group_size) : std::string()));
}

// The input's configuration, checked to be a Switch Transformers model that is not quantized yet and whose experts
// the quantizer can take.
SwitchTransformersConfig quantizable_config(const JsonConfig& json, const std::string& model_dir,
                                            const QuantizeOptions& options) {
  const std::string model_type = json.get_string("model_type");
  if (model_type != "switch_transformers")
    throw ModelError(json.path() + ": unsupported model_type \"" + model_type +
                     "\" (elephant quantize supports switch_transformers)");
  const SwitchTransformersConfig config = SwitchTransformersConfig::parse(json);
  if (config.quantization.quantized())
    throw ModelError(model_dir + " is already quantized to " +
                     quantization_description(config.quantization.bits, config.quantization.group_size) +
                     "; quantize the original checkpoint instead");
  if (config.expert_matrices().empty()) throw ModelError(json.path() + ": the model has no experts to quantize");
  check_input_features(json, "d_model", config.d_model, "experts' wi", options.group_size);
  check_input_features(json, "d_ff", config.d_ff, "experts' wo", options.group_size);
  // The other matrices' input features are d_model and d_ff too, except attention o's.
  if (options.non_experts)
    check_input_features(json, "num_heads * d_kv", static_cast<int64_t>(config.num_heads) * config.d_kv, "attention o",
                         options.group_size);
  return config;
}

void check_float_matrix(const Checkpoint& checkpoint, const NamedMatrix& matrix) {
  const TensorInfo& info = checkpoint.info(matrix.name);  // throws "DIR: missing tensor NAME"
  if (info.shape != matrix.shape || !is_floating(info.dtype))
    throw ModelError(checkpoint.file_of(matrix.name) + ": tensor " + matrix.name + " is " + dtype_name(info.dtype) +
                     " " + shape_string(info.shape) + ", expected F32, F16 or BF16 " + shape_string(matrix.shape));
  if (checkpoint.contains(scale_tensor_name(matrix.name)))
    throw ModelError(checkpoint.file_of(matrix.name) + ": the checkpoint already has " +
                     scale_tensor_name(matrix.name) + "; is it quantized already?");
}

// A matrix to quantize, and how.
struct QuantizedMatrix {
  NamedMatrix matrix;
  QuantizationScheme scheme;
};

// One tensor of the input, as the output will hold it.
struct OutputTensor {
  std::string name;
  const QuantizedMatrix* quantized = nullptr;  // set: quantized into NAME and NAME_scale
  int64_t bytes = 0;
};

int64_t quantized_bytes(const QuantizedMatrix& m) {
  const int64_t n = m.matrix.shape[0], k = m.matrix.shape[1];
  const int64_t groups = m.scheme.group_size ? k / m.scheme.group_size : 1;
  return n * k * m.scheme.bits / 8 + n * groups * static_cast<int64_t>(sizeof(uint16_t));
}

std::vector<OutputTensor> output_tensors(const Checkpoint& checkpoint, const std::vector<QuantizedMatrix>& matrices) {
  std::map<std::string, const QuantizedMatrix*> by_name;
  for (const QuantizedMatrix& m : matrices) by_name[m.matrix.name] = &m;
  std::vector<OutputTensor> tensors;
  for (const CheckpointEntry& entry : checkpoint.entries()) {
    const auto quantized = by_name.find(entry.name);
    if (quantized == by_name.end()) {
      tensors.push_back(
          {entry.name, nullptr, shape_numel(entry.shape) * static_cast<int64_t>(dtype_size(entry.dtype))});
    } else {
      tensors.push_back({entry.name, quantized->second, quantized_bytes(*quantized->second)});
    }
  }
  return tensors;
}

// Consecutive tensors (in name order) fill a shard up to the limit; a larger tensor gets a shard of its own.
std::vector<std::vector<OutputTensor>> plan_shards(const std::vector<OutputTensor>& tensors, int64_t max_bytes) {
  std::vector<std::vector<OutputTensor>> shards(1);
  int64_t bytes = 0;
  for (const OutputTensor& tensor : tensors) {
    if (!shards.back().empty() && bytes + tensor.bytes > max_bytes) {
      shards.emplace_back();
      bytes = 0;
    }
    shards.back().push_back(tensor);
    bytes += tensor.bytes;
  }
  return shards;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

// A shard's tensors: the others borrowed from the input's mapping, the quantized ones quantized from float32.
std::vector<std::pair<std::string, Tensor>> shard_tensors(Checkpoint& checkpoint,
                                                          const std::vector<OutputTensor>& shard) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const OutputTensor& tensor : shard) {
    if (!tensor.quantized) {
      tensors.emplace_back(tensor.name, checkpoint.load_stored(tensor.name));
      continue;
    }
    const QuantizationScheme& scheme = tensor.quantized->scheme;
    const QuantizedTensor quantized =
        quantize(checkpoint.load(tensor.name, tensor.quantized->matrix.shape), scheme.bits, scheme.group_size,
                 checkpoint.file_of(tensor.name) + ": " + tensor.name);
    tensors.emplace_back(tensor.name, quantized.values);
    tensors.emplace_back(scale_tensor_name(tensor.name), quantized.scales);
  }
  return tensors;
}

// The output directory, which must not exist or be empty. Unless commit() is called, the files written into it
// are removed again (and the directory too when this created it), so that a failed run leaves nothing behind.
class OutputDirectory {
 public:
  explicit OutputDirectory(const std::string& path) : path_(path) {
    if (fs::exists(path_)) {
      if (!fs::is_directory(path_)) throw UsageError("--output " + path + ": exists and is not a directory");
      if (!fs::is_empty(path_))
        throw UsageError("--output " + path + ": the directory is not empty (name a new or empty directory)");
      return;
    }
    std::error_code error;
    if (!fs::create_directories(path_, error))
      throw Error("--output " + path + ": cannot create the directory: " + error.message());
    created_ = true;
  }
  ~OutputDirectory() {
    if (committed_) return;
    std::error_code ignored;
    for (const std::string& name : written_) fs::remove(path_ / name, ignored);
    if (created_) fs::remove(path_, ignored);
  }
  OutputDirectory(const OutputDirectory&) = delete;
  OutputDirectory& operator=(const OutputDirectory&) = delete;

  // The path of a file about to be written.
  std::string file(const std::string& name) {
    written_.push_back(name);
    return (path_ / name).string();
  }
  const std::vector<std::string>& written() const { return written_; }
  void commit() { committed_ = true; }

 private:
  fs::path path_;
  bool created_ = false;
  bool committed_ = false;
  std::vector<std::string> written_;
};

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
  out << content;
  out.close();
  if (!out) throw Error(path + ": write failed: " + std::strerror(errno));
}

std::string pretty_json(const nlohmann::json& json) { return json.dump(2) + "\n"; }

}  // namespace

QuantizeSummary quantize_model(const std::string& model_dir, const std::string& output_dir,
                               const QuantizeOptions& options) {
  check_options(options);
  OutputDirectory output(output_dir);
  const JsonConfig json = JsonConfig::load((fs::path(model_dir) / "config.json").string());
  const SwitchTransformersConfig config = quantizable_config(json, model_dir, options);
  Checkpoint checkpoint = Checkpoint::open(model_dir);
  const std::vector<NamedMatrix> experts = config.expert_matrices();
  const std::vector<NamedMatrix> non_experts =
      options.non_experts ? config.non_expert_matrices() : std::vector<NamedMatrix>{};
  std::vector<QuantizedMatrix> matrices;
  for (const NamedMatrix& matrix : experts) matrices.push_back({matrix, {options.bits, options.group_size}});
  for (const NamedMatrix& matrix : non_experts)
    matrices.push_back({matrix, non_expert_quantization(options.group_size)});
  for (const QuantizedMatrix& matrix : matrices) check_float_matrix(checkpoint, matrix.matrix);
  const std::vector<std::vector<OutputTensor>> shards =
      plan_shards(output_tensors(checkpoint, matrices), options.max_shard_bytes);

  QuantizeSummary summary;
  for (const auto& [dtype, bytes] : checkpoint.bytes_by_dtype()) summary.input_bytes += bytes;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string shard_name = shard_file_name(s, shards.size());
    const auto tensors = shard_tensors(checkpoint, shards[s]);
    write_safetensors(output.file(shard_name), tensors, {{"format", "pt"}});
    for (const auto& [name, tensor] : tensors) {
      weight_map[name] = shard_name;
      summary.output_bytes += static_cast<int64_t>(tensor.nbytes());
    }
  }
  if (shards.size() > 1)
    write_file(output.file("model.safetensors.index.json"),
               pretty_json({{"metadata", {{"total_size", summary.output_bytes}}}, {"weight_map", weight_map}}));
  for (const char* name : kCopiedFiles) {
    const fs::path source = fs::path(model_dir) / name;
    if (!fs::exists(source)) continue;
    std::error_code error;
    const std::string target = output.file(name);
    if (!fs::copy_file(source, target, error))
      throw Error(source.string() + ": cannot copy to " + target + ": " + error.message());
  }
  // config.json last: a directory without it is recognizably incomplete.
  nlohmann::json quantized_config = json.json();
  quantized_config[kQuantizationConfigKey] =
      checkpoint_quantization_json({{options.bits, options.group_size}, options.non_experts});
  write_file(output.file("config.json"), pretty_json(quantized_config));

  summary.quantized_matrices = static_cast<int>(experts.size());
  summary.quantized_non_expert_matrices = static_cast<int>(non_experts.size());
  summary.files = output.written();
  output.commit();
  return summary;
}

}  // namespace elephant
