#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace elephant {

// A summary of a loaded model, as `elephant inspect` prints it.
struct ModelInfo {
  std::string architecture;  // config.json's model_type
  int d_model = 0;
  int d_ff = 0;
  int num_heads = 0;
  int d_kv = 0;
  int vocab_size = 0;
  int encoder_layers = 0;
  int decoder_layers = 0;
  int sparse_encoder_layers = 0;
  int sparse_decoder_layers = 0;
  int num_experts = 0;
  // Elements of every tensor stored in the checkpoint; a quantized matrix counts as its logical n * k elements, not
  // its packed values and scales.
  int64_t parameters = 0;
  int64_t expert_parameters = 0;                  // of which in experts
  std::map<std::string, int64_t> bytes_by_dtype;  // checkpoint bytes per stored dtype ("F32", "F16", "U8", ...)
  // The experts as a checkpoint written by `elephant quantize` stores them: 8 or 4 bits, with one fp16 scale per
  // output channel (group size 0) or per 64 or 128 input features; 0 bits: stored as floats.
  int quantized_bits = 0;
  int quantization_group_size = 0;
  // The attention and dense FFN matrices stored in int8 too, with the experts' group size.
  bool quantized_non_experts = false;
};

}  // namespace elephant
