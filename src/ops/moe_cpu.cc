#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/backends.h"
#include "ops/gemm.h"

namespace elephant::ops::cpu {

void route_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active, Tensor& expert,
                Tensor& probability) {
  const int64_t tokens = x.dim(0);
  const int64_t experts = weight.dim(0);
  Tensor logits = Tensor::empty({tokens, experts});
  gemm(x, weight, logits, {});
  const float* l = logits.data<float>();
  const float* b = bias ? bias->data<float>() : nullptr;
  const uint8_t* live = active ? active->data<uint8_t>() : nullptr;
  int32_t* chosen = expert.data<int32_t>();
  float* chosen_probability = probability.data<float>();
  std::vector<float> row(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    if (live && !live[t]) {
      chosen[t] = static_cast<int32_t>(experts);
      chosen_probability[t] = 0.0f;
      continue;
    }
    for (int64_t e = 0; e < experts; ++e) row[e] = l[t * experts + e] + (b ? b[e] : 0.0f);
    const float max = *std::max_element(row.begin(), row.end());
    float sum = 0.0f;
    for (int64_t e = 0; e < experts; ++e) sum += std::exp(row[e] - max);
    // The chosen expert has the largest probability (the first one on ties, as torch.max); probabilities are
    // computed like torch.softmax so that the scale matches to the last bit where possible.
    int64_t best = 0;
    float best_probability = -1.0f;
    for (int64_t e = 0; e < experts; ++e) {
      const float p = std::exp(row[e] - max) / sum;
      if (p > best_probability) {
        best_probability = p;
        best = e;
      }
    }
    chosen[t] = static_cast<int32_t>(best);
    chosen_probability[t] = best_probability;
  }
}

// A stable counting sort; rows routed past the last expert go to the end, in row order.
void sort_by_expert(const Tensor& expert, int num_experts, Tensor& sorted_rows, Tensor& offsets) {
  const int64_t tokens = expert.dim(0);
  const int32_t* e = expert.data<int32_t>();
  int32_t* first = offsets.data<int32_t>();
  const auto bucket = [num_experts](int32_t id) { return id < 0 || id > num_experts ? num_experts : id; };
  std::vector<int32_t> count(static_cast<size_t>(num_experts) + 1, 0);
  for (int64_t t = 0; t < tokens; ++t) ++count[bucket(e[t])];
  std::vector<int32_t> next(count.size(), 0);
  for (size_t i = 1; i < count.size(); ++i) next[i] = next[i - 1] + count[i - 1];
  std::copy(next.begin(), next.end(), first);
  int32_t* rows = sorted_rows.data<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) rows[next[bucket(e[t])]++] = static_cast<int32_t>(t);
}

namespace {

// One BLAS GEMM per expert that received rows: an expert no row is routed to is never read. expert_weight(e) gives
// expert e's float32 [n, k] matrix.
template <typename ExpertWeight>
void grouped_gemm_with(const Tensor& a, int64_t experts, int64_t n, const Tensor& offsets, Tensor& out,
                       const GroupedGemmArgs& args, ExpertWeight&& expert_weight) {
  const int32_t* first = offsets.data<int32_t>();
  Tensor gathered;
  if (args.a_rows) {
    gathered = Tensor::empty({args.a_rows->dim(0), a.dim(1)});
    cpu::gather_rows(a, *args.a_rows, gathered);
  }
  const Tensor& rows = args.a_rows ? gathered : a;
  // With out_rows the product goes to a buffer first, then is scaled and added to out's rows.
  Tensor product = args.out_rows ? Tensor::empty({args.out_rows->dim(0), n}) : out;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t begin = first[e];
    const int64_t count = first[e + 1] - begin;
    if (count <= 0) continue;
    Tensor y = product.narrow(begin, count);
    ops::gemm(rows.narrow(begin, count), expert_weight(e), y);
    if (args.bias) {
      const float* b = args.bias->data<float>() + e * n;
      float* data = y.data<float>();
      for (int64_t i = 0; i < count; ++i)
        for (int64_t j = 0; j < n; ++j) data[i * n + j] += b[j];
    }
    if (args.activation) cpu::activate(*args.activation, y);
  }
  if (!args.out_rows) return;
  const int64_t computed = first[experts];
  const float* in = product.data<float>();
  const int32_t* target = args.out_rows->data<int32_t>();
  const float* scale = args.out_scale->data<float>();
  float* hidden = out.data<float>();
#pragma omp parallel for if (computed * n > 65536)
  for (int64_t i = 0; i < computed; ++i) {
    const int64_t row = target[i];
    const float s = scale[row];
    for (int64_t j = 0; j < n; ++j) hidden[row * n + j] += in[i * n + j] * s;
  }
}

}  // namespace

void grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args) {
  const int64_t n = weights.dim(1), k = weights.dim(2);
  grouped_gemm_with(a, weights.dim(0), n, offsets, out, args, [&](int64_t e) {
    return weights.narrow(e, 1).reshape({n, k});
  });
}

// An expert's weights are dequantized into one float32 buffer right before its GEMM: the BLAS call sees float32,
// and only experts that received rows are converted.
void grouped_gemm(const Tensor& a, const QuantizedTensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args) {
  const int64_t n = weights.dim(1), k = weights.dim(2);
  Tensor expert = Tensor::empty({n, k});
  grouped_gemm_with(a, weights.dim(0), n, offsets, out, args, [&](int64_t e) {
    dequantize_matrix(weights, e, expert.data<float>());
    return expert;
  });
}

void grouped_gemm_pair(const Tensor& a, const Tensor& first, const Tensor& second, const Tensor& offsets,
                       Tensor& middle, Tensor& out, const GroupedGemmArgs& first_args,
                       const GroupedGemmArgs& second_args) {
  cpu::grouped_gemm(a, first, offsets, middle, first_args);
  cpu::grouped_gemm(middle, second, offsets, out, second_args);
}

}  // namespace elephant::ops::cpu
