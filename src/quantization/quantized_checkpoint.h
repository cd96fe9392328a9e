#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quantization/quantized_tensor.h"

namespace elephant {

class Checkpoint;
class JsonConfig;

// A checkpoint written by `elephant quantize` names the scheme of its expert matrices in config.json's
// "elephant_quantization" (README "Quantized checkpoints"), and whether its non-expert Linear matrices are int8 per
// channel or group too ("quantized": "experts" or "experts+non_experts"); without it the checkpoint stores floats.

constexpr int kQuantizedCheckpointVersion = 1;
constexpr const char* kQuantizationConfigKey = "elephant_quantization";

// What "elephant_quantization" says: the experts' scheme, and whether the non-expert matrices are int8 too.
struct CheckpointQuantization {
  QuantizationScheme experts;
  bool non_experts = false;
};

// Reads config.json's "elephant_quantization" (absent or null: not quantized). Throws ModelError naming the file
// and the key for an unknown format_version, bits other than 8 or 4, an unsupported group size, or "quantized"
// other than "experts" and "experts+non_experts".
CheckpointQuantization read_checkpoint_quantization(const JsonConfig& config);
// The "elephant_quantization" object the writer stores.
nlohmann::json checkpoint_quantization_json(const CheckpointQuantization& quantization);
// The scheme of quantized non-expert matrices: int8, with the experts' group size (0: one scale per output channel).
constexpr QuantizationScheme non_expert_quantization(int64_t group_size) { return {8, group_size}; }

// The tensor holding the fp16 scales of the quantized matrix `weight_name`.
std::string scale_tensor_name(const std::string& weight_name);

// The quantized matrix `name` (values NAME, scales NAME_scale) of the logical shape `shape` [n, k], on the CPU;
// errors as load_quantized_matrices.
QuantizedTensor load_quantized_matrix(Checkpoint& checkpoint, const std::string& name, const Shape& shape,
                                      const QuantizationScheme& quantization);

// The quantized matrices `names`, each stored as values NAME and scales NAME_scale of the logical shape
// `matrix_shape` [n, k], stacked into one QuantizedTensor [count, n, k] on the CPU. Throws ModelError naming the
// tensor and its file when one is missing or has the wrong dtype or shape (quantized_tensor.h's layout).
QuantizedTensor load_quantized_matrices(Checkpoint& checkpoint, const std::vector<std::string>& names,
                                        const Shape& matrix_shape, const QuantizationScheme& quantization);

}  // namespace elephant
