#pragma once

// The per-device implementations behind the public ops. ops/dispatch.cc checks the arguments (shapes, dtypes,
// devices) once for every backend and calls the one of the tensors' device; a backend may assume valid arguments.
// name_cpu.cc defines ops::cpu::name, name_cuda.cu defines ops::cuda::name.

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/beam.h"
#include "ops/gemm.h"
#include "ops/greedy.h"
#include "ops/kv_cache.h"
#include "ops/moe.h"
#include "ops/topk.h"

#define ELEPHANT_BACKEND_OPS                                                                                           \
  void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args);                                        \
  void linear_stack(const Tensor& x, const Tensor& weights, Tensor& y);                                                \
  void quantized_linear(const Tensor& x, const QuantizedTensor& weight, Tensor& y, const QuantizedLinearArgs& args);   \
  void add_in_place(Tensor& hidden, const Tensor& y);                                                                  \
  void scale_in_place(Tensor& x, float factor);                                                                        \
  void add_scalar(Tensor& x, int32_t value);                                                                           \
  void convert(const Tensor& x, Tensor& y);                                                                            \
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y);                                          \
  void activate(Activation activation, Tensor& x);                                                                     \
  void softmax(Tensor& x);                                                                                             \
  void log_softmax(const Tensor& x, Tensor& y);                                                                        \
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out);                                                  \
  void gather_cache_rows(const Tensor& cache, const Tensor& rows, int64_t steps, Tensor& out);                         \
  void reorder_cache_groups(const std::vector<Tensor*>& caches, const Tensor& parents, int64_t group, int64_t steps);  \
  void write_cache_step(const Tensor& values, const Tensor& slots, Tensor& cache);                                     \
  void attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,       \
                 const AttentionArgs& args, Tensor& out);                                                              \
  void attention_with_append(const Tensor& queries, const Tensor& new_keys, const Tensor& new_values,                  \
                             Tensor& key_cache, Tensor& value_cache, const AttentionLayout& layout,                    \
                             const AttentionArgs& args, Tensor& out);                                                  \
  void route_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active, Tensor& expert,     \
                  Tensor& probability);                                                                                \
  void sort_by_expert(const Tensor& expert, int num_experts, Tensor& sorted_rows, Tensor& offsets);                    \
  void grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,                        \
                    const GroupedGemmArgs& args);                                                                      \
  void grouped_gemm(const Tensor& a, const QuantizedTensor& weights, const Tensor& offsets, Tensor& out,               \
                    const GroupedGemmArgs& args);                                                                      \
  void grouped_gemm_pair(const Tensor& a, const Tensor& first, const Tensor& second, const Tensor& offsets,            \
                         Tensor& middle, Tensor& out, const GroupedGemmArgs& first_args,                               \
                         const GroupedGemmArgs& second_args);                                                          \
  void topk(const Tensor& x, int k, Tensor& values, Tensor& indices);                                                  \
  void add_row_values(Tensor& x, const Tensor& row_values);                                                            \
  void fill_column(Tensor& x, int64_t column, float value);                                                            \
  void greedy_advance(const Tensor& best, int32_t eos, int32_t pad, Tensor& tokens, Tensor& finished, Tensor& lengths, \
                      Tensor& history);                                                                                \
  void beam_advance(const Tensor& values, const Tensor& indices, int step, const BeamOptions& options,                 \
                    BeamState& state);                                                                                 \
  void beam_best_tokens(const BeamState& state, const Tensor& sources, Tensor& ids, Tensor& lengths);

namespace elephant::ops {
namespace cpu {
ELEPHANT_BACKEND_OPS
}  // namespace cpu
namespace cuda {
ELEPHANT_BACKEND_OPS
}  // namespace cuda
}  // namespace elephant::ops
