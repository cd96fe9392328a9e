// Routing, grouping and un-permuting of a top-1 MoE layer on CUDA. Nothing here synchronizes with the host or copies
// to it: the number of rows each expert received stays in `offsets`, read by the kernels, so a layer can be captured
// in a CUDA graph. Temporary memory comes from the stream-ordered pool.

#include <algorithm>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <mutex>
#include <string>
#include <type_traits>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"
#include "ops/moe_cuda.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = elephant::cuda;

constexpr unsigned kFullMask = 0xffffffffu;

// ---- sorting by expert ------------------------------------------------------------------------------------------

constexpr int kWarpSortMaxRows = 1024;

// Decode-sized inputs: one warp does a stable counting sort in two passes over the rows, 32 at a time; rows with the
// same expert in one step are ranked by __match_any_sync, so order within an expert is row order. next: shared
// [experts + 1], the counts, then the next free position of each expert. Called by one whole warp.
__device__ void warp_counting_sort(const int32_t* expert, int rows, int experts, int32_t* __restrict__ sorted_rows,
                                   int32_t* __restrict__ offsets, int* next) {
  const int lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1;
  for (int e = lane; e <= experts; e += 32) next[e] = 0;
  __syncwarp();
  for (int base = 0; base < rows; base += 32) {
    const int row = base + lane;
    const int key = row < rows ? (expert[row] < 0 || expert[row] > experts ? experts : expert[row]) : -1;
    const unsigned peers = __match_any_sync(kFullMask, key);
    if (key >= 0 && (peers & below) == 0) next[key] += __popc(peers);
    __syncwarp();
  }
  int carry = 0;
  for (int base = 0; base <= experts; base += 32) {
    const int e = base + lane;
    const int count = e <= experts ? next[e] : 0;
    int sum = count;
#pragma unroll
    for (int s = 1; s < 32; s <<= 1) {
      const int y = __shfl_up_sync(kFullMask, sum, s);
      if (lane >= s) sum += y;
    }
    if (e <= experts) {
      next[e] = carry + sum - count;
      offsets[e] = carry + sum - count;
    }
    carry += __shfl_sync(kFullMask, sum, 31);
  }
  __syncwarp();
  for (int base = 0; base < rows; base += 32) {
    const int row = base + lane;
    const int key = row < rows ? (expert[row] < 0 || expert[row] > experts ? experts : expert[row]) : -1;
    const unsigned peers = __match_any_sync(kFullMask, key);
    const int first = key >= 0 ? next[key] : 0;
    __syncwarp();
    if (key >= 0) {
      sorted_rows[first + __popc(peers & below)] = row;
      if ((peers & below) == 0) next[key] = first + __popc(peers);
    }
    __syncwarp();
  }
}

// ---- route_top1 -------------------------------------------------------------------------------------------------

constexpr int kRouteThreads = 256;
constexpr int kRouteWarps = kRouteThreads / 32;
constexpr int kExpertsPerWarp = 4;  // one 16-byte weight load feeds TOKENS x 4 FMAs per x value
constexpr int kRouteMaxXBytes = 96 * 1024;

// Sums the NV values v[OFFSET..OFFSET + NV) over the warp's lanes with at most 31 shuffles: on return lane l holds
// in v[OFFSET] the total of value l % NV. Recursive halving: at each step a lane keeps the half named by its bit.
template <int S, int OFFSET, int N>
__device__ __forceinline__ void halve_and_add(float (&v)[N], int lane) {
  if constexpr (S >= 1) {
    const bool upper = lane & S;
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const float send = upper ? v[OFFSET + i] : v[OFFSET + i + S];
      const float keep = upper ? v[OFFSET + i + S] : v[OFFSET + i];
      v[OFFSET + i] = keep + __shfl_xor_sync(kFullMask, send, S);
    }
    halve_and_add<S / 2, OFFSET, N>(v, lane);
  }
}

