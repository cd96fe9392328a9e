#include "models/switch_transformers.h"

#include <algorithm>
#include <cmath>

#include "core/device_memory.h"
#include "elephant/error.h"
#include "elephant/quantize.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "ops/gather.h"
#include "ops/gemm.h"
#include "ops/relative_position.h"
#include "quantization/quantized_tensor.h"

namespace elephant {

namespace {

std::string encoder_block(int layer) { return "encoder.block." + std::to_string(layer); }
std::string decoder_block(int layer) { return "decoder.block." + std::to_string(layer); }
std::string encoder_ffn(int layer) { return encoder_block(layer) + ".layer.1.mlp"; }
std::string decoder_ffn(int layer) { return decoder_block(layer) + ".layer.2.mlp"; }

// transformers' name of matrix `matrix` ("wi.weight", "wo.weight") of expert `expert` of the FFN `ffn`.
std::string expert_name(const std::string& ffn, int expert, const std::string& matrix) {
  return ffn + ".experts.expert_" + std::to_string(expert) + "." + matrix;
}

}  // namespace

SwitchTransformersConfig SwitchTransformersConfig::parse(const JsonConfig& json) {
  SwitchTransformersConfig c;
  c.vocab_size = json.get_positive_int("vocab_size", c.vocab_size);
  c.d_model = json.get_positive_int("d_model", c.d_model);
  c.d_kv = json.get_positive_int("d_kv", c.d_kv);
  c.d_ff = json.get_positive_int("d_ff", c.d_ff);
  c.num_heads = json.get_positive_int("num_heads", c.num_heads);
  c.num_layers = json.get_positive_int("num_layers", c.num_layers);
  c.num_decoder_layers = json.has("num_decoder_layers") && !json.is_null("num_decoder_layers")
                             ? json.get_positive_int("num_decoder_layers", c.num_layers)
                             : c.num_layers;
  c.num_sparse_encoder_layers = json.get_int("num_sparse_encoder_layers", c.num_sparse_encoder_layers);
  c.num_sparse_decoder_layers = json.get_int("num_sparse_decoder_layers", c.num_sparse_decoder_layers);
  c.num_experts = json.get_positive_int("num_experts", c.num_experts);
  c.relative_attention_num_buckets =
      json.get_positive_int("relative_attention_num_buckets", c.relative_attention_num_buckets);
  c.relative_attention_max_distance =
      json.get_positive_int("relative_attention_max_distance", c.relative_attention_max_distance);
  c.layer_norm_epsilon = json.get_float("layer_norm_epsilon", c.layer_norm_epsilon);
  c.dense_act_fn = json.get_string("dense_act_fn", c.dense_act_fn);
  c.router_bias = json.get_bool("router_bias", c.router_bias);
  c.tie_word_embeddings = json.get_bool("tie_word_embeddings", c.tie_word_embeddings);
  c.pad_token_id = json.get_int("pad_token_id", c.pad_token_id);
  // T5-style models start decoding from the pad token when the config names no start token.
  c.decoder_start_token_id = json.has("decoder_start_token_id") && !json.is_null("decoder_start_token_id")
                                 ? json.get_int("decoder_start_token_id", c.pad_token_id)
                                 : c.pad_token_id;
  if (json.has("eos_token_id")) {
    const std::vector<int> eos = json.get_int_list_or_int("eos_token_id");
    if (eos.size() != 1)
      throw ModelError(json.path() + ": eos_token_id must name exactly one token, got " + std::to_string(eos.size()));
    c.eos_token_id = eos[0];
  }
  const CheckpointQuantization quantization = read_checkpoint_quantization(json);
  c.quantization = quantization.experts;
  c.non_experts_quantized = quantization.non_experts;

  const auto fail = [&](const std::string& message) { throw ModelError(json.path() + ": " + message); };
  if (c.num_sparse_encoder_layers < 0 || c.num_sparse_encoder_layers > c.num_layers)
    fail("num_sparse_encoder_layers " + std::to_string(c.num_sparse_encoder_layers) + " is not in [0, num_layers " +
         std::to_string(c.num_layers) + "]");
  if (c.num_sparse_decoder_layers < 0 || c.num_sparse_decoder_layers > c.num_decoder_layers)
    fail("num_sparse_decoder_layers " + std::to_string(c.num_sparse_decoder_layers) +
         " is not in [0, num_decoder_layers " + std::to_string(c.num_decoder_layers) + "]");
  if (c.relative_attention_num_buckets < 4)
    fail("relative_attention_num_buckets must be at least 4, got " + std::to_string(c.relative_attention_num_buckets));
  if (!(c.layer_norm_epsilon > 0.0f)) fail("layer_norm_epsilon must be positive");
  for (const auto& [name, id] : {std::pair<const char*, int>{"pad_token_id", c.pad_token_id},
                                 {"eos_token_id", c.eos_token_id},
                                 {"decoder_start_token_id", c.decoder_start_token_id}})
    if (id < 0 || id >= c.vocab_size)
      fail(std::string(name) + " " + std::to_string(id) + " is outside the vocabulary of " +
           std::to_string(c.vocab_size));
  if (json.has("feed_forward_proj") && json.get_string("feed_forward_proj", "").rfind("gated-", 0) == 0)
    fail("feed_forward_proj \"" + json.get_string("feed_forward_proj", "") +
         "\" asks for a gated FFN, which transformers' SwitchTransformers does not have");
  try {
    ops::parse_activation(c.dense_act_fn);
  } catch (const std::invalid_argument& e) {
    fail(std::string("dense_act_fn: ") + e.what());
  }
  return c;
}

namespace {

std::string encoder_attention(int layer) { return encoder_block(layer) + ".layer.0.SelfAttention"; }
std::string decoder_self_attention(int layer) { return decoder_block(layer) + ".layer.0.SelfAttention"; }
std::string decoder_cross_attention(int layer) { return decoder_block(layer) + ".layer.1.EncDecAttention"; }

int sparse_step(int layers, int sparse_layers) { return sparse_layers > 0 ? layers / sparse_layers : layers; }

bool layer_is_sparse(int layer, int step) { return step > 0 && (layer % step == 1 || step == 1); }

}  // namespace

int SwitchTransformersConfig::encoder_sparse_step() const { return sparse_step(num_layers, num_sparse_encoder_layers); }
int SwitchTransformersConfig::decoder_sparse_step() const {
  return sparse_step(num_decoder_layers, num_sparse_decoder_layers);
}
bool SwitchTransformersConfig::encoder_layer_is_sparse(int layer) const {
  return layer_is_sparse(layer, encoder_sparse_step());
}
bool SwitchTransformersConfig::decoder_layer_is_sparse(int layer) const {
  return layer_is_sparse(layer, decoder_sparse_step());
}

std::vector<NamedMatrix> SwitchTransformersConfig::expert_matrices() const {
  std::vector<std::string> sparse_ffns;
  for (int i = 0; i < num_layers; ++i)
    if (encoder_layer_is_sparse(i)) sparse_ffns.push_back(encoder_ffn(i));
  for (int i = 0; i < num_decoder_layers; ++i)
    if (decoder_layer_is_sparse(i)) sparse_ffns.push_back(decoder_ffn(i));
  std::vector<NamedMatrix> matrices;
  for (const std::string& ffn : sparse_ffns)
    for (int e = 0; e < num_experts; ++e) {
      matrices.push_back({expert_name(ffn, e, "wi.weight"), {d_ff, d_model}});
      matrices.push_back({expert_name(ffn, e, "wo.weight"), {d_model, d_ff}});
    }
  return matrices;
}

std::vector<NamedMatrix> SwitchTransformersConfig::non_expert_matrices() const {
  const int64_t inner = static_cast<int64_t>(num_heads) * d_kv;
  std::vector<NamedMatrix> matrices;
  const auto attention = [&](const std::string& prefix) {
    for (const char* projection : {".q.weight", ".k.weight", ".v.weight"})
      matrices.push_back({prefix + projection, {inner, d_model}});
    matrices.push_back({prefix + ".o.weight", {d_model, inner}});
  };
  const auto dense = [&](const std::string& ffn) {
    matrices.push_back({ffn + ".wi.weight", {d_ff, d_model}});
    matrices.push_back({ffn + ".wo.weight", {d_model, d_ff}});
  };
  for (int i = 0; i < num_layers; ++i) {
    attention(encoder_attention(i));
    if (!encoder_layer_is_sparse(i)) dense(encoder_ffn(i));
  }
  for (int i = 0; i < num_decoder_layers; ++i) {
    attention(decoder_self_attention(i));
    attention(decoder_cross_attention(i));
    if (!decoder_layer_is_sparse(i)) dense(decoder_ffn(i));
  }
  return matrices;
}

namespace {

int64_t stored_elements(const Checkpoint& checkpoint, const std::string& name) {
  return checkpoint.contains(name) ? shape_numel(checkpoint.info(name).shape) : 0;
}

// Every tensor's elements, a quantized matrix counted as its logical n * k (not its packed values and scales).
int64_t logical_parameter_count(const SwitchTransformersConfig& c, const Checkpoint& checkpoint) {
  int64_t count = checkpoint.parameter_count();
  if (!c.quantization.quantized()) return count;
  std::vector<NamedMatrix> quantized = c.expert_matrices();
  if (c.non_experts_quantized) {
    const std::vector<NamedMatrix> non_experts = c.non_expert_matrices();
    quantized.insert(quantized.end(), non_experts.begin(), non_experts.end());
  }
  for (const NamedMatrix& matrix : quantized)
    count += shape_numel(matrix.shape) - stored_elements(checkpoint, matrix.name) -
             stored_elements(checkpoint, scale_tensor_name(matrix.name));
  return count;
}

}  // namespace

ModelInfo SwitchTransformersModel::describe(const SwitchTransformersConfig& c, const Checkpoint& checkpoint) {
  ModelInfo info;
  info.architecture = "switch_transformers";
  info.d_model = c.d_model;
  info.d_ff = c.d_ff;
  info.num_heads = c.num_heads;
  info.d_kv = c.d_kv;
  info.vocab_size = c.vocab_size;
  info.encoder_layers = c.num_layers;
  info.decoder_layers = c.num_decoder_layers;
  for (int i = 0; i < c.num_layers; ++i) info.sparse_encoder_layers += c.encoder_layer_is_sparse(i);
  for (int i = 0; i < c.num_decoder_layers; ++i) info.sparse_decoder_layers += c.decoder_layer_is_sparse(i);
  info.num_experts = c.num_experts;
  info.parameters = logical_parameter_count(c, checkpoint);
  info.expert_parameters = static_cast<int64_t>(info.sparse_encoder_layers + info.sparse_decoder_layers) *
                           c.num_experts * 2 * c.d_ff * c.d_model;
  info.bytes_by_dtype = checkpoint.bytes_by_dtype();
  info.quantized_bits = c.quantization.bits;
  info.quantization_group_size = static_cast<int>(c.quantization.group_size);
  info.quantized_non_experts = c.non_experts_quantized;
  return info;
}

namespace {

// Builds the typed layers from the checkpoint by transformers' tensor names.
class LayerBuilder {
 public:
  LayerBuilder(const SwitchTransformersConfig& config, Checkpoint& checkpoint, const ModelOptions& options)
      : c_(config), checkpoint_(checkpoint), options_(options) {}

