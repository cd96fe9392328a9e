#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace elephant {

// "int4, per channel", "int8, groups of 128"; "none" for 0 bits: how the CLI, inspect and error messages name a
// quantization.
std::string quantization_description(int bits, int64_t group_size);

struct QuantizeOptions {
  int bits = 8;        // 8 or 4
  int group_size = 0;  // 0: one scale per output channel; 64 or 128 input features per scale
  // The non-expert Linear matrices (attention projections, dense FFNs) in int8 too, with group_size's scales.
  bool non_experts = false;
  // Tensor bytes per safetensors file: a larger checkpoint is split into shards named by
  // model.safetensors.index.json, as transformers does.
  int64_t max_shard_bytes = 2'000'000'000;
};

struct QuantizeSummary {
  int quantized_matrices = 0;  // expert matrices
  int quantized_non_expert_matrices = 0;
  int64_t input_bytes = 0;         // tensor data of the input checkpoint
  int64_t output_bytes = 0;        // tensor data written
  std::vector<std::string> files;  // the files written into the output directory
};

// Writes a copy of the Hugging Face Switch Transformers checkpoint in `model_dir` with every expert matrix quantized
// (and, with non_experts, every attention and dense FFN matrix in int8; format version 1, README "Quantized
// checkpoints") into `output_dir`, which must not exist or be empty; on failure
// nothing is left there. Throws UsageError for bad options or a non-empty output directory, ModelError for an input
// it cannot quantize (unknown architecture, already quantized, missing or malformed experts, input features that are
// not a multiple of 32 or of the group size).
QuantizeSummary quantize_model(const std::string& model_dir, const std::string& output_dir,
                               const QuantizeOptions& options = {});

}  // namespace elephant
