// The experts' grouped GEMM: one launch for every expert, each expert's rows read from `offsets` on the device.
//
// Half precision runs on the tensor cores (mma.sync m16n8k16, float32 accumulation). The expert weights are the
// 16-row operand and the tokens the 8-column one, out^T = W · a^T, so a decode step with one or two rows per expert
// still streams every weight byte through full MMAs. A persistent grid walks a work list of (expert, n tile, row
// chunk) items built on the device from `offsets`: experts without rows are never read and no block idles on them.
// Weight and row tiles arrive by 16-byte cp.async in a multi-stage pipeline over k. Decode-sized problems have too
// few items to fill the machine: split-k then gives each item several blocks, one per slice of k, in the same launch.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = elephant::cuda;

constexpr int kNoActivation = -1;
constexpr int kMaxMmaExperts = 1024;  // the work list's prefix lives in static shared memory
constexpr unsigned kFullMask = 0xffffffffu;
// Split-k: at most 32 slices of k, each of at least 4 k tiles (the prologue, the partial tile and the arrival are
// paid once per slice); a thread's arrival counters cover 4096 items.
constexpr int kMaxSlices = 32;
constexpr int kMinSliceTiles = 4;
constexpr int64_t kSplitCounters = 4096;

__device__ __forceinline__ float apply_activation(int activation, float v) {
  // The formulas of activation_cpu.cc.
  switch (activation) {
    case static_cast<int>(Activation::ReLU):
      return v > 0.0f ? v : 0.0f;
    case static_cast<int>(Activation::Gelu):
      return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case static_cast<int>(Activation::GeluNew):
      return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case static_cast<int>(Activation::Silu):
      return v / (1.0f + expf(-v));
    default:
      return v;
  }
}

// ---- tensor-core path -------------------------------------------------------------------------------------------

template <int BN_, int BM_, int WARPS_N_, int WARPS_M_, int STAGES_, int MIN_BLOCKS_>
struct TileConfig {
  static constexpr int BN = BN_;  // weight rows (output columns) per tile
  static constexpr int BM = BM_;  // token rows per chunk
  static constexpr int BK = 64;   // 128-byte smem rows: the XOR swizzle below assumes 8 chunks of 16 bytes
  static constexpr int WARPS_N = WARPS_N_;
  static constexpr int WARPS_M = WARPS_M_;
  static constexpr int STAGES = STAGES_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int THREADS = 32 * WARPS_N * WARPS_M;
  static constexpr int WTN = BN / WARPS_N;  // weight rows per warp
  static constexpr int WTM = BM / WARPS_M;  // tokens per warp
  static constexpr int MI = WTN / 16;
  static constexpr int NI = WTM / 8;
  static constexpr int W_ITERS = BN * (BK / 8) / THREADS;
  static constexpr int A_ITERS = BM * (BK / 8) / THREADS;
  static constexpr int ROWS_PER_ITER = THREADS / (BK / 8);
  static constexpr int W_STAGE = BN * BK;  // elements
  static constexpr int A_STAGE = BM * BK;
  static constexpr int C_STRIDE = BN + 8;  // epilogue staging row, padded by 16 bytes
  static constexpr int SMEM_BYTES = STAGES * (W_STAGE + A_STAGE) * 2;

  static_assert(WTN % 16 == 0 && WTM % 16 == 0, "warp tiles are whole m16 x (2 x n8) fragments");
  static_assert(BN * (BK / 8) % THREADS == 0 && BM * (BK / 8) % THREADS == 0, "every thread copies whole rows");
  static_assert(ROWS_PER_ITER % 8 == 0, "a thread's swizzle must not change between its rows");
  static_assert(BM * C_STRIDE * 2 <= SMEM_BYTES, "the epilogue tile reuses the pipeline buffers");
};

