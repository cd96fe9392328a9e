// The experts' grouped GEMM: one launch for every expert, each expert's rows read from `offsets` on the device. A
// Linear layer with quantized weights is the same GEMM with one group of all rows.
//
// Half precision runs on the tensor cores (mma.sync m16n8k16, float32 accumulation). The expert weights are the
// 16-row operand and the tokens the 8-column one, out^T = W · a^T, so a decode step with one or two rows per expert
// still streams every weight byte through full MMAs. A persistent grid walks a work list of (expert, n tile, row
// chunk) items built on the device from `offsets`: experts without rows are never read and no block idles on them.
// Weight and row tiles arrive by 16-byte cp.async in a multi-stage pipeline over k. Decode-sized problems have too
// few items to fill the machine: split-k then gives each item several blocks, one per slice of k, in the same launch.
//
// Quantized experts (int8 / int4, quantization/quantized_tensor.h) take the same path: their packed tiles arrive by
// the same 16-byte copies and each thread turns the four features an MMA step gives it into halves in registers
// (their storage order puts them in one 32-bit word), so weights are never dequantized into memory. Per-channel
// scales multiply the float32 accumulators in the epilogue; group scales multiply the halves in the main loop.
//
// Prefill-sized half-precision problems (more than 64 rows per expert) on Hopper run CUTLASS's wgmma grouped GEMM
// instead (grouped_gemm_sm90.h): at 3840 tokens the paper's MoE layer went from 320 to 284 us on the H100.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/cuda/runtime.cuh"
#include "ops/activation_cuda.cuh"
#include "ops/backends.h"
#include "ops/gemm_cuda.h"
#include "ops/grouped_gemm_sm90.h"
#include "ops/mma_cuda.cuh"
#include "quantization/quantized_layout.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = elephant::cuda;

constexpr int kMaxMmaExperts = 1024;  // the work list's prefix lives in static shared memory
constexpr unsigned kFullMask = 0xffffffffu;
// Split-k: at most 32 slices of k, each of at least 4 k tiles (the prologue, the partial tile and the arrival are
// paid once per slice); a thread's arrival counters cover 4096 items.
constexpr int kMaxSlices = 32;
constexpr int kMinSliceTiles = 4;
constexpr int64_t kSplitCounters = 4096;

// ---- tensor-core path -------------------------------------------------------------------------------------------

template <int BN_, int BM_, int WARPS_N_, int WARPS_M_, int STAGES_, int MIN_BLOCKS_, int BK_ = 64>
struct TileConfig {
  static constexpr int BN = BN_;  // weight rows (output columns) per tile
  static constexpr int BM = BM_;  // token rows per chunk
  // Features per stage: 64 gives 128-byte smem rows of halves. The XOR swizzle below permutes each run of 8 chunks of
  // 16 bytes, so wider rows (packed stages of 128 bytes: int8 128, int4 256) keep ldmatrix free of bank conflicts.
  static constexpr int BK = BK_;
  static constexpr int WARPS_N = WARPS_N_;
  static constexpr int WARPS_M = WARPS_M_;
  static constexpr int STAGES = STAGES_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int THREADS = 32 * WARPS_N * WARPS_M;
  static constexpr int WTN = BN / WARPS_N;  // weight rows per warp
  static constexpr int WTM = BM / WARPS_M;  // tokens per warp
  static constexpr int MI = WTN / 16;
  static constexpr int NI = WTM / 8;
  static constexpr int A_ITERS = BM * (BK / 8) / THREADS;
  static constexpr int ROWS_PER_ITER = THREADS / (BK / 8);  // rows of a (and of half weights) one copy pass covers
  static constexpr int W_STAGE = BN * BK;                   // elements
  static constexpr int A_STAGE = BM * BK;
  static constexpr int C_STRIDE = BN + 8;  // epilogue staging row, padded by 16 bytes

  static_assert(WTN % 16 == 0 && (WTM % 16 == 0 || WTM == 8),
                "warp tiles are whole m16 x (2 x n8) fragments, or one n8");
  static_assert(BN * (BK / 8) % THREADS == 0 && BM * (BK / 8) % THREADS == 0, "every thread copies whole rows");
  static constexpr bool FIXED_SWIZZLE = ROWS_PER_ITER % 8 == 0;  // a thread's copied rows share one swizzle
};

// The weight tile of one stage in shared memory: half-precision rows of BK swizzled (128 bytes), or packed rows of
// BK * BITS / 8 bytes padded by 16 so that the 8 rows x 4 words one fragment load reads hit distinct banks.
template <typename C, int BITS>
struct WeightTile {
  static constexpr int ROW_BYTES = C::BK * BITS / 8;
  // TinyTiles' int8 rows of 128 bytes place their 16-byte chunks XOR-swizzled by row % 8 instead (conflict-free too):
  // without the padding its 4 stages fit 5 blocks per SM. The other packed tiles keep the padding they were measured
  // with.
  static constexpr bool SWIZZLED = BITS != 16 && ROW_BYTES == 128 && C::BM == 8;
  static constexpr int STRIDE = BITS == 16 || SWIZZLED ? ROW_BYTES : ROW_BYTES + 16;
  // Byte offset of 16-byte chunk `chunk` of packed row `row` within a stage.
  static __device__ __forceinline__ int chunk_offset(int row, int chunk) {
    return row * STRIDE + (SWIZZLED ? (chunk ^ (row & 7)) : chunk) * 16;
  }
  static constexpr int CHUNKS = ROW_BYTES / 16;  // 16-byte copies per row
  static constexpr int ROWS_PER_ITER = C::THREADS / CHUNKS;
  static constexpr int ITERS = C::BN * CHUNKS / C::THREADS;
  static constexpr int STAGE_BYTES = C::BN * STRIDE;
  // Quantized weights feed several warps of tokens per warp of weight rows when WARPS_M > 1: they are converted once
  // per stage into a half-precision tile (laid out as the half path's stages) instead of once per warp.
  static constexpr bool CONVERT_TILE = BITS != 16 && C::WARPS_M > 1;
  static constexpr int SMEM_BYTES = C::STAGES * (STAGE_BYTES + C::A_STAGE * 2) + (CONVERT_TILE ? C::W_STAGE * 2 : 0);
  static_assert(C::BN * CHUNKS % C::THREADS == 0, "every thread copies whole weight rows");
  static_assert(!SWIZZLED || !CONVERT_TILE, "convert_tile reads padded rows");
  static_assert(C::BM * C::C_STRIDE * 2 <= SMEM_BYTES, "the epilogue tile reuses the pipeline buffers");
};

