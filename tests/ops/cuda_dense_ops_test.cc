// The CUDA dense ops against the CPU backend: every dtype, odd sizes, unaligned views, poisoned outputs.
// The CPU reference runs on float32 copies of the values the device really sees (rounded to its dtype).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "elephant/error.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/device_helpers.h"
#include "ops/elementwise.h"
#include "ops/gather.h"
#include "ops/gemm.h"
#include "ops/kv_cache.h"
#include "ops/rms_norm.h"
#include "ops/softmax.h"

namespace elephant {
namespace {

using testdev::poisoned;
using testdev::random_cpu;
using testdev::relative_l2_within;
using testdev::rounded_to;
using testdev::to_cpu_float;
using testdev::to_cuda;
using testdev::tolerance_for;

// The values of a CUDA tensor, widened to a CPU F32 tensor.
Tensor host(const Tensor& t) { return to_cpu_float(t); }

std::string name(DType dtype) { return dtype_name(dtype); }

TEST(CudaDenseOps, GemmMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  struct Case {
    int64_t m, n, k;
    bool transpose_b;
    float alpha, beta;
  };
  const std::vector<Case> cases = {{1, 5, 3, true, 1.0f, 0.0f},       {7, 13, 33, true, 1.0f, 0.0f},
                                   {7, 13, 33, false, 0.5f, 0.0f},    {64, 48, 100, true, 1.0f, 0.75f},
                                   {64, 48, 100, false, -1.5f, 2.0f}, {3, 1, 257, false, 1.0f, 1.0f}};
  std::mt19937 rng(11);
  for (DType dtype : testdev::cuda_dtypes()) {
    // c in the inputs' dtype, and F32 c for half inputs.
    std::vector<DType> c_dtypes{dtype};
    if (dtype != DType::F32) c_dtypes.push_back(DType::F32);
    for (DType c_dtype : c_dtypes) {
      for (const Case& tc : cases) {
        SCOPED_TRACE(name(dtype) + " -> " + name(c_dtype) + " m=" + std::to_string(tc.m) +
                     " n=" + std::to_string(tc.n) + " k=" + std::to_string(tc.k) + (tc.transpose_b ? " b^T" : "") +
                     " beta=" + std::to_string(tc.beta));
        const Tensor a = rounded_to(random_cpu({tc.m, tc.k}, rng), dtype);
        const Tensor b = rounded_to(random_cpu(tc.transpose_b ? Shape{tc.n, tc.k} : Shape{tc.k, tc.n}, rng), dtype);
        const Tensor c0 = rounded_to(random_cpu({tc.m, tc.n}, rng), c_dtype);
        const ops::GemmArgs args{tc.transpose_b, tc.alpha, tc.beta};
        Tensor expected = c0.clone();
        ops::gemm(a, b, expected, args);
        // With beta == 0 the prior c must not be read: start from NaN.
        Tensor c = tc.beta == 0.0f ? poisoned({tc.m, tc.n}, c_dtype, Device::CUDA) : to_cuda(c0, c_dtype);
        ops::gemm(to_cuda(a, dtype), to_cuda(b, dtype), c, args);
        EXPECT_EQ(c.dtype(), c_dtype);
        EXPECT_TRUE(relative_l2_within(c, expected, tolerance_for(c_dtype)));
      }
    }
  }
}

TEST(CudaDenseOps, LinearStackMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(17);
  for (DType dtype : testdev::cuda_dtypes())
    for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 32}, {8, 1024, 1024}, {5, 24, 40}}) {
      SCOPED_TRACE(name(dtype) + " m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
      const Tensor x = rounded_to(random_cpu({m, k}, rng), dtype);
      const Tensor weights = rounded_to(random_cpu({3, n, k}, rng), dtype);
      Tensor expected = Tensor::empty({3, m, n});
      ops::linear_stack(x, weights, expected);
      Tensor y = poisoned({3, m, n}, dtype, Device::CUDA);
      ops::linear_stack(to_cuda(x, dtype), to_cuda(weights, dtype), y);
      EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(dtype)));
    }
}

TEST(CudaDenseOps, GemmWithEmptyInnerDimensionScalesC) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(12);
  for (DType dtype : testdev::cuda_dtypes()) {
    SCOPED_TRACE(name(dtype));
    const Tensor c0 = rounded_to(random_cpu({4, 5}, rng), dtype);
    Tensor c = to_cuda(c0, dtype);
    ops::gemm(Tensor::empty({4, 0}, dtype, Device::CUDA), Tensor::empty({5, 0}, dtype, Device::CUDA), c,
              ops::GemmArgs{true, 1.0f, 0.5f});
    Tensor expected = c0.clone();
    for (int64_t i = 0; i < expected.numel(); ++i) expected.data<float>()[i] *= 0.5f;
    EXPECT_TRUE(relative_l2_within(c, expected, tolerance_for(dtype)));
    Tensor zeroed = poisoned({4, 5}, dtype, Device::CUDA);
    ops::gemm(Tensor::empty({4, 0}, dtype, Device::CUDA), Tensor::empty({5, 0}, dtype, Device::CUDA), zeroed,
              ops::GemmArgs{true, 1.0f, 0.0f});
    for (float v : host(zeroed).to_vector<float>()) EXPECT_EQ(v, 0.0f);
  }
}

// Shapes for the elementwise ops: one element, widths that are not multiples of a 16-byte pack, a long one.
const std::vector<Shape> kElementwiseShapes = {{1}, {1, 1}, {3, 5}, {7, 1000}, {257, 33}, {1, 4099}};

// A view that starts one element into its storage, so that no 16-byte vector path applies.
Tensor unaligned_view(const Tensor& cuda_full) { return cuda_full.narrow(1, cuda_full.dim(0) - 1); }

// A [rows, width] view one element into a flat buffer: rows whose width is a whole number of 16-byte packs but
// whose start is not 16-byte aligned.
Tensor unaligned_rows(const Tensor& flat, int64_t rows, int64_t width) {
  return flat.narrow(1, rows * width).reshape({rows, width});
}

// The small-m kernels (ops::cuda::small_m_gemm: F16/BF16, b^T, k a multiple of 8, 16-byte aligned a and b; float
// FMAs up to 4 rows, tensor cores for 5-16 rows into a's dtype) and their fallbacks. m = 5 and 9 start the tensor-core
// kernel's 8- and 16-row variants, m = 17 crosses the row bound, and F32 results past 4 rows take cuBLAS; k = 12 and
// 1001 are not whole 16-byte chunks (cuBLAS); k = 1000 is 125 chunks, a partial pass; n = 1 and 7 leave a warp's
// second row (a block's last weight rows) past n; k = 8200 takes more than one pass of a 4-warp row group, and
// several double passes of the tensor-core kernel.
TEST(CudaDenseOps, CudaSmallMGemmMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(19);
  const std::vector<int64_t> ms = {1, 2, 3, 4, 5, 8, 9, 16, 17};
  const std::vector<std::pair<int64_t, int64_t>> nks = {{1, 8},       {7, 1024},    {64, 4096},   {1000, 1000},
                                                        {1024, 1024}, {4096, 1024}, {1024, 4096}, {64, 12},
                                                        {3, 2048},    {5, 8200},    {64, 1001}};
  for (DType dtype : {DType::F16, DType::BF16})
    for (DType c_dtype : {dtype, DType::F32})
      for (int64_t m : ms)
        for (const auto& [n, k] : nks)
          for (const auto& [alpha, beta] : {std::pair<float, float>{1.0f, 0.0f}, {-0.75f, 0.0f}, {0.5f, 1.25f}}) {
            SCOPED_TRACE(name(dtype) + " -> " + name(c_dtype) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
                         " k=" + std::to_string(k) + " alpha=" + std::to_string(alpha) +
                         " beta=" + std::to_string(beta));
            const Tensor a = rounded_to(random_cpu({m, k}, rng), dtype);
            const Tensor b = rounded_to(random_cpu({n, k}, rng), dtype);
            const Tensor c0 = rounded_to(random_cpu({m, n}, rng), c_dtype);
            const ops::GemmArgs args{true, alpha, beta};
            Tensor expected = c0.clone();
            ops::gemm(a, b, expected, args);
            Tensor c = beta == 0.0f ? poisoned({m, n}, c_dtype, Device::CUDA) : to_cuda(c0, c_dtype);
            ops::gemm(to_cuda(a, dtype), to_cuda(b, dtype), c, args);
            // A float32 result over k > 4096 carries the CPU's own serial rounding (~sqrt(k) ulp): 1e-4 there, as
            // for long softmax rows.
            const double bound = c_dtype == DType::F32 && k > 4096 ? 1e-4 : tolerance_for(c_dtype);
            EXPECT_TRUE(relative_l2_within(c, expected, bound));
          }
}

