// The quantized grouped GEMM on CUDA against the CPU backend (which dequantizes each expert into float32 for BLAS):
// int8 and int4, per-channel and group scales, every compute dtype, decode (split-k and unsplit), medium and large
// tiles, k that ends in half a k tile, wide packed stages, and the MoE layer's argument variants (bias and
// activation, a_rows, out_rows).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ops/device_helpers.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/moe.h"
#include "quantization/quantized_tensor.h"

namespace elephant {
namespace {

using testdev::poisoned;
using testdev::random_cpu;
using testdev::relative_l2_within;
using testdev::rounded_to;
using testdev::to_cpu_float;
using testdev::to_cuda;
using testdev::tolerance_for;

Tensor int_tensor(const std::vector<int32_t>& values, Device device) {
  return Tensor::from_vector(values, {static_cast<int64_t>(values.size())}, device);
}

struct QuantCase {
  int64_t k, n;
  std::vector<int32_t> counts;  // rows per expert
  int64_t pruned;               // rows past the last expert
};

enum class Variant { Plain, BiasAndActivation, ReadRows, AddToRows };

void expect_quantized_gemm_matches_cpu(const QuantCase& tc, int bits, int64_t group_size, DType dtype, Variant variant,
                                       std::mt19937& rng) {
  const auto experts = static_cast<int64_t>(tc.counts.size());
  std::vector<int32_t> offsets(tc.counts.size() + 1, 0);
  std::partial_sum(tc.counts.begin(), tc.counts.end(), offsets.begin() + 1);
  const int64_t active_rows = offsets.back(), rows = active_rows + tc.pruned;
  SCOPED_TRACE("int" + std::to_string(bits) + " group " + std::to_string(group_size) + " " + dtype_name(dtype) +
               " k=" + std::to_string(tc.k) + " n=" + std::to_string(tc.n) + " rows=" + std::to_string(rows) +
               " variant " + std::to_string(static_cast<int>(variant)));
  const QuantizedTensor w = quantize(random_cpu({experts, tc.n, tc.k}, rng, -0.2f, 0.2f), bits, group_size, "w");
  const Tensor a = rounded_to(random_cpu({rows, tc.k}, rng), dtype);
  const Tensor bias = rounded_to(random_cpu({experts, tc.n}, rng), dtype);
  std::vector<int32_t> permutation(static_cast<size_t>(rows));
  std::iota(permutation.begin(), permutation.end(), 0);
  std::shuffle(permutation.begin(), permutation.end(), rng);
  const Tensor scale = random_cpu({rows}, rng, 0.05f, 1.0f);
  const Tensor hidden0 = rounded_to(random_cpu({rows, tc.n}, rng), dtype);

  const Tensor permutation_cpu = int_tensor(permutation, Device::CPU);
  ops::GroupedGemmArgs cpu_args;
  if (variant == Variant::BiasAndActivation) {
    cpu_args.bias = &bias;
    cpu_args.activation = ops::Activation::Gelu;
  }
  if (variant == Variant::ReadRows) cpu_args.a_rows = &permutation_cpu;
  if (variant == Variant::AddToRows) {
    cpu_args.out_rows = &permutation_cpu;
    cpu_args.out_scale = &scale;
  }
  Tensor expected = variant == Variant::AddToRows ? hidden0.clone() : poisoned({rows, tc.n}, DType::F32, Device::CPU);
  ops::grouped_gemm(a, w, int_tensor(offsets, Device::CPU), expected, cpu_args);

  const QuantizedTensor w_cuda = w.to(Device::CUDA);
  const Tensor bias_cuda = to_cuda(bias, dtype), scale_cuda = scale.to(Device::CUDA);
  const Tensor permutation_cuda = int_tensor(permutation, Device::CUDA);
  ops::GroupedGemmArgs args = cpu_args;
  if (args.bias) args.bias = &bias_cuda;
  if (args.a_rows) args.a_rows = &permutation_cuda;
  if (args.out_rows) {
    args.out_rows = &permutation_cuda;
    args.out_scale = &scale_cuda;
    args.routing_settled = true;  // as a MoE layer's wo GEMM runs (the offsets were copied before any kernel here)
  }
  Tensor out = variant == Variant::AddToRows ? to_cuda(hidden0, dtype) : poisoned({rows, tc.n}, dtype, Device::CUDA);
  ops::grouped_gemm(to_cuda(a, dtype), w_cuda, int_tensor(offsets, Device::CUDA), out, args);
  const Tensor got = to_cpu_float(out);
  if (variant == Variant::AddToRows) {
    EXPECT_TRUE(relative_l2_within(got, expected, tolerance_for(dtype)));
    return;
  }
  if (active_rows > 0) {
    EXPECT_TRUE(relative_l2_within(got.narrow(0, active_rows), expected.narrow(0, active_rows), tolerance_for(dtype)));
  }
  const float* tail = got.data<float>() + active_rows * tc.n;
  for (int64_t i = 0; i < tc.pruned * tc.n; ++i) ASSERT_TRUE(std::isnan(tail[i])) << "pruned element " << i;
}

// int8 expert stacks travel to the GPU tiled (the kernels above read them so) and come back row-major.
TEST(CudaQuantizedGemm, Int8ExpertsAreTiledOnTheGpuAndComeBackRowMajor) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(62);
  const QuantizedTensor w = quantize(random_cpu({3, 128, 256}, rng, -0.2f, 0.2f), 8, 0, "w");
  const QuantizedTensor gpu = w.to(Device::CUDA);
  EXPECT_EQ(gpu.layout, PackedLayout::Tiled);
  const Tensor tiled = gpu.values.to(Device::CPU);
  EXPECT_EQ(std::memcmp(tiled.raw(), tile_codes(w.values).raw(), tiled.nbytes()), 0);
  const QuantizedTensor back = gpu.to(Device::CPU);
  EXPECT_EQ(back.layout, PackedLayout::RowMajor);
  EXPECT_EQ(std::memcmp(back.values.raw(), w.values.raw(), w.values.nbytes()), 0);
}

TEST(CudaQuantizedGemm, MatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(61);
  const std::vector<QuantCase> cases = {
      {4096, 1024, {0, 1, 0, 0}, 1},        // one token, the paper's wo: split-k
      {1024, 4096, {1, 0, 0}, 0},           // one token, the paper's wi
      {1024, 1024, {2, 0, 3, 1, 0, 2}, 3},  // a few tokens over a few experts
      {544, 200, {3, 0, 5, 8}, 2},          // k ends in half a k tile; n not a multiple of the tile
      {512, 1024, {40, 0, 90, 30}, 5},      // medium and large tiles
      {1024, 512, {0, 300, 150}, 2},        // large tiles
      {256, 96, {0, 0, 0, 0}, 2},           // no expert has rows
  };
  int variant = 0;
  for (int bits : {8, 4})
    for (int64_t group_size : {0, 64, 128})
      for (DType dtype : testdev::cuda_dtypes())
        for (const QuantCase& tc : cases) {
          if (group_size && tc.k % group_size) continue;
          expect_quantized_gemm_matches_cpu(tc, bits, group_size, dtype, static_cast<Variant>(variant++ % 4), rng);
        }
}

// Every variant on the decode and the prefill shapes, per-channel int4 in half precision: the engine's common case.
TEST(CudaQuantizedGemm, EveryVariantMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(62);
  for (int bits : {8, 4})
    for (const QuantCase& tc : {QuantCase{1024, 4096, {1, 0, 2}, 1}, QuantCase{1024, 1024, {70, 0, 130}, 1}})
      for (Variant variant : {Variant::Plain, Variant::BiasAndActivation, Variant::ReadRows, Variant::AddToRows})
        expect_quantized_gemm_matches_cpu(tc, bits, 0, DType::F16, variant, rng);
}

// Decode launches with long k and enough items to run unsplit read per-channel packed weights in wide stages
// (WideTiles: 128 bytes a row; int8 stacks tiled on the GPU): a wo-like problem with the smallest k that takes them,
// 120 tokens over 12 experts.
TEST(CudaQuantizedGemm, WidePackedStagesMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(63);
  const QuantCase wo{2048, 1024, {9, 12, 10, 11, 8, 12, 10, 9, 11, 10, 8, 10}, 1};
  for (int bits : {8, 4}) {
    expect_quantized_gemm_matches_cpu(wo, bits, 0, DType::F16, Variant::Plain, rng);
    expect_quantized_gemm_matches_cpu(wo, bits, 0, DType::BF16, Variant::AddToRows, rng);
  }
}

// Decode-sized wi GEMMs that run unsplit in 8-token chunks (TinyTiles, int8 and int4): Table 1's 40 tokens over
// 32 experts; 15 tokens over 8 experts with 12 on one (that expert in two chunks); k = 416 (three 128-feature stages
// and a quarter of a fourth), n = 200 (untiled int8 codes, a partial weight tile) and a pruned row.
TEST(CudaQuantizedGemm, DecodeTilesMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(64);
  std::vector<int32_t> table1(32, 1);
  std::fill(table1.begin(), table1.begin() + 8, 2);
  for (const QuantCase& tc : {QuantCase{512, 4096, table1, 0}, QuantCase{1024, 4096, {12, 1, 1, 0, 0, 0, 1, 0}, 0},
                              QuantCase{416, 200, {3, 0, 1, 2, 0, 1, 1, 0}, 1}})
    for (int bits : {8, 4})
      for (DType dtype : testdev::cuda_dtypes())
        for (Variant variant : {Variant::Plain, Variant::AddToRows})
          expect_quantized_gemm_matches_cpu(tc, bits, 0, dtype, variant, rng);
}

// A Linear layer with quantized weights (--quantize-non-experts), against the CPU's dequantized sgemm: 1-4 rows of
// int8 through the weight-streaming kernel, the rest through the grouped GEMM with one group of all rows (no offsets
// tensor), from one row (split-k) to the large tiles.
TEST(CudaQuantizedGemm, LinearMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(63);
  for (int bits : {8, 4})
    for (int64_t group_size : {0, 64, 128})
      for (DType dtype : testdev::cuda_dtypes())
        for (const auto& [rows, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1024, 1024},
                                                                                           {2, 1024, 4096},
                                                                                           {3, 200, 1024},
                                                                                           {4, 72, 4096},
                                                                                           {8, 4096, 1024},
                                                                                           {40, 1024, 4096},
                                                                                           {300, 1024, 1024}}) {
          SCOPED_TRACE("int" + std::to_string(bits) + " group " + std::to_string(group_size) + " " + dtype_name(dtype) +
                       " rows=" + std::to_string(rows) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
          const QuantizedTensor w = quantize(random_cpu({n, k}, rng, -0.2f, 0.2f), bits, group_size, "w");
          const Tensor x = rounded_to(random_cpu({rows, k}, rng), dtype);
          Tensor expected = Tensor::empty({rows, n});
          ops::quantized_linear(x, w, expected);
          Tensor out = poisoned({rows, n}, dtype, Device::CUDA);
          const QuantizedTensor w_cuda = w.to(Device::CUDA);
          const Tensor x_cuda = to_cuda(x, dtype);
          ops::quantized_linear(x_cuda, w_cuda, out);
          EXPECT_TRUE(relative_l2_within(to_cpu_float(out), expected, tolerance_for(dtype)));
          // Accumulating: out += x · W^T again, 2x the product (the small-m kernel's beta = 1, or a separate add).
          ops::QuantizedLinearArgs accumulate;
          accumulate.accumulate = true;
          ops::quantized_linear(x_cuda, w_cuda, out, accumulate);
          ops::scale_in_place(expected, 2.0f);
          EXPECT_TRUE(relative_l2_within(to_cpu_float(out), expected, tolerance_for(dtype))) << "accumulated";
        }
}

// The RMS norm inside the int8 small-m kernel (1-4 rows), or the separate ops, against the CPU's separate ops.
TEST(CudaQuantizedGemm, RmsNormLinearMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(64);
  for (int bits : {8, 4})
    for (DType dtype : testdev::cuda_dtypes())
      for (const int64_t rows : {1, 3, 4, 8}) {
        SCOPED_TRACE("int" + std::to_string(bits) + " " + dtype_name(dtype) + " rows=" + std::to_string(rows));
        const QuantizedTensor w = quantize(random_cpu({1024, 1024}, rng, -0.2f, 0.2f), bits, 0, "w");
        const Tensor x = rounded_to(random_cpu({rows, 1024}, rng), dtype);
        const Tensor norm_weight = rounded_to(random_cpu({1024}, rng, 0.5f, 1.5f), dtype);
        Tensor expected = Tensor::empty({rows, 1024});
        ops::rms_norm_linear(x, norm_weight, 1e-6f, w, expected);
        Tensor out = poisoned({rows, 1024}, dtype, Device::CUDA);
        ops::rms_norm_linear(to_cuda(x, dtype), to_cuda(norm_weight, dtype), 1e-6f, w.to(Device::CUDA), out);
        EXPECT_TRUE(relative_l2_within(to_cpu_float(out), expected, tolerance_for(dtype)));
      }
}

}  // namespace
}  // namespace elephant
