#include "layers/transformer_layers.h"

#include <stdexcept>

#include "ops/gemm.h"
#include "ops/moe_routing.h"
#include "ops/rms_norm.h"

namespace elephant::layers {

Tensor RmsNorm::operator()(const Tensor& x) const {
  Tensor y = Tensor::empty(x.shape());
  ops::rms_norm(x, weight, epsilon, y);
  return y;
}

void add_in_place(Tensor& hidden, const Tensor& y) {
  if (hidden.shape() != y.shape())
    throw std::invalid_argument("add_in_place: " + shape_string(hidden.shape()) + " += " + shape_string(y.shape()));
  float* h = hidden.data<float>();
  const float* in = y.data<float>();
  const int64_t n = hidden.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) h[i] += in[i];
}

namespace {

void add_row_bias(Tensor& x, const Tensor& bias) {
  const int64_t d = bias.numel();
  float* data = x.data<float>();
  const float* b = bias.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) data[i] += b[i % d];
}

Tensor dense_ffn(const DenseFeedForward& ffn, ops::Activation activation, const Tensor& x) {
  Tensor h = ops::linear(x, ffn.wi);
  ops::activate(activation, h);
  return ops::linear(h, ffn.wo);
}

// Groups the rows by expert (counting sort on the expert id) and runs one GEMM per expert matrix, only
// for experts that received rows: an expert no row is routed to is never read.
void add_mixture_of_experts(const MixtureOfExperts& moe, ops::Activation activation, const Tensor& x, Tensor& hidden,
                            const std::vector<uint8_t>& active) {
  Tensor router_logits = ops::linear(x, moe.router);
  if (moe.router_bias.defined()) add_row_bias(router_logits, moe.router_bias);
  const ops::Top1Routing routing = ops::route_top1(router_logits, active);
  const int num_experts = static_cast<int>(moe.experts.size());
  const ops::ExpertGroups groups = ops::group_by_expert(routing.expert, num_experts);
  Tensor gathered = Tensor::empty({static_cast<int64_t>(groups.rows.size()), x.dim(-1)});
  ops::gather_rows(x, groups.rows.data(), static_cast<int64_t>(groups.rows.size()), gathered);
  for (int e = 0; e < num_experts; ++e) {
    const int64_t begin = groups.offsets[e];
    const int64_t count = groups.offsets[e + 1] - begin;
    if (count == 0) continue;
    const Tensor y = dense_ffn(moe.experts[e], activation, gathered.narrow(begin, count));
    ops::scatter_scaled_add(y, groups.rows.data() + begin, count, routing.probability.data(), hidden);
  }
}

}  // namespace

void add_feed_forward(const FeedForward& ffn, const Tensor& x, Tensor& hidden, const std::vector<uint8_t>& active) {
  if (ffn.moe) {
    add_mixture_of_experts(*ffn.moe, ffn.activation, x, hidden, active);
  } else {
    add_in_place(hidden, dense_ffn(*ffn.dense, ffn.activation, x));
  }
}

void add_attention(const MultiHeadAttention& attention, const Tensor& x, const Tensor& keys, const Tensor& values,
                   const ops::AttentionLayout& layout, const ops::AttentionArgs& args, Tensor& hidden) {
  const Tensor queries = ops::linear(x, attention.q);
  Tensor context = Tensor::empty(queries.shape());
  ops::attention(queries, keys, values, layout, args, context);
  add_in_place(hidden, ops::linear(context, attention.o));
}

Tensor embed(const Tensor& table, const std::vector<int32_t>& ids) {
  const int64_t vocab = table.dim(0);
  for (int32_t id : ids)
    if (id < 0 || id >= vocab)
      throw std::out_of_range("token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(vocab));
  Tensor out = Tensor::empty({static_cast<int64_t>(ids.size()), table.dim(1)});
  ops::gather_rows(table, ids.data(), static_cast<int64_t>(ids.size()), out);
  return out;
}

}  // namespace elephant::layers