// a or b one element into its storage (not 16-byte aligned): cuBLAS takes them, with the same result.
TEST(CudaDenseOps, CudaSmallMGemmUnalignedFallsBack) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(20);
  for (DType dtype : {DType::F16, DType::BF16})
    for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 1024}, {4, 1000, 512}, {3, 7, 8}})
      for (int unaligned : {1, 2, 3}) {  // a, b, both
        SCOPED_TRACE(name(dtype) + " m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                     " unaligned=" + std::to_string(unaligned));
        const Tensor a = rounded_to(random_cpu({m, k}, rng), dtype);
        const Tensor b = rounded_to(random_cpu({n, k}, rng), dtype);
        Tensor expected = Tensor::empty({m, n});
        ops::gemm(a, b, expected, ops::GemmArgs{true, 1.5f, 0.0f});
        const auto place = [&](const Tensor& t, bool shift) {
          if (!shift) return to_cuda(t, dtype);
          Tensor flat = Tensor::empty({t.numel() + 1});
          flat.data<float>()[0] = 1.0f;
          std::copy(t.data<float>(), t.data<float>() + t.numel(), flat.data<float>() + 1);
          return unaligned_rows(to_cuda(flat, dtype), t.dim(0), t.dim(1));
        };
        const Tensor a_dev = place(a, unaligned & 1), b_dev = place(b, unaligned & 2);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(a_dev.raw()) % 16 != 0, (unaligned & 1) != 0);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(b_dev.raw()) % 16 != 0, (unaligned & 2) != 0);
        Tensor c = poisoned({m, n}, dtype, Device::CUDA);
        ops::gemm(a_dev, b_dev, c, ops::GemmArgs{true, 1.5f, 0.0f});
        EXPECT_TRUE(relative_l2_within(c, expected, tolerance_for(dtype)));
      }
}

// The same inputs twice give the same bits (fixed reduction order), here on the 4-warp row groups of k = 4096 (4
// rows into float32) and the tensor-core kernel's warps (16 rows).
TEST(CudaDenseOps, CudaSmallMGemmIsDeterministic) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(21);
  for (DType dtype : {DType::F16, DType::BF16})
    for (const auto& [m, c_dtype] : {std::pair<int64_t, DType>{4, DType::F32}, {16, dtype}}) {
      const Tensor a = to_cuda(random_cpu({m, 4096}, rng), dtype);
      const Tensor b = to_cuda(random_cpu({1000, 4096}, rng), dtype);
      Tensor c1 = poisoned({m, 1000}, c_dtype, Device::CUDA), c2 = poisoned({m, 1000}, c_dtype, Device::CUDA);
      ops::gemm(a, b, c1);
      ops::gemm(a, b, c2);
      EXPECT_EQ(host(c1).to_vector<float>(), host(c2).to_vector<float>());
    }
}

// linear_stack on the small-m kernel (a second grid dimension over the weights), across the row bound and with
// k that is not a whole number of 16-byte chunks.
TEST(CudaDenseOps, CudaSmallMLinearStackMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(22);
  for (DType dtype : {DType::F16, DType::BF16})
    for (const auto& [count, m, n, k] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{3, 1, 1024, 1024},
                                         {3, 4, 1024, 1024},
                                         {3, 5, 64, 1024},
                                         {3, 8, 1024, 1024},
                                         {3, 16, 7, 4096},
                                         {2, 12, 1000, 1000},
                                         {3, 17, 64, 1024},
                                         {3, 2, 7, 4096},
                                         {2, 3, 1000, 1000},
                                         {3, 4, 64, 12},
                                         {1, 1, 1, 8}}) {
      SCOPED_TRACE(name(dtype) + " count=" + std::to_string(count) + " m=" + std::to_string(m) +
                   " n=" + std::to_string(n) + " k=" + std::to_string(k));
      const Tensor x = rounded_to(random_cpu({m, k}, rng), dtype);
      const Tensor weights = rounded_to(random_cpu({count, n, k}, rng), dtype);
      Tensor expected = Tensor::empty({count, m, n});
      ops::linear_stack(x, weights, expected);
      Tensor y = poisoned({count, m, n}, dtype, Device::CUDA);
      ops::linear_stack(to_cuda(x, dtype), to_cuda(weights, dtype), y);
      EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(dtype)));
    }
}

// ops::rms_norm_linear's cases: `count` 0 for a Linear weight [n, k], else a stack [count, n, k].
struct NormLinearCase {
  int64_t rows, n, k, count;
};

// 1-4 half-precision rows with k a multiple of 8 up to 4096 take the fused kernel; 5-16 rows (the tensor-core
// kernel, which has no fused norm), 17 rows, k = 4104 (past the fused bound, still the small-m GEMM), k = 12 (not
// whole chunks) and F32 take rms_norm and the projection. k = 40 and 8 leave most of the norm's warp sums zero;
// n = 1 and 7 a warp's second weight row (a block's last weight rows) past n.
const std::vector<NormLinearCase> kNormLinearCases = {
    {1, 1024, 1024, 0},  {4, 1024, 1024, 0}, {2, 1000, 1024, 0},  {3, 7, 1024, 0}, {1, 1, 1024, 0},  {4, 1024, 4096, 0},
    {2, 64, 4104, 0},    {5, 1024, 1024, 0}, {3, 64, 40, 0},      {4, 33, 8, 0},   {2, 16, 12, 0},   {1, 1024, 1024, 3},
    {4, 1024, 1024, 3},  {3, 1000, 1024, 1}, {5, 64, 1024, 3},    {2, 7, 4096, 3}, {3, 64, 12, 3},   {8, 1024, 1024, 0},
    {16, 1024, 1024, 3}, {9, 7, 1024, 0},    {12, 1000, 1024, 1}, {6, 33, 40, 0},  {8, 64, 4096, 0}, {17, 64, 1024, 0}};

Shape norm_linear_output(const NormLinearCase& c) { return c.count ? Shape{c.count, c.rows, c.n} : Shape{c.rows, c.n}; }

// x's dtype, and F32 (the lm_head's logits) from half rows into a Linear weight.
std::vector<DType> norm_linear_output_dtypes(const NormLinearCase& c, DType dtype) {
  if (c.count || dtype == DType::F32) return {dtype};
  return {dtype, DType::F32};
}