template <int NV, int OFFSET, int N>
__device__ __forceinline__ float transpose_reduce(float (&v)[N], int lane) {
  static_assert(NV >= 1 && NV <= 32 && (NV & (NV - 1)) == 0 && OFFSET + NV <= N);
  if constexpr (NV < 32) {
#pragma unroll
    for (int s = 16; s >= NV; s >>= 1)
#pragma unroll
      for (int i = 0; i < NV; ++i) v[OFFSET + i] += __shfl_xor_sync(kFullMask, v[OFFSET + i], s);
  }
  halve_and_add<NV / 2, OFFSET, N>(v, lane);
  return v[OFFSET];
}

// Softmax over one token's logits and the first maximum, as the CPU backend (torch.softmax, then torch.max): a warp
// per token. Top-k would keep the k best (probability, expert) pairs per lane and merge them the same way.
__device__ void select_top1(const float* logits, int experts, int lane, int32_t& expert, float& probability) {
  float max = -INFINITY;
  for (int e = lane; e < experts; e += 32) max = fmaxf(max, logits[e]);
#pragma unroll
  for (int s = 16; s >= 1; s >>= 1) max = fmaxf(max, __shfl_xor_sync(kFullMask, max, s));
  float sum = 0.0f;
  for (int e = lane; e < experts; e += 32) sum += expf(logits[e] - max);
#pragma unroll
  for (int s = 16; s >= 1; s >>= 1) sum += __shfl_xor_sync(kFullMask, sum, s);
  float best = -1.0f;
  int best_expert = 0;
  for (int e = lane; e < experts; e += 32) {
    const float p = expf(logits[e] - max) / sum;
    if (p > best) {
      best = p;
      best_expert = e;
    }
  }
#pragma unroll
  for (int s = 16; s >= 1; s >>= 1) {
    const float other = __shfl_xor_sync(kFullMask, best, s);
    const int other_expert = __shfl_xor_sync(kFullMask, best_expert, s);
    if (other > best || (other == best && other_expert < best_expert)) {
      best = other;
      best_expert = other_expert;
    }
  }
  expert = best_expert;
  probability = best;
}

