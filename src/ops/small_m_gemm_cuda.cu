// c[m, n] = alpha * a[m, k] · w[n, k]^T + beta * c for a few rows of a (m <= kSmallMMaxRows): the projections of a
// decode step.
//
// Such a product reads every weight byte once and does 2m flops per weight element, so it is bound by the weight
// stream, and at decode sizes (2-8 MiB per weight) mostly by the latency of that stream: the whole weight must be
// requested at once to come near the HBM floor. cuBLAS's tiled GEMMs launch too few blocks with too little in
// flight for that. Here a warp group (1, 2 or 4 warps, more for longer rows) owns two weight rows (two columns of
// c); its lanes walk k in 16-byte chunks, each lane with kUnroll chunks of both rows in flight (8 independent
// 16-byte loads) before the first use. Weights bypass L1 (read once); the m rows of a are read through L1, where
// every warp of the SM shares them. float32 accumulation; lanes reduce by shuffles and the warps of a group through
// shared memory, in a fixed order: the result does not depend on timing. That holds up to kSmallMFloatMaxRows rows;
// from 5 to 16 rows (batch 8, or 8 sentences with 2 beams) half-precision weights stream the same way into the
// tensor cores instead (small_m_mma_kernel below).
//
// int8 weights (a quantized Linear, quantization/quantized_tensor.h) stream the same way, 16 codes a chunk, half the
// bytes: each code becomes a float times its scale (per channel, or its group's), the CPU's dequantized value.
//
// For ops::rms_norm_linear the float kernel normalizes a itself (kNorm): every block computes the rows' RMS norm as the
// norm kernel does, bit for bit, into shared memory, and reads a from there. A decode step saves the norm's launch
// and its round trip through memory before most projections.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "core/cuda/runtime.cuh"
#include "ops/activation_cuda.cuh"
#include "ops/gemm_cuda.h"
#include "ops/mma_cuda.cuh"
#include "ops/rms_norm_cuda.cuh"
#include "quantization/quantized_tensor.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

constexpr int kThreads = 128;  // 4 warps: with 2 rows per warp, n = 1024 at k = 1024 gives 128 blocks
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 2;           // weight rows per warp group: each a-chunk load serves both
constexpr int kUnroll = 4;         // 16-byte chunks per lane and row loaded before the first is used
constexpr int kMaxGroupWarps = 4;  // k >= 4096: a row's 512 chunks are one pass of 4 warps
constexpr unsigned kFullMask = 0xffffffffu;
// The normalized rows of a fused norm live in shared memory: at most 4 rows x 4096 halves (32 KiB of the 48 KiB a
// launch gets without opting in), and at most 512 16-byte chunks a row, so that the norm kernel gives every thread
// at most one chunk (rms_norm_threads) and this block's thread t stands in for its threads t + i * kThreads.
constexpr int64_t kNormMaxK = 4096;
constexpr int kNormPasses = kNormMaxK / 8 / kThreads;

// 16 bytes of weights, read once: not kept in L1, so that the rows of a stay there. volatile: the compiler must not
// move it across await_previous_kernel().
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 8 halves of one 16-byte chunk as floats. bf16 -> f32 is a shift (exact, integer pipe).
template <typename T>
__device__ __forceinline__ void to_float8(const uint4& v, float (&f)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, __half>) {
      __half2 h;
      static_assert(sizeof(h) == sizeof(uint32_t));
      memcpy(&h, &words[i], sizeof(h));
      const float2 p = __half22float2(h);
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    } else {
      f[2 * i] = __uint_as_float(words[i] << 16);
      f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
}

// The 16 int8 codes of one 16-byte chunk, in feature order, times `scale`. A chunk is half of a 32-feature block
// (quantized_layout.h): its word t holds features 2t, 2t + 1, 8 + 2t and 9 + 2t.
__device__ __forceinline__ void codes_to_float16(const uint4& v, float scale, float (&f)[16]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const int word = static_cast<int>(words[t]);
    f[2 * t] = static_cast<float>(static_cast<int8_t>(word)) * scale;
    f[2 * t + 1] = static_cast<float>(static_cast<int8_t>(word >> 8)) * scale;
    f[8 + 2 * t] = static_cast<float>(static_cast<int8_t>(word >> 16)) * scale;
    f[9 + 2 * t] = static_cast<float>(word >> 24) * scale;
  }
}

// The scales of int8 weights (null for half-precision ones): F16 [n, groups], group_size 0 for one per row.
struct Int8Scales {
  const __half* scales = nullptr;
  int groups = 1;
  int group_size = 0;
};