// Decode: few rows per expert, bound by the weight stream: small tiles, many blocks, a deep pipeline.
using SmallTiles = TileConfig<64, 16, 4, 1, 6, 3>;
using MediumTiles = TileConfig<128, 64, 4, 2, 4, 2>;
// Prefill: up to a few hundred rows per expert, bound by the MMAs.
using LargeTiles = TileConfig<128, 128, 2, 4, 3, 2>;

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid (the source must still be a mapped address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// prefix[e] = row chunks of the experts before e; prefix[experts] = all chunks. Warp 0 scans, 32 experts a step.
template <int BM>
__device__ void build_chunk_prefix(const int32_t* __restrict__ offsets, int experts, int* prefix) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int carry = 0;
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      const int chunks = e < experts ? (max(offsets[e + 1] - offsets[e], 0) + BM - 1) / BM : 0;
      int sum = chunks;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int y = __shfl_up_sync(kFullMask, sum, d);
        if (lane >= d) sum += y;
      }
      if (e < experts) prefix[e] = carry + sum - chunks;
      carry += __shfl_sync(kFullMask, sum, 31);
    }
    if (lane == 0) prefix[experts] = carry;
  }
  __syncthreads();
}

// Split-k: item i's slice s adds k tiles [s * k_tiles / slices, (s + 1) * k_tiles / slices) into plane s of
// `partials`, float32 [slices][rows][n_tiles * BN] (only the item's own rows are written and read).
struct SplitK {
  int slices = 1;
  int64_t rows = 0;
  float* partials = nullptr;
  int* counters = nullptr;  // one per item, zero at launch; the item's last block leaves it zero again
};

// Stores 8 results (already rounded to T) of product row `row`, columns col .. col + 7 (those < n): into out[row], or,
// with out_rows, added to out[out_rows[row]] scaled by out_scale of that row, rounded once more (the un-permute,
// the router probability and the residual add of a MoE layer). vector: 16-byte aligned rows of whole 8-packs.
template <typename T>
__device__ __forceinline__ void store_8(const rt::Pack<T, 8>& v, T* __restrict__ out,
                                        const int32_t* __restrict__ out_rows, const float* __restrict__ out_scale,
                                        int64_t row, int col, int n, bool vector) {
  const int valid = min(8, n - col);
  if (out_rows == nullptr) {
    T* dst = out + row * n + col;
    if (vector) {
      *reinterpret_cast<rt::Pack<T, 8>*>(dst) = v;
    } else {
      for (int j = 0; j < valid; ++j) dst[j] = v.v[j];
    }
    return;
  }
  const int64_t target = out_rows[row];
  const float scale = out_scale[target];
  T* dst = out + target * n + col;
  rt::Pack<T, 8> h{};
  if (vector) {
    h = *reinterpret_cast<const rt::Pack<T, 8>*>(dst);
  } else {
    for (int j = 0; j < valid; ++j) h.v[j] = dst[j];
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) h.v[j] = rt::from_float<T>(rt::to_float(h.v[j]) + scale * rt::to_float(v.v[j]));
  if (vector) {
    *reinterpret_cast<rt::Pack<T, 8>*>(dst) = h;
  } else {
    for (int j = 0; j < valid; ++j) dst[j] = h.v[j];
  }
}