  // A weight in the compute dtype on the model's device.
  Tensor load(const std::string& name, const Shape& shape) {
    return checkpoint_.load(name, shape, options_.dtype).to(options_.device);
  }
  // Whether the non-expert Linear weights are int8: stored so, or quantized here.
  bool non_experts_quantized() const { return c_.non_experts_quantized || options_.quantize_non_experts; }

  // A Linear weight: in the compute dtype, or int8 (as the checkpoint stores it, or quantized here with
  // quantize_non_experts) with the experts' group size: the checkpoint's, else the one asked for.
  layers::Weight load_linear(const std::string& name, const Shape& shape) {
    layers::Weight weight;
    if (c_.non_experts_quantized) {
      weight.quantized =
          load_quantized_matrix(checkpoint_, name, shape, non_expert_quantization(c_.quantization.group_size))
              .to(options_.device);
    } else if (options_.quantize_non_experts) {
      const int64_t group_size =
          c_.quantization.quantized() ? c_.quantization.group_size : options_.quantize.group_size;
      const QuantizationScheme scheme = non_expert_quantization(group_size);
      weight.quantized =
          quantize(checkpoint_.load(name, shape), scheme.bits, scheme.group_size, name).to(options_.device);
    } else {
      weight.dense = load(name, shape);
    }
    return weight;
  }
  // A weight kept in float32 (routers).
  Tensor load_f32(const std::string& name, const Shape& shape) {
    return checkpoint_.load(name, shape).to(options_.device);
  }