std::string describe(const NormLinearCase& c, DType dtype, DType y_dtype, float scale) {
  return name(dtype) + " -> " + name(y_dtype) + " rows=" + std::to_string(c.rows) + " n=" + std::to_string(c.n) +
         " k=" + std::to_string(c.k) + " count=" + std::to_string(c.count) + " scale=" + std::to_string(scale);
}

TEST(CudaDenseOps, CudaRmsNormLinearMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(23);
  for (DType dtype : testdev::cuda_dtypes())
    for (const NormLinearCase& c : kNormLinearCases)
      for (DType y_dtype : norm_linear_output_dtypes(c, dtype)) {
        for (float scale : {1.0f, 0.03125f}) {
          SCOPED_TRACE(describe(c, dtype, y_dtype, scale));
          const Tensor x = rounded_to(random_cpu({c.rows, c.k}, rng, -2.0f, 2.0f), dtype);
          const Tensor g = rounded_to(random_cpu({c.k}, rng, 0.5f, 1.5f), dtype);
          const Tensor w = rounded_to(random_cpu(c.count ? Shape{c.count, c.n, c.k} : Shape{c.n, c.k}, rng), dtype);
          // The device rounds the normalized rows as transformers does (x * rms to the dtype, times g to the
          // dtype, times scale to the dtype); the reference does the same, so that even a single output (n = 1)
          // differs only by float32 summation order and the output's rounding.
          Tensor normalized = Tensor::empty({c.rows, c.k});
          for (int64_t r = 0; r < c.rows; ++r) {
            const float* xr = x.data<float>() + r * c.k;
            double sum = 0.0;
            for (int64_t i = 0; i < c.k; ++i) sum += static_cast<double>(xr[i]) * xr[i];
            const float rms = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(c.k)) + 1e-6f);
            for (int64_t i = 0; i < c.k; ++i) normalized.data<float>()[r * c.k + i] = xr[i] * rms;
          }
          normalized = rounded_to(normalized, dtype);
          for (int64_t i = 0; i < normalized.numel(); ++i) normalized.data<float>()[i] *= g.data<float>()[i % c.k];
          normalized = rounded_to(normalized, dtype);
          if (scale != 1.0f) {
            ops::scale_in_place(normalized, scale);
            normalized = rounded_to(normalized, dtype);
          }
          Tensor expected = Tensor::empty(norm_linear_output(c));
          if (c.count)
            ops::linear_stack(normalized, w, expected);
          else
            ops::gemm(normalized, w, expected);
          Tensor y = poisoned(norm_linear_output(c), y_dtype, Device::CUDA);
          ops::rms_norm_linear(to_cuda(x, dtype), to_cuda(g, dtype), 1e-6f, to_cuda(w, dtype), y, {scale});
          EXPECT_EQ(y.dtype(), y_dtype);
          EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(dtype)));
        }
      }
}

// The fused kernel normalizes exactly as rms_norm (and scale_in_place) round, and sums the squares in the norm
// kernel's order: the same bits as the separate ops on the same device, in every case.
TEST(CudaDenseOps, CudaRmsNormLinearEqualsSeparateOpsBitwise) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(24);
  for (DType dtype : testdev::cuda_dtypes())
    for (const NormLinearCase& c : kNormLinearCases)
      for (DType y_dtype : norm_linear_output_dtypes(c, dtype)) {
        const float scale = 0.03125f;
        SCOPED_TRACE(describe(c, dtype, y_dtype, scale));
        const Tensor x = to_cuda(random_cpu({c.rows, c.k}, rng, -2.0f, 2.0f), dtype);
        const Tensor g = to_cuda(random_cpu({c.k}, rng, 0.5f, 1.5f), dtype);
        const Tensor w = to_cuda(random_cpu(c.count ? Shape{c.count, c.n, c.k} : Shape{c.n, c.k}, rng), dtype);
        Tensor normalized = Tensor::empty({c.rows, c.k}, dtype, Device::CUDA);
        ops::rms_norm(x, g, 1e-6f, normalized);
        ops::scale_in_place(normalized, scale);
        Tensor expected = poisoned(norm_linear_output(c), y_dtype, Device::CUDA);
        if (c.count)
          ops::linear_stack(normalized, w, expected);
        else
          ops::gemm(normalized, w, expected, ops::GemmArgs{true, 1.0f, 0.0f, true});
        Tensor y = poisoned(norm_linear_output(c), y_dtype, Device::CUDA);
        ops::rms_norm_linear(x, g, 1e-6f, w, y, {scale});
        EXPECT_EQ(host(y).to_vector<float>(), host(expected).to_vector<float>());
      }
}

// An activation in the small-m kernels' epilogue (1-4 rows on the float path, fused norm included, 5-16 on the tensor
// cores; 17 rows take cuBLAS, then ops::activate) against the same product on the GPU, then ops::activate: ReLU bit
// for bit (it commutes with the rounding to the output dtype), the others within that dtype's tolerance (the epilogue
// rounds once, the separate op twice).
TEST(CudaDenseOps, ActivationInTheProjectionEqualsTheSeparateOp) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(26);
  for (DType dtype : testdev::cuda_dtypes())
    for (int64_t rows : {1, 3, 4, 5, 8, 16, 17})
      for (ops::Activation activation : {ops::Activation::ReLU, ops::Activation::Gelu, ops::Activation::Silu}) {
        SCOPED_TRACE(name(dtype) + " rows=" + std::to_string(rows) + " activation " +
                     std::to_string(static_cast<int>(activation)));
        const Tensor x = to_cuda(random_cpu({rows, 512}, rng, -2.0f, 2.0f), dtype);
        const Tensor g = to_cuda(random_cpu({512}, rng, 0.5f, 1.5f), dtype);
        const Tensor w = to_cuda(random_cpu({1000, 512}, rng), dtype);
        const auto expect_equal = [&](const Tensor& got, const Tensor& expected) {
          if (activation == ops::Activation::ReLU)
            EXPECT_EQ(host(got).to_vector<float>(), host(expected).to_vector<float>());
          else
            EXPECT_TRUE(relative_l2_within(host(got), host(expected), tolerance_for(dtype)));
        };
        ops::GemmArgs args{true, 1.0f, 0.0f, true};
        Tensor expected = poisoned({rows, 1000}, dtype, Device::CUDA);
        ops::gemm(x, w, expected, args);
        ops::activate(activation, expected);
        args.activation = activation;
        Tensor y = poisoned({rows, 1000}, dtype, Device::CUDA);
        ops::gemm(x, w, y, args);
        expect_equal(y, expected);

        Tensor normalized_expected = poisoned({rows, 1000}, dtype, Device::CUDA);
        ops::rms_norm_linear(x, g, 1e-6f, w, normalized_expected);
        ops::activate(activation, normalized_expected);
        Tensor normalized = poisoned({rows, 1000}, dtype, Device::CUDA);
        ops::rms_norm_linear(x, g, 1e-6f, w, normalized, {1.0f, activation});
        expect_equal(normalized, normalized_expected);
      }
}

TEST(CudaDenseOps, CudaRmsNormLinearIsDeterministic) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(25);
  for (DType dtype : {DType::F16, DType::BF16}) {
    const Tensor x = to_cuda(random_cpu({4, 4096}, rng), dtype);
    const Tensor g = to_cuda(random_cpu({4096}, rng), dtype);
    const Tensor w = to_cuda(random_cpu({1000, 4096}, rng), dtype);
    Tensor y1 = poisoned({4, 1000}, DType::F32, Device::CUDA), y2 = poisoned({4, 1000}, DType::F32, Device::CUDA);
    ops::rms_norm_linear(x, g, 1e-6f, w, y1);
    ops::rms_norm_linear(x, g, 1e-6f, w, y2);
    EXPECT_EQ(host(y1).to_vector<float>(), host(y2).to_vector<float>());
  }
}

