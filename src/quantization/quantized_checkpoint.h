#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quantization/quantized_tensor.h"

namespace elephant {

class Checkpoint;
class JsonConfig;

// How a checkpoint written by `elephant quantize` stores its expert matrices: config.json's "elephant_quantization"
// (README "Quantized checkpoints"). bits 0: the checkpoint stores them as floats.
struct CheckpointQuantization {
  int bits = 0;            // 8 or 4
  int64_t group_size = 0;  // 0: one scale per output channel; 64 or 128

  bool quantized() const { return bits != 0; }
};

constexpr int kQuantizedCheckpointVersion = 1;
constexpr const char* kQuantizationConfigKey = "elephant_quantization";

// Reads config.json's "elephant_quantization" (absent or null: not quantized). Throws ModelError naming the file
// and the key for an unknown format_version, bits other than 8 or 4, an unsupported group size, or anything but
// "experts" quantized.
CheckpointQuantization read_checkpoint_quantization(const JsonConfig& config);
// The "elephant_quantization" object the writer stores.
nlohmann::json checkpoint_quantization_json(const CheckpointQuantization& quantization);

// "int8, per channel", "int4, groups of 64"; "none" when not quantized.
std::string quantization_description(const CheckpointQuantization& quantization);

// The tensor holding the fp16 scales of the quantized matrix `weight_name`.
std::string scale_tensor_name(const std::string& weight_name);

// The quantized matrices `names`, each stored as values NAME and scales NAME_scale of the logical shape
// `matrix_shape` [n, k], stacked into one QuantizedTensor [count, n, k] on the CPU. Throws ModelError naming the
// tensor and its file when one is missing or has the wrong dtype or shape (quantized_tensor.h's layout).
QuantizedTensor load_quantized_matrices(Checkpoint& checkpoint, const std::vector<std::string>& names,
                                        const Shape& matrix_shape, const CheckpointQuantization& quantization);

}  // namespace elephant