// A MoE layer's grouped GEMM at decode sizes (kExperts): blockIdx.y is the y-th expert with rows (in expert order),
// whose rows [offsets[e], offsets[e + 1]) of the product read a's rows a_rows[i] (or i) and go to out rows
// out_rows[i] (added, scaled by out_scale[out_rows[i]]: the un-permute and residual add of ops::grouped_gemm) or i.
// settled: offsets were written before the previous kernel, so the expert's weights stream in while it finishes.
template <typename T>
struct ExpertRows {
  const int32_t* offsets = nullptr;
  const int32_t* a_rows = nullptr;
  const int32_t* out_rows = nullptr;
  const float* out_scale = nullptr;
  const T* bias = nullptr;  // [experts, n] or null
  int experts = 0;
  int activation = kNoActivation;
  bool settled = false;
};

// The y-th expert with rows (its index and first position), or -1 when fewer have rows: a warp's lanes test 32
// experts at a time, so the search costs one round trip per 32 experts.
__device__ __forceinline__ int nth_expert_with_rows(const int32_t* offsets, int experts, int y, int& begin) {
  const int lane = threadIdx.x % 32;
  for (int base = 0; base < experts; base += 32) {
    const int e = base + lane;
    const int first = e < experts ? __ldg(offsets + e) : 0;
    const bool has_rows = e < experts && __ldg(offsets + e + 1) > first;
    const unsigned with_rows = __ballot_sync(kFullMask, has_rows);
    const int count = __popc(with_rows);
    if (y < count) {
      unsigned m = with_rows;
      for (int i = 0; i < y; ++i) m &= m - 1;  // drop the y lowest set bits
      const int picked = __ffs(m) - 1;
      begin = __shfl_sync(kFullMask, first, picked);
      return base + picked;
    }
    y -= count;
  }
  return -1;
}

template <typename T>
struct RowNorm {
  const T* weight;  // [k]
  float eps;
  float scale;  // applied to the normalized rows, rounded again
};

// Thread t's chunks of the norm weight: t + p * kThreads for each pass p.
template <typename T>
__device__ __forceinline__ void load_norm_weight(const T* weight, int chunks, uint4 (&g)[kNormPasses]) {
#pragma unroll
  for (int p = 0; p < kNormPasses; ++p) {
    const int chunk = threadIdx.x + p * kThreads;
    g[p] = chunk < chunks ? __ldg(reinterpret_cast<const uint4*>(weight) + chunk) : make_uint4(0, 0, 0, 0);
  }
}

// a's M rows [M, k] normalized into `out` ([M, k / 8] chunks of shared memory) exactly as the norm kernel, launched
// on them, would write them, then times norm.scale as scale_in_place rounds it. That kernel's block has
// rms_norm_threads(chunks) threads, each summing the squares of its chunk (k <= kNormMaxK), and adds them by a
// butterfly in each warp, then the warps' sums by a second butterfly; its warp w is warp w % kWarps of pass
// w / kWarps here. Ends with a barrier.
template <typename T, int M>
__device__ void normalize_rows(const T* a, int k, const RowNorm<T>& norm, const uint4 (&g)[kNormPasses], uint4* out) {
  static_assert(M <= kWarps, "one warp per row adds the warps' sums");
  __shared__ float warp_sums[M][32];
  __shared__ float scales[M];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = k / 8;
  const int norm_threads = rms_norm_threads(chunks);
  const auto* rows = reinterpret_cast<const uint4*>(a);
#pragma unroll
  for (int p = 0; p < kNormPasses; ++p) {
    const int chunk = threadIdx.x + p * kThreads;
    if (chunk >= norm_threads) break;  // whole warps: norm_threads is a multiple of 32
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float sum = 0.0f;
      if (chunk < chunks) {
        float f[8];
        to_float8<T>(__ldg(rows + r * chunks + chunk), f);
#pragma unroll
        for (int e = 0; e < 8; ++e) sum = add_square(f[e], sum);
      }
      sum = rms_norm_warp_sum(sum);
      if (lane == 0) warp_sums[r][chunk / 32] = sum;
    }
  }
  __syncthreads();
  if (warp < M) {
    const float sum = rms_norm_warp_sum(lane < norm_threads / 32 ? warp_sums[warp][lane] : 0.0f);
    if (lane == 0) scales[warp] = rms_scale(sum, k, norm.eps);
  }
  __syncthreads();