// Decode: few rows per expert, bound by the weight stream: small tiles, many blocks, a deep pipeline.
using SmallTiles = TileConfig<64, 16, 4, 1, 6, 3>;
// Packed decode weights in stages of 128 bytes a row, as half weights stream in SmallTiles: a quarter (int4) or half
// (int8) of the pipeline waits and barriers per byte. Only long k keeps its pipeline full (see launch_small_tiles).
// 3 stages leave room for 4 blocks per SM (4 stages: 3, and a second wave from ~400 items on); int8's 5 by shared
// memory need the register cap of MIN_BLOCKS 5, which ptxas otherwise overshoots at small code changes (89 -> 119).
template <int BITS>
using WideTiles = TileConfig<64, 16, 4, 1, 3, 5, 64 * 16 / BITS>;
// Per-channel int4 at shorter k and few rows an expert: 64 bytes a row (128 features) in 4 stages, half of SmallTiles'
// barriers and loop overhead per byte with as many bytes in flight.
using Int4Tiles = TileConfig<64, 16, 4, 1, 4, 5, 128>;
// Per-channel packed weights at up to 2 rows per expert: Int4Tiles with chunks of 8 tokens (one n8 MMA a k step: none
// on padding rows). An expert of more than 8 rows streams its weights once per chunk. H100, one build each:
// - int4 (64-byte rows) against Int4Tiles: Table 1 at 8 / 16 / 32 experts 11.9 / 20.9 / 34.0 -> 11.2 / 19.2 / 32.6
//   us, the MoE layer at 40 tokens 49.7 -> 48.4 (a build which also had copy loops bench/NOTES.md records as neutral);
// - int8 (128-byte rows, swizzled in WeightTile so that 4 stages fit 5 blocks per SM) against SmallTiles: Table 1
//   17.7 / 30.7 / 55.4 -> 16.8 / 29.1 / 51.7 us (padded rows at 4 blocks per SM: 17.0 / 29.8 / 54.0), the MoE layer's
//   wi at 40 tokens 39.9 -> 35.8; the whole layer lost (79.2 -> 81.7) until its wi left wo a block's room
//   (launch_mma).
using TinyTiles = TileConfig<64, 8, 4, 1, 4, 5, 128>;
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

// Byte offset of 8-half chunk `chunk` of row `row` in a tile of BK-half rows whose runs of 8 chunks are XOR-swizzled
// by row % 8. Written as the run's fixed offset plus the swizzled place within it ((8j + c) ^ x = 8j + (c ^ x) for c, x
// < 8): with a compile-time k step the compiler then keeps 4 per-lane offsets and adds constants, where it otherwise
// recomputes the XOR at every step of stages wider than 64 features.
template <int BK>
__device__ __forceinline__ uint32_t swizzled_chunk_bytes(int row, int run, int chunk_in_run) {
  return 2 * (row * BK + run * 64 + ((chunk_in_run ^ (row & 7)) * 8));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
}

// Integer codes to half-precision pairs without conversion instructions: OR-ing a code c < 2^8 into the low bits of
// 1024.0 (fp16) gives 1024 + c exactly; one subtraction leaves the signed value. bf16 has too few mantissa bits for
// 8-bit codes, so int8 -> bf16 converts through float.
// The mask and the OR are one lop3 ((a & b) | c, LUT 0xea): the compiler emitted two.
template <typename T>
__device__ __forceinline__ uint32_t int4_pair(uint32_t word) {  // nibbles 0 and 4 of word, each code + 8
  constexpr uint32_t kMagic = std::is_same_v<T, __half> ? 0x64006400u : 0x43004300u;
  uint32_t bits;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(bits) : "r"(word), "n"(0x000f000fu), "n"(kMagic));
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __hsub2(*reinterpret_cast<__half2*>(&bits), __half2half2(__ushort_as_half(0x6408)));  // 1032
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v =
        __hsub2(*reinterpret_cast<__nv_bfloat162*>(&bits), __bfloat162bfloat162(__ushort_as_bfloat16(0x4308)));  // 136
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
// Nibbles 1 and 5 of word (bits 4-7 and 20-23), as int4_pair(word >> 4) gives them but without the shift: OR-ing 16c
// into 1024.0 gives 1024 + 16c exactly, and one fma by 1 / 16 and -72 leaves c - 8 (Marlin's trick). bf16's 7 stored
// mantissa bits cannot hold a high nibble, so bf16 shifts.
template <typename T>
__device__ __forceinline__ uint32_t int4_high_pair(uint32_t word) {
  if constexpr (std::is_same_v<T, __half>) {
    uint32_t bits;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(bits) : "r"(word), "n"(0x00f000f0u), "n"(0x64006400u));
    const __half2 v = __hfma2(*reinterpret_cast<__half2*>(&bits), __half2half2(__ushort_as_half(0x2c00)),  // 1 / 16
                              __half2half2(__ushort_as_half(0xd480)));                                     // -72
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    return int4_pair<T>(word >> 4);
  }
}
// Bytes 0, 1 (or 2, 3) of word: signed codes. `exponent_bytes` is 0x64646464, passed in (QuantArgs) rather than
// written here: with both of the byte permute's constants known, ptxas took 0x64646464 as its immediate and copied the
// selector into a register before every permute, 16 of the 138 instructions a stage of the int8 decode kernel.
template <typename T>
__device__ __forceinline__ uint32_t int8_pair(uint32_t word, bool high, uint32_t exponent_bytes) {
  if constexpr (std::is_same_v<T, __half>) {
    uint32_t bits = __byte_perm(word ^ 0x80808080u, exponent_bytes, high ? 0x4342 : 0x4140);
    const __half2 v = __hsub2(*reinterpret_cast<__half2*>(&bits), __half2half2(__ushort_as_half(0x6480)));  // 1152
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const int shift = high ? 16 : 0;
    const __nv_bfloat162 v = __floats2bfloat162_rn(static_cast<float>(static_cast<int8_t>(word >> shift)),
                                                   static_cast<float>(static_cast<int8_t>(word >> (shift + 8))));
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
template <typename T>
__device__ __forceinline__ uint32_t scaled(uint32_t pair, uint32_t scale) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __hmul2(*reinterpret_cast<__half2*>(&pair), *reinterpret_cast<__half2*>(&scale));
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v =
        __hmul2(*reinterpret_cast<__nv_bfloat162*>(&pair), *reinterpret_cast<__nv_bfloat162*>(&scale));
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
template <typename T>
__device__ __forceinline__ uint32_t scale_pair(const __half* __restrict__ scales, int64_t index) {
  const float s = __half2float(scales[index]);
  const auto v = rt::from_float<T>(s);
  const uint16_t bits = *reinterpret_cast<const uint16_t*>(&v);
  return bits | (static_cast<uint32_t>(bits) << 16);
}

// Quantized weights as the kernels see them: scales F16 [experts, n, groups]; group_size 0 means one per channel.
struct QuantArgs {
  const __half* scales = nullptr;
  int group_size = 0;
  bool tiled = false;                     // PackedLayout::Tiled codes (quantized_layout.h)
  uint32_t exponent_bytes = 0x64646464u;  // int8_pair's
};

// The factor of an output channel's accumulator: its scale for per-channel quantized weights, else 1.
template <int BITS>
__device__ __forceinline__ float channel_scale(const QuantArgs& quant, int e, int n, int col) {
  if (BITS == 16 || quant.group_size > 0) return 1.0f;
  return __half2float(quant.scales[static_cast<int64_t>(e) * n + col]);
}
// Brings the line of channel_scale's value into L1 without waiting for it: issued before the main loop, the epilogue
// then finds it there. Loaded in the epilogue straight from memory, the scales stalled it (int4 Table 1 on the H100:
// 5% of Nsight Compute's warp-stall samples); held in registers over the loop instead, they changed the allocation of
// other kernels (int8 wide tiles 89 -> 117 registers).
template <int BITS>
__device__ __forceinline__ void prefetch_channel_scale(const QuantArgs& quant, int e, int n, int col) {
  if (BITS == 16 || quant.group_size > 0) return;
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(quant.scales + static_cast<int64_t>(e) * n + col));
}

// Converts one stage of packed weight rows (rows of WT::STRIDE bytes) into the swizzled half-precision tile the
// ldmatrix path reads, scaled by the rows' group scales when group_size > 0. A task is one 16-byte packed chunk: 16
// features of one row (int8) or 32 (int4), written as 2 or 4 swizzled 8-feature chunks.
template <typename T, typename C, int BITS>
__device__ __forceinline__ void convert_tile(const unsigned char* packed, T* tile, const QuantArgs& quant, int e, int n,
                                             int n0, int groups, int group) {
  using WT = WeightTile<C, BITS>;
  static_assert(BITS == 8 || BITS == 4, "packed weights");
  for (int task = threadIdx.x; task < C::BN * WT::CHUNKS; task += C::THREADS) {
    const int r = task / WT::CHUNKS, c = task % WT::CHUNKS;
    const uint4 words = *reinterpret_cast<const uint4*>(packed + r * WT::STRIDE + c * 16);
    const uint32_t w[4] = {words.x, words.y, words.z, words.w};
    uint32_t scale = 0;
    if (quant.group_size > 0)
      scale = scale_pair<T>(quant.scales, (static_cast<int64_t>(e) * n + min(n0 + r, n - 1)) * groups + group);
    // Output chunk j (8 features): int8 j = 0, 1 are features 0-7 and 8-15 of the 16-feature step c; int4 j = 0..3
    // are features 0-7, 8-15, 16-23, 24-31 of the 32-feature block c.
    constexpr int kChunksOut = BITS == 8 ? 2 : 4;
#pragma unroll
    for (int j = 0; j < kChunksOut; ++j) {
      uint4 out;
      uint32_t* o = reinterpret_cast<uint32_t*>(&out);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        if constexpr (BITS == 8) {
          o[t] = int8_pair<T>(w[t], j == 1, quant.exponent_bytes);
        } else {
          o[t] = j % 2 == 0 ? int4_pair<T>(w[t] >> (4 * j)) : int4_high_pair<T>(w[t] >> (4 * (j - 1)));
        }
        if (quant.group_size > 0) o[t] = scaled<T>(o[t], scale);
      }
      const int chunk = c * kChunksOut + j;  // 8-feature chunk of the 64-feature row
      *reinterpret_cast<uint4*>(tile + r * C::BK + ((chunk ^ (r & 7)) * 8)) = out;
    }
  }
}