// x, the weights or the norm weight one element into its storage (not 16-byte aligned): the separate ops take
// them, with the same result.
TEST(CudaDenseOps, CudaRmsNormLinearUnalignedFallsBack) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(26);
  for (DType dtype : {DType::F16, DType::BF16})
    for (const NormLinearCase& c : {NormLinearCase{1, 64, 1024, 0}, {4, 1000, 512, 0}, {2, 64, 1024, 3}})
      for (int unaligned = 1; unaligned < 8; ++unaligned) {  // bits: x, weights, norm weight
        SCOPED_TRACE(describe(c, dtype, dtype, 1.0f) + " unaligned=" + std::to_string(unaligned));
        const Tensor x = rounded_to(random_cpu({c.rows, c.k}, rng, -2.0f, 2.0f), dtype);
        const Tensor g = rounded_to(random_cpu({c.k}, rng, 0.5f, 1.5f), dtype);
        const Shape w_shape = c.count ? Shape{c.count, c.n, c.k} : Shape{c.n, c.k};
        const Tensor w = rounded_to(random_cpu(w_shape, rng), dtype);
        Tensor expected = Tensor::empty(norm_linear_output(c));
        ops::rms_norm_linear(x, g, 1e-6f, w, expected);
        const auto place = [&](const Tensor& t, bool shift) {
          if (!shift) return to_cuda(t, dtype);
          Tensor flat = Tensor::empty({t.numel() + 1});
          flat.data<float>()[0] = 1.0f;
          std::copy(t.data<float>(), t.data<float>() + t.numel(), flat.data<float>() + 1);
          return to_cuda(flat, dtype).narrow(1, t.numel()).reshape(t.shape());
        };
        const Tensor x_dev = place(x, unaligned & 1), w_dev = place(w, unaligned & 2), g_dev = place(g, unaligned & 4);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(g_dev.raw()) % 16 != 0, (unaligned & 4) != 0);
        Tensor y = poisoned(norm_linear_output(c), dtype, Device::CUDA);
        ops::rms_norm_linear(x_dev, g_dev, 1e-6f, w_dev, y);
        EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(dtype)));
      }
}

TEST(CudaDenseOps, AddInPlaceMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(21);
  for (DType dtype : testdev::cuda_dtypes()) {
    for (const Shape& shape : kElementwiseShapes) {
      SCOPED_TRACE(name(dtype) + shape_string(shape));
      const Tensor x = rounded_to(random_cpu(shape, rng), dtype);
      const Tensor y = rounded_to(random_cpu(shape, rng), dtype);
      Tensor expected = x.clone();
      ops::add_in_place(expected, y);
      Tensor hidden = to_cuda(x, dtype);
      ops::add_in_place(hidden, to_cuda(y, dtype));
      // One float32 addition rounded once to the dtype: the same on both sides.
      EXPECT_TRUE(relative_l2_within(hidden, rounded_to(expected, dtype), 0.0));
    }
    SCOPED_TRACE(name(dtype) + " unaligned");
    const Tensor x = rounded_to(random_cpu({1001}, rng), dtype);
    const Tensor y = rounded_to(random_cpu({1001}, rng), dtype);
    Tensor hidden_full = to_cuda(x, dtype);
    Tensor hidden = unaligned_view(hidden_full);
    ops::add_in_place(hidden, unaligned_view(to_cuda(y, dtype)));
    Tensor expected = x.narrow(1, 1000).clone();
    ops::add_in_place(expected, y.narrow(1, 1000).clone());
    EXPECT_TRUE(relative_l2_within(hidden, rounded_to(expected, dtype), 0.0));
    EXPECT_EQ(host(hidden_full).data<float>()[0], x.data<float>()[0]) << "wrote before the view";
  }
}

TEST(CudaDenseOps, ScaleInPlaceMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(22);
  for (DType dtype : testdev::cuda_dtypes()) {
    for (const Shape& shape : kElementwiseShapes) {
      SCOPED_TRACE(name(dtype) + shape_string(shape));
      const Tensor x = rounded_to(random_cpu(shape, rng), dtype);
      Tensor expected = x.clone();
      ops::scale_in_place(expected, -0.37f);
      Tensor t = to_cuda(x, dtype);
      ops::scale_in_place(t, -0.37f);
      EXPECT_TRUE(relative_l2_within(t, rounded_to(expected, dtype), 0.0));
    }
    SCOPED_TRACE(name(dtype) + " unaligned");
    const Tensor x = rounded_to(random_cpu({35}, rng), dtype);
    Tensor full = to_cuda(x, dtype);
    Tensor view = unaligned_view(full);
    ops::scale_in_place(view, 3.0f);
    Tensor expected = x.narrow(1, 34).clone();
    ops::scale_in_place(expected, 3.0f);
    EXPECT_TRUE(relative_l2_within(view, rounded_to(expected, dtype), 0.0));
  }
}

TEST(CudaDenseOps, ConvertIsExactRoundToNearestEven) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(23);
  // Magnitudes from 1e-6 (half subnormals) to 1e4, both signs.
  const auto values = [&rng](const Shape& shape) {
    Tensor t = random_cpu(shape, rng);
    std::uniform_real_distribution<float> exponent(-6.0f, 4.0f);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= std::pow(10.0f, exponent(rng));
    return t;
  };
  for (DType from : testdev::cuda_dtypes()) {
    for (DType to : testdev::cuda_dtypes()) {
      for (const Shape& shape : std::vector<Shape>{{1}, {3, 7}, {5, 1000}}) {
        SCOPED_TRACE(name(from) + " -> " + name(to) + shape_string(shape));
        const Tensor x = rounded_to(values(shape), from);
        Tensor y = poisoned(shape, to, Device::CUDA);
        ops::convert(to_cuda(x, from), y);
        EXPECT_EQ(y.dtype(), to);
        EXPECT_TRUE(relative_l2_within(y, rounded_to(x, to), 0.0));
      }
      SCOPED_TRACE(name(from) + " -> " + name(to) + " unaligned");
      const Tensor x = rounded_to(values({1001}), from);
      Tensor y_full = poisoned({1001}, to, Device::CUDA);
      Tensor y = y_full.narrow(1, 1000);
      ops::convert(unaligned_view(to_cuda(x, from)), y);
      EXPECT_TRUE(relative_l2_within(y, rounded_to(x.narrow(1, 1000).clone(), to), 0.0));
    }
  }
}

TEST(CudaDenseOps, RmsNormMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(31);
  const float eps = 1e-6f;
  for (DType dtype : testdev::cuda_dtypes()) {
    for (const Shape& shape : std::vector<Shape>{{1, 3}, {5, 7}, {64, 768}, {3, 1000}, {2, 3, 4096}, {9, 1}}) {
      SCOPED_TRACE(name(dtype) + shape_string(shape));
      const Tensor x = rounded_to(random_cpu(shape, rng, -2.0f, 2.0f), dtype);
      const Tensor w = rounded_to(random_cpu({shape.back()}, rng, 0.5f, 1.5f), dtype);
      Tensor expected = Tensor::empty(shape);
      ops::rms_norm(x, w, eps, expected);
      Tensor y = poisoned(shape, dtype, Device::CUDA);
      ops::rms_norm(to_cuda(x, dtype), to_cuda(w, dtype), eps, y);
      EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(dtype)));
    }
    SCOPED_TRACE(name(dtype) + " unaligned");
    const Tensor x = rounded_to(random_cpu({3 * 64 + 1}, rng, -2.0f, 2.0f), dtype);
    const Tensor w = rounded_to(random_cpu({64}, rng, 0.5f, 1.5f), dtype);
    Tensor expected = Tensor::empty({3, 64});
    ops::rms_norm(unaligned_rows(x, 3, 64).clone(), w, eps, expected);
    Tensor y_flat = poisoned({3 * 64 + 1}, dtype, Device::CUDA);
    Tensor y = unaligned_rows(y_flat, 3, 64);
    ops::rms_norm(unaligned_rows(to_cuda(x, dtype), 3, 64), to_cuda(w, dtype), eps, y);
    EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(dtype)));
  }
}