#pragma unroll
  for (int p = 0; p < kNormPasses; ++p) {
    const int chunk = threadIdx.x + p * kThreads;
    if (chunk >= chunks) break;
    float gf[8];
    to_float8<T>(g[p], gf);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float xf[8];
      to_float8<T>(__ldg(rows + r * chunks + chunk), xf);
      rt::Pack<T, 8> normalized;
#pragma unroll
      for (int e = 0; e < 8; ++e)
        normalized.v[e] = rt::from_float<T>(rt::to_float(rms_normalized<T>(xf[e], gf[e], scales[r])) * norm.scale);
      reinterpret_cast<rt::Pack<T, 8>*>(out)[r * chunks + chunk] = normalized;
    }
  }
  __syncthreads();
}

// blockIdx.y selects one weight of a stack (w and c advance by their batch strides, in elements), or with kExperts
// one expert with rows (ExpertRows: w advances by that expert's stride, c stays). a: [M, k], w: [n, k]
// in T (BITS 16) or int8 codes (BITS 8, scaled by `quant`), c: [M, n]; k a multiple of 8 (16 for codes), a and w
// 16-byte aligned. Four blocks per SM (all of a 4096 x 1024 weight's 512 blocks resident at once) cap registers at 128;
// without the cap ptxas picked 80 and spilled at M = 8. kNorm: a is normalized first (k <= kNormMaxK, the norm weight
// 16-byte aligned, M * k halves of dynamic shared memory). activation (kNoActivation: none) applies to each output's
// float value before it is rounded (GemmArgs::activation).
template <typename T, typename CT, int M, bool kNorm, int BITS, bool kExperts = false>
__global__ void __launch_bounds__(kThreads, 4)
    small_m_gemm_kernel(const T* __restrict__ a, const void* __restrict__ w, CT* __restrict__ c, int n, int k,
                        int group_warps, int64_t w_batch_stride, int64_t c_batch_stride, float alpha, float beta,
                        int activation, bool w_is_weight, RowNorm<T> norm, Int8Scales quant, ExpertRows<T> rows) {
  static_assert(BITS == 16 || BITS == 8, "half-precision or int8 weights");
  constexpr int kFeatures = 128 / BITS;    // of one 16-byte weight chunk
  constexpr int kAChunks = kFeatures / 8;  // 16-byte chunks of a that one weight chunk meets
  __shared__ float partial[kWarps][kRows * M];
  extern __shared__ uint4 normalized_a[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_lane = (warp % group_warps) * 32 + lane;
  const int group_threads = group_warps * 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * (kWarps / group_warps) + warp / group_warps) * kRows;
  const int chunks = k / kFeatures;  // weight chunks per row
  // The matrix of the stack this block multiplies; with kExperts the expert, its first row of the product and its
  // row count (at most M), found after the previous kernel unless the offsets were settled before it.
  int64_t matrix = blockIdx.y;
  [[maybe_unused]] int expert_begin = 0, expert_count = M;
  bool waited = false;
  if constexpr (kExperts) {
    if (!rows.settled) {
      rt::await_previous_kernel();
      waited = true;
    }
    const int e = nth_expert_with_rows(rows.offsets, rows.experts, blockIdx.y, expert_begin);
    if (e < 0) {  // fewer experts with rows than the grid's slots: the whole block leaves
      if (!waited) rt::await_previous_kernel();
      return;
    }
    expert_count = min(__ldg(rows.offsets + e + 1) - expert_begin, M);
    matrix = e;
  } else {
    c += blockIdx.y * c_batch_stride;
  }

  // Rows past n (in the last block) read row n - 1 again and store nothing: every warp reaches the barrier.
  const int64_t row_bytes = static_cast<int64_t>(k) * BITS / 8;
  int64_t w_row_index[kRows];
  const unsigned char* w_row[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    w_row_index[j] = min(row0 + j, static_cast<int64_t>(n - 1));
    w_row[j] = static_cast<const unsigned char*>(w) + matrix * w_batch_stride * BITS / 8 + w_row_index[j] * row_bytes;
  }
  // Per-channel scales once; a group's scale for each chunk (a group spans whole chunks).
  float row_scale[kRows] = {};
  if constexpr (BITS == 8) {
#pragma unroll
    for (int j = 0; j < kRows; ++j)
      row_scale[j] = quant.group_size == 0 ? __half2float(__ldg(quant.scales + w_row_index[j])) : 0.0f;
  }
  const auto scale_of = [&](int j, int chunk) {
    if (quant.group_size == 0) return row_scale[j];
    return __half2float(__ldg(quant.scales + w_row_index[j] * quant.groups + chunk * kFeatures / quant.group_size));
  };

  // One pass: kRows x kUnroll independent 16-byte weight requests per lane, all issued before the first use.
  uint4 wv[kRows][kUnroll];
  const auto load_pass = [&](int base) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int chunk = base + u * group_threads;
#pragma unroll
      for (int j = 0; j < kRows; ++j)
        wv[j][u] =
            chunk < chunks ? load_streaming(w_row[j] + static_cast<int64_t>(chunk) * 16) : make_uint4(0, 0, 0, 0);
    }
  };
  // A weight is never written by a kernel: its first pass (the whole row up to k = 4096), and the norm weight, stream
  // in while the previous kernel finishes. a (and c) are that kernel's output.
  const int pass = group_threads * kUnroll;
  uint4 g[kNormPasses];
  if constexpr (kNorm) load_norm_weight(norm.weight, k / 8, g);
  if (w_is_weight) load_pass(group_lane);
  if (!waited) rt::await_previous_kernel();
  if (!w_is_weight) load_pass(group_lane);
  if constexpr (kNorm) normalize_rows<T, M>(a, k, norm, g, normalized_a);
  // The row of a behind product row r: with kExperts the expert's r-th position, through a_rows (rows past its count
  // read its first one again and store nothing).
  int64_t a_row[M];