// Where each group's rows start: offsets[e] (I32 [experts + 1], on the device), or, for a plain Linear layer
// (offsets null, one group), 0 and `rows`.
struct GroupRows {
  const int32_t* offsets;
  int rows;

  __device__ __forceinline__ int begin(int e) const {
    return offsets != nullptr ? __ldg(offsets + e) : e == 0 ? 0 : rows;
  }
};

// prefix[e] = row chunks of the experts before e; prefix[experts] = all chunks. Warp 0 scans, 32 experts a step.
template <int BM>
__device__ void build_chunk_prefix(const GroupRows& group_rows, int experts, int* prefix) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int carry = 0;
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      const int chunks = e < experts ? (max(group_rows.begin(e + 1) - group_rows.begin(e), 0) + BM - 1) / BM : 0;
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
  for (int j = 0; j < 8; ++j) h.v[j] = rt::add_scaled(h.v[j], scale, v.v[j]);
  if (vector) {
    *reinterpret_cast<rt::Pack<T, 8>*>(dst) = h;
  } else {
    for (int j = 0; j < valid; ++j) dst[j] = h.v[j];
  }
}

// BITS: 16 for weights in T, 8 or 4 for quantized ones (`weights` then points to their packed bytes).
template <typename T, typename C, int BITS, bool SPLIT>
__global__ void __launch_bounds__(C::THREADS, C::MIN_BLOCKS)
    grouped_gemm_mma_kernel(const T* __restrict__ a, const int32_t* __restrict__ a_rows,
                            const void* __restrict__ weights, QuantArgs quant, GroupRows group_rows,
                            const T* __restrict__ bias, T* __restrict__ out, const int32_t* __restrict__ out_rows,
                            const float* __restrict__ out_scale, int experts, int n, int k, int activation,
                            bool vector_store, bool routing_settled, SplitK split) {
  using WT = WeightTile<C, BITS>;
  constexpr bool kQuantized = BITS != 16;
  // Settled routing: offsets and a_rows were written before the kernel this one may overlap, so the first unit's
  // weight stages are in flight before the wait; the rest waits as usual (block-uniform). Split launches wait first:
  // started early they made the MoE layer slower, not faster (H100, 1 token: fp16 19.0 -> 19.7 us, int4 18.4 -> 18.7;
  // 2 tokens int4 20.9 -> 21.5; why is not known).
  bool must_wait = routing_settled && !SPLIT;
  if (!must_wait) rt::await_previous_kernel();
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int chunk_prefix[kMaxMmaExperts + 1];
  unsigned char* const sw = smem;
  T* const sa = reinterpret_cast<T*>(smem + C::STAGES * WT::STAGE_BYTES);
  T* const s_converted = sa + C::STAGES * C::A_STAGE;  // WT::CONVERT_TILE only

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_n = warp % C::WARPS_N;
  const int warp_m = warp / C::WARPS_N;
  constexpr int BK = C::BK;

  build_chunk_prefix<C::BM>(group_rows, experts, chunk_prefix);
  const int n_tiles = (n + C::BN - 1) / C::BN;
  const int items = chunk_prefix[experts] * n_tiles;
  const int k_tiles = (k + BK - 1) / BK;
  const int slices = SPLIT ? split.slices : 1;

  // Each thread copies the same 16-byte column (and swizzle) of rows copy_row, copy_row + ROWS_PER_ITER, ...
  const int copy_row = tid / (BK / 8);
  const int copy_chunk = tid % (BK / 8);
  const int copy_swizzled = (copy_chunk ^ (copy_row & 7)) * 8;
  // The swizzled place of this thread's chunk in the copied row r: one value for all its rows when FIXED_SWIZZLE.
  const auto swizzled = [&](int r) { return C::FIXED_SWIZZLE ? copy_swizzled : (copy_chunk ^ (r & 7)) * 8; };
  const uint32_t sw_base = smem_address(sw);
  const uint32_t sa_base = smem_address(sa);
  // Quantized weight rows are copied by their own (row, 16-byte chunk) split.
  const int q_row = tid / WT::CHUNKS;
  const int q_chunk = tid % WT::CHUNKS;
  const int64_t q_row_bytes = static_cast<int64_t>(k) * BITS / 8;
  const int groups = quant.group_size > 0 ? k / quant.group_size : 1;

  // A unit's place in the work list. Items are ordered (expert, n tile, chunk), chunks fastest: concurrent blocks
  // share an expert's rows and tiles. Every block derives the same list from `offsets`, so all slices of an item agree
  // on it.
  struct Place {
    int item, slice, kt_begin, kt_count, e, n0, m0, rows;
  };
  const auto place_of = [&](int unit) {
    Place u;
    u.item = unit / slices;
    u.slice = unit % slices;
    u.kt_begin = u.slice * k_tiles / slices;
    u.kt_count = (u.slice + 1) * k_tiles / slices - u.kt_begin;
    const int q = u.item / n_tiles;
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
    const int local = u.item - chunk_prefix[e] * n_tiles;
    u.e = e;
    u.n0 = (local / expert_chunks) * C::BN;
    u.m0 = group_rows.begin(e) + (local % expert_chunks) * C::BM;
    u.rows = min(C::BM, group_rows.begin(e + 1) - u.m0);
    return u;
  };

  // Packed weights with a tile per warp of weight rows, and their rows of a, are copied through cursors that advance a
  // stage per call (a unit's stages are loaded in order; kt is then not read), not from addresses derived from kt at
  // every stage. With them, swizzled_chunk_bytes and int4_high_pair, the k loop of per-channel int4 at k = 1024
  // (Int4Tiles, Table 1) went from 452 to 360 instructions (ptxas, sm_90a; 372 with kOverlap's below), int8's
  // (SmallTiles) from 289 to 271 (288). The converting kernels (prefill) keep kt's addresses: with cursors the int8
  // layer at 3840 tokens read 424 us, without 374-387 (H100, three calls).
  constexpr bool kCursors = kQuantized && !WT::CONVERT_TILE;
  constexpr bool kMayTile = BITS == 8;  // int8 codes may be tiled (quantized_layout.h); int4 codes never are
  constexpr int kTilesPerStage = WT::ROW_BYTES / quantized_layout::kTile;
  const int64_t q_stage_bytes = kMayTile && quant.tiled
                                    ? int64_t{kTilesPerStage} * quantized_layout::kTile * quantized_layout::kTile
                                    : int64_t{WT::ROW_BYTES};
  const unsigned char* q_cursor[WT::ITERS];
  bool q_row_ok[WT::ITERS];
  int q_cursor_k = 0;
  const T* a_cursor[C::A_ITERS];
  bool a_row_ok[C::A_ITERS];
  int a_cursor_k = 0;
  // The rows this thread copies; with a_rows, sorted position i reads row a_rows[i] of a (the gather into expert
  // order happens in these loads).
  const auto a_row_start = [&](const Place& u, int j) {
    const int r = copy_row + j * C::ROWS_PER_ITER;
    const int64_t row = r >= u.rows ? 0 : a_rows != nullptr ? __ldg(a_rows + u.m0 + r) : u.m0 + r;
    return a + row * k + copy_chunk * 8;
  };
  // This thread's chunk of stage 0 of its first packed row of an item (row-major codes), or of row `row` of expert e
  // in tiled int8 codes, where stage kt is kt stages' worth of 4 KiB blocks on.
  const auto q_row_major_start = [&](int e, int n0) {
    return static_cast<const unsigned char*>(weights) + (static_cast<int64_t>(e) * n + n0 + q_row) * q_row_bytes +
           q_chunk * 16;
  };
  const auto q_tiled_start = [&](int e, int row) {
    return static_cast<const unsigned char*>(weights) +
           quantized_layout::tiled_offset(e, row, q_chunk * 16, n, q_row_bytes);
  };
  const auto start_cursors = [&](const Place& u) {
    const auto* q_src = q_row_major_start(u.e, u.n0);
#pragma unroll
    for (int j = 0; j < WT::ITERS; ++j) {
      const int r = u.n0 + q_row + j * WT::ROWS_PER_ITER;
      q_cursor[j] = (kMayTile && quant.tiled ? q_tiled_start(u.e, r) : q_src + j * WT::ROWS_PER_ITER * q_row_bytes) +
                    u.kt_begin * q_stage_bytes;
      q_row_ok[j] = r < n;
    }
    q_cursor_k = u.kt_begin * BK + q_chunk * (128 / BITS);
#pragma unroll
    for (int j = 0; j < C::A_ITERS; ++j) {
      a_cursor[j] = a_row_start(u, j) + u.kt_begin * BK;
      a_row_ok[j] = copy_row + j * C::ROWS_PER_ITER < u.rows;
    }
    a_cursor_k = u.kt_begin * BK + copy_chunk * 8;
  };

  // kOverlap: the next unit's first stages are issued before this unit's epilogue, which then stages its tile in the
  // one pipeline slot they leave free; split units keep their epilogue's order (partials, then arrival). Measured on
  // the H100 in one build: Table 1 at 32 experts int8 56.3 -> 55.8 us, int4 34.5 -> 34.0; MoE layer int4 at 320 tokens
  // 77.5 -> 74.5.
  constexpr bool kOverlap = kCursors && !SPLIT;
  static_assert(!kOverlap || C::BM * C::C_STRIDE * 2 <= WT::STAGE_BYTES, "the epilogue tile fits one weight slot");
  T* const sc = reinterpret_cast<T*>(smem + (kOverlap ? (C::STAGES - 1) * WT::STAGE_BYTES : 0));
  bool prefetched = false;  // kOverlap: this unit's first stages are in flight
  Place next{};

  for (int unit = blockIdx.x; unit < items * slices; unit += gridDim.x) {
    const Place u = prefetched ? next : place_of(unit);
    [[maybe_unused]] const int item = u.item, slice = u.slice;
    const int kt_begin = u.kt_begin, kt_count = u.kt_count;
    const int e = u.e, n0 = u.n0, m0 = u.m0, rows = u.rows;

    [[maybe_unused]] const T* w_src;
    [[maybe_unused]] const unsigned char* q_src;
    [[maybe_unused]] const unsigned char* tiled_src[WT::ITERS];
    [[maybe_unused]] const T* a_src[C::A_ITERS];
    if constexpr (kCursors) {
      if (!prefetched) start_cursors(u);
    } else {
      w_src = static_cast<const T*>(weights) + (static_cast<int64_t>(e) * n + n0 + copy_row) * k + copy_chunk * 8;
      q_src = q_row_major_start(e, n0);
      if (kMayTile && quant.tiled) {
#pragma unroll
        for (int j = 0; j < WT::ITERS; ++j) tiled_src[j] = q_tiled_start(e, n0 + q_row + j * WT::ROWS_PER_ITER);
      }
#pragma unroll
      for (int j = 0; j < C::A_ITERS; ++j) a_src[j] = a_row_start(u, j);
    }
    auto load_weights = [&](int slot, int kt) {
      // A packed chunk holds 128 / BITS features; zero-filled past k (its rows of a are zero there too).
      if constexpr (kCursors) {
        const bool q_ok = q_cursor_k < k;
#pragma unroll
        for (int j = 0; j < WT::ITERS; ++j) {
          const int r = q_row + j * WT::ROWS_PER_ITER;
          const bool ok = q_ok && q_row_ok[j];
          cp_async_16(sw_base + slot * WT::STAGE_BYTES + WT::chunk_offset(r, q_chunk), ok ? q_cursor[j] : weights, ok);
          q_cursor[j] += q_stage_bytes;
        }
        q_cursor_k += BK;
      } else if constexpr (kQuantized) {
        const int k_offset = kt * BK;
        const bool q_ok = k_offset + q_chunk * (128 / BITS) < k;
#pragma unroll
        for (int j = 0; j < WT::ITERS; ++j) {
          const int r = q_row + j * WT::ROWS_PER_ITER;
          const bool ok = q_ok && n0 + r < n;
          const unsigned char* src = kMayTile && quant.tiled
                                         ? tiled_src[j] + static_cast<int64_t>(kt) * kTilesPerStage *
                                                              quantized_layout::kTile * quantized_layout::kTile
                                         : q_src + j * WT::ROWS_PER_ITER * q_row_bytes + k_offset * BITS / 8;
          cp_async_16(sw_base + slot * WT::STAGE_BYTES + WT::chunk_offset(r, q_chunk), ok ? src : weights, ok);
        }
      } else {
        const int k_offset = kt * BK;
        const bool k_ok = k_offset + copy_chunk * 8 < k;
#pragma unroll
        for (int j = 0; j < WT::ITERS; ++j) {
          const int r = copy_row + j * WT::ROWS_PER_ITER;
          const bool ok = k_ok && n0 + r < n;
          cp_async_16(sw_base + 2 * (slot * C::W_STAGE + r * BK + swizzled(r)),
                      ok ? w_src + static_cast<int64_t>(j) * WT::ROWS_PER_ITER * k + k_offset : weights, ok);
        }
      }
    };
    auto load_a = [&](int slot, int kt) {
      if constexpr (kCursors) {
        const bool k_ok = a_cursor_k < k;
#pragma unroll
        for (int j = 0; j < C::A_ITERS; ++j) {
          const int r = copy_row + j * C::ROWS_PER_ITER;
          const bool ok = k_ok && a_row_ok[j];
          cp_async_16(sa_base + 2 * (slot * C::A_STAGE + r * BK + swizzled(r)), ok ? a_cursor[j] : a, ok);
          a_cursor[j] += BK;
        }
        a_cursor_k += BK;
      } else {
        const int k_offset = kt * BK;
        const bool k_ok = k_offset + copy_chunk * 8 < k;
#pragma unroll
        for (int j = 0; j < C::A_ITERS; ++j) {
          const int r = copy_row + j * C::ROWS_PER_ITER;
          const bool ok = k_ok && r < rows;
          cp_async_16(sa_base + 2 * (slot * C::A_STAGE + r * BK + swizzled(r)), ok ? a_src[j] + k_offset : a, ok);
        }
      }
    };

    if constexpr (!SPLIT) {
#pragma unroll
      for (int mi = 0; mi < C::MI; ++mi)
        prefetch_channel_scale<BITS>(quant, e, n, min(n0 + warp_n * C::WTN + mi * 16 + (lane >> 2), n - 1));
    }

    float acc[C::MI][C::NI][4];
#pragma unroll
    for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < C::NI; ++ni)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.0f;

    // Stage s is one commit group (weights, then a) in the loop; ahead of the wait the prologue commits the weights
    // of every stage first and their a after, which the loop's wait_group<STAGES - 2> still orders correctly.
    if (!prefetched) {
      const bool weights_ahead = must_wait;
      if (weights_ahead) {
#pragma unroll
        for (int s = 0; s < C::STAGES - 1; ++s) {
          if (s < kt_count) load_weights(s, kt_begin + s);
          cp_async_commit();
        }
        rt::await_previous_kernel();
        must_wait = false;
      }
#pragma unroll
      for (int s = 0; s < C::STAGES - 1; ++s) {
        if (s < kt_count) {
          if (!weights_ahead) load_weights(s, kt_begin + s);
          load_a(s, kt_begin + s);
        }
        cp_async_commit();
      }
    }

    // Pipeline slots are counted, not kt % STAGES: fewer instructions in a loop that per-channel int4 keeps
    // issue-bound.
    int slot = 0, next_slot = C::STAGES - 1;
    for (int kt = 0; kt < kt_count; ++kt) {
      cp_async_wait<C::STAGES - 2>();
      __syncthreads();  // stage kt visible to all; every warp is done with the slot refilled next
      if (kt + C::STAGES - 1 < kt_count) {
        load_weights(next_slot, kt_begin + kt + C::STAGES - 1);
        load_a(next_slot, kt_begin + kt + C::STAGES - 1);
      }
      cp_async_commit();

      const uint32_t a_tile = sa_base + 2 * slot * C::A_STAGE;
      const int q_tile_offset = slot * WT::STAGE_BYTES;
      const unsigned char* q_tile = sw + q_tile_offset;
      uint32_t w_tile = sw_base + 2 * slot * C::W_STAGE;
      slot = slot == C::STAGES - 1 ? 0 : slot + 1;
      next_slot = next_slot == C::STAGES - 1 ? 0 : next_slot + 1;
      if constexpr (WT::CONVERT_TILE) {
        convert_tile<T, C, BITS>(q_tile, s_converted, quant, e, n, n0, groups,
                                 quant.group_size > 0 ? (kt_begin + kt) * BK / quant.group_size : 0);
        __syncthreads();  // the converted tile is complete; the next one is written after the loop-top barrier
        w_tile = smem_address(s_converted);
      }
      // The stage is compiled once per scale mode (GROUPED): a group-scale branch inside the k steps would cut each
      // into its own basic block and keep the compiler from issuing the next step's loads ahead of its MMAs.
      const auto compute_stage = [&](auto grouped_tag) {
        constexpr bool kGrouped = decltype(grouped_tag)::value;
        // Quantized in registers: the two weight rows (lane / 4 and + 8 of each 16-row fragment) this thread
        // converts, and their group scales for this k tile (a group spans whole k tiles).
        [[maybe_unused]] uint32_t group_scale[C::MI][2];
        if constexpr (kGrouped) {
          const int group = (kt_begin + kt) * BK / quant.group_size;
#pragma unroll
          for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int row = min(n0 + warp_n * C::WTN + mi * 16 + (lane >> 2) + 8 * h, n - 1);
              group_scale[mi][h] = scale_pair<T>(quant.scales, (static_cast<int64_t>(e) * n + row) * groups + group);
            }
        }
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          uint32_t af[C::MI][4];
          uint32_t bf[C::NI][2];
#pragma unroll
          for (int mi = 0; mi < C::MI; ++mi) {
            if constexpr (kQuantized && !WT::CONVERT_TILE) {
              const int row = warp_n * C::WTN + mi * 16 + (lane >> 2);
              // int8: word t of each 16-feature step; int4: word t of each 32-feature block, shifted to the step.
              const int word = BITS == 8 ? kk * 4 + (lane & 3) : (kk / 2) * 4 + (lane & 3);
              uint32_t w0, w1;
              if constexpr (WT::SWIZZLED) {
                // Chunk c of row r sits at place c ^ (r % 8), the same for rows r and r + 8. Slots and rows are
                // multiples of 128 bytes, so bits 4-6 of the offset below hold r % 8 and one XOR places the chunk.
                const int offset =
                    (q_tile_offset + row * WT::STRIDE + (row & 7) * 16 + (lane & 3) * 4) ^ ((word / 4) * 16);
                w0 = *reinterpret_cast<const uint32_t*>(sw + offset);
                w1 = *reinterpret_cast<const uint32_t*>(sw + offset + 8 * WT::STRIDE);
              } else {
                w0 = reinterpret_cast<const uint32_t*>(q_tile + row * WT::STRIDE)[word];
                w1 = reinterpret_cast<const uint32_t*>(q_tile + (row + 8) * WT::STRIDE)[word];
              }
              if constexpr (BITS == 8) {
                af[mi][0] = int8_pair<T>(w0, false, quant.exponent_bytes);
                af[mi][1] = int8_pair<T>(w1, false, quant.exponent_bytes);
                af[mi][2] = int8_pair<T>(w0, true, quant.exponent_bytes);
                af[mi][3] = int8_pair<T>(w1, true, quant.exponent_bytes);
              } else {
                const int shift = (kk % 2) * 8;
                af[mi][0] = int4_pair<T>(w0 >> shift);
                af[mi][1] = int4_pair<T>(w1 >> shift);
                af[mi][2] = int4_high_pair<T>(w0 >> shift);
                af[mi][3] = int4_high_pair<T>(w1 >> shift);
              }
              if constexpr (kGrouped) {
                af[mi][0] = scaled<T>(af[mi][0], group_scale[mi][0]);
                af[mi][1] = scaled<T>(af[mi][1], group_scale[mi][1]);
                af[mi][2] = scaled<T>(af[mi][2], group_scale[mi][0]);
                af[mi][3] = scaled<T>(af[mi][3], group_scale[mi][1]);
              }
            } else {
              const int row = warp_n * C::WTN + mi * 16 + (lane & 15);
              ldmatrix_x4(af[mi], w_tile + swizzled_chunk_bytes<BK>(row, kk / 4, (kk % 4) * 2 + (lane >> 4)));
            }
          }
          if constexpr (C::NI == 1) {
            // Lanes 0-7 address k 0-7 of the 8 tokens, lanes 8-15 k 8-15 (the upper lanes' addresses go unused).
            ldmatrix_x2(bf[0], a_tile + swizzled_chunk_bytes<BK>(warp_m * C::WTM + (lane & 7), kk / 4,
                                                                 (kk % 4) * 2 + ((lane >> 3) & 1)));
          }
#pragma unroll
          for (int pair = 0; pair < C::NI / 2; ++pair) {
            const int row = warp_m * C::WTM + pair * 16 + (lane & 7) + ((lane >> 4) << 3);
            uint32_t r[4];
            ldmatrix_x4(r, a_tile + swizzled_chunk_bytes<BK>(row, kk / 4, (kk % 4) * 2 + ((lane >> 3) & 1)));
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
      };
      if constexpr (kQuantized && !WT::CONVERT_TILE) {
        if (quant.group_size > 0) {
          compute_stage(std::true_type{});
        } else {
          compute_stage(std::false_type{});
        }
      } else {
        compute_stage(std::false_type{});
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers (with kOverlap, the last slot) become the output tile
    if constexpr (kOverlap) {
      prefetched = unit + static_cast<int>(gridDim.x) < items * slices;
      if (prefetched) {
        next = place_of(unit + gridDim.x);
        start_cursors(next);
#pragma unroll
        for (int s = 0; s < C::STAGES - 1; ++s) {
          if (s < next.kt_count) {
            load_weights(s, 0);
            load_a(s, 0);
          }
          cp_async_commit();
        }
      }
    }

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
          const bool col_ok = n0 + c + j < n;
          const float b =
              bias != nullptr && col_ok ? rt::to_float(bias[static_cast<int64_t>(e) * n + n0 + c + j]) : 0.0f;
          const float s = channel_scale<BITS>(quant, e, n, col_ok ? n0 + c + j : n - 1);
          o.v[j] = rt::from_float<T>(apply_activation(activation, v[j] * s + b));
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
          const bool col_ok = n0 + col < n;
          const float b = bias != nullptr && col_ok ? rt::to_float(bias[static_cast<int64_t>(e) * n + n0 + col]) : 0.0f;
          const float s = channel_scale<BITS>(quant, e, n, col_ok ? n0 + col : n - 1);
#pragma unroll
          for (int ni = 0; ni < C::NI; ++ni) {
            const int token = warp_m * C::WTM + ni * 8 + 2 * (lane & 3);
            sc[token * C::C_STRIDE + col] =
                rt::from_float<T>(apply_activation(activation, acc[mi][ni][2 * half] * s + b));
            sc[(token + 1) * C::C_STRIDE + col] =
                rt::from_float<T>(apply_activation(activation, acc[mi][ni][2 * half + 1] * s + b));
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
  if (must_wait) rt::await_previous_kernel();  // a block without units
}

// One grouped GEMM as the launchers see it (pointers into the op's tensors, see ops/moe.h).
template <typename T>
struct Problem {
  const T* a;
  const int32_t* a_rows;  // or null: sorted position i reads row i of a
  const void* weights;    // T [experts, n, k], or packed codes when bits < 16
  QuantArgs quant;
  int bits;  // 16, 8 or 4
  GroupRows group_rows;
  bool routing_settled;  // GroupedGemmArgs::routing_settled
  bool leave_room;       // GroupedGemmArgs::next_starts_early
  const T* bias;         // or null
  T* out;
  const int32_t* out_rows;  // or null: row i of the product is row i of out
  const float* out_scale;
  int64_t rows;
  int experts, n, k, activation;
  bool vector_store;
};

template <typename T, typename C, int BITS, bool SPLIT = false>
void launch_mma(const Problem<T>& p, const SplitK& split = {}, int64_t most_units = 0) {
  constexpr int smem_bytes = WeightTile<C, BITS>::SMEM_BYTES;
  const auto kernel = grouped_gemm_mma_kernel<T, C, BITS, SPLIT>;
  // Host-only queries, once per instantiation: no synchronization, nothing recorded in a graph.
  static const int blocks_per_sm = [&] {
    ELEPHANT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    int per_sm = 0;
    ELEPHANT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, C::THREADS, smem_bytes));
    return std::max(per_sm, 1);
  }();
  // Room for the next GEMM only beside the 8-token chunk tiles: there each expert hit is one chunk (at most 2 rows an
  // expert), so one block an SM fewer rarely adds a round. H100, the MoE layer at 40 tokens (wi on TinyTiles), one
  // build: int8 81.4 -> 75.5 us, int4 48.6 -> 47.6. Elsewhere it lost: int4 at 96 tokens (Int4Tiles) 60.8 -> 77.3; the
  // converting kernels (2 blocks an SM) read 16-19% slower at 1280-3840 tokens than in the call before.
  const bool leave_room = std::is_same_v<C, TinyTiles> && p.leave_room && blocks_per_sm > 1;
  const int grid_limit = (leave_room ? blocks_per_sm - 1 : blocks_per_sm) * rt::device_properties().multiProcessorCount;
  // Sum over experts of ceil(rows_e / BM) is below rows / BM + experts.
  const int64_t n_tiles = (p.n + C::BN - 1) / C::BN;
  const int64_t most_items = n_tiles * ((p.rows + C::BM - 1) / C::BM + p.experts);
  const auto grid = static_cast<unsigned>(std::min<int64_t>(SPLIT ? most_units : most_items, grid_limit));
  rt::launch(kernel, grid, C::THREADS, smem_bytes, p.a, p.a_rows, p.weights, p.quant, p.group_rows, p.bias, p.out,
             p.out_rows, p.out_scale, p.experts, p.n, p.k, p.activation, p.vector_store, p.routing_settled, split);
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
template <typename T, int BITS>
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
  // Packed items stream 2x (int8) or 4x (int4) fewer bytes each, so they need split-k up to 2x or 4x more items:
  // measured at 8 tokens (wo, 128 items), the int8 layer went from 55.6 to 39.9 us, int4 from 41.7 to 35.5.
  if (slices < 2 || 4 * most_items * BITS > 16 * want || most_items > kSplitCounters) {
    // Wide packed stages span several scale groups, so per-channel scales only. Measured on the H100, MoE layer at 40
    // / 96 / 320 tokens (wo's k = 4096): int4 61.4 / 80.2 / 94.5 -> 60.9 / 71.7 / 81.6 us, int8 87.1 / 111.0 / 126.1
    // -> 83.3 / 108.8 / 124.3. At k = 1024 (wi) an int4 item is 4 wide stages, too few to hide the pipeline's fill
    // (Table 1 with 4 stages: int8 57.6 -> 59.9 us, int4 39.6 -> 41.4).
    // Measured on the H100 (one build), int4 at k = 1024: Table 1 at 8 / 16 / 32 experts 13.5 / 23.6 / 36.8 us ->
    // 12.7 / 22.5 / 35.1 with Int4Tiles; 5 stages: 11.3 / 20.2 / 35.7; 6 stages (4 blocks per SM): 14.3 / 22.0 / 37.9;
    // 128 weight rows a block: 16.5 / 22.3 / 39.0. Across two calls, the MoE layer (32 experts) at 8 / 40 / 96 tokens
    // 32.0 / 54.8 / 64.5 -> 31.0 / 53.9 / 63.8, but at 320 tokens (10 rows an expert) 75.2 -> 89.9: Int4Tiles only up
    // to 4 rows an expert.
    if constexpr (BITS != 16) {
      if (p.quant.group_size == 0 && p.k >= 2048) return launch_mma<T, WideTiles<BITS>, BITS>(p);
      if (p.quant.group_size == 0 && p.rows <= 2 * p.experts) return launch_mma<T, TinyTiles, BITS>(p);
    }
    if constexpr (BITS == 4) {
      if (p.quant.group_size == 0 && p.rows <= 4 * p.experts) return launch_mma<T, Int4Tiles, BITS>(p);
    }
    launch_mma<T, C, BITS>(p);
    return;
  }
  Tensor partials = Tensor::empty(Shape{slices * p.rows * n_tiles * int64_t{C::BN}}, DType::F32, Device::CUDA);
  Tensor own_counters;
  const SplitK split{static_cast<int>(slices), p.rows, partials.data<float>(),
                     split_counters(most_items, own_counters)};
  launch_mma<T, C, BITS, true>(p, split, most_items * slices);
}

// ---- general path (float32, or half-precision shapes the tensor-core path cannot load) ------------------------

constexpr int kSimtTile = 16;

// Weight (row, j) of expert e as float: from T, or decoded from the packed codes (quantized_tensor.h) and scaled.
template <typename T>
__device__ __forceinline__ float weight_at(const void* weights, const QuantArgs& quant, int bits, int e, int n, int k,
                                           int row, int j) {
  const int64_t matrix_row = static_cast<int64_t>(e) * n + row;
  if (bits == 16) return rt::to_float(static_cast<const T*>(weights)[matrix_row * k + j]);
  const int64_t row_bytes = static_cast<int64_t>(k) * bits / 8;
  int code = 0;
  if (quant.tiled) {  // int8: the byte of feature j, then its tiled place
    code = static_cast<const int8_t*>(
        weights)[quantized_layout::tiled_offset(e, row, quantized_layout::int8_byte(j), n, row_bytes)];
  } else {
    code = quantized_layout::code_at(static_cast<const uint8_t*>(weights) + matrix_row * row_bytes, bits, j);
  }
  const int groups = quant.group_size > 0 ? k / quant.group_size : 1;
  const int group = quant.group_size > 0 ? j / quant.group_size : 0;
  return static_cast<float>(code) * __half2float(quant.scales[matrix_row * groups + group]);
}

template <typename T>
__global__ void __launch_bounds__(kSimtTile* kSimtTile)
    grouped_gemm_simt_kernel(const T* __restrict__ a, const int32_t* __restrict__ a_rows,
                             const void* __restrict__ weights, QuantArgs quant, int bits, GroupRows group_rows,
                             const T* __restrict__ bias, T* __restrict__ out, const int32_t* __restrict__ out_rows,
                             const float* __restrict__ out_scale, int n, int k, int activation) {
  rt::await_previous_kernel();
  __shared__ float sa[kSimtTile][kSimtTile + 1];  // [token][k]
  __shared__ float sw[kSimtTile][kSimtTile + 1];  // [n][k]
  const int e = blockIdx.y;
  const int begin = group_rows.begin(e), end = group_rows.begin(e + 1);
  const int tx = threadIdx.x % kSimtTile, ty = threadIdx.x / kSimtTile;
  const int n0 = blockIdx.x * kSimtTile;
  for (int m0 = begin + blockIdx.z * kSimtTile; m0 < end; m0 += gridDim.z * kSimtTile) {
    float acc = 0.0f;
    const bool row_ok = m0 + ty < end;
    const int64_t a_row = !row_ok ? 0 : a_rows != nullptr ? a_rows[m0 + ty] : m0 + ty;
    for (int k0 = 0; k0 < k; k0 += kSimtTile) {
      const int kk = k0 + tx;
      sa[ty][tx] = row_ok && kk < k ? rt::to_float(a[a_row * k + kk]) : 0.0f;
      sw[ty][tx] = n0 + ty < n && kk < k ? weight_at<T>(weights, quant, bits, e, n, k, n0 + ty, kk) : 0.0f;
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
        h = rt::add_scaled(h, out_scale[target], value);
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
  rt::launch(grouped_gemm_simt_kernel<T>, grid, kSimtTile * kSimtTile, 0, p.a, p.a_rows, p.weights, p.quant, p.bits,
             p.group_rows, p.bias, p.out, p.out_rows, p.out_scale, p.n, p.k, p.activation);
}

bool aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Picks the tiles by rows per expert; every tile shape has a kernel per weight width.
template <typename T, int BITS>
void launch_tensor_cores(const Problem<T>& p) {
  const int64_t rows_per_expert = p.rows / p.experts;
  // The larger tiles need ~100 KB of shared memory a block: more than sm_86/sm_89 GPUs give (~99 KB).
  static const bool large_tiles_fit = rt::device_properties().sharedMemPerBlockOptin >=
                                      static_cast<size_t>(WeightTile<MediumTiles, 16>::SMEM_BYTES) + 8192;
  if (rows_per_expert <= 16 || !large_tiles_fit) {
    launch_small_tiles<T, BITS>(p);
  } else if (rows_per_expert <= 64) {
    launch_mma<T, MediumTiles, BITS>(p);
  } else {
    launch_mma<T, LargeTiles, BITS>(p);
  }
}

template <typename T>
void run_grouped_gemm(Problem<T>& p) {
  if constexpr (!std::is_same_v<T, float>) {
    // 16-byte copies need rows of whole 16-byte chunks (quantized rows always are: k is a multiple of 32).
    if ((p.bits < 16 || p.k % 8 == 0) && aligned_16(p.a) && aligned_16(p.weights) && p.experts <= kMaxMmaExperts) {
      p.vector_store = p.n % 8 == 0 && aligned_16(p.out);
      if (p.bits == 8) {
        launch_tensor_cores<T, 8>(p);
      } else if (p.bits == 4) {
        launch_tensor_cores<T, 4>(p);
      } else {
        launch_tensor_cores<T, 16>(p);
      }
      return;
    }
  }
  launch_simt<T>(p);
}

template <typename T>
Problem<T> problem_of(const Tensor& a, const Tensor* offsets, Tensor& out, const GroupedGemmArgs& args, int experts,
                      int n, int k) {
  Problem<T> p{};
  p.a = a.data<T>();
  p.a_rows = args.a_rows ? args.a_rows->data<int32_t>() : nullptr;
  p.bits = 16;
  p.group_rows = {offsets != nullptr ? offsets->data<int32_t>() : nullptr, static_cast<int>(a.dim(0))};
  p.routing_settled = args.routing_settled;
  p.leave_room = args.next_starts_early;
  p.bias = args.bias ? args.bias->data<T>() : nullptr;
  p.out = out.data<T>();
  p.out_rows = args.out_rows ? args.out_rows->data<int32_t>() : nullptr;
  p.out_scale = args.out_scale ? args.out_scale->data<float>() : nullptr;
  p.rows = args.out_rows ? args.out_rows->dim(0) : out.dim(0);
  p.experts = experts;
  p.n = n;
  p.k = k;
  p.activation = activation_code(args.activation);
  return p;
}

// The launch both entry points share; set_weights points the problem at the weights (dense or packed).
template <typename SetWeights>
void grouped_gemm_of(const Tensor& a, const Shape& weights_shape, const Tensor* offsets, Tensor& out,
                     const GroupedGemmArgs& args, SetWeights&& set_weights) {
  const int experts = static_cast<int>(weights_shape[0]);
  const int n = static_cast<int>(weights_shape[1]);
  const int k = static_cast<int>(weights_shape[2]);
  if (experts == 0 || n == 0) return;
  if (experts > 65535) throw Error("grouped_gemm: more than 65535 experts on CUDA");
  rt::dispatch_floating(a.dtype(), "grouped_gemm", [&](auto tag) {
    using T = decltype(tag);
    Problem<T> p = problem_of<T>(a, offsets, out, args, experts, n, k);
    set_weights(p);
    run_grouped_gemm(p);
  });
}

// Points a problem at packed weights.
auto quantized_weights(const QuantizedTensor& weights) {
  return [&weights](auto& p) {
    p.weights = weights.values.raw();
    p.bits = weights.bits;
    p.quant = {static_cast<const __half*>(weights.scales.raw()), static_cast<int>(weights.group_size),
               weights.layout == PackedLayout::Tiled};
  };
}

// ---- prefill on Hopper: CUTLASS's wgmma grouped GEMM (grouped_gemm_sm90.h) --------------------------------------

// Above this many rows per expert, mma.sync runs out of tensor-core throughput and wgmma takes over. At 40 rows
// (the paper's layer at 1280 tokens) CUTLASS lost: 237 against 222 us.
constexpr int64_t kSm90RowsPerExpert = 64;

// CUTLASS reads the rows of a in expert order and writes the product the same way: with a_rows the rows are
// gathered first, with out_rows the product is added to its rows after (add_rows_kernel).
bool runs_on_sm90(const Tensor& a, const Tensor& weights, const Tensor& out, const GroupedGemmArgs& args) {
  const int64_t rows = args.out_rows ? args.out_rows->dim(0) : out.dim(0);
  const int64_t experts = weights.dim(0), n = weights.dim(1), k = weights.dim(2);
  return (a.dtype() == DType::F16 || a.dtype() == DType::BF16) && args.bias == nullptr &&
         (!args.activation || *args.activation == Activation::ReLU) && n % 8 == 0 && k % 8 == 0 &&
         rows > kSm90RowsPerExpert * experts && aligned_16(a.raw()) && aligned_16(weights.raw()) &&
         aligned_16(out.raw()) && sm90::available();
}

// out[out_rows[i]] += out_scale[out_rows[i]] * product[i] for the positions i below offsets[experts] (the rows the
// experts own), 8 columns a thread, rounded as the tensor-core epilogue rounds (store_8).
template <typename T>
__global__ void add_rows_kernel(const T* __restrict__ product, const int32_t* __restrict__ out_rows,
                                const float* __restrict__ out_scale, const int32_t* __restrict__ owned_rows,
                                T* __restrict__ out, int n, int64_t rows, bool vector) {
  rt::await_previous_kernel();
  const int packs = (n + 7) / 8;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / packs;
  const int col = static_cast<int>((static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) % packs) * 8;
  if (i >= rows || i >= *owned_rows) return;
  rt::Pack<T, 8> v{};
  const T* src = product + i * n + col;
  if (vector) {
    v = *reinterpret_cast<const rt::Pack<T, 8>*>(src);
  } else {
    for (int j = 0; j < min(8, n - col); ++j) v.v[j] = src[j];
  }
  store_8(v, out, out_rows, out_scale, i, col, n, vector);
}

// A CUTLASS GEMM with what the engine's arguments add around it: a's rows gathered into expert order before
// (a_rows), the product added to the rows it belongs to after (out_rows).
struct Sm90Call {
  Tensor gathered, product;
  sm90::GroupedGemm problem;
};

Sm90Call prepare_sm90(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                      const GroupedGemmArgs& args) {
  const int64_t n = weights.dim(1), k = weights.dim(2);
  const int64_t rows = args.out_rows ? args.out_rows->dim(0) : out.dim(0);
  Sm90Call call;
  sm90::GroupedGemm& problem = call.problem;
  if (args.a_rows) {  // gathered by the launch that writes CUTLASS's arguments
    call.gathered = Tensor::empty({rows, k}, a.dtype(), Device::CUDA);
    problem.a_source = a.raw();
    problem.a_rows = args.a_rows->data<int32_t>();
    problem.source_rows = a.dim(0);
    problem.rows = rows;
  }
  if (args.out_rows) call.product = Tensor::empty({rows, n}, a.dtype(), Device::CUDA);
  problem.dtype = a.dtype();
  problem.a = args.a_rows ? call.gathered.raw() : a.raw();
  problem.weights = weights.raw();
  problem.offsets = offsets.data<int32_t>();
  problem.out = args.out_rows ? call.product.raw() : out.raw();
  problem.experts = static_cast<int>(weights.dim(0));
  problem.n = static_cast<int>(n);
  problem.k = static_cast<int>(k);
  problem.relu = args.activation == Activation::ReLU;  // runs_on_sm90 lets no other activation through
  return call;
}

void finish_sm90(const Sm90Call& call, const Tensor& offsets, Tensor& out, const GroupedGemmArgs& args) {
  const int64_t rows = args.out_rows ? args.out_rows->dim(0) : 0;
  if (rows == 0) return;
  const int64_t n = call.problem.n;
  constexpr int kThreads = 256;
  rt::dispatch_floating(out.dtype(), "grouped_gemm", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      rt::launch(add_rows_kernel<T>, rt::blocks_for(rows * ((n + 7) / 8), kThreads), kThreads, 0,
                 call.product.data<T>(), args.out_rows->data<int32_t>(), args.out_scale->data<float>(),
                 offsets.data<int32_t>() + call.problem.experts, out.data<T>(), static_cast<int>(n), rows,
                 n % 8 == 0 && aligned_16(out.raw()));
    }
  });
}

}  // namespace

void grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args) {
  // A decode step's MoE layer at batch 1-4: no tensor-core tiles, no split-k; see small_m_gemm_cuda.cu. Measured on
  // the H100 (one build), the paper's layer at 1 / 2 tokens: 18.9 / 22.4 -> 11.7 / 21.0 us.
  if (small_m_grouped_gemm(a, weights, offsets, out, args)) return;
  if (runs_on_sm90(a, weights, out, args)) {
    const Sm90Call call = prepare_sm90(a, weights, offsets, out, args);
    sm90::run(call.problem);
    finish_sm90(call, offsets, out, args);
    return;
  }
  grouped_gemm_of(a, weights.shape(), &offsets, out, args, [&](auto& p) { p.weights = weights.raw(); });
}

void grouped_gemm(const Tensor& a, const QuantizedTensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args) {
  grouped_gemm_of(a, weights.shape, &offsets, out, args, quantized_weights(weights));
}

// The pair shares one launch of CUTLASS's argument writing where nothing runs between its two GEMMs: the first adds
// no rows after itself, the second gathers none before. Measured on the H100 (one build), the paper's layer at 3840
// tokens: fp16 272.6 -> 271.9 us, bf16 270.8 -> 270.2.
void grouped_gemm_pair(const Tensor& a, const Tensor& first, const Tensor& second, const Tensor& offsets,
                       Tensor& middle, Tensor& out, const GroupedGemmArgs& first_args,
                       const GroupedGemmArgs& second_args) {
  if (!first_args.out_rows && !second_args.a_rows && runs_on_sm90(a, first, middle, first_args) &&
      runs_on_sm90(middle, second, out, second_args)) {
    const Sm90Call one = prepare_sm90(a, first, offsets, middle, first_args);
    const Sm90Call two = prepare_sm90(middle, second, offsets, out, second_args);
    sm90::run_pair(one.problem, two.problem);
    finish_sm90(two, offsets, out, second_args);
    return;
  }
  cuda::grouped_gemm(a, first, offsets, middle, first_args);
  cuda::grouped_gemm(middle, second, offsets, out, second_args);
}

// 1-4 rows against int8 weights: the weight-streaming kernel (gemm_cuda.h); else one group of all rows (offsets null).
void quantized_linear(const Tensor& x, const QuantizedTensor& weight, Tensor& y, const QuantizedLinearArgs& args) {
  if (small_m_quantized_linear(x, weight, y, args.accumulate)) return;
  const Shape shape{1, weight.dim(0), weight.dim(1)};
  if (!args.accumulate) {
    grouped_gemm_of(x, shape, nullptr, y, {}, quantized_weights(weight));
    return;
  }
  Tensor product = Tensor::empty(y.shape(), y.dtype(), Device::CUDA);
  grouped_gemm_of(x, shape, nullptr, product, {}, quantized_weights(weight));
  add_in_place(y, product);
}

}  // namespace elephant::ops::cuda
