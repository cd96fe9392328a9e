// The CPU grouped GEMM on quantized weights against the float32 grouped GEMM on the same weights dequantized: the
// quantized op must compute exactly that product (within float32 rounding), whatever the bits, group size and
// epilogue (bias, activation, rows read through a_rows, rows added through out_rows and out_scale).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "ops/device_helpers.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/moe.h"
#include "ops/rms_norm.h"
#include "quantization/quantized_tensor.h"
#include "test_utils.h"

namespace elephant {
namespace {

using ops::Activation;
using testdev::random_cpu;
using testdev::relative_l2_within;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Scheme {
  int bits;
  int64_t group_size;
};

const Scheme kSchemes[] = {{8, 0}, {8, 64}, {8, 128}, {4, 0}, {4, 64}, {4, 128}};

// Experts' row counts (an empty expert, and rows past the last expert that are pruned), n and k.
struct Shapes {
  std::vector<int32_t> offsets;
  int64_t rows, n, k;
};

const Shapes kShapes[] = {
    {{0, 5, 5, 12, 20}, 23, 70, 128},  // an expert without rows, 3 pruned rows, n not a multiple of 64
    {{0, 40, 41}, 41, 300, 256},       // an expert large enough for the parallel dequantization
};

Tensor offsets_of(const Shapes& s) { return Tensor::from_vector(s.offsets, {static_cast<int64_t>(s.offsets.size())}); }

int64_t experts_of(const Shapes& s) { return static_cast<int64_t>(s.offsets.size()) - 1; }

Tensor nan_tensor(const Shape& shape) {
  Tensor t = Tensor::empty(shape);
  std::fill_n(t.data<float>(), t.numel(), kNaN);
  return t;
}

// Runs both GEMMs with `args` into copies of `out` and compares the first `compared` rows (the rest must be equal
// too: untouched, or NaN in both).
void expect_same_product(const Tensor& a, const QuantizedTensor& q, const Shapes& s, const Tensor& out,
                         const ops::GroupedGemmArgs& args) {
  Tensor quantized_out = out.clone(), reference_out = out.clone();
  ops::grouped_gemm(a, q, offsets_of(s), quantized_out, args);
  ops::grouped_gemm(a, dequantize(q), offsets_of(s), reference_out, args);
  const int64_t active = s.offsets.back();
  const bool scatters = args.out_rows != nullptr;
  const int64_t compared = scatters ? out.dim(0) : active;
  EXPECT_TRUE(relative_l2_within(quantized_out.narrow(0, compared), reference_out.narrow(0, compared), 1e-5));
  if (scatters) return;
  const std::vector<float> rest = quantized_out.narrow(active, out.dim(0) - active).to_vector<float>();
  for (size_t i = 0; i < rest.size(); ++i) ASSERT_TRUE(std::isnan(rest[i])) << "pruned element " << i << " written";
}

TEST(QuantizedGroupedGemmTest, MatchesFloatGemmOnDequantizedWeights) {
  std::mt19937 rng(921);
  for (const Scheme& scheme : kSchemes) {
    for (const Shapes& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "int" << scheme.bits << ", group " << scheme.group_size << ", rows "
                                        << s.rows << ", n " << s.n << ", k " << s.k);
      const QuantizedTensor q =
          quantize(random_cpu({experts_of(s), s.n, s.k}, rng), scheme.bits, scheme.group_size, "weights");
      const Tensor a = random_cpu({s.rows, s.k}, rng);
      expect_same_product(a, q, s, nan_tensor({s.rows, s.n}), {});
    }
  }
}

TEST(QuantizedGroupedGemmTest, BiasAndActivationMatch) {
  std::mt19937 rng(922);
  for (const Scheme& scheme : kSchemes) {
    for (const std::optional<Activation> activation :
         {std::optional<Activation>(), std::optional<Activation>(Activation::ReLU),
          std::optional<Activation>(Activation::GeluNew), std::optional<Activation>(Activation::Silu)}) {
      const Shapes& s = kShapes[0];
      SCOPED_TRACE(::testing::Message() << "int" << scheme.bits << ", group " << scheme.group_size << ", activation "
                                        << (activation ? ops::activation_name(*activation) : "none"));
      const QuantizedTensor q =
          quantize(random_cpu({experts_of(s), s.n, s.k}, rng), scheme.bits, scheme.group_size, "weights");
      const Tensor a = random_cpu({s.rows, s.k}, rng);
      const Tensor bias = random_cpu({experts_of(s), s.n}, rng);
      ops::GroupedGemmArgs args;
      args.bias = &bias;
      args.activation = activation;
      expect_same_product(a, q, s, nan_tensor({s.rows, s.n}), args);
    }
  }
}

// Rows read through a_rows (a has more rows than the product, in another order), as the MoE layer's first GEMM reads
// the sorted rows.
TEST(QuantizedGroupedGemmTest, RowIndicesMatch) {
  std::mt19937 rng(923);
  for (const Scheme& scheme : kSchemes) {
    const Shapes& s = kShapes[0];
    SCOPED_TRACE(::testing::Message() << "int" << scheme.bits << ", group " << scheme.group_size);
    const QuantizedTensor q =
        quantize(random_cpu({experts_of(s), s.n, s.k}, rng), scheme.bits, scheme.group_size, "weights");
    const Tensor a = random_cpu({s.rows + 9, s.k}, rng);
    std::vector<int32_t> order(static_cast<size_t>(s.rows + 9));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    order.resize(static_cast<size_t>(s.rows));
    const Tensor rows = Tensor::from_vector(order, {s.rows});
    ops::GroupedGemmArgs args;
    args.a_rows = &rows;
    args.activation = Activation::ReLU;
    expect_same_product(a, q, s, nan_tensor({s.rows, s.n}), args);
  }
}

// Product rows added to out[out_rows[i]], scaled by out_scale of that row, as the MoE layer's second GEMM adds them
// to the residual stream; rows no product row names keep their values.
TEST(QuantizedGroupedGemmTest, ScaledRowAddsMatch) {
  std::mt19937 rng(924);
  for (const Scheme& scheme : kSchemes) {
    for (const Shapes& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "int" << scheme.bits << ", group " << scheme.group_size << ", rows "
                                        << s.rows);
      const QuantizedTensor q =
          quantize(random_cpu({experts_of(s), s.n, s.k}, rng), scheme.bits, scheme.group_size, "weights");
      Tensor a = random_cpu({s.rows, s.k}, rng);
      std::vector<int32_t> destination(static_cast<size_t>(s.rows));
      std::iota(destination.begin(), destination.end(), 0);
      std::shuffle(destination.begin(), destination.end(), rng);
      const Tensor out_rows = Tensor::from_vector(destination, {s.rows});
      const Tensor out_scale = random_cpu({s.rows}, rng, 0.0f, 1.0f);
      ops::GroupedGemmArgs args;
      args.out_rows = &out_rows;
      args.out_scale = &out_scale;
      expect_same_product(a, q, s, random_cpu({s.rows, s.n}, rng), args);
    }
  }
}

