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
  int64_t parameters = 0;                         // elements of every tensor stored in the checkpoint
  int64_t expert_parameters = 0;                  // of which in experts
  std::map<std::string, int64_t> bytes_by_dtype;  // checkpoint bytes per stored dtype ("F32", "F16", ...)
};

}  // namespace elephant