TEST(CudaDenseOps, ActivationsMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(41);
  for (ops::Activation activation :
       {ops::Activation::ReLU, ops::Activation::Gelu, ops::Activation::GeluNew, ops::Activation::Silu}) {
    for (DType dtype : testdev::cuda_dtypes()) {
      for (const Shape& shape : std::vector<Shape>{{1, 1}, {3, 1000}, {17, 77}}) {
        SCOPED_TRACE(ops::activation_name(activation) + " " + name(dtype) + shape_string(shape));
        const Tensor x = rounded_to(random_cpu(shape, rng, -5.0f, 5.0f), dtype);
        Tensor expected = x.clone();
        ops::activate(activation, expected);
        Tensor t = to_cuda(x, dtype);
        ops::activate(activation, t);
        EXPECT_TRUE(relative_l2_within(t, expected, tolerance_for(dtype)));
      }
      SCOPED_TRACE(ops::activation_name(activation) + " " + name(dtype) + " unaligned");
      const Tensor x = rounded_to(random_cpu({201}, rng, -5.0f, 5.0f), dtype);
      Tensor full = to_cuda(x, dtype);
      Tensor view = unaligned_view(full);
      ops::activate(activation, view);
      Tensor expected = x.narrow(1, 200).clone();
      ops::activate(activation, expected);
      EXPECT_TRUE(relative_l2_within(view, expected, tolerance_for(dtype)));
    }
  }
}

const std::vector<Shape> kSoftmaxShapes = {{1, 3}, {4, 3}, {5, 1000}, {3, 7}, {2, 2, 129}, {2, 50000}, {1, 1}};

TEST(CudaDenseOps, SoftmaxMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(51);
  for (DType dtype : testdev::cuda_dtypes()) {
    for (const Shape& shape : kSoftmaxShapes) {
      SCOPED_TRACE(name(dtype) + shape_string(shape));
      const Tensor x = rounded_to(random_cpu(shape, rng, -8.0f, 8.0f), dtype);
      Tensor expected = x.clone();
      ops::softmax(expected);
      Tensor t = to_cuda(x, dtype);
      ops::softmax(t);
      // The CPU reference sums a row serially in float32: over 50,000 columns its own rounding (~sqrt(n) ulp)
      // passes the float32 bound, so long rows get 1e-4.
      const double bound = dtype == DType::F32 && shape.back() > 4096 ? 1e-4 : tolerance_for(dtype);
      EXPECT_TRUE(relative_l2_within(t, expected, bound));
    }
    SCOPED_TRACE(name(dtype) + " unaligned");
    const Tensor x = rounded_to(random_cpu({4 * 24 + 1}, rng, -8.0f, 8.0f), dtype);
    Tensor expected = unaligned_rows(x, 4, 24).clone();
    ops::softmax(expected);
    Tensor t = unaligned_rows(to_cuda(x, dtype), 4, 24);
    ops::softmax(t);
    EXPECT_TRUE(relative_l2_within(t, expected, tolerance_for(dtype)));
  }
}

TEST(CudaDenseOps, SoftmaxHandlesMinusInfinity) {
  ELEPHANT_REQUIRE_CUDA();
  // Masked logits: -inf first in the row and elsewhere must give exactly 0, not NaN.
  std::vector<float> values(2 * 40);
  std::mt19937 rng(52);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (float& v : values) v = dist(rng);
  for (int i : {0, 1, 17, 40, 79}) values[i] = -INFINITY;
  const Tensor x = Tensor::from_vector(values, {2, 40});
  Tensor expected = x.clone();
  ops::softmax(expected);
  Tensor t = to_cuda(x);
  ops::softmax(t);
  EXPECT_TRUE(relative_l2_within(t, expected, tolerance_for(DType::F32)));
  Tensor log_expected = Tensor::empty({2, 40});
  ops::log_softmax(x, log_expected);
  Tensor y = poisoned({2, 40}, DType::F32, Device::CUDA);
  ops::log_softmax(to_cuda(x), y);
  const std::vector<float> got = y.to_vector<float>();
  for (int i : {0, 1, 17, 40, 79}) EXPECT_EQ(got[i], -INFINITY) << i;
}

TEST(CudaDenseOps, LogSoftmaxMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(53);
  for (DType dtype : testdev::cuda_dtypes()) {
    for (const Shape& shape : kSoftmaxShapes) {
      SCOPED_TRACE(name(dtype) + shape_string(shape));
      const Tensor x = rounded_to(random_cpu(shape, rng, -8.0f, 8.0f), dtype);
      Tensor expected = Tensor::empty(shape);
      ops::log_softmax(x, expected);
      Tensor y = poisoned(shape, DType::F32, Device::CUDA);
      ops::log_softmax(to_cuda(x, dtype), y);
      // The output is float32 from the same values: only the summation order differs.
      EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(DType::F32)));
    }
    SCOPED_TRACE(name(dtype) + " unaligned");
    const Tensor x = rounded_to(random_cpu({5 * 8 + 1}, rng, -8.0f, 8.0f), dtype);
    Tensor y_flat = poisoned({5 * 8 + 1}, DType::F32, Device::CUDA);
    Tensor y = unaligned_rows(y_flat, 5, 8);
    ops::log_softmax(unaligned_rows(to_cuda(x, dtype), 5, 8), y);
    Tensor expected = Tensor::empty({5, 8});
    ops::log_softmax(unaligned_rows(x, 5, 8).clone(), expected);
    EXPECT_TRUE(relative_l2_within(y, expected, tolerance_for(DType::F32)));
  }
}

TEST(CudaDenseOps, GatherRowsIsExactForFloatingDtypes) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(61);
  for (DType dtype : testdev::cuda_dtypes()) {
    for (int64_t width : {1, 3, 8, 1000, 1003}) {
      SCOPED_TRACE(name(dtype) + " width " + std::to_string(width));
      const Tensor x = rounded_to(random_cpu({10, width}, rng), dtype);
      std::uniform_int_distribution<int32_t> pick(0, 9);
      std::vector<int32_t> indices(7);
      for (int32_t& r : indices) r = pick(rng);
      indices[0] = 9;
      // rows has more entries than out has rows: only the first out.dim(0) are used.
      Tensor expected = Tensor::empty({5, width});
      ops::gather_rows(x, Tensor::from_vector(indices, {7}), expected);
      Tensor out = poisoned({5, width}, dtype, Device::CUDA);
      ops::gather_rows(to_cuda(x, dtype), Tensor::from_vector(indices, {7}, Device::CUDA), out);
      EXPECT_TRUE(relative_l2_within(out, expected, 0.0));
      // Unaligned source and destination rows: the narrowest copies.
      const Tensor x_cuda = to_cuda(x, dtype);
      Tensor out_full = poisoned({6, width}, dtype, Device::CUDA);
      Tensor out_view = out_full.narrow(1, 5);
      ops::gather_rows(x_cuda.narrow(1, 9), Tensor::from_vector(std::vector<int32_t>{0, 8, 3, 3, 1}, {5}, Device::CUDA),
                       out_view);
      Tensor expected_view = Tensor::empty({5, width});
      ops::gather_rows(x.narrow(1, 9).clone(), Tensor::from_vector(std::vector<int32_t>{0, 8, 3, 3, 1}, {5}),
                       expected_view);
      EXPECT_TRUE(relative_l2_within(out_view, expected_view, 0.0));
    }
  }
}

