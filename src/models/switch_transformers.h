#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/transformer_layers.h"
#include "models/encoder_decoder.h"
#include "quantization/quantized_checkpoint.h"

namespace elephant {

class Checkpoint;
class JsonConfig;

// One weight matrix of a checkpoint: transformers' tensor name and its logical shape [n, k].
struct NamedMatrix {
  std::string name;
  Shape shape;
};

// The fields of a switch_transformers config.json that change the computation, with transformers' defaults.
struct SwitchTransformersConfig {
  int vocab_size = 32128;
  int d_model = 768;
  int d_kv = 64;
  int d_ff = 2048;
  int num_heads = 12;
  int num_layers = 12;
  int num_decoder_layers = 12;
  int num_sparse_encoder_layers = 3;
  int num_sparse_decoder_layers = 3;
  int num_experts = 8;
  int relative_attention_num_buckets = 32;
  int relative_attention_max_distance = 128;
  float layer_norm_epsilon = 1e-6f;
  std::string dense_act_fn = "relu";
  bool router_bias = false;
  bool tie_word_embeddings = true;
  int decoder_start_token_id = 0;
  int eos_token_id = 1;
  int pad_token_id = 0;
  QuantizationScheme quantization;     // elephant_quantization: the experts as `elephant quantize` stored them
  bool non_experts_quantized = false;  // elephant_quantization: the non-expert matrices stored in int8 too, with
                                       // the experts' group size

  static SwitchTransformersConfig parse(const JsonConfig& json);

  // transformers' SwitchTransformersConfig: step = layers // sparse layers (layers when there are none), and
  // layer i is sparse when i % step == 1 or step == 1. With no sparse layers and more than one layer this
  // still makes layer 1 sparse; we reproduce that, since the checkpoint then has its experts.
  int encoder_sparse_step() const;
  int decoder_sparse_step() const;
  bool encoder_layer_is_sparse(int layer) const;
  bool decoder_layer_is_sparse(int layer) const;

  // Every expert matrix the checkpoint holds (wi and wo of each expert of each sparse layer), in layer order.
  std::vector<NamedMatrix> expert_matrices() const;
  // Every other Linear matrix that --quantize-non-experts quantizes: q, k, v and o of each attention, wi and wo of
  // each dense FFN (not the router, the norms, the embeddings or lm_head), in layer order.
  std::vector<NamedMatrix> non_expert_matrices() const;
};

class SwitchTransformersModel final : public EncoderDecoderModel {
 public:
  SwitchTransformersModel(const SwitchTransformersConfig& config, Checkpoint& checkpoint,
                          const ModelOptions& options = {});

  const SpecialTokens& special_tokens() const override { return special_tokens_; }
  const ModelInfo& info() const override { return info_; }
  const ModelOptions& options() const override { return options_; }
  const SwitchTransformersConfig& config() const { return config_; }
  // Architecture summary from the config and the checkpoint's metadata, without loading weights.
  static ModelInfo describe(const SwitchTransformersConfig& config, const Checkpoint& checkpoint);

  EncoderOutput encode(const std::vector<std::vector<int32_t>>& sources) override;
  std::unique_ptr<DecoderState> start_decoding(const EncoderOutput& encoded, int rows_per_source,
                                               int max_steps) override;

 protected:
  void compute_step(DecoderState& state, const Tensor& tokens, Tensor& logits) override;

 private:
  struct EncoderLayer {
    layers::RmsNorm attention_norm;
    layers::MultiHeadAttention attention;
    layers::RmsNorm ffn_norm;
    layers::FeedForward ffn;
  };
  struct DecoderLayer {
    layers::RmsNorm self_attention_norm;
    layers::MultiHeadAttention self_attention;
    layers::RmsNorm cross_attention_norm;
    layers::MultiHeadAttention cross_attention;
    layers::RmsNorm ffn_norm;
    layers::FeedForward ffn;
  };

  SwitchTransformersConfig config_;
  ModelOptions options_;
  SpecialTokens special_tokens_;
  ModelInfo info_;
  Tensor encoder_embedding_;  // [vocab, d_model]: shared.weight, unless untied with its own table
  Tensor decoder_embedding_;
  Tensor lm_head_;                // [vocab, d_model]: shared.weight when tied
  Tensor encoder_relative_bias_;  // F32 [buckets, heads] on the CPU: the per-call bias tables are built there
  Tensor decoder_relative_bias_;
  std::vector<EncoderLayer> encoder_layers_;
  std::vector<DecoderLayer> decoder_layers_;
  layers::RmsNorm encoder_final_norm_;
  layers::RmsNorm decoder_final_norm_;
};

}  // namespace elephant