// A block routes TOKENS tokens: their x rows staged in shared memory as float32, each warp computes groups of 4
// experts' dot products with every staged token (the weights are read once per block, 16 bytes per lane), then a
// warp per token takes the softmax and the top-1. V = 4 when d allows 16-byte weight loads, else 1.
// SORT: the block holds every token (one block), keeps the chosen experts in shared memory instead of `expert`, and
// its first warp sorts them (sort_by_expert's outputs): routing and sorting in one launch for decode-sized batches.
template <typename T, int TOKENS, int V, bool SORT>
__global__ void __launch_bounds__(kRouteThreads, 2)
    route_top1_kernel(const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
                      const uint8_t* __restrict__ active, int tokens, int experts, int d, int32_t* __restrict__ expert,
                      float* __restrict__ probability, int32_t* __restrict__ sorted_rows,
                      int32_t* __restrict__ offsets) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // The router's weights do not depend on the kernel before this one: their lines are requested before waiting for
  // it (programmatic dependent launch), so that their HBM latency overlaps its tail instead of following it. The
  // blocks share the lines out; the loads below then find them in L2.
  {
    const auto* bytes = reinterpret_cast<const char*>(weight);
    const int64_t size = static_cast<int64_t>(experts) * d * sizeof(float);
    for (int64_t line = static_cast<int64_t>(blockIdx.x) * kRouteThreads + tid; line * 128 < size;
         line += static_cast<int64_t>(gridDim.x) * kRouteThreads)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(bytes + line * 128));
  }
  rt::await_previous_kernel();
  extern __shared__ __align__(16) float route_smem[];
  float* const xs = route_smem;                                                   // [TOKENS][d]
  float* const logits = route_smem + static_cast<int64_t>(TOKENS) * d;            // [TOKENS][experts]
  int* const chosen_experts = reinterpret_cast<int*>(logits + TOKENS * experts);  // [TOKENS] (SORT)
  int* const next = chosen_experts + TOKENS;                                      // [experts + 1] (SORT)
  const int t0 = blockIdx.x * TOKENS;

  // Only this block's tokens are loaded, 16 bytes a load where the rows allow it, the loads of a thread unrolled
  // so that they are in flight together: one x value a load made this staging the kernel's longest part at decode.
  const int block_tokens = min(TOKENS, tokens - t0);
  const T* const block_x = x + static_cast<int64_t>(t0) * d;
  constexpr int kPack = 16 / sizeof(T);
  if (d % kPack == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    const int packs = d / kPack;
#pragma unroll 4
    for (int i = tid; i < block_tokens * packs; i += kRouteThreads) {
      const uint4 raw = reinterpret_cast<const uint4*>(block_x)[i];
      const T* const values = reinterpret_cast<const T*>(&raw);
      float4* const out = reinterpret_cast<float4*>(xs + static_cast<int64_t>(i) * kPack);
#pragma unroll
      for (int j = 0; j < kPack / 4; ++j)
        out[j] = make_float4(rt::to_float(values[4 * j]), rt::to_float(values[4 * j + 1]),
                             rt::to_float(values[4 * j + 2]), rt::to_float(values[4 * j + 3]));
    }
  } else {
    for (int i = tid; i < block_tokens * d; i += kRouteThreads) xs[i] = rt::to_float(block_x[i]);
  }
  for (int i = block_tokens * d + tid; i < TOKENS * d; i += kRouteThreads) xs[i] = 0.0f;
  __syncthreads();

  using Vec = std::conditional_t<V == 4, float4, float>;
  const int vectors = d / V;
  for (int e0 = warp * kExpertsPerWarp; e0 < experts; e0 += kRouteWarps * kExpertsPerWarp) {
    static_assert(TOKENS == 4 || TOKENS == 8 || TOKENS == 16, "sums are reduced in groups of 8 tokens");
    float acc[TOKENS * kExpertsPerWarp];
#pragma unroll
    for (int i = 0; i < TOKENS * kExpertsPerWarp; ++i) acc[i] = 0.0f;
    const Vec* w[kExpertsPerWarp];
#pragma unroll
    for (int j = 0; j < kExpertsPerWarp; ++j)
      w[j] = reinterpret_cast<const Vec*>(weight + static_cast<int64_t>(min(e0 + j, experts - 1)) * d);
#pragma unroll(TOKENS >= 16 ? 1 : TOKENS >= 8 ? 2 : 4)
    for (int q = lane; q < vectors; q += 32) {
      Vec wv[kExpertsPerWarp];
#pragma unroll
      for (int j = 0; j < kExpertsPerWarp; ++j) wv[j] = __ldg(w[j] + q);
#pragma unroll
      for (int t = 0; t < TOKENS; ++t) {
        const Vec xv = reinterpret_cast<const Vec*>(xs + t * d)[q];
#pragma unroll
        for (int j = 0; j < kExpertsPerWarp; ++j) {
          if constexpr (V == 4) {
            acc[t * kExpertsPerWarp + j] += xv.x * wv[j].x + xv.y * wv[j].y + xv.z * wv[j].z + xv.w * wv[j].w;
          } else {
            acc[t * kExpertsPerWarp + j] += xv * wv[j];
          }
        }
      }
    }
    // Groups of 8 tokens (32 sums): lane l ends with token 8 * g + l / 4 of group g and expert e0 + l % 4.
    constexpr int kSums = TOKENS * kExpertsPerWarp;
    constexpr int kGroup = kSums < 32 ? kSums : 32;
    const int e = e0 + lane % kExpertsPerWarp;
    const float b = bias != nullptr && e < experts ? bias[e] : 0.0f;
    auto write = [&](int group, float total) {
      if (lane < kGroup && e < experts) logits[(group * 8 + lane / kExpertsPerWarp) * experts + e] = total + b;
    };
    write(0, transpose_reduce<kGroup, 0>(acc, lane));
    if constexpr (kSums > 32) write(1, transpose_reduce<32, 32>(acc, lane));
  }
  __syncthreads();

  for (int r = warp; r < TOKENS && t0 + r < tokens; r += kRouteWarps) {
    const int t = t0 + r;
    int32_t chosen = experts;
    float p = 0.0f;
    if (active == nullptr || active[t] != 0) select_top1(logits + r * experts, experts, lane, chosen, p);
    if (lane == 0) {
      if constexpr (SORT) {
        chosen_experts[r] = chosen;
      } else {
        expert[t] = chosen;
      }
      probability[t] = p;
    }
  }
  if constexpr (SORT) {
    __syncthreads();
    if (warp == 0) warp_counting_sort(chosen_experts, tokens, experts, sorted_rows, offsets, next);
  }
}