template <typename T, typename C, bool SPLIT>
__global__ void __launch_bounds__(C::THREADS, C::MIN_BLOCKS)
    grouped_gemm_mma_kernel(const T* __restrict__ a, const int32_t* __restrict__ a_rows, const T* __restrict__ weights,
                            const int32_t* __restrict__ offsets, const T* __restrict__ bias, T* __restrict__ out,
                            const int32_t* __restrict__ out_rows, const float* __restrict__ out_scale, int experts,
                            int n, int k, int activation, bool vector_store, SplitK split) {
  rt::await_previous_kernel();
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int chunk_prefix[kMaxMmaExperts + 1];
  T* const sw = reinterpret_cast<T*>(smem);
  T* const sa = sw + C::STAGES * C::W_STAGE;
  T* const sc = reinterpret_cast<T*>(smem);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_n = warp % C::WARPS_N;
  const int warp_m = warp / C::WARPS_N;
  constexpr int BK = C::BK;

  build_chunk_prefix<C::BM>(offsets, experts, chunk_prefix);
  const int n_tiles = (n + C::BN - 1) / C::BN;
  const int items = chunk_prefix[experts] * n_tiles;
  const int k_tiles = (k + BK - 1) / BK;
  const int slices = SPLIT ? split.slices : 1;

  // Each thread copies the same 16-byte column (and swizzle) of rows copy_row, copy_row + ROWS_PER_ITER, ...
  const int copy_row = tid / (BK / 8);
  const int copy_chunk = tid % (BK / 8);
  const int copy_swizzled = (copy_chunk ^ (copy_row & 7)) * 8;
  const uint32_t sw_base = smem_address(sw);
  const uint32_t sa_base = smem_address(sa);

  // Items are ordered (expert, n tile, chunk), chunks fastest: concurrent blocks share an expert's rows and tiles.
  // Every block derives the same list from `offsets`, so all slices of an item agree on it.
  for (int unit = blockIdx.x; unit < items * slices; unit += gridDim.x) {
    const int item = unit / slices;
    const int slice = unit % slices;
    const int kt_begin = slice * k_tiles / slices;
    const int kt_count = (slice + 1) * k_tiles / slices - kt_begin;
    const int q = item / n_tiles;
    int e = 0;
    for (int hi = experts - 1; e < hi;) {
      const int mid = (e + hi + 1) >> 1;
      if (chunk_prefix[mid] <= q) {
        e = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int expert_chunks = chunk_prefix[e + 1] - chunk_prefix[e];
    const int local = item - chunk_prefix[e] * n_tiles;
    const int n0 = (local / expert_chunks) * C::BN;
    const int m0 = __ldg(offsets + e) + (local % expert_chunks) * C::BM;
    const int rows = min(C::BM, __ldg(offsets + e + 1) - m0);

    const T* w_src = weights + (static_cast<int64_t>(e) * n + n0 + copy_row) * k + copy_chunk * 8;
    // The rows this thread copies; with a_rows, sorted position i reads row a_rows[i] of a (the gather into expert
    // order happens in these loads).
    const T* a_src[C::A_ITERS];
#pragma unroll
    for (int j = 0; j < C::A_ITERS; ++j) {
      const int r = copy_row + j * C::ROWS_PER_ITER;
      const int64_t row = r >= rows ? 0 : a_rows != nullptr ? __ldg(a_rows + m0 + r) : m0 + r;
      a_src[j] = a + row * k + copy_chunk * 8;
    }
    auto load_stage = [&](int slot, int kt) {
      const int k_offset = kt * BK;
      const bool k_ok = k_offset + copy_chunk * 8 < k;
#pragma unroll
      for (int j = 0; j < C::W_ITERS; ++j) {
        const int r = copy_row + j * C::ROWS_PER_ITER;
        const bool ok = k_ok && n0 + r < n;
        cp_async_16(sw_base + 2 * (slot * C::W_STAGE + r * BK + copy_swizzled),
                    ok ? w_src + static_cast<int64_t>(j) * C::ROWS_PER_ITER * k + k_offset : weights, ok);
      }
#pragma unroll
      for (int j = 0; j < C::A_ITERS; ++j) {
        const int r = copy_row + j * C::ROWS_PER_ITER;
        const bool ok = k_ok && r < rows;
        cp_async_16(sa_base + 2 * (slot * C::A_STAGE + r * BK + copy_swizzled), ok ? a_src[j] + k_offset : a, ok);
      }
    };

    float acc[C::MI][C::NI][4];
#pragma unroll
    for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < C::NI; ++ni)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.0f;

#pragma unroll
    for (int s = 0; s < C::STAGES - 1; ++s) {
      if (s < kt_count) load_stage(s, kt_begin + s);
      cp_async_commit();
    }

    for (int kt = 0; kt < kt_count; ++kt) {
      cp_async_wait<C::STAGES - 2>();
      __syncthreads();  // stage kt visible to all; every warp is done with the slot refilled next
      const int next = kt + C::STAGES - 1;
      if (next < kt_count) load_stage(next % C::STAGES, kt_begin + next);
      cp_async_commit();

      const int slot = kt % C::STAGES;
      const uint32_t w_tile = sw_base + 2 * slot * C::W_STAGE;
      const uint32_t a_tile = sa_base + 2 * slot * C::A_STAGE;
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        uint32_t af[C::MI][4];
        uint32_t bf[C::NI][2];
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi) {
          const int row = warp_n * C::WTN + mi * 16 + (lane & 15);
          const int chunk = kk * 2 + (lane >> 4);
          ldmatrix_x4(af[mi], w_tile + 2 * (row * BK + ((chunk ^ (lane & 7)) * 8)));
        }
#pragma unroll
        for (int pair = 0; pair < C::NI / 2; ++pair) {
          const int row = warp_m * C::WTM + pair * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int chunk = kk * 2 + ((lane >> 3) & 1);
          uint32_t r[4];
          ldmatrix_x4(r, a_tile + 2 * (row * BK + ((chunk ^ (lane & 7)) * 8)));
          bf[2 * pair][0] = r[0];
          bf[2 * pair][1] = r[1];
          bf[2 * pair + 1][0] = r[2];
          bf[2 * pair + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
          for (int ni = 0; ni < C::NI; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers become the output tile

    if constexpr (SPLIT) {
      // The partial tile goes to L2; the item's last block to arrive sums the planes in slice order, so the result
      // does not depend on which block that is.
      __shared__ bool last_arrival;
      const int64_t ld = static_cast<int64_t>(n_tiles) * C::BN;
      float* plane = split.partials + (slice * split.rows + m0) * ld + n0;
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int col = warp_n * C::WTN + mi * 16 + (lane >> 2) + half * 8;
#pragma unroll
          for (int ni = 0; ni < C::NI; ++ni) {
            const int token = warp_m * C::WTM + ni * 8 + 2 * (lane & 3);
            if (token < rows) plane[token * ld + col] = acc[mi][ni][2 * half];
            if (token + 1 < rows) plane[(token + 1) * ld + col] = acc[mi][ni][2 * half + 1];
          }
        }
      __threadfence();
      __syncthreads();
      if (tid == 0) {
        const bool last = atomicAdd(split.counters + item, 1) == slices - 1;
        if (last) split.counters[item] = 0;  // for the next launch, or the next replay of a graph
        __threadfence();
        last_arrival = last;
      }
      __syncthreads();
      if (!last_arrival) continue;
      for (int i = tid; i < rows * (C::BN / 8); i += C::THREADS) {
        const int r = i / (C::BN / 8);
        const int c = (i % (C::BN / 8)) * 8;
        if (n0 + c >= n) continue;
        float v[8] = {};
        for (int s = 0; s < slices; ++s) {
          // L2 only: the other slices' tiles never passed through this SM's L1.
          const auto* src = reinterpret_cast<const float4*>(split.partials + (s * split.rows + m0 + r) * ld + n0 + c);
          const float4 lo = __ldcg(src), hi = __ldcg(src + 1);
          v[0] += lo.x, v[1] += lo.y, v[2] += lo.z, v[3] += lo.w;
          v[4] += hi.x, v[5] += hi.y, v[6] += hi.z, v[7] += hi.w;
        }
        rt::Pack<T, 8> o;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float b =
              bias != nullptr && n0 + c + j < n ? rt::to_float(bias[static_cast<int64_t>(e) * n + n0 + c + j]) : 0.0f;
          o.v[j] = rt::from_float<T>(apply_activation(activation, v[j] + b));
        }
        store_8(o, out, out_rows, out_scale, m0 + r, n0 + c, n, vector_store);
      }
    } else {
      // Accumulator (mi, ni, c) holds weight row warp_n*WTN + mi*16 + lane/4 (+8 for c >= 2) and token
      // warp_m*WTM + ni*8 + 2*(lane%4) (+1 for odd c). Staged as [token][n] for 16-byte row stores.
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int col = warp_n * C::WTN + mi * 16 + (lane >> 2) + half * 8;
          const float b =
              bias != nullptr && n0 + col < n ? rt::to_float(bias[static_cast<int64_t>(e) * n + n0 + col]) : 0.0f;
#pragma unroll
          for (int ni = 0; ni < C::NI; ++ni) {
            const int token = warp_m * C::WTM + ni * 8 + 2 * (lane & 3);
            sc[token * C::C_STRIDE + col] = rt::from_float<T>(apply_activation(activation, acc[mi][ni][2 * half] + b));
            sc[(token + 1) * C::C_STRIDE + col] =
                rt::from_float<T>(apply_activation(activation, acc[mi][ni][2 * half + 1] + b));
          }
        }
      }
      __syncthreads();
      for (int i = tid; i < C::BM * (C::BN / 8); i += C::THREADS) {
        const int r = i / (C::BN / 8);
        const int c = (i % (C::BN / 8)) * 8;
        if (r >= rows || n0 + c >= n) continue;
        store_8(*reinterpret_cast<const rt::Pack<T, 8>*>(sc + r * C::C_STRIDE + c), out, out_rows, out_scale, m0 + r,
                n0 + c, n, vector_store);
      }
      __syncthreads();  // the next item's prologue overwrites the tile
    }
  }
}