template <typename T>
void check_integer_gather(DType dtype, int64_t width, std::mt19937& rng) {
  SCOPED_TRACE(name(dtype) + " width " + std::to_string(width));
  // width 0 stands for rank-1 rows: one element each.
  const int64_t rows = 6;
  const int64_t w = width == 0 ? 1 : width;
  std::vector<T> values(static_cast<size_t>(rows * w));
  std::uniform_int_distribution<int> dist(1, 120);
  for (T& v : values) v = static_cast<T>(dist(rng));
  const std::vector<int32_t> indices{5, 0, 0, 3, 2};
  const Shape shape = width == 0 ? Shape{rows} : Shape{rows, width};
  Tensor out = Tensor::from_vector(std::vector<T>(static_cast<size_t>(5 * w), T{0}),
                                   width == 0 ? Shape{5} : Shape{5, width}, Device::CUDA);
  ops::gather_rows(Tensor::from_vector(values, shape, Device::CUDA), Tensor::from_vector(indices, {5}, Device::CUDA),
                   out);
  const std::vector<T> got = out.to_vector<T>();
  for (size_t i = 0; i < indices.size(); ++i)
    for (int64_t d = 0; d < w; ++d)
      ASSERT_EQ(got[i * w + d], values[indices[i] * w + d]) << "row " << i << " column " << d;
}

TEST(CudaDenseOps, GatherRowsCopiesIntegerRows) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(62);
  for (int64_t width : {0, 1, 3, 4, 37}) check_integer_gather<int32_t>(DType::I32, width, rng);
  for (int64_t width : {0, 1, 3, 16, 37}) check_integer_gather<uint8_t>(DType::U8, width, rng);
}

// ---- attention ----

struct AttentionCase {
  std::string what;
  std::vector<int32_t> query_begin, key_begin, key_length, query_position;
  int64_t query_rows, key_rows;  // tensor rows (may exceed what the layout uses)
  bool causal;
  int bias_max_offset;                      // < 0: no bias
  int64_t max_queries = -1, max_keys = -1;  // bounds larger than the real lengths, when >= 0
  bool unaligned_keys = false;              // keys and values start one element into their storage
};

struct HeadShape {
  int heads, head_dim;
};
// One to four output dimensions per lane, head_dim not a multiple of a 16-byte pack (7, 36), the largest (128).
const std::vector<HeadShape> kHeadShapes = {{2, 64}, {3, 7}, {1, 128}, {4, 32}, {2, 80}, {1, 96}, {2, 36}};

// A CPU F32 [rows, width] tensor on CUDA in `dtype`; `unaligned`: one element into its storage, so that no 16-byte
// vector path applies however wide the rows are.
Tensor attention_input(const Tensor& cpu, DType dtype, bool unaligned) {
  if (!unaligned) return to_cuda(cpu, dtype);
  const int64_t rows = cpu.dim(0), width = cpu.dim(1);
  Tensor flat = Tensor::empty({rows * width + 1});
  flat.data<float>()[0] = 1.0f;
  for (int64_t i = 0; i < rows * width; ++i) flat.data<float>()[i + 1] = cpu.data<float>()[i];
  return unaligned_rows(to_cuda(flat, dtype), rows, width);
}

void check_attention(const AttentionCase& tc, std::mt19937& rng, const std::vector<HeadShape>& shapes = kHeadShapes) {
  for (const HeadShape& hs : shapes) {
    const int64_t inner = static_cast<int64_t>(hs.heads) * hs.head_dim;
    const Tensor q32 = random_cpu({tc.query_rows, inner}, rng);
    const Tensor k32 = random_cpu({tc.key_rows, inner}, rng);
    const Tensor v32 = random_cpu({tc.key_rows, inner}, rng);
    const Tensor bias =
        tc.bias_max_offset >= 0 ? random_cpu({hs.heads, 2 * tc.bias_max_offset + 1}, rng, -2.0f, 2.0f) : Tensor();
    const int64_t used_rows = tc.query_begin.back();
    for (DType dtype : testdev::cuda_dtypes()) {
      SCOPED_TRACE(tc.what + " " + name(dtype) + " heads " + std::to_string(hs.heads) + " x " +
                   std::to_string(hs.head_dim) + (tc.causal ? " causal" : "") + (bias.defined() ? " bias" : "") +
                   (tc.unaligned_keys ? " unaligned keys" : ""));
      const Tensor q = rounded_to(q32, dtype), k = rounded_to(k32, dtype), v = rounded_to(v32, dtype);
      ops::AttentionArgs args;
      args.num_heads = hs.heads;
      args.head_dim = hs.head_dim;
      args.causal = tc.causal;
      args.bias_max_offset = std::max(tc.bias_max_offset, 0);
      args.position_bias = bias.defined() ? &bias : nullptr;
      const ops::AttentionLayout cpu_layout =
          ops::AttentionLayout::from_host(tc.query_begin, tc.key_begin, tc.key_length, tc.query_position, Device::CPU);
      Tensor expected = Tensor::empty({tc.query_rows, inner});
      ops::attention(q, k, v, cpu_layout, args, expected);

      ops::AttentionLayout layout =
          ops::AttentionLayout::from_host(tc.query_begin, tc.key_begin, tc.key_length, tc.query_position, Device::CUDA);
      if (tc.max_queries >= 0) layout.max_queries = tc.max_queries;
      if (tc.max_keys >= 0) layout.max_keys = tc.max_keys;
      const Tensor bias_cuda = bias.defined() ? to_cuda(bias) : Tensor();
      args.position_bias = bias.defined() ? &bias_cuda : nullptr;
      Tensor out = poisoned({tc.query_rows, inner}, dtype, Device::CUDA);
      ops::attention(to_cuda(q, dtype), attention_input(k, dtype, tc.unaligned_keys),
                     attention_input(v, dtype, tc.unaligned_keys), layout, args, out);

      EXPECT_TRUE(relative_l2_within(out.narrow(0, used_rows), expected.narrow(0, used_rows), tolerance_for(dtype)));
      // Rows outside every sequence stay untouched.
      if (tc.query_rows > used_rows) {
        const Tensor rest = host(out.narrow(used_rows, tc.query_rows - used_rows));
        for (int64_t i = 0; i < rest.numel(); ++i)
          ASSERT_TRUE(std::isnan(rest.data<float>()[i])) << "wrote row " << used_rows + i / inner;
      }
    }
  }
}

TEST(CudaDenseOps, AttentionEncoderWithBias) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(71);
  // Three sequences of 1, 7 and 40 tokens, each attending to itself.
  check_attention({"encoder", {0, 1, 8, 48}, {0, 1, 8}, {1, 7, 40}, {0, 0, 0}, 48, 48, false, 39}, rng);
}

TEST(CudaDenseOps, AttentionCausalWithBias) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(72);
  check_attention({"causal", {0, 5, 42, 43}, {0, 5, 42}, {5, 37, 1}, {0, 0, 0}, 43, 43, true, 36}, rng);
}