// Outputs of one routing launch: the expert per token, or (sort) the sorted rows and offsets instead.
struct RouteOutputs {
  int32_t* expert = nullptr;
  float* probability = nullptr;
  int32_t* sorted_rows = nullptr;
  int32_t* offsets = nullptr;
};

template <int TOKENS>
size_t route_shared_bytes(int64_t d, int64_t experts, bool sort) {
  return (static_cast<size_t>(TOKENS) * d + static_cast<size_t>(TOKENS) * experts) * sizeof(float) +
         (sort ? (TOKENS + experts + 1) * sizeof(int) : 0);
}

template <typename T, int TOKENS, bool SORT>
void launch_route(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active,
                  const RouteOutputs& out) {
  const int tokens = static_cast<int>(x.dim(0));
  const int d = static_cast<int>(x.dim(1));
  const int experts = static_cast<int>(weight.dim(0));
  const size_t smem = route_shared_bytes<TOKENS>(d, experts, SORT);
  if (smem > rt::device_properties().sharedMemPerBlockOptin)
    throw Error("route_top1: " + std::to_string(experts) + " experts of width " + std::to_string(d) +
                " do not fit in shared memory");
  const bool vectors = d % 4 == 0 && reinterpret_cast<uintptr_t>(weight.raw()) % 16 == 0;
  auto launch = [&](auto kernel) {
    // Once per kernel: allow all the shared memory a block may have (a host-side setting, nothing is queued).
    static std::once_flag raised[2];
    std::call_once(raised[vectors], [&] {
      ELEPHANT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(rt::device_properties().sharedMemPerBlockOptin)));
    });
    rt::launch(kernel, rt::blocks_for(tokens, TOKENS), kRouteThreads, smem, x.data<T>(), weight.data<float>(),
               bias ? bias->data<float>() : nullptr, active ? active->data<uint8_t>() : nullptr, tokens, experts, d,
               out.expert, out.probability, out.sorted_rows, out.offsets);
  };
  if (vectors) {
    launch(route_top1_kernel<T, TOKENS, 4, SORT>);
  } else {
    launch(route_top1_kernel<T, TOKENS, 1, SORT>);
  }
}

// As many tokens per routing block as the staged rows allow (the weights are read once per block), but no more
// than there are: a block's sums and registers grow with its token count.
template <typename F>
void with_route_tokens(int64_t tokens, int64_t d, F&& f) {
  const auto fits = [d](int64_t n) { return n * d * 4 <= kRouteMaxXBytes; };
  if (tokens > 8 && fits(16)) {
    f(std::integral_constant<int, 16>{});
  } else if (tokens > 4 && fits(8)) {
    f(std::integral_constant<int, 8>{});
  } else {
    f(std::integral_constant<int, 4>{});
  }
}

// ---- sort_by_expert ---------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(32)
    warp_sort_kernel(const int32_t* __restrict__ expert, int rows, int experts, int32_t* __restrict__ sorted_rows,
                     int32_t* __restrict__ offsets) {
  rt::await_previous_kernel();
  extern __shared__ int next[];
  warp_counting_sort(expert, rows, experts, sorted_rows, offsets, next);
}

__global__ void sort_keys_kernel(const int32_t* __restrict__ expert, int rows, int experts, uint32_t* __restrict__ keys,
                                 int32_t* __restrict__ indices) {
  rt::await_previous_kernel();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows) return;
  keys[i] = static_cast<uint32_t>(expert[i] < 0 || expert[i] > experts ? experts : expert[i]);
  indices[i] = i;
}