#pragma unroll
  for (int r = 0; r < M; ++r) {
    a_row[r] = r;
    if constexpr (kExperts) {
      const int position = expert_begin + (r < expert_count ? r : 0);
      a_row[r] = rows.a_rows != nullptr ? __ldg(rows.a_rows + position) : position;
    }
  }
  const auto load_a = [&](int r, int chunk) {
    if constexpr (kNorm) {
      return normalized_a[r * (k / 8) + chunk];
    } else {
      return __ldg(reinterpret_cast<const uint4*>(a + a_row[r] * k) + chunk);
    }
  };

  float acc[kRows][M] = {};
  for (int base = group_lane; base < chunks; base += pass) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int chunk = base + u * group_threads;
      if (chunk >= chunks) break;
      float wf[kRows][kFeatures];
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        if constexpr (BITS == 16) {
          to_float8<T>(wv[j][u], wf[j]);
        } else {
          codes_to_float16(wv[j][u], scale_of(j, chunk), wf[j]);
        }
      }
#pragma unroll
      for (int r = 0; r < M; ++r) {
        float af[kFeatures];
#pragma unroll
        for (int h = 0; h < kAChunks; ++h) {
          float part[8];
          to_float8<T>(load_a(r, chunk * kAChunks + h), part);
#pragma unroll
          for (int e = 0; e < 8; ++e) af[8 * h + e] = part[e];
        }
#pragma unroll
        for (int j = 0; j < kRows; ++j)
#pragma unroll
          for (int e = 0; e < kFeatures; ++e) acc[j][r] = fmaf(wf[j][e], af[e], acc[j][r]);
      }
    }
    if (base + pass < chunks) load_pass(base + pass);
  }

#pragma unroll
  for (int j = 0; j < kRows; ++j)
#pragma unroll
    for (int r = 0; r < M; ++r)
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) acc[j][r] += __shfl_xor_sync(kFullMask, acc[j][r], offset);
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < kRows; ++j)
#pragma unroll
      for (int r = 0; r < M; ++r) partial[warp][j * M + r] = acc[j][r];
  }
  __syncthreads();
  // The group's first warp sums its warps' partials in warp order, one output per lane.
  if (warp % group_warps == 0 && lane < kRows * M) {
    float sum = 0.0f;
    for (int s = 0; s < group_warps; ++s) sum += partial[warp + s][lane];
    const int64_t column = row0 + lane / M;
    const int r = lane % M;
    if constexpr (kExperts) {
      // As the grouped GEMM's epilogue rounds: the product row in T, then (out_rows) scaled, added and rounded again.
      if (column < n && r < expert_count) {
        const int position = expert_begin + r;
        const float b = rows.bias != nullptr ? rt::to_float(rows.bias[matrix * n + column]) : 0.0f;
        const CT product = rt::from_float<CT>(apply_activation(rows.activation, sum + b));
        if (rows.out_rows != nullptr) {
          const int64_t target = rows.out_rows[position];
          CT* out = c + target * n + column;
          *out = rt::add_scaled(*out, rows.out_scale[target], product);
        } else {
          c[position * n + column] = product;
        }
      }
    } else if (column < n) {
      CT* out = c + static_cast<int64_t>(r) * n + column;
      float value = alpha * sum;
      if (beta != 0.0f) value += beta * rt::to_float(*out);  // beta == 0 never reads c (it may hold NaN)
      // int8 Linears take no activation (launch_variant refuses one): with it their 4-row kernel spilled.
      if constexpr (BITS == 16) value = apply_activation(activation, value);
      *out = rt::from_float<CT>(value);
    }
  }
}