// One grouped GEMM as the launchers see it (pointers into the op's tensors, see ops/moe.h).
template <typename T>
struct Problem {
  const T* a;
  const int32_t* a_rows;  // or null: sorted position i reads row i of a
  const T* weights;
  const int32_t* offsets;
  const T* bias;  // or null
  T* out;
  const int32_t* out_rows;  // or null: row i of the product is row i of out
  const float* out_scale;
  int64_t rows;
  int experts, n, k, activation;
  bool vector_store;
};

template <typename T, typename C, bool SPLIT = false>
void launch_mma(const Problem<T>& p, const SplitK& split = {}, int64_t most_units = 0) {
  // Host-only queries, once per instantiation: no synchronization, nothing recorded in a graph.
  static const int grid_limit = [] {
    ELEPHANT_CUDA_CHECK(cudaFuncSetAttribute(grouped_gemm_mma_kernel<T, C, SPLIT>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM_BYTES));
    int per_sm = 0;
    ELEPHANT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, grouped_gemm_mma_kernel<T, C, SPLIT>,
                                                                      C::THREADS, C::SMEM_BYTES));
    return std::max(per_sm, 1) * rt::device_properties().multiProcessorCount;
  }();
  // Sum over experts of ceil(rows_e / BM) is below rows / BM + experts.
  const int64_t n_tiles = (p.n + C::BN - 1) / C::BN;
  const int64_t most_items = n_tiles * ((p.rows + C::BM - 1) / C::BM + p.experts);
  const auto grid = static_cast<unsigned>(std::min<int64_t>(SPLIT ? most_units : most_items, grid_limit));
  rt::launch(grouped_gemm_mma_kernel<T, C, SPLIT>, grid, C::THREADS, C::SMEM_BYTES, p.a, p.a_rows, p.weights, p.offsets,
             p.bias, p.out, p.out_rows, p.out_scale, p.experts, p.n, p.k, p.activation, p.vector_store, split);
}