// offsets[e] = lower_bound(sorted keys, e) for e = 0..experts.
__global__ void expert_offsets_kernel(const uint32_t* __restrict__ sorted_keys, int rows, int experts,
                                      int32_t* __restrict__ offsets) {
  rt::await_previous_kernel();
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e > experts) return;
  int lo = 0, hi = rows;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (sorted_keys[mid] < static_cast<uint32_t>(e)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  offsets[e] = lo;
}

}  // namespace

void route_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active, Tensor& expert,
                Tensor& probability) {
  if (weight.dim(0) == 0) throw Error("route_top1: no experts");
  rt::dispatch_floating(x.dtype(), "route_top1", [&](auto tag) {
    using T = decltype(tag);
    with_route_tokens(x.dim(0), x.dim(1), [&](auto tokens_per_block) {
      launch_route<T, decltype(tokens_per_block)::value, false>(x, weight, bias, active,
                                                                {expert.data<int32_t>(), probability.data<float>()});
    });
  });
}

bool route_and_sort_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active,
                         Tensor& probability, Tensor& sorted_rows, Tensor& offsets) {
  const int64_t tokens = x.dim(0), d = x.dim(1), experts = weight.dim(0);
  if (experts == 0 || tokens == 0) return false;
  bool fused = false;
  rt::dispatch_floating(x.dtype(), "route_and_sort_top1", [&](auto tag) {
    using T = decltype(tag);
    with_route_tokens(tokens, d, [&](auto tokens_per_block) {
      constexpr int kTokens = decltype(tokens_per_block)::value;
      if (tokens > kTokens ||
          route_shared_bytes<kTokens>(d, experts, true) > rt::device_properties().sharedMemPerBlockOptin)
        return;
      RouteOutputs out;
      out.probability = probability.data<float>();
      out.sorted_rows = sorted_rows.data<int32_t>();
      out.offsets = offsets.data<int32_t>();
      launch_route<T, kTokens, true>(x, weight, bias, active, out);
      fused = true;
    });
  });
  return fused;
}

void sort_by_expert(const Tensor& expert, int num_experts, Tensor& sorted_rows, Tensor& offsets) {
  const int64_t rows64 = expert.dim(0);
  if (rows64 > INT32_MAX) throw Error("sort_by_expert: more than 2^31 - 1 rows");
  const int rows = static_cast<int>(rows64);
  const size_t counters = (static_cast<size_t>(num_experts) + 1) * sizeof(int);
  if (rows <= kWarpSortMaxRows && counters <= 48 * 1024) {
    rt::launch(warp_sort_kernel, 1, 32, counters, expert.data<int32_t>(), rows, num_experts,
               sorted_rows.data<int32_t>(), offsets.data<int32_t>());
    return;
  }
  // Radix sort of (expert, row) pairs over the bits of 0..num_experts: stable, so rows keep their order.
  int end_bit = 1;
  while ((static_cast<uint32_t>(num_experts) >> end_bit) != 0) ++end_bit;
  Tensor keys = Tensor::empty({2, rows64}, DType::I32, Device::CUDA);
  Tensor indices = Tensor::empty({rows64}, DType::I32, Device::CUDA);
  auto* keys_in = reinterpret_cast<uint32_t*>(keys.data<int32_t>());
  uint32_t* keys_out = keys_in + rows;
  rt::launch(sort_keys_kernel, rt::blocks_for(rows, 256), 256, 0, expert.data<int32_t>(), rows, num_experts, keys_in,
             indices.data<int32_t>());
  size_t temp_bytes = 0;
  ELEPHANT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, indices.data<int32_t>(),
                                                      sorted_rows.data<int32_t>(), rows, 0, end_bit, rt::stream()));
  Tensor temp = Tensor::empty({static_cast<int64_t>(std::max<size_t>(temp_bytes, 1))}, DType::U8, Device::CUDA);
  ELEPHANT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw(), temp_bytes, keys_in, keys_out,
                                                      indices.data<int32_t>(), sorted_rows.data<int32_t>(), rows, 0,
                                                      end_bit, rt::stream()));
  rt::launch(expert_offsets_kernel, rt::blocks_for(num_experts + 1, 128), 128, 0, keys_out, rows, num_experts,
             offsets.data<int32_t>());
}

}  // namespace elephant::ops::cuda
