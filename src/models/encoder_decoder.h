#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "core/cuda_graph.h"
#include "core/tensor.h"
#include "elephant/model_info.h"
#include "ops/attention.h"
#include "quantization/quantized_tensor.h"

namespace elephant {

struct SpecialTokens {
  int32_t decoder_start = 0;
  int32_t eos = 1;
  int32_t pad = 0;
  int32_t vocab_size = 0;
};

// Where a model runs and in which dtype it computes (weights and activations; routers, norms' statistics,
// softmax and accumulation are float32 regardless). The CPU backend computes in F32 only.
struct ModelOptions {
  Device device = Device::CPU;
  DType dtype = DType::F32;
  bool cuda_graphs = true;  // on CUDA, decode steps are replayed from CUDA graphs; false: launched kernel by kernel
  // Expert weights quantized at load time (quantization/quantized_tensor.h); none keeps them as stored.
  QuantizationScheme quantize;
  // The attention projections and dense FFNs quantized to int8 at load time too, with the experts' group size (the
  // router, the norms and the embeddings / lm_head stay in the compute dtype).
  bool quantize_non_experts = false;
};

// Encoder states of a batch of sources, packed token-major without padding: source i owns the rows
// [offsets[i], offsets[i + 1]) of hidden.
struct EncoderOutput {
  Tensor hidden;
  std::vector<int64_t> offsets;
};

// Everything a decoder keeps between steps for its live rows (beams of live sources).
class DecoderState {
 public:
  struct Layer {
    Tensor self_keys, self_values;    // [rows, slots, heads * head_dim]: one slot per step
    Tensor cross_keys, cross_values;  // [source tokens, heads * head_dim], packed like EncoderOutput
  };

  DecoderState(std::vector<int64_t> source_offsets, int rows_per_source, int max_steps, Device device = Device::CPU);

  int steps_done() const { return steps_done_; }
  Device device() const { return device_; }
  int max_steps() const { return max_steps_; }
  int64_t rows() const { return static_cast<int64_t>(row_source_.size()); }
  const std::vector<int32_t>& row_source() const { return row_source_; }
  const std::vector<int64_t>& source_offsets() const { return source_offsets_; }
  std::vector<Layer>& layers() { return layers_; }

  // Keeps the old rows `rows`, in that order: reorders beams and drops the rows of finished sources.
  // A source that no kept row refers to is dropped and the cross-attention memory compacted. Caches, memory and
  // layouts stay in their buffers (the first rows of them), so their addresses do not change.
  void select_rows(const std::vector<int32_t>& rows);
  // Reorders beams within their sources: new row i continues old row parents[i] (parents: I32 [rows()] on the
  // state's device, with row_source()[parents[i]] == row_source()[i], checked on the CPU only). Only the written
  // self-attention cache slots move, within their buffers; sources, memory, layouts and activity stay as they are.
  void reorder_rows(const Tensor& parents);
  // The rows of each source when every source has that many, consecutive (a search's layout), else 0.
  int64_t source_group_rows() const;
  // Makes room in the self-attention caches for one more step, growing them geometrically: most
  // sentences stop long before max_steps, so the caches are not sized for it up front.
  void reserve_next_step();
  // The host's part before a step: room in the caches and the layouts on the device, so that the step itself
  // only launches work (and can be recorded in a CUDA graph).
  void prepare_step();
  // One layer's self-attention of this step: appends its keys and values, [rows, heads * head_dim], to each row's
  // slot steps_done of the layer's caches, then attends each row's query to the row's cached steps, this one
  // included (ops::attention_with_append under self_attention_layout(), which puts the slot on the device).
  // out: [rows, heads * head_dim], like the queries.
  void attend_self(Layer& layer, const Tensor& queries, const Tensor& keys, const Tensor& values,
                   const ops::AttentionArgs& args, Tensor& out);
  // Who attends to what this step: each row's query, at position steps_done, against its own cached steps
  // (self-attention), or against its source's encoder states (cross-attention). Both live on the device and
  // are rebuilt only when rows are selected or the caches grow; advance() moves the self-attention positions on
  // the device, so that a step needs no layout from the host.
  const ops::AttentionLayout& self_attention_layout();
  const ops::AttentionLayout& cross_attention_layout();
  // One step done: every row's self-attention position + 1 on the device (part of the recorded step), and
  // steps_done + 1 on the host (not part of it). advance() does both.
  void advance_positions();
  void finish_step() { ++steps_done_; }
  void advance() {
    advance_positions();
    finish_step();
  }
  // Rows whose sentence is finished but that stay in the batch (no pruning, or until the next compaction): the
  // model gives their MoE rows the expert id past the last one, so that no expert GEMM touches them. One flag
  // per row (0: finished); select_rows() makes every row active again.
  void set_active_rows(const std::vector<uint8_t>& active);
  const Tensor* active_rows() const { return active_.defined() ? &active_ : nullptr; }  // U8 [rows], or null