// Split-k arrival counters, zero between launches since each item's last block resets its own: made once per thread,
// as its stream, on which the launches that share them are ordered. Made during a graph capture they would be graph
// memory: then the launch gets zeroed counters of its own (a memset node).
int* split_counters(int64_t count, Tensor& own) {
  thread_local Tensor counters;
  if (!counters.defined()) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    ELEPHANT_CUDA_CHECK(cudaStreamIsCapturing(rt::stream(), &capture));
    if (capture != cudaStreamCaptureStatusNone) {
      own = Tensor::zeros({count}, DType::I32, Device::CUDA);
      return own.data<int32_t>();
    }
    counters = Tensor::zeros({kSplitCounters}, DType::I32, Device::CUDA);
  }
  return counters.data<int32_t>();
}

// Decode: the host knows the rows, not how the device spreads them over experts; it counts the most items they can
// make (one chunk per row at most) and splits k until items x slices reach about two blocks per SM.
template <typename T>
void launch_small_tiles(const Problem<T>& p) {
  using C = SmallTiles;
  const int64_t n_tiles = (p.n + C::BN - 1) / C::BN;
  const int64_t most_items = n_tiles * std::min<int64_t>(p.rows, (p.rows + C::BM - 1) / C::BM + p.experts);
  const int64_t want = 2LL * rt::device_properties().multiProcessorCount;
  const int64_t k_tiles = (p.k + C::BK - 1) / C::BK;
  const int64_t slices =
      std::min({want / std::max<int64_t>(most_items, 1), k_tiles / kMinSliceTiles, int64_t{kMaxSlices}});
  // Items that fill half the SMs stream the weights at near full bandwidth already: measured at 8 tokens (wo, 128
  // items), a split of 2 cost 4% (57.3 against 55.1 us for the layer).
  if (slices < 2 || 4 * most_items > want || most_items > kSplitCounters) {
    launch_mma<T, C>(p);
    return;
  }
  Tensor partials = Tensor::empty(Shape{slices * p.rows * n_tiles * int64_t{C::BN}}, DType::F32, Device::CUDA);
  Tensor own_counters;
  const SplitK split{static_cast<int>(slices), p.rows, partials.data<float>(),
                     split_counters(most_items, own_counters)};
  launch_mma<T, C, true>(p, split, most_items * slices);
}

