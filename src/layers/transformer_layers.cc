#include "layers/transformer_layers.h"

#include <stdexcept>
#include <string>

#include "ops/elementwise.h"
#include "ops/gather.h"
#include "ops/gemm.h"
#include "ops/moe.h"
#include "ops/rms_norm.h"

namespace elephant::layers {

Tensor RmsNorm::operator()(const Tensor& x) const {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  ops::rms_norm(x, weight, epsilon, y);
  return y;
}

Tensor RmsNorm::linear(const Tensor& x, const Tensor& weights) const {
  const Shape shape =
      weights.rank() == 3 ? Shape{weights.dim(0), x.dim(0), weights.dim(1)} : Shape{x.dim(0), weights.dim(0)};
  Tensor y = Tensor::empty(shape, x.dtype(), x.device());
  ops::rms_norm_linear(x, weight, epsilon, weights, y);
  return y;
}

Tensor RmsNorm::linear(const Tensor& x, const Weight& w, std::optional<ops::Activation> activation) const {
  Tensor y = Tensor::empty({x.dim(0), w.dim(0)}, x.dtype(), x.device());
  linear(x, w, y, activation);
  return y;
}

void RmsNorm::linear(const Tensor& x, const Weight& w, Tensor& y, std::optional<ops::Activation> activation) const {
  ops::NormLinearArgs args;
  args.activation = activation;
  if (w.quantized.defined()) {
    ops::rms_norm_linear(x, weight, epsilon, w.quantized, y, args);
  } else {
    ops::rms_norm_linear(x, weight, epsilon, w.dense, y, args);
  }
}

Tensor linear(const Tensor& x, const Weight& w, std::optional<ops::Activation> activation) {
  Tensor y = Tensor::empty({x.dim(0), w.dim(0)}, x.dtype(), x.device());
  linear(x, w, y, activation);
  return y;
}

void linear(const Tensor& x, const Weight& w, Tensor& y, std::optional<ops::Activation> activation) {
  if (w.quantized.defined()) {
    ops::quantized_linear(x, w.quantized, y);
    if (activation) ops::activate(*activation, y);
    return;
  }
  ops::GemmArgs args;
  args.b_is_weight = true;
  args.activation = activation;
  ops::gemm(x, w.dense, y, args);
}

// The residual add rides in the GEMM (beta = 1, or the quantized Linear accumulating).
void add_linear(const Tensor& x, const Weight& w, Tensor& hidden) {
  if (w.quantized.defined()) {
    ops::QuantizedLinearArgs args;
    args.accumulate = true;
    ops::quantized_linear(x, w.quantized, hidden, args);
    return;
  }
  ops::GemmArgs args;
  args.beta = 1.0f;
  args.b_is_weight = true;
  ops::gemm(x, w.dense, hidden, args);
}

namespace {

// Route, sort the rows by expert, run all experts as one grouped GEMM per weight matrix (the first reading the rows
// in expert order, the second adding its scaled outputs back to the rows they came from). Nothing here reads device
// memory on the host: the per-expert row counts stay in `offsets` on the device.
void add_mixture_of_experts(const MixtureOfExperts& moe, ops::Activation activation, const Tensor& x, Tensor& hidden,
                            const Tensor* active) {
  const int64_t tokens = x.dim(0);
  const Device device = x.device();
  const int experts = moe.num_experts();
  Tensor probability = Tensor::empty({tokens}, DType::F32, device);
  Tensor sorted_rows = Tensor::empty({tokens}, DType::I32, device);
  Tensor offsets = Tensor::empty({experts + 1}, DType::I32, device);
  ops::route_and_sort_top1(x, moe.router, moe.router_bias.defined() ? &moe.router_bias : nullptr, active, probability,
                           sorted_rows, offsets);
  add_expert_outputs(moe.wi, moe.wo, activation, x, offsets, sorted_rows, probability, hidden);
}

}  // namespace

ExpertGemmArgs::ExpertGemmArgs(ops::Activation activation, const Tensor& sorted_rows, const Tensor& probability) {
  wi.activation = activation;
  wi.a_rows = &sorted_rows;
  wi.next_starts_early = true;
  wo.out_rows = &sorted_rows;
  wo.out_scale = &probability;
  wo.routing_settled = true;
}

void add_expert_outputs(const Weight& wi, const Weight& wo, ops::Activation activation, const Tensor& x,
                        const Tensor& offsets, const Tensor& sorted_rows, const Tensor& probability, Tensor& hidden) {
  Tensor inner = Tensor::empty({x.dim(0), wi.dim(1)}, x.dtype(), x.device());
  const ExpertGemmArgs args(activation, sorted_rows, probability);
  if (wi.quantized.defined() || wo.quantized.defined()) {
    grouped_gemm(x, wi, offsets, inner, args.wi);
    grouped_gemm(inner, wo, offsets, hidden, args.wo);
  } else {
    ops::grouped_gemm_pair(x, wi.dense, wo.dense, offsets, inner, hidden, args.wi, args.wo);
  }
}

void grouped_gemm(const Tensor& a, const Weight& weights, const Tensor& offsets, Tensor& out,
                  const ops::GroupedGemmArgs& args) {
  if (weights.quantized.defined()) {
    ops::grouped_gemm(a, weights.quantized, offsets, out, args);
  } else {
    ops::grouped_gemm(a, weights.dense, offsets, out, args);
  }
}

void add_feed_forward(const FeedForward& ffn, const Tensor& x, Tensor& hidden, const Tensor* active) {
  if (ffn.moe) {
    add_mixture_of_experts(*ffn.moe, ffn.activation, x, hidden, active);
  } else {
    add_linear(linear(x, ffn.dense->wi, ffn.activation), ffn.dense->wo, hidden);
  }
}

void add_feed_forward(const FeedForward& ffn, const RmsNorm& norm, Tensor& hidden, const Tensor* active) {
  if (ffn.moe) {
    add_mixture_of_experts(*ffn.moe, ffn.activation, norm(hidden), hidden, active);
  } else {
    add_linear(norm.linear(hidden, ffn.dense->wi, ffn.activation), ffn.dense->wo, hidden);
  }
}

void add_attention(const MultiHeadAttention& attention, const RmsNorm& norm, const Tensor& keys, const Tensor& values,
                   const ops::AttentionLayout& layout, const ops::AttentionArgs& args, Tensor& hidden) {
  add_attention_output(attention, norm.linear(hidden, attention.q), keys, values, layout, args, hidden);
}

void add_attention_output(const MultiHeadAttention& attention, const Tensor& queries, const Tensor& keys,
                          const Tensor& values, const ops::AttentionLayout& layout, const ops::AttentionArgs& args,
                          Tensor& hidden) {
  Tensor context = Tensor::empty(queries.shape(), queries.dtype(), queries.device());
  ops::attention(queries, keys, values, layout, args, context);
  add_attention_projection(attention, context, hidden);
}

void add_attention_projection(const MultiHeadAttention& attention, const Tensor& context, Tensor& hidden) {
  add_linear(context, attention.o, hidden);
}

Tensor project_qkv(const MultiHeadAttention& attention, const RmsNorm& norm, const Tensor& x) {
  if (attention.qkv.defined()) return norm.linear(x, attention.qkv);
  // Three projections, each normalizing the rows itself where one launch can (ops::rms_norm_linear).
  Tensor qkv = Tensor::empty({3, x.dim(0), attention.q.dim(0)}, x.dtype(), x.device());
  const Weight* weights[] = {&attention.q, &attention.k, &attention.v};
  for (int i = 0; i < 3; ++i) {
    Tensor y = stacked(qkv, i);
    norm.linear(x, *weights[i], y);
  }
  return qkv;
}

Tensor stacked(const Tensor& stack, int64_t i) { return stack.narrow(i, 1).reshape({stack.dim(1), stack.dim(2)}); }

Tensor token_ids(const std::vector<int32_t>& ids, int64_t vocab, Device device) {
  for (int32_t id : ids)
    if (id < 0 || id >= vocab)
      throw std::out_of_range("token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(vocab));
  return Tensor::from_vector(ids, {static_cast<int64_t>(ids.size())}, device);
}

Tensor embed(const Tensor& table, const Tensor& ids) {
  Tensor out = Tensor::empty({ids.dim(0), table.dim(1)}, table.dtype(), table.device());
  ops::gather_rows(table, ids, out);
  return out;
}

}  // namespace elephant::layers
