#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "elephant/device.h"
#include "elephant/model_info.h"

namespace elephant {

struct TranslatorOptions {
  DeviceRequest device = DeviceRequest::Auto;  // Auto: CUDA when a GPU is present, else the CPU
  ComputeType compute_type = ComputeType::Auto;
  int num_threads = 0;      // CPU threads; 0: all cores
  bool cuda_graphs = true;  // replay decode steps from CUDA graphs (false: launch them kernel by kernel)
  // Expert weights quantized at load time (symmetric int8 or int4, fp16 scales); None keeps them as the checkpoint
  // stores them. A checkpoint written by `elephant quantize` is loaded quantized with None.
  Quantization quantization = Quantization::None;
  int quantization_group_size = 0;  // 0: one scale per output channel; 64 or 128 input features per scale
  // The non-expert Linear weights (attention projections, dense FFNs) quantized to int8 at load time too, with the
  // experts' group size (a quantized checkpoint's, else quantization_group_size); the router, the norms and the
  // embeddings / lm_head stay in the compute dtype.
  bool quantize_non_experts = false;
};

struct TranslationOptions {
  int beam_size = 1;            // 1: greedy search
  int max_batch_size = 32;      // sentences encoded and decoded together
  int max_length = 256;         // generated tokens per sentence, EOS included
  int min_length = 0;           // no EOS before this many generated tokens
  int max_input_length = 512;   // longer inputs are truncated (with a warning), EOS included
  float length_penalty = 1.0f;  // beam scores are divided by length^length_penalty, as in transformers
  bool prune_finished = true;   // finished sentences leave the batch (never changes the result)
  bool pipeline_steps = true;   // on CUDA, a search queues the next decode step before the host reads this one's
                                // flags (never changes the result; false: step by step, to measure it)
  std::string target_lang;      // prepend the tag <2xx> to every source; empty: none
};

struct TranslationResult {
  std::string text;
  std::vector<int> ids;  // generated ids, EOS excluded
  bool truncated_input = false;
};

// Called after each batch with the number of sentences done so far and the total.
using ProgressCallback = std::function<void(size_t done, size_t total)>;
// Receives warnings (for example about truncated inputs); defaults to standard error.
using WarningCallback = std::function<void(const std::string& message)>;

class TranslatorImpl;

// Loads a model directory (config.json, *.safetensors, spiece.model) once and translates with it.
class Translator {
 public:
  explicit Translator(const std::string& model_dir, const TranslatorOptions& options = {});
  ~Translator();
  Translator(const Translator&) = delete;
  Translator& operator=(const Translator&) = delete;

  // One result per line, in input order. Empty lines give empty translations.
  std::vector<TranslationResult> translate(const std::vector<std::string>& lines,
                                           const TranslationOptions& options = {},
                                           const ProgressCallback& progress = {}, const WarningCallback& warn = {});

  // Token-level entry: each source is a list of ids ending with EOS. Returns generated ids (EOS excluded).
  std::vector<std::vector<int>> translate_ids(const std::vector<std::vector<int>>& sources,
                                              const TranslationOptions& options = {});

  const ModelInfo& info() const;
  Device device() const;
  ComputeType compute_type() const;  // the resolved one, never Auto

 private:
  std::unique_ptr<TranslatorImpl> impl_;
};

// Reads a model directory's metadata without building the model (for `elephant inspect`).
ModelInfo inspect_model(const std::string& model_dir);

}  // namespace elephant