// ---- general path (float32, or half-precision shapes the tensor-core path cannot load) ------------------------

constexpr int kSimtTile = 16;

template <typename T>
__global__ void __launch_bounds__(kSimtTile* kSimtTile)
    grouped_gemm_simt_kernel(const T* __restrict__ a, const int32_t* __restrict__ a_rows, const T* __restrict__ weights,
                             const int32_t* __restrict__ offsets, const T* __restrict__ bias, T* __restrict__ out,
                             const int32_t* __restrict__ out_rows, const float* __restrict__ out_scale, int n, int k,
                             int activation) {
  rt::await_previous_kernel();
  __shared__ float sa[kSimtTile][kSimtTile + 1];  // [token][k]
  __shared__ float sw[kSimtTile][kSimtTile + 1];  // [n][k]
  const int e = blockIdx.y;
  const int begin = offsets[e], end = offsets[e + 1];
  const int tx = threadIdx.x % kSimtTile, ty = threadIdx.x / kSimtTile;
  const int n0 = blockIdx.x * kSimtTile;
  const T* w = weights + static_cast<int64_t>(e) * n * k;
  for (int m0 = begin + blockIdx.z * kSimtTile; m0 < end; m0 += gridDim.z * kSimtTile) {
    float acc = 0.0f;
    const bool row_ok = m0 + ty < end;
    const int64_t a_row = !row_ok ? 0 : a_rows != nullptr ? a_rows[m0 + ty] : m0 + ty;
    for (int k0 = 0; k0 < k; k0 += kSimtTile) {
      const int kk = k0 + tx;
      sa[ty][tx] = row_ok && kk < k ? rt::to_float(a[a_row * k + kk]) : 0.0f;
      sw[ty][tx] = n0 + ty < n && kk < k ? rt::to_float(w[static_cast<int64_t>(n0 + ty) * k + kk]) : 0.0f;
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kSimtTile; ++j) acc += sa[ty][j] * sw[tx][j];
      __syncthreads();
    }
    const int col = n0 + tx;
    if (m0 + ty < end && col < n) {
      const float b = bias != nullptr ? rt::to_float(bias[static_cast<int64_t>(e) * n + col]) : 0.0f;
      const T value = rt::from_float<T>(apply_activation(activation, acc + b));
      if (out_rows == nullptr) {
        out[static_cast<int64_t>(m0 + ty) * n + col] = value;
      } else {
        const int64_t target = out_rows[m0 + ty];
        T& h = out[target * n + col];
        h = rt::from_float<T>(rt::to_float(h) + out_scale[target] * rt::to_float(value));
      }
    }
  }
}