// 5..16 rows run on the tensor cores (mma.sync m16n8k16, float32 accumulation): at 8 rows the float FMAs above issue
// about as many instructions as there are weight bytes, and lost to cuBLAS. A block owns 8 weight rows, the mma's
// n8 B operand; a's rows are its A operand, the rows past m zero registers that are never loaded (kSixteen: rows
// 8..15 exist). Lane (g, t) loads 16 bytes of weight row g and the same 16 bytes of k of a's rows g and g + 8: the
// chunk's 8 features feed two mmas, their k order (the same for both operands) a permutation of the chunk's, so no
// shuffle is needed. A step of the block covers 4 x WARPS chunks of k; the warps' partial tiles are added in shared
// memory in warp order (the result does not depend on timing). Each lane keeps two passes of kMmaUnroll weight
// chunks in flight: the next one loads while this one multiplies. More warps for longer rows (launch_mma_rows): with
// 4, a 1024 x 4096 weight's 128 blocks streamed k in 4 dependent passes. No fused norm: normalizing 8-16 rows in
// every block cost more than the norm kernel (H100: norm + 1024x1024 at 8 rows 5.6 us fused, 3.6 separate).
constexpr int kMmaUnroll = 4;

template <typename T, bool kSixteen, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
    small_m_mma_kernel(const T* __restrict__ a, const T* __restrict__ w, T* __restrict__ c, int m, int n, int k,
                       int64_t w_batch_stride, int64_t c_batch_stride, float alpha, float beta, int activation,
                       bool w_is_weight) {
  constexpr int kStepChunks = 4 * WARPS;
  constexpr int kPass = kStepChunks * kMmaUnroll;
  __shared__ float partial[WARPS][32][4];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int chunks = k / 8;
  // Rows past n (in the last block) read row n - 1 again and store nothing.
  const int64_t w_row_index = min(static_cast<int64_t>(blockIdx.x) * 8 + g, static_cast<int64_t>(n - 1));
  const uint4* w_row = reinterpret_cast<const uint4*>(w + blockIdx.y * w_batch_stride + w_row_index * k);
  c += blockIdx.y * c_batch_stride;

  // Passes start at a warp-uniform chunk (mma.sync needs the whole warp); lane t takes chunk base + t of each step.
  uint4 w_now[kMmaUnroll], w_next[kMmaUnroll];
  const auto load_pass = [&](uint4(&buffer)[kMmaUnroll], int base) {
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int chunk = base + t + u * kStepChunks;
      buffer[u] = chunk < chunks ? load_streaming(w_row + chunk) : make_uint4(0, 0, 0, 0);
    }
  };
  const int first = warp * 4;
  if (w_is_weight) load_pass(w_now, first);
  rt::await_previous_kernel();
  if (!w_is_weight) load_pass(w_now, first);
  const auto load_a = [&](int r, int chunk) {
    if (r >= m || chunk >= chunks) return make_uint4(0, 0, 0, 0);
    return __ldg(reinterpret_cast<const uint4*>(a + static_cast<int64_t>(r) * k) + chunk);
  };

  float acc[4] = {};
  const auto multiply_pass = [&](const uint4(&buffer)[kMmaUnroll], int base) {
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int chunk = base + t + u * kStepChunks;
      const uint4 low = load_a(g, chunk);
      const uint4 high = kSixteen ? load_a(g + 8, chunk) : make_uint4(0, 0, 0, 0);
      const uint32_t first_half[4] = {low.x, high.x, low.y, high.y};
      const uint32_t second_half[4] = {low.z, high.z, low.w, high.w};
      mma_16816<T>(acc, first_half, buffer[u].x, buffer[u].y);
      mma_16816<T>(acc, second_half, buffer[u].z, buffer[u].w);
    }
  };
  for (int base = first; base < chunks; base += 2 * kPass) {
    load_pass(w_next, base + kPass);
    multiply_pass(w_now, base);
    if (base + kPass >= chunks) break;
    load_pass(w_now, base + 2 * kPass);
    multiply_pass(w_next, base + kPass);
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) partial[warp][lane][i] = acc[i];
  __syncthreads();
  if (warp != 0) return;
  // sum[0..1]: a's row g, weight rows 2t and 2t + 1 of the block's 8; sum[2..3]: row g + 8.
  float sum[4] = {};
  for (int s = 0; s < WARPS; ++s) {
#pragma unroll
    for (int i = 0; i < 4; ++i) sum[i] += partial[s][lane][i];
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = g + (i / 2) * 8;
    const int64_t column = static_cast<int64_t>(blockIdx.x) * 8 + 2 * t + i % 2;
    if (r >= m || column >= n) continue;
    T* out = c + static_cast<int64_t>(r) * n + column;
    float value = alpha * sum[i];
    if (beta != 0.0f) value += beta * rt::to_float(*out);  // beta == 0 never reads c (it may hold NaN)
    *out = rt::from_float<T>(apply_activation(activation, value));
  }
}