  // Every expert's matrix `name` of the FFN `ffn`, stacked into one [experts, rows, columns] tensor for the grouped
  // GEMM: as a quantized checkpoint stores them, else quantized here when the options ask for it, else dense.
  layers::Weight load_experts(const std::string& ffn, const std::string& name, int64_t rows, int64_t columns) {
    std::vector<std::string> names;
    for (int e = 0; e < c_.num_experts; ++e) names.push_back(expert_name(ffn, e, name));
    layers::Weight weights;
    if (c_.quantization.quantized()) {
      weights.quantized =
          load_quantized_matrices(checkpoint_, names, {rows, columns}, c_.quantization).to(options_.device);
      return weights;
    }
    const bool quantizing = options_.quantize.quantized();
    Tensor stacked = Tensor::empty({c_.num_experts, rows, columns}, quantizing ? DType::F32 : options_.dtype);
    for (int e = 0; e < c_.num_experts; ++e) {
      const Tensor expert = checkpoint_.load(names[e], {rows, columns}, stacked.dtype());
      stacked.narrow(e, 1).reshape({rows, columns}).copy_from(expert);
    }
    if (quantizing) {
      weights.quantized = quantize(stacked, options_.quantize.bits, options_.quantize.group_size, names[0] + " ...")
                              .to(options_.device);
    } else {
      weights.dense = stacked.to(options_.device);
    }
    return weights;
  }