// A Linear layer with quantized weights (--quantize-non-experts): the float32 GEMM on the dequantized weight.
TEST(QuantizedLinearTest, MatchesFloatGemmOnDequantizedWeights) {
  std::mt19937 rng(925);
  for (const Scheme& scheme : kSchemes)
    for (const int64_t rows : {1, 7, 64}) {
      SCOPED_TRACE(::testing::Message() << "int" << scheme.bits << ", group " << scheme.group_size << ", rows "
                                        << rows);
      const QuantizedTensor q = quantize(random_cpu({96, 256}, rng), scheme.bits, scheme.group_size, "weight");
      const Tensor x = random_cpu({rows, 256}, rng);
      Tensor y = nan_tensor({rows, 96});
      ops::quantized_linear(x, q, y);
      EXPECT_TRUE(relative_l2_within(y, ops::linear(x, dequantize(q)), 1e-5));
    }
}

// accumulate: y += x · W^T (the residual add after o and wo).
TEST(QuantizedLinearTest, AccumulatesIntoY) {
  std::mt19937 rng(927);
  for (const Scheme& scheme : kSchemes) {
    SCOPED_TRACE(::testing::Message() << "int" << scheme.bits << ", group " << scheme.group_size);
    const QuantizedTensor q = quantize(random_cpu({96, 256}, rng), scheme.bits, scheme.group_size, "weight");
    const Tensor x = random_cpu({5, 256}, rng);
    const Tensor y0 = random_cpu({5, 96}, rng);
    Tensor y = y0.clone();
    ops::QuantizedLinearArgs args;
    args.accumulate = true;
    ops::quantized_linear(x, q, y, args);
    Tensor expected = y0.clone();
    ops::add_in_place(expected, ops::linear(x, dequantize(q)));
    EXPECT_TRUE(relative_l2_within(y, expected, 1e-5));
  }
}

// The RMS norm and the projection in one op: on the CPU exactly rms_norm, then quantized_linear.
TEST(QuantizedLinearTest, RmsNormLinearIsNormThenLinear) {
  std::mt19937 rng(928);
  const QuantizedTensor q = quantize(random_cpu({96, 256}, rng), 8, 0, "weight");
  const Tensor x = random_cpu({3, 256}, rng);
  const Tensor norm_weight = random_cpu({256}, rng, 0.5f, 1.5f);
  Tensor normalized = Tensor::empty({3, 256});
  ops::rms_norm(x, norm_weight, 1e-6f, normalized);
  Tensor expected = Tensor::empty({3, 96});
  ops::quantized_linear(normalized, q, expected);
  Tensor y = nan_tensor({3, 96});
  ops::rms_norm_linear(x, norm_weight, 1e-6f, q, y);
  EXPECT_EQ(y.to_vector<float>(), expected.to_vector<float>());
  Tensor wrong = Tensor::empty({3, 95});
  // Checked once, up front, as the op the caller named (the fused kernel and the separate ops get valid shapes).
  const std::string bad_y =
      error_of<std::invalid_argument>([&] { ops::rms_norm_linear(x, norm_weight, 1e-6f, q, wrong); });
  EXPECT_CONTAINS(bad_y, "rms_norm_linear");
  EXPECT_CONTAINS(bad_y, "y F32[3, 95]");
  EXPECT_CONTAINS(
      error_of<std::invalid_argument>([&] { ops::rms_norm_linear(x, random_cpu({255}, rng), 1e-6f, q, y); }),
      "rms_norm_linear");
}

TEST(QuantizedLinearTest, MismatchedShapesNameThem) {
  std::mt19937 rng(926);
  const QuantizedTensor q = quantize(random_cpu({96, 256}, rng), 8, 0, "weight");
  const QuantizedTensor stack = quantize(random_cpu({2, 96, 256}, rng), 8, 0, "stack");
  Tensor y = Tensor::empty({3, 96});
  for (const auto& [x, w, out] :
       {std::tuple{random_cpu({3, 128}, rng), q, y}, std::tuple{random_cpu({3, 256}, rng), q, Tensor::empty({3, 95})},
        std::tuple{random_cpu({3, 256}, rng), stack, y}}) {
    Tensor o = out;
    EXPECT_CONTAINS(error_of<std::invalid_argument>([&] { ops::quantized_linear(x, w, o); }), "quantized_linear");
  }
}

}  // namespace
}  // namespace elephant