// Warps per row group: enough that one pass of kUnroll chunks per lane covers the row's `chunks` 16-byte weight
// chunks, at most kMaxGroupWarps.
int group_warps_for(int64_t chunks) {
  int g = 1;
  while (g < kMaxGroupWarps && static_cast<int64_t>(g) * 32 * kUnroll < chunks) g *= 2;
  return g;
}

// One launch: `count` weights of a stack, each [n, k], `w_stride` elements apart, results `c_stride` apart.
template <typename T, typename CT>
struct Problem {
  const T* a;
  const void* w;  // T, or int8 codes (launch_variant's BITS) scaled by `quant`
  Int8Scales quant{};
  CT* c;
  int64_t m, n, k;
  int64_t count = 1, w_stride = 0, c_stride = 0;
  float alpha = 1.0f, beta = 0.0f;
  int activation = kNoActivation;  // GemmArgs::activation (ExpertRows carries an expert GEMM's)
  bool w_is_weight = false;
  RowNorm<T> norm{};     // a normalized first when norm.weight is set
  ExpertRows<T> rows{};  // a grouped GEMM's experts when rows.offsets is set (count: the grid's expert slots)
};

template <typename T, typename CT, bool kNorm, int BITS, bool kExperts>
void launch_variant(const Problem<T, CT>& p) {
  if (BITS != 16 && p.activation != kNoActivation)
    throw std::logic_error("small_m_gemm: an activation with int8 weights (the quantized ops apply it separately)");
  const int group_warps = group_warps_for(p.k * BITS / 128);
  const int rows_per_block = kRows * (kWarps / group_warps);
  const dim3 grid(rt::blocks_for(p.n, rows_per_block), static_cast<unsigned>(p.count));
  const size_t shared_bytes = kNorm ? static_cast<size_t>(p.m * p.k) * sizeof(T) : 0;
  const auto run = [&](auto kernel) {
    rt::launch(kernel, grid, kThreads, shared_bytes, p.a, p.w, p.c, static_cast<int>(p.n), static_cast<int>(p.k),
               group_warps, p.w_stride, p.c_stride, p.alpha, p.beta, p.activation, p.w_is_weight, p.norm, p.quant,
               p.rows);
  };
  switch (p.m) {
    case 1:
      run(small_m_gemm_kernel<T, CT, 1, kNorm, BITS, kExperts>);
      break;
    case 2:
      run(small_m_gemm_kernel<T, CT, 2, kNorm, BITS, kExperts>);
      break;
    case 3:
      run(small_m_gemm_kernel<T, CT, 3, kNorm, BITS, kExperts>);
      break;
    case 4:
      run(small_m_gemm_kernel<T, CT, 4, kNorm, BITS, kExperts>);
      break;
    default:
      throw std::logic_error("small_m_gemm: " + std::to_string(p.m) + " rows past the float kernel's bound");
  }
}

template <typename T, bool kSixteen, int WARPS>
void launch_mma_variant(const Problem<T, T>& p) {
  const dim3 grid(rt::blocks_for(p.n, 8), static_cast<unsigned>(p.count));
  rt::launch(small_m_mma_kernel<T, kSixteen, WARPS>, grid, WARPS * 32, 0, p.a, static_cast<const T*>(p.w), p.c,
             static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k), p.w_stride, p.c_stride, p.alpha,
             p.beta, p.activation, p.w_is_weight);
}