template <typename T>
void launch_simt(const Problem<T>& p) {
  const int64_t tiles = static_cast<int64_t>(rt::blocks_for(p.n, kSimtTile)) * p.experts;
  const int64_t want = 8LL * rt::device_properties().multiProcessorCount;
  const int64_t split = std::clamp<int64_t>(want / std::max<int64_t>(tiles, 1), 1,
                                            std::min<int64_t>(rt::blocks_for(p.rows, kSimtTile), 65535));
  const dim3 grid(rt::blocks_for(p.n, kSimtTile), static_cast<unsigned>(p.experts), static_cast<unsigned>(split));
  rt::launch(grouped_gemm_simt_kernel<T>, grid, kSimtTile * kSimtTile, 0, p.a, p.a_rows, p.weights, p.offsets, p.bias,
             p.out, p.out_rows, p.out_scale, p.n, p.k, p.activation);
}

bool aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args) {
  const int64_t rows = args.out_rows ? args.out_rows->dim(0) : out.dim(0);
  const int experts = static_cast<int>(weights.dim(0));
  const int n = static_cast<int>(weights.dim(1));
  const int k = static_cast<int>(weights.dim(2));
  if (experts == 0 || n == 0) return;
  if (experts > 65535) throw Error("grouped_gemm: more than 65535 experts on CUDA");
  const int activation = args.activation ? static_cast<int>(*args.activation) : kNoActivation;
  rt::dispatch_floating(a.dtype(), "grouped_gemm", [&](auto tag) {
    using T = decltype(tag);
    Problem<T> p{a.data<T>(),
                 args.a_rows ? args.a_rows->data<int32_t>() : nullptr,
                 weights.data<T>(),
                 offsets.data<int32_t>(),
                 args.bias ? args.bias->data<T>() : nullptr,
                 out.data<T>(),
                 args.out_rows ? args.out_rows->data<int32_t>() : nullptr,
                 args.out_scale ? args.out_scale->data<float>() : nullptr,
                 rows,
                 experts,
                 n,
                 k,
                 activation,
                 false};
    if constexpr (!std::is_same_v<T, float>) {
      // 16-byte copies need rows of whole 16-byte chunks.
      if (k % 8 == 0 && aligned_16(p.a) && aligned_16(p.weights) && experts <= kMaxMmaExperts) {
        p.vector_store = n % 8 == 0 && aligned_16(p.out);
        const int64_t rows_per_expert = rows / experts;
        // The larger tiles need ~100 KB of shared memory a block: more than sm_86/sm_89 GPUs give (~99 KB).
        static const bool large_tiles_fit =
            rt::device_properties().sharedMemPerBlockOptin >= static_cast<size_t>(MediumTiles::SMEM_BYTES) + 8192;
        if (rows_per_expert <= 16 || !large_tiles_fit) {
          launch_small_tiles<T>(p);
        } else if (rows_per_expert <= 64) {
          launch_mma<T, MediumTiles>(p);
        } else {
          launch_mma<T, LargeTiles>(p);
        }
        return;
      }
    }
    launch_simt<T>(p);
  });
}

}  // namespace elephant::ops::cuda