TEST(CudaDenseOps, AttentionDecoderStepWithBias) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(73);
  // One query per row at position `step`, attending to its cache of step + 1 keys (a slot of 70 rows each).
  const std::vector<int32_t> steps{0, 3, 10, 31, 32, 33, 64};
  AttentionCase tc{"decoder", {0}, {}, {}, {}, 0, 0, false, 64};
  for (size_t i = 0; i < steps.size(); ++i) {
    tc.query_begin.push_back(static_cast<int32_t>(i + 1));
    tc.key_begin.push_back(static_cast<int32_t>(i * 70));
    tc.key_length.push_back(steps[i] + 1);
    tc.query_position.push_back(steps[i]);
  }
  tc.query_rows = static_cast<int64_t>(steps.size());
  tc.key_rows = static_cast<int64_t>(steps.size()) * 70;
  check_attention(tc, rng);
}

TEST(CudaDenseOps, AttentionCrossWithSharedKeys) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(74);
  // Six rows (beams), three on each source; no position bias, as T5's cross-attention.
  check_attention(
      {"cross", {0, 1, 2, 3, 4, 5, 6}, {0, 0, 0, 9, 9, 9}, {9, 9, 9, 70, 70, 70}, {0, 0, 0, 0, 0, 0}, 6, 79, false, -1},
      rng);
}

TEST(CudaDenseOps, AttentionLengthsBelowTheBounds) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(75);
  // The host bounds (20 queries, 100 keys) exceed the real lengths; 3 trailing query rows belong to no sequence.
  check_attention({"below bounds", {0, 2, 9}, {0, 2}, {2, 7}, {0, 0}, 12, 9, false, 8, 20, 100}, rng);
  check_attention({"below bounds causal", {0, 2, 9}, {0, 2}, {2, 7}, {0, 0}, 12, 9, true, 8, 20, 100}, rng);
  // Decoder-style: one real query per sequence, bounds of a longer batch.
  check_attention({"below bounds decoder", {0, 1, 2}, {0, 30}, {5, 29}, {4, 28}, 4, 60, false, 40, 9, 100}, rng);
}

// One query per sequence: the decode kernel (max_queries == 1). Eight sequences: 1, 40 and 257 keys (several
// passes of its eight warps), none, an empty query range, 33 keys behind the query under the causal mask, and a
// query at position -1 that the causal mask leaves no key; row 7 belongs to no sequence. Head widths of whole
// 16-byte packs (64, 24, 40, 128: 8, 3, 5 and 16 fp16 packs) and not (7, 36: element loads).
const AttentionCase kDecodeCase{"decode",
                                {0, 1, 2, 3, 4, 4, 5, 6, 7},
                                {0, 1, 41, 298, 298, 303, 310, 343},
                                {1, 40, 257, 0, 5, 5, 33, 4},
                                {0, 20, 256, 0, 2, 2, 40, -1},
                                8,
                                350,
                                false,
                                -1};
const std::vector<HeadShape> kDecodeHeadShapes = {{16, 64}, {2, 24}, {3, 40}, {1, 128}, {4, 32}, {2, 7}, {2, 36}};

TEST(CudaDenseOps, AttentionDecodeOneQueryPerSequence) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(76);
  for (bool causal : {false, true}) {
    for (int bias_max_offset : {-1, 260}) {
      AttentionCase tc = kDecodeCase;
      tc.causal = causal;
      tc.bias_max_offset = bias_max_offset;
      check_attention(tc, rng, kDecodeHeadShapes);
    }
  }
}

TEST(CudaDenseOps, AttentionDecodeWarpCounts) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(77);
  // The benchmark's shape: 8 rows of 40 keys at position 39 (a few warps).
  AttentionCase rows40{"decode 40 keys", {0}, {}, {}, {}, 8, 8 * 40, false, 40};
  for (int32_t r = 0; r < 8; ++r) {
    rows40.query_begin.push_back(r + 1);
    rows40.key_begin.push_back(r * 40);
    rows40.key_length.push_back(40);
    rows40.query_position.push_back(39);
  }
  check_attention(rows40, rng, kDecodeHeadShapes);
  // Keys this short get one warp; the first sequence has no query. Then the same under a larger key bound.
  const AttentionCase short_keys{
      "decode short", {0, 0, 1, 2, 3}, {0, 2, 3, 5}, {2, 1, 2, 3}, {1, 0, 1, 2}, 3, 8, true, 3};
  check_attention(short_keys, rng, kDecodeHeadShapes);
  AttentionCase short_keys_bound = short_keys;
  short_keys_bound.max_keys = 1000;
  check_attention(short_keys_bound, rng, kDecodeHeadShapes);
}

TEST(CudaDenseOps, AttentionDecodeUnalignedKeys) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(78);
  // Rows of whole packs whose start is not 16-byte aligned: the element loads.
  for (bool causal : {false, true}) {
    AttentionCase tc = kDecodeCase;
    tc.causal = causal;
    tc.bias_max_offset = causal ? -1 : 260;
    tc.unaligned_keys = true;
    check_attention(tc, rng, {{16, 64}, {2, 24}, {1, 128}});
  }
  AttentionCase general{"general unaligned", {0, 5, 42, 43}, {0, 5, 42}, {5, 37, 1}, {0, 0, 0}, 43, 43, true, 36};
  general.unaligned_keys = true;
  check_attention(general, rng, {{2, 64}, {1, 128}});
}

// ---- attention_with_append ----

// ops::attention_with_append on CUDA against the CPU op on the same (rounded) values: the output within the
// dtype's tolerance, the caches exactly (the appended rows are copies), rows of no sequence untouched.
void check_attention_with_append(const AttentionCase& tc, std::mt19937& rng, const std::vector<HeadShape>& shapes) {
  for (const HeadShape& hs : shapes) {
    const int64_t inner = static_cast<int64_t>(hs.heads) * hs.head_dim;
    const Tensor q32 = random_cpu({tc.query_rows, inner}, rng);
    const Tensor new_k32 = random_cpu({tc.query_rows, inner}, rng);
    const Tensor new_v32 = random_cpu({tc.query_rows, inner}, rng);
    const Tensor k32 = random_cpu({tc.key_rows, inner}, rng);
    const Tensor v32 = random_cpu({tc.key_rows, inner}, rng);
    const Tensor bias =
        tc.bias_max_offset >= 0 ? random_cpu({hs.heads, 2 * tc.bias_max_offset + 1}, rng, -2.0f, 2.0f) : Tensor();
    const int64_t used_rows = tc.query_begin.back();
    for (DType dtype : testdev::cuda_dtypes()) {
      SCOPED_TRACE(tc.what + " " + name(dtype) + " heads " + std::to_string(hs.heads) + " x " +
                   std::to_string(hs.head_dim) + (tc.causal ? " causal" : "") + (bias.defined() ? " bias" : "") +
                   (tc.unaligned_keys ? " unaligned caches" : ""));
      const Tensor q = rounded_to(q32, dtype), new_k = rounded_to(new_k32, dtype), new_v = rounded_to(new_v32, dtype);
      ops::AttentionArgs args;
      args.num_heads = hs.heads;
      args.head_dim = hs.head_dim;
      args.causal = tc.causal;
      args.bias_max_offset = std::max(tc.bias_max_offset, 0);
      args.position_bias = bias.defined() ? &bias : nullptr;
      Tensor expected_keys = rounded_to(k32, dtype), expected_values = rounded_to(v32, dtype);
      Tensor expected = Tensor::empty({tc.query_rows, inner});
      ops::attention_with_append(
          q, new_k, new_v, expected_keys, expected_values,
          ops::AttentionLayout::from_host(tc.query_begin, tc.key_begin, tc.key_length, tc.query_position, Device::CPU),
          args, expected);

      const ops::AttentionLayout layout =
          ops::AttentionLayout::from_host(tc.query_begin, tc.key_begin, tc.key_length, tc.query_position, Device::CUDA);
      const Tensor bias_cuda = bias.defined() ? to_cuda(bias) : Tensor();
      args.position_bias = bias.defined() ? &bias_cuda : nullptr;
      Tensor key_cache = attention_input(k32, dtype, tc.unaligned_keys);
      Tensor value_cache = attention_input(v32, dtype, tc.unaligned_keys);
      Tensor out = poisoned({tc.query_rows, inner}, dtype, Device::CUDA);
      ops::attention_with_append(to_cuda(q, dtype), to_cuda(new_k, dtype), to_cuda(new_v, dtype), key_cache,
                                 value_cache, layout, args, out);

      EXPECT_TRUE(relative_l2_within(out.narrow(0, used_rows), expected.narrow(0, used_rows), tolerance_for(dtype)));
      EXPECT_EQ(host(key_cache).to_vector<float>(), expected_keys.to_vector<float>());
      EXPECT_EQ(host(value_cache).to_vector<float>(), expected_values.to_vector<float>());
      if (tc.query_rows > used_rows) {
        const Tensor rest = host(out.narrow(used_rows, tc.query_rows - used_rows));
        for (int64_t i = 0; i < rest.numel(); ++i)
          ASSERT_TRUE(std::isnan(rest.data<float>()[i])) << "wrote row " << used_rows + i / inner;
      }
    }
  }
}