  layers::RmsNorm norm(const std::string& prefix) {
    return {load(prefix + ".layer_norm.weight", {c_.d_model}), c_.layer_norm_epsilon};
  }

  // Self-attention keeps dense q, k and v stacked, for one projection launch (layers::project_qkv).
  layers::MultiHeadAttention attention(const std::string& prefix, bool self) {
    const int64_t inner = static_cast<int64_t>(c_.num_heads) * c_.d_kv;
    layers::MultiHeadAttention a;
    if (self && !non_experts_quantized()) {
      Tensor qkv = Tensor::empty({3, inner, c_.d_model}, options_.dtype);
      for (int i = 0; i < 3; ++i)
        layers::stacked(qkv, i).copy_from(
            checkpoint_.load(prefix + "." + "qkv"[i] + ".weight", {inner, c_.d_model}, options_.dtype));
      a.qkv = qkv.to(options_.device);
    } else {
      a.q = load_linear(prefix + ".q.weight", {inner, c_.d_model});
      a.k = load_linear(prefix + ".k.weight", {inner, c_.d_model});
      a.v = load_linear(prefix + ".v.weight", {inner, c_.d_model});
    }
    a.o = load_linear(prefix + ".o.weight", {c_.d_model, inner});
    a.num_heads = c_.num_heads;
    a.head_dim = c_.d_kv;
    return a;
  }