// Warps per block of the tensor-core kernel: enough that one pass of kMmaUnroll chunks per lane covers the row, at
// least 4 and at most 16.
template <typename T, bool kSixteen>
void launch_mma_rows(const Problem<T, T>& p) {
  const int64_t chunks = p.k / 8;
  if (chunks <= 4 * 4 * kMmaUnroll)
    launch_mma_variant<T, kSixteen, 4>(p);
  else if (chunks <= 4 * 8 * kMmaUnroll)
    launch_mma_variant<T, kSixteen, 8>(p);
  else
    launch_mma_variant<T, kSixteen, 16>(p);
}

template <typename T>
void launch_mma(const Problem<T, T>& p) {
  // norm_applies keeps fused norms to the float kernel's rows: a norm here would be dropped, not applied.
  if (p.norm.weight)
    throw std::logic_error("small_m_gemm: a fused norm at " + std::to_string(p.m) + " rows, past the float kernel's");
  if (p.m > 8)
    launch_mma_rows<T, true>(p);
  else
    launch_mma_rows<T, false>(p);
}

template <int BITS, typename T, typename CT>
void launch(const Problem<T, CT>& p) {
  if constexpr (BITS == 16 && std::is_same_v<T, CT>) {  // experts: half precision in and out
    if (p.rows.offsets) return launch_variant<T, CT, false, BITS, true>(p);
    if (p.m > kSmallMFloatMaxRows) return launch_mma(p);
  }
  if (p.norm.weight)
    launch_variant<T, CT, true, BITS, false>(p);
  else
    launch_variant<T, CT, false, BITS, false>(p);
}

// Launches the problem `setup` fills in, with c's element type: T, or float (the lm_head's float32 logits). The
// operands are a's rows against `count` weights [n, k] stacked in w, into c [count, rows, n].
template <typename T, typename Setup>
void launch_into(const Tensor& a, const Tensor& w, int64_t n, int64_t count, Tensor& c, const Setup& setup) {
  const auto run = [&](auto* out) {
    Problem<T, std::remove_pointer_t<decltype(out)>> p{};
    p.a = a.data<T>();
    p.w = w.raw();
    p.c = out;
    p.m = a.dim(0);
    p.n = n;
    p.k = a.dim(1);
    p.count = count;
    p.w_stride = n * p.k;  // weight i starts n * k elements (a multiple of 8) after weight 0: 16-byte aligned too
    p.c_stride = p.m * n;
    setup(p);
    launch<16>(p);
  };
  if (c.dtype() == DType::F32)
    run(c.data<float>());
  else
    run(c.data<T>());
}

// What every caller needs: half precision, 1..max_rows rows (m) of k, whole 16-byte chunks per row, aligned starts,
// int sizes.
bool applies(DType dtype, int64_t m, int64_t max_rows, int64_t k, const void* a, const void* w, int64_t n,
             int64_t count) {
  return (dtype == DType::F16 || dtype == DType::BF16) && m >= 1 && m <= max_rows && k > 0 && k % 8 == 0 &&
         n <= INT32_MAX && k <= INT32_MAX && count <= 65535 && rt::is_aligned(a) && rt::is_aligned(w);
}
// Half-precision weights: the tensor-core kernel above kSmallMFloatMaxRows rows when c is in a's dtype.
bool applies(const Tensor& a, const Tensor& w, int64_t n, int64_t count, DType c_dtype) {
  const int64_t max_rows = c_dtype == a.dtype() ? kSmallMMaxRows : kSmallMFloatMaxRows;
  return applies(a.dtype(), a.dim(0), max_rows, a.dim(1), a.raw(), w.raw(), n, count);
}
// The fused norm: the float kernel's rows, k <= kNormMaxK, the norm weight 16-byte aligned.
bool norm_applies(const Tensor& x, const Tensor& norm_weight) {
  return x.dim(0) <= kSmallMFloatMaxRows && x.dim(1) <= kNormMaxK && rt::is_aligned(norm_weight.raw());
}

// x's 1..kSmallMFloatMaxRows rows against an int8 Linear weight, with what `setup` adds (beta, a norm).
template <typename Setup>
bool launch_quantized(const Tensor& x, const QuantizedTensor& weight, Tensor& y, const Setup& setup) {
  const int64_t m = x.dim(0), n = weight.dim(0), k = weight.dim(1);
  if (weight.bits != 8 || k % 16 != 0 ||  // 16 codes a chunk
      !applies(x.dtype(), m, kSmallMFloatMaxRows, k, x.raw(), weight.values.raw(), n, 1))
    return false;
  rt::dispatch_floating(x.dtype(), "quantized_linear", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      Problem<T, T> p{};
      p.a = x.data<T>();
      p.w = weight.values.raw();
      p.quant = {static_cast<const __half*>(weight.scales.raw()), static_cast<int>(weight.groups()),
                 static_cast<int>(weight.group_size)};
      p.c = y.data<T>();
      p.m = m;
      p.n = n;
      p.k = k;
      p.w_is_weight = true;
      setup(p);
      launch<8>(p);
    }
  });
  return true;
}

}  // namespace

