#include "quantization/quantized_checkpoint.h"

#include "elephant/error.h"
#include "elephant/quantize.h"
#include "io/checkpoint.h"
#include "io/json_config.h"

namespace elephant {

CheckpointQuantization read_checkpoint_quantization(const JsonConfig& config) {
  if (!config.has(kQuantizationConfigKey) || config.is_null(kQuantizationConfigKey)) return {};
  const JsonConfig entry = config.get_object(kQuantizationConfigKey);
  const auto fail = [&](const std::string& why) { throw ModelError(entry.path() + ": " + why); };
  const int version = entry.get_int("format_version");
  if (version != kQuantizedCheckpointVersion)
    fail("unknown format_version " + std::to_string(version) + " (this elephant reads version " +
         std::to_string(kQuantizedCheckpointVersion) + ")");
  CheckpointQuantization quantization;
  quantization.experts.bits = entry.get_int("bits");
  if (!supported_bits(quantization.experts.bits))
    fail("bits " + std::to_string(quantization.experts.bits) + " is not supported (8 or 4)");
  quantization.experts.group_size = entry.get_int("group_size");
  if (!supported_group_size(quantization.experts.group_size))
    fail("group_size " + std::to_string(quantization.experts.group_size) +
         " is not supported (0 = per channel, 64, 128)");
  const std::string quantized = entry.get_string("quantized");
  if (quantized != "experts" && quantized != "experts+non_experts")
    fail("quantized \"" + quantized + "\" is not supported (\"experts\" or \"experts+non_experts\")");
  quantization.non_experts = quantized == "experts+non_experts";
  return quantization;
}

nlohmann::json checkpoint_quantization_json(const CheckpointQuantization& quantization) {
  return {{"format_version", kQuantizedCheckpointVersion},
          {"bits", quantization.experts.bits},
          {"group_size", quantization.experts.group_size},
          {"quantized", quantization.non_experts ? "experts+non_experts" : "experts"}};
}

std::string quantization_description(int bits, int64_t group_size) {
  if (bits == 0) return "none";
  return "int" + std::to_string(bits) + ", " +
         (group_size == 0 ? std::string("per channel") : "groups of " + std::to_string(group_size));
}

std::string scale_tensor_name(const std::string& weight_name) { return weight_name + "_scale"; }

QuantizedTensor load_quantized_matrix(Checkpoint& checkpoint, const std::string& name, const Shape& shape,
                                      const QuantizationScheme& quantization) {
  const std::string where = checkpoint.file_of(name) + ": " + name;
  const std::string scale_name = scale_tensor_name(name);
  if (!checkpoint.contains(scale_name))
    throw ModelError(where + ": its scales " + scale_name + " are missing (the config says it is " +
                     quantization_description(quantization.bits, quantization.group_size) + ")");
  QuantizedTensor matrix;
  matrix.values = checkpoint.load_stored(name);
  matrix.scales = checkpoint.load_stored(scale_name);
  matrix.bits = quantization.bits;
  matrix.group_size = quantization.group_size;
  matrix.shape = shape;
  check_quantized(matrix, where);
  return matrix;
}

namespace {

Shape stacked_shape(int64_t count, const Shape& shape) {
  Shape stacked{count};
  stacked.insert(stacked.end(), shape.begin(), shape.end());
  return stacked;
}

}  // namespace

QuantizedTensor load_quantized_matrices(Checkpoint& checkpoint, const std::vector<std::string>& names,
                                        const Shape& matrix_shape, const QuantizationScheme& quantization) {
  const auto count = static_cast<int64_t>(names.size());
  QuantizedTensor stacked;
  stacked.bits = quantization.bits;
  stacked.group_size = quantization.group_size;
  stacked.shape = stacked_shape(count, matrix_shape);
  for (int64_t i = 0; i < count; ++i) {
    const QuantizedTensor matrix = load_quantized_matrix(checkpoint, names[i], matrix_shape, quantization);
    if (i == 0) {
      stacked.values = Tensor::empty(stacked_shape(count, matrix.values.shape()), matrix.values.dtype());
      stacked.scales = Tensor::empty(stacked_shape(count, matrix.scales.shape()), DType::F16);
    }
    stacked.values.narrow(i, 1).reshape(matrix.values.shape()).copy_from(matrix.values);
    stacked.scales.narrow(i, 1).reshape(matrix.scales.shape()).copy_from(matrix.scales);
  }
  return stacked;
}

}  // namespace elephant