  // The self-attention's position bias for every distance a step of this decode can meet, set once by the
  // model (T5's relative attention bias: [heads, 2 * max_offset + 1]); undefined for models without one.
  Tensor self_attention_bias;
  int self_attention_bias_max_offset = 0;

  // Changes whenever something a recorded step reads moves or changes shape (rows selected, caches grown,
  // layouts rebuilt, the active flags appearing or going): a step graph is valid for one version.
  uint64_t version() const { return version_; }

 private:
  friend class EncoderDecoderModel;
  // This decode's recorded step: replayed while the state's version is the one it was captured at, so it is
  // captured once per batch bucket (the rows change only when the search compacts the batch).
  struct StepGraph {
    CudaGraph graph;
    Tensor tokens;  // I32 [rows]: the step's input, copied in before a replay
    Tensor logits;  // F32 [rows, vocab]: its output
    uint64_t version = 0;
  };
  StepGraph step_graph_;
  uint64_t version_ = 1;

  std::vector<int64_t> source_offsets_;
  std::vector<int32_t> row_source_;
  std::vector<Layer> layers_;
  void build_self_layout(int64_t slots);
  void build_cross_layout();

  int max_steps_;
  Device device_;
  int steps_done_ = 0;
  ops::AttentionLayout self_layout_, cross_layout_;
  ops::AttentionLayout self_storage_, cross_storage_;  // the arrays behind the layouts, kept for the decode
  Tensor active_;                                      // undefined: every row is active
  Tensor active_storage_;                              // the buffer behind active_, kept for the decode
  int64_t self_layout_slots_ = -1;                     // the cache slots the self layout was built for; -1: not built
  bool cross_layout_built_ = false;
};

// The interface decoding strategies drive; one implementation per architecture under src/models/.
class EncoderDecoderModel {
 public:
  virtual ~EncoderDecoderModel() = default;

  virtual const SpecialTokens& special_tokens() const = 0;
  virtual const ModelInfo& info() const = 0;
  virtual const ModelOptions& options() const = 0;

  // Each source is a list of token ids (ending with EOS).
  virtual EncoderOutput encode(const std::vector<std::vector<int32_t>>& sources) = 0;
  // Prepares `rows_per_source` decoder rows per source (beams) for at most `max_steps` steps.
  virtual std::unique_ptr<DecoderState> start_decoding(const EncoderOutput& encoded, int rows_per_source,
                                                       int max_steps) = 0;
  // Feeds one token per live row and returns next-token logits, F32 [rows, vocab] on the model's device, valid
  // until the state's next step (on CUDA they live in the step graph's buffer). tokens: I32 [rows] on the model's
  // device (ids are not checked there: the search produced them).
  Tensor step(DecoderState& state, const Tensor& tokens);
  // The same from host ids, checked against the vocabulary.
  Tensor step(DecoderState& state, const std::vector<int32_t>& tokens);

 protected:
  // The device work of one step after state.prepare_step(): reads tokens, writes logits and the caches, moves the
  // positions (state.advance_positions()). It must only queue work on the stream (no host copies or
  // synchronization, no allocation that outlives it) so that it can be recorded once and replayed.
  virtual void compute_step(DecoderState& state, const Tensor& tokens, Tensor& logits) = 0;

 private:
  // Row counts whose step has run kernel by kernel at least once on this model: a later decode's first step with
  // as many rows is recorded at once instead of running uncaptured first (the first-use work is done).
  std::mutex warmed_mutex_;
  std::set<int64_t> warmed_rows_;
};

// Reads config.json's model_type and builds the matching architecture from the directory's checkpoint.
std::unique_ptr<EncoderDecoderModel> load_model(const std::string& model_dir, const ModelOptions& options = {});

}  // namespace elephant