bool small_m_quantized_linear(const Tensor& x, const QuantizedTensor& weight, Tensor& y, bool accumulate) {
  return launch_quantized(x, weight, y, [&](auto& p) { p.beta = accumulate ? 1.0f : 0.0f; });
}

bool small_m_rms_norm_quantized_linear(const Tensor& x, const Tensor& norm_weight, float eps,
                                       const QuantizedTensor& weight, Tensor& y) {
  if (!norm_applies(x, norm_weight)) return false;
  return launch_quantized(x, weight, y, [&](auto& p) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(p.a)>>;
    p.norm = {norm_weight.data<T>(), eps, 1.0f};
  });
}

bool small_m_gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args) {
  const int64_t n = c.dim(1);
  if (!args.transpose_b || !applies(a, b, n, 1, c.dtype())) return false;
  rt::dispatch_floating(a.dtype(), "gemm", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      launch_into<T>(a, b, n, 1, c, [&](auto& p) {
        p.alpha = args.alpha;
        p.beta = args.beta;
        p.activation = activation_code(args.activation);
        p.w_is_weight = args.b_is_weight;
      });
    }
  });
  return true;
}

bool small_m_grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                          const GroupedGemmArgs& args) {
  const int64_t rows = args.out_rows ? args.out_rows->dim(0) : out.dim(0);
  const int64_t experts = weights.dim(0), n = weights.dim(1), k = weights.dim(2);
  // m: the product's rows (a's are read through a_rows); one grid slot per expert that can have rows.
  if (experts > INT32_MAX ||
      !applies(a.dtype(), rows, kSmallMFloatMaxRows, k, a.raw(), weights.raw(), n, std::min(rows, experts)))
    return false;
  rt::dispatch_floating(a.dtype(), "grouped_gemm", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      Problem<T, T> p{};
      p.a = a.data<T>();
      p.w = weights.raw();
      p.c = out.data<T>();
      p.m = rows;  // the most an expert can own
      p.n = n;
      p.k = k;
      p.count = std::min(rows, experts);  // at most one expert per row
      p.w_stride = n * k;
      p.w_is_weight = true;
      p.rows.offsets = offsets.data<int32_t>();
      p.rows.a_rows = args.a_rows ? args.a_rows->data<int32_t>() : nullptr;
      p.rows.out_rows = args.out_rows ? args.out_rows->data<int32_t>() : nullptr;
      p.rows.out_scale = args.out_scale ? args.out_scale->data<float>() : nullptr;
      p.rows.bias = args.bias ? args.bias->data<T>() : nullptr;
      p.rows.experts = static_cast<int>(experts);
      p.rows.activation = activation_code(args.activation);
      p.rows.settled = args.routing_settled;
      launch<16>(p);
    }
  });
  return true;
}

bool small_m_linear_stack(const Tensor& x, const Tensor& weights, Tensor& y) {
  const int64_t n = weights.dim(1), count = weights.dim(0);
  if (!applies(x, weights, n, count, y.dtype())) return false;
  rt::dispatch_floating(x.dtype(), "linear_stack", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      // linear_stack's contract: a stack of Linear weights.
      launch_into<T>(x, weights, n, count, y, [](auto& p) { p.w_is_weight = true; });
    }
  });
  return true;
}

bool small_m_rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weights, Tensor& y,
                             const NormLinearArgs& args) {
  const bool stack = weights.rank() == 3;
  const int64_t n = weights.dim(-2), count = stack ? weights.dim(0) : 1;
  if (!applies(x, weights, n, count, y.dtype()) || !norm_applies(x, norm_weight)) return false;
  rt::dispatch_floating(x.dtype(), "rms_norm_linear", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      launch_into<T>(x, weights, n, count, y, [&](auto& p) {
        p.w_is_weight = true;
        p.norm = {norm_weight.data<T>(), eps, args.scale};
        p.activation = activation_code(args.activation);
      });
    }
  });
  return true;
}

}  // namespace elephant::ops::cuda