// Decode steps: one query per sequence, appended at its position: 1, 40 (the query mid-way, so that the causal
// mask hides the keys after it) and 257 keys (several passes of the decode kernel's warps), a sequence without a
// query (whose keys must stay), and 33 keys; key rows 336..339 and query row 4 belong to no sequence.
const AttentionCase kAppendDecodeCase{"append decode",
                                      {0, 1, 2, 3, 3, 4},
                                      {0, 1, 41, 298, 303},
                                      {1, 40, 257, 5, 33},
                                      {0, 20, 256, 2, 32},
                                      5,
                                      340,
                                      false,
                                      -1};

TEST(CudaDenseOps, AttentionWithAppendDecodeMatchesCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(79);
  for (bool causal : {false, true}) {
    for (int bias_max_offset : {-1, 260}) {
      AttentionCase tc = kAppendDecodeCase;
      tc.causal = causal;
      tc.bias_max_offset = bias_max_offset;
      check_attention_with_append(tc, rng, kDecodeHeadShapes);
    }
  }
  // Caches whose rows are whole 16-byte packs but start one element into their storage: the element loads and
  // stores.
  AttentionCase unaligned = kAppendDecodeCase;
  unaligned.bias_max_offset = 260;
  unaligned.unaligned_keys = true;
  check_attention_with_append(unaligned, rng, {{16, 64}, {2, 24}, {1, 128}});
}

// Several queries per sequence take the general kernel, after a separate write of every query's key and value.
TEST(CudaDenseOps, AttentionWithAppendChunksMatchCpu) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(80);
  // Three queries at positions 2..4 over 6 keys, none, one at position 0 over 1 key, 40 at 0..39 over 40.
  const AttentionCase chunks{
      "append chunks", {0, 3, 3, 4, 44}, {1, 9, 14, 16}, {6, 4, 1, 40}, {2, 1, 0, 0}, 45, 60, true, 40};
  check_attention_with_append(chunks, rng, {{2, 64}, {3, 7}, {1, 128}});
}

// In the model's decode layout ([rows, slots, width] caches, row r's query at its slot steps_done) the fused op
// writes the caches and computes the output bit for bit as write_cache_step twice and attention do on the device.
TEST(CudaDenseOps, AttentionWithAppendEqualsSeparateOpsBitwise) {
  ELEPHANT_REQUIRE_CUDA();
  std::mt19937 rng(81);
  const std::vector<int32_t> steps{0, 5, 31, 32, 48, 17};
  const auto rows = static_cast<int64_t>(steps.size());
  const int64_t slots = 50;
  std::vector<int32_t> query_begin{0}, key_begin, key_length;
  for (int64_t r = 0; r < rows; ++r) {
    query_begin.push_back(static_cast<int32_t>(r + 1));
    key_begin.push_back(static_cast<int32_t>(r * slots));
    key_length.push_back(steps[r] + 1);
  }
  ops::AttentionLayout layout =
      ops::AttentionLayout::from_host(query_begin, key_begin, key_length, steps, Device::CUDA);
  layout.max_keys = slots;  // as the decoder bounds it
  for (const HeadShape& hs : std::vector<HeadShape>{{16, 64}, {2, 36}, {2, 7}, {1, 128}}) {
    const int64_t inner = static_cast<int64_t>(hs.heads) * hs.head_dim;
    const Tensor bias = to_cuda(random_cpu({hs.heads, 2 * slots + 1}, rng, -2.0f, 2.0f));
    ops::AttentionArgs args;
    args.num_heads = hs.heads;
    args.head_dim = hs.head_dim;
    args.position_bias = &bias;
    args.bias_max_offset = static_cast<int>(slots);
    for (DType dtype : testdev::cuda_dtypes()) {
      SCOPED_TRACE(name(dtype) + " heads " + std::to_string(hs.heads) + " x " + std::to_string(hs.head_dim));
      const Tensor q = to_cuda(random_cpu({rows, inner}, rng), dtype);
      const Tensor new_k = to_cuda(random_cpu({rows, inner}, rng), dtype);
      const Tensor new_v = to_cuda(random_cpu({rows, inner}, rng), dtype);
      const Tensor keys = to_cuda(random_cpu({rows, slots, inner}, rng), dtype);
      const Tensor values = to_cuda(random_cpu({rows, slots, inner}, rng), dtype);

      Tensor separate_keys = keys.clone(), separate_values = values.clone();
      ops::write_cache_step(new_k, layout.query_position, separate_keys);
      ops::write_cache_step(new_v, layout.query_position, separate_values);
      Tensor expected = poisoned({rows, inner}, dtype, Device::CUDA);
      ops::attention(q, separate_keys.reshape({-1, inner}), separate_values.reshape({-1, inner}), layout, args,
                     expected);

      Tensor fused_keys = keys.clone().reshape({-1, inner}), fused_values = values.clone().reshape({-1, inner});
      Tensor out = poisoned({rows, inner}, dtype, Device::CUDA);
      ops::attention_with_append(q, new_k, new_v, fused_keys, fused_values, layout, args, out);
      EXPECT_EQ(host(out).to_vector<float>(), host(expected).to_vector<float>());
      EXPECT_EQ(host(fused_keys).to_vector<float>(), host(separate_keys).to_vector<float>());
      EXPECT_EQ(host(fused_values).to_vector<float>(), host(separate_values).to_vector<float>());
    }
  }
}

TEST(CudaDenseOps, AttentionRejectsHeadDimAbove128) {
  ELEPHANT_REQUIRE_CUDA();
  const ops::AttentionLayout layout = ops::AttentionLayout::from_host({0, 1}, {0}, {1}, {0}, Device::CUDA);
  ops::AttentionArgs args;
  args.num_heads = 1;
  args.head_dim = 136;
  const Tensor x = to_cuda(Tensor::zeros({1, 136}));
  Tensor out = Tensor::empty({1, 136}, DType::F32, Device::CUDA);
  EXPECT_THROW(ops::attention(x, x, x, layout, args, out), Error);
}

}  // namespace
}  // namespace elephant