  layers::DenseFeedForward dense(const std::string& prefix) {
    return {load_linear(prefix + ".wi.weight", {c_.d_ff, c_.d_model}),
            load_linear(prefix + ".wo.weight", {c_.d_model, c_.d_ff})};
  }

  layers::FeedForward feed_forward(const std::string& prefix, bool sparse) {
    layers::FeedForward ffn;
    ffn.activation = ops::parse_activation(c_.dense_act_fn);
    if (!sparse) {
      ffn.dense = dense(prefix);
      return ffn;
    }
    layers::MixtureOfExperts moe;
    moe.router = load_f32(prefix + ".router.classifier.weight", {c_.num_experts, c_.d_model});
    if (c_.router_bias) moe.router_bias = load_f32(prefix + ".router.classifier.bias", {c_.num_experts});
    moe.wi = load_experts(prefix, "wi.weight", c_.d_ff, c_.d_model);
    moe.wo = load_experts(prefix, "wo.weight", c_.d_model, c_.d_ff);
    ffn.moe = std::move(moe);
    return ffn;
  }

 private:
  const SwitchTransformersConfig& c_;
  Checkpoint& checkpoint_;
  ModelOptions options_;
};

// --quantize on a quantized checkpoint: asking for the quantization it has is a no-op; any other is refused (the
// float weights are gone, and quantizing the codes again would only add error). The non-expert weights take the
// checkpoint's group size, so asking --quantize-non-experts for another one is refused too.
void check_requested_quantization(const SwitchTransformersConfig& c, const ModelOptions& options,
                                  const std::string& model_dir) {
  if (!c.quantization.quantized()) return;
  const std::string quantized = model_dir + " is already quantized to " +
                                quantization_description(c.quantization.bits, c.quantization.group_size);
  if (options.quantize.quantized() && !(options.quantize == c.quantization))
    throw ModelError(quantized + "; load it without --quantize");
  if (!options.quantize.quantized() && options.quantize_non_experts && options.quantize.group_size != 0 &&
      options.quantize.group_size != c.quantization.group_size)
    throw ModelError(quantized + "; its non-expert weights take those scales, load it without --group-size");
}

}  // namespace

SwitchTransformersModel::SwitchTransformersModel(const SwitchTransformersConfig& config, Checkpoint& checkpoint,
                                                 const ModelOptions& options)
    : config_(config), options_(options) {
  const SwitchTransformersConfig& c = config_;
  check_requested_quantization(c, options, checkpoint.model_dir());
  LayerBuilder builder(c, checkpoint, options);
  const Shape embedding_shape{c.vocab_size, c.d_model};
  const Tensor shared = builder.load("shared.weight", embedding_shape);
  // Tied, transformers ties encoder/decoder.embed_tokens and lm_head to shared.weight (copies in the file are
  // the same values). Untied, it ties nothing: each stack embeds with its own table when the file has one.
  const auto embedding = [&](const std::string& name) {
    if (!checkpoint.contains(name)) return shared;
    const Tensor own = builder.load(name, embedding_shape);
    return c.tie_word_embeddings ? shared : own;
  };
  encoder_embedding_ = embedding("encoder.embed_tokens.weight");
  decoder_embedding_ = embedding("decoder.embed_tokens.weight");
  if (c.tie_word_embeddings) {
    lm_head_ = shared;
    if (checkpoint.contains("lm_head.weight")) builder.load("lm_head.weight", embedding_shape);
  } else {
    lm_head_ = builder.load("lm_head.weight", embedding_shape);
  }

  encoder_relative_bias_ = checkpoint.load("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                           {c.relative_attention_num_buckets, c.num_heads});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string block = encoder_block(i);
    EncoderLayer layer;
    layer.attention_norm = builder.norm(block + ".layer.0");
    layer.attention = builder.attention(encoder_attention(i), true);
    layer.ffn_norm = builder.norm(block + ".layer.1");
    layer.ffn = builder.feed_forward(encoder_ffn(i), c.encoder_layer_is_sparse(i));
    encoder_layers_.push_back(std::move(layer));
  }
  encoder_final_norm_ = {builder.load("encoder.final_layer_norm.weight", {c.d_model}), c.layer_norm_epsilon};

  decoder_relative_bias_ = checkpoint.load("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                           {c.relative_attention_num_buckets, c.num_heads});
  for (int i = 0; i < c.num_decoder_layers; ++i) {
    const std::string block = decoder_block(i);
    DecoderLayer layer;
    layer.self_attention_norm = builder.norm(block + ".layer.0");
    layer.self_attention = builder.attention(decoder_self_attention(i), true);
    layer.cross_attention_norm = builder.norm(block + ".layer.1");
    layer.cross_attention = builder.attention(decoder_cross_attention(i), false);
    layer.ffn_norm = builder.norm(block + ".layer.2");
    layer.ffn = builder.feed_forward(decoder_ffn(i), c.decoder_layer_is_sparse(i));
    decoder_layers_.push_back(std::move(layer));
  }
  decoder_final_norm_ = {builder.load("decoder.final_layer_norm.weight", {c.d_model}), c.layer_norm_epsilon};
  checkpoint.check_all_used();

  special_tokens_ = {c.decoder_start_token_id, c.eos_token_id, c.pad_token_id, c.vocab_size};
  info_ = describe(c, checkpoint);
  // Weights went to the device on this thread's stream; a model may then be used from another thread's.
  device_synchronize(options_.device);
}

EncoderOutput SwitchTransformersModel::encode(const std::vector<std::vector<int32_t>>& sources) {
  EncoderOutput out;
  out.offsets = {0};
  std::vector<int32_t> tokens;
  int64_t longest = 0;
  for (const auto& source : sources) {
    if (source.empty()) throw InputError("encode: empty source (every source ends with EOS)");
    tokens.insert(tokens.end(), source.begin(), source.end());
    out.offsets.push_back(static_cast<int64_t>(tokens.size()));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(source.size()));
  }
  std::vector<int32_t> query_begin, key_begin, key_length, query_position;
  for (size_t s = 0; s < sources.size(); ++s) {
    query_begin.push_back(static_cast<int32_t>(out.offsets[s]));
    key_begin.push_back(static_cast<int32_t>(out.offsets[s]));
    key_length.push_back(static_cast<int32_t>(out.offsets[s + 1] - out.offsets[s]));
    query_position.push_back(0);
  }
  query_begin.push_back(static_cast<int32_t>(out.offsets.back()));
  const ops::AttentionLayout layout =
      ops::AttentionLayout::from_host(query_begin, key_begin, key_length, query_position, options_.device);
  const int max_offset = static_cast<int>(std::max<int64_t>(longest - 1, 0));
  const Tensor bias = ops::relative_position_bias(
                          encoder_relative_bias_, max_offset,
                          {true, config_.relative_attention_num_buckets, config_.relative_attention_max_distance})
                          .to(options_.device);
  ops::AttentionArgs args;
  args.num_heads = config_.num_heads;
  args.head_dim = config_.d_kv;
  args.position_bias = &bias;
  args.bias_max_offset = max_offset;

  Tensor hidden = layers::embed(encoder_embedding_, layers::token_ids(tokens, config_.vocab_size, options_.device));
  for (const EncoderLayer& layer : encoder_layers_) {
    const Tensor qkv = layers::project_qkv(layer.attention, layer.attention_norm, hidden);
    layers::add_attention_output(layer.attention, layers::stacked(qkv, 0), layers::stacked(qkv, 1),
                                 layers::stacked(qkv, 2), layout, args, hidden);
    layers::add_feed_forward(layer.ffn, layer.ffn_norm, hidden);
  }
  out.hidden = encoder_final_norm_(hidden);
  return out;
}

std::unique_ptr<DecoderState> SwitchTransformersModel::start_decoding(const EncoderOutput& encoded, int rows_per_source,
                                                                      int max_steps) {
  auto state = std::make_unique<DecoderState>(encoded.offsets, rows_per_source, max_steps, options_.device);
  const int64_t inner = static_cast<int64_t>(config_.num_heads) * config_.d_kv;
  // On a GPU the self-attention caches get every slot up front, so that their addresses never change during a
  // decode; the CPU grows them as sentences get longer.
  const int64_t slots = options_.device == Device::CUDA ? max_steps : 0;
  for (const DecoderLayer& layer : decoder_layers_) {
    DecoderState::Layer cache;
    cache.self_keys = Tensor::empty({state->rows(), slots, inner}, options_.dtype, options_.device);
    cache.self_values = Tensor::empty({state->rows(), slots, inner}, options_.dtype, options_.device);
    // Cross-attention keys and values are computed once per source, shared by its beams.
    cache.cross_keys = layers::linear(encoded.hidden, layer.cross_attention.k);
    cache.cross_values = layers::linear(encoded.hidden, layer.cross_attention.v);
    state->layers().push_back(std::move(cache));
  }
  // One bias table for every (query, key) distance of this decode: keys never follow the query, and the
  // query is at most at position max_steps - 1.
  state->self_attention_bias_max_offset = std::max(max_steps - 1, 0);
  state->self_attention_bias =
      ops::relative_position_bias(
          decoder_relative_bias_, state->self_attention_bias_max_offset,
          {false, config_.relative_attention_num_buckets, config_.relative_attention_max_distance})
          .to(options_.device);
  return state;
}

void SwitchTransformersModel::compute_step(DecoderState& state, const Tensor& tokens, Tensor& logits) {
  const ops::AttentionLayout& cross_layout = state.cross_attention_layout();
  ops::AttentionArgs self_args;
  self_args.num_heads = config_.num_heads;
  self_args.head_dim = config_.d_kv;
  self_args.position_bias = &state.self_attention_bias;
  self_args.bias_max_offset = state.self_attention_bias_max_offset;
  ops::AttentionArgs cross_args;
  cross_args.num_heads = config_.num_heads;
  cross_args.head_dim = config_.d_kv;

  Tensor hidden = layers::embed(decoder_embedding_, tokens);
  for (size_t i = 0; i < decoder_layers_.size(); ++i) {
    const DecoderLayer& layer = decoder_layers_[i];
    DecoderState::Layer& cache = state.layers()[i];
    const Tensor qkv = layers::project_qkv(layer.self_attention, layer.self_attention_norm, hidden);
    const Tensor queries = layers::stacked(qkv, 0);
    Tensor context = Tensor::empty(queries.shape(), queries.dtype(), queries.device());
    state.attend_self(cache, queries, layers::stacked(qkv, 1), layers::stacked(qkv, 2), self_args, context);
    layers::add_attention_projection(layer.self_attention, context, hidden);
    layers::add_attention(layer.cross_attention, layer.cross_attention_norm, cache.cross_keys, cache.cross_values,
                          cross_layout, cross_args, hidden);
    layers::add_feed_forward(layer.ffn, layer.ffn_norm, hidden, state.active_rows());
  }
  state.advance_positions();
  // transformers rescales before the tied projection (Mesh TensorFlow's convention).
  ops::NormLinearArgs projection;
  if (config_.tie_word_embeddings)
    projection.scale = static_cast<float>(std::pow(static_cast<double>(config_.d_model), -0.5));
  ops::rms_norm_linear(hidden, decoder_final_norm_.weight, decoder_final_norm_.epsilon, lm_head_, logits, projection);
}

}  // namespace elephant
