// Attention over packed variable-length sequences. Grid (sequence, head, query chunk); each warp of a block
// owns one query, and the block streams the sequence's keys and values through shared memory in tiles of 32
// keys (in the tensors' dtype) that all its warps share. Per tile a lane scores one key (a float32 dot with
// the query, held in shared memory as float), the warp updates an online softmax (running max, per-lane
// partial sums), then each lane accumulates its ceil(head_dim / 32) output dimensions. The layout is read on
// the device: blocks past a sequence's real query count exit, and rows outside every sequence are never
// written. A query that sees no key gets zeros, as on the CPU.
//
// Decode steps (one query per sequence) take decode_attention_kernel instead: there the kernel above has one
// useful warp per block, and the step's time is its serial chain of tile loads and barriers, not bytes.
//
// attention_with_append: the decode kernel appends the query's own key and value itself, one launch for what was
// two cache writes and the attention; other layouts write them with append_kernel first.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;
using rt::from_float;
using rt::to_float;

constexpr int kTileKeys = 32;  // one key per lane in the score step
constexpr int kMaxWarps = 8;
constexpr int kMaxHeadDim = 128;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

struct Params {
  const int32_t* query_begin;
  const int32_t* key_begin;
  const int32_t* key_length;
  const int32_t* query_position;
  const float* bias;  // [heads, bias_width] or null
  int bias_width;
  int bias_max_offset;
  int head_dim;
  int64_t inner;  // heads * head_dim: the row stride of queries, keys, values and out
  bool causal;
  bool vector_loads;  // key/value rows are whole 16-byte packs
  int padded_dim;     // head_dim rounded up to a pack: the score loop's length (the padding is zero)
  int key_stride;     // elements per shared key row: padded_dim, plus a pack when that keeps 16-byte reads apart
  int query_stride;   // floats per warp's query: head_dim rounded up to 8
};

// attention_with_append's new rows (laid out like the queries) and the caches they go into, which are the keys and
// values the kernels read. Null pointers: plain attention.
template <typename T>
struct Append {
  const T* keys = nullptr;
  const T* values = nullptr;
  T* key_cache = nullptr;
  T* value_cache = nullptr;
};

// Block (s, i) copies the new rows of sequence s's queries i, i + gridDim.y, ... to their keys, skipping a
// position outside the sequence's keys.
template <typename T>
__global__ void append_kernel(Append<T> append, Params p) {
  rt::await_previous_kernel();
  const int s = blockIdx.x;
  const int first_row = p.query_begin[s];
  const int queries_here = p.query_begin[s + 1] - first_row;
  const int64_t key_row0 = p.key_begin[s];
  const int key_length = p.key_length[s], first_position = p.query_position[s];
  for (int i = blockIdx.y; i < queries_here; i += gridDim.y) {
    const int position = first_position + i;
    if (position < 0 || position >= key_length) continue;
    const int64_t from = static_cast<int64_t>(first_row + i) * p.inner, to = (key_row0 + position) * p.inner;
    for (int64_t e = threadIdx.x; e < p.inner; e += blockDim.x) {
      append.key_cache[to + e] = append.keys[from + e];
      append.value_cache[to + e] = append.values[from + e];
    }
  }
}

// C = ceil(head_dim / 32): the output dimensions lane * C .. lane * C + C - 1 are the lane's.
template <typename T, int C>
__global__ void attention_kernel(const T* __restrict__ queries, const T* __restrict__ keys,
                                 const T* __restrict__ values, T* __restrict__ out, Params p) {
  rt::await_previous_kernel();
  constexpr int N = 16 / sizeof(T);
  using P = Pack<T, N>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* q_s = reinterpret_cast<float*>(smem) + warp * p.query_stride;                     // this warp's query
  T* k_s = reinterpret_cast<T*>(reinterpret_cast<float*>(smem) + warps * p.query_stride);  // [32][key_stride]
  T* v_s = k_s + kTileKeys * p.key_stride;                                                 // [32][32 * C]
  constexpr int v_stride = 32 * C;

  const int s = blockIdx.x, h = blockIdx.y;
  const int first_row = p.query_begin[s];
  const int queries_here = p.query_begin[s + 1] - first_row;
  const int block_first = blockIdx.z * warps;
  if (block_first >= queries_here) return;  // the whole block: before any barrier
  const int qi = block_first + warp;
  const bool active = qi < queries_here;
  const int key_length = p.key_length[s];
  const int first_position = p.query_position[s];
  const int position = first_position + qi;
  // Causal: the block needs the keys its last query sees; each warp stops at its own.
  const int block_last_position = first_position + min(queries_here, block_first + warps) - 1;
  const int block_keys = p.causal ? min(key_length, block_last_position + 1) : key_length;
  const int visible = !active ? 0 : p.causal ? min(key_length, position + 1) : key_length;
  const int hd = p.head_dim;
  const int64_t head_offset = static_cast<int64_t>(h) * hd;

  const T* q = queries + static_cast<int64_t>(first_row + qi) * p.inner + head_offset;
  for (int d = lane; d < p.query_stride; d += 32) q_s[d] = active && d < hd ? to_float(q[d]) : 0.0f;
  // The key padding columns are never loaded: zero them once so the score loop may read whole packs.
  const int pad = p.padded_dim - hd;
  for (int i = threadIdx.x; i < kTileKeys * pad; i += blockDim.x)
    k_s[(i / pad) * p.key_stride + hd + i % pad] = from_float<T>(0.0f);

  const int64_t key_row0 = p.key_begin[s];
  const T* k_base = keys + key_row0 * p.inner + head_offset;
  const T* v_base = values + key_row0 * p.inner + head_offset;
  const float* bias = p.bias ? p.bias + static_cast<int64_t>(h) * p.bias_width + p.bias_max_offset - position
                             : nullptr;  // bias[j] is key j's column

  float running_max = -INFINITY, partial_sum = 0.0f, acc[C];
#pragma unroll
  for (int c = 0; c < C; ++c) acc[c] = 0.0f;

  for (int tile = 0; tile < block_keys; tile += kTileKeys) {
    const int rows = min(kTileKeys, block_keys - tile);
    __syncthreads();  // the previous tile is consumed (and, the first time, q_s and the padding are written)
    if (p.vector_loads) {
      const int units = hd / N;
      for (int i = threadIdx.x; i < rows * units; i += blockDim.x) {
        const int r = i / units, u = i - r * units;
        const int64_t g = static_cast<int64_t>(tile + r) * p.inner + u * N;
        *reinterpret_cast<P*>(k_s + r * p.key_stride + u * N) = *reinterpret_cast<const P*>(k_base + g);
        *reinterpret_cast<P*>(v_s + r * v_stride + u * N) = *reinterpret_cast<const P*>(v_base + g);
      }
    } else {
      for (int i = threadIdx.x; i < rows * hd; i += blockDim.x) {
        const int r = i / hd, d = i - r * hd;
        const int64_t g = static_cast<int64_t>(tile + r) * p.inner + d;
        k_s[r * p.key_stride + d] = k_base[g];
        v_s[r * v_stride + d] = v_base[g];
      }
    }
    __syncthreads();
    if (tile >= visible) continue;  // warp-uniform; the warp still meets the next barrier

    const int j = tile + lane;
    float score = -INFINITY;
    if (j < visible) {
      const T* k_row = k_s + lane * p.key_stride;
      float dot = 0.0f;
      for (int u = 0; u < p.padded_dim; u += N) {
        const P k = *reinterpret_cast<const P*>(k_row + u);
#pragma unroll
        for (int e = 0; e < N; e += 4) {
          const float4 qv = *reinterpret_cast<const float4*>(q_s + u + e);
          dot = fmaf(qv.x, to_float(k.v[e]), dot);
          dot = fmaf(qv.y, to_float(k.v[e + 1]), dot);
          dot = fmaf(qv.z, to_float(k.v[e + 2]), dot);
          dot = fmaf(qv.w, to_float(k.v[e + 3]), dot);
        }
      }
      score = bias ? dot + bias[j] : dot;
    }
    float tile_max = score;
    for (int offset = 16; offset > 0; offset /= 2)
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
    const float new_max = fmaxf(running_max, tile_max);
    // All scores so far -inf (a -inf bias): keep everything at zero instead of exp(-inf - -inf) = NaN.
    const float reference = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = expf(running_max - reference);
    const float prob = expf(score - reference);
    running_max = new_max;
    partial_sum = partial_sum * correction + prob;
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] *= correction;

    const int keys_here = min(kTileKeys, visible - tile);
    const T* v_lane = v_s + lane * C;
    for (int jj = 0; jj < keys_here; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, prob, jj);
      const T* v = v_lane + jj * v_stride;
      if constexpr (C == 2 || C == 4) {
        const Pack<T, C> vv = *reinterpret_cast<const Pack<T, C>*>(v);
#pragma unroll
        for (int c = 0; c < C; ++c) acc[c] = fmaf(pj, to_float(vv.v[c]), acc[c]);
      } else {
#pragma unroll
        for (int c = 0; c < C; ++c) acc[c] = fmaf(pj, to_float(v[c]), acc[c]);
      }
    }
  }

  if (!active) return;
  float sum = partial_sum;
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  T* o = out + static_cast<int64_t>(first_row + qi) * p.inner + head_offset;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int d = lane * C + c;
    if (d < hd) o[d] = from_float<T>(acc[c] * inv);
  }
}

template <typename T>
Params make_params(const Tensor& keys, const Tensor& values, const AttentionLayout& layout, const AttentionArgs& args) {
  constexpr int N = 16 / sizeof(T);
  const int hd = args.head_dim;
  Params p;
  p.query_begin = layout.query_begin.data<int32_t>();
  p.key_begin = layout.key_begin.data<int32_t>();
  p.key_length = layout.key_length.data<int32_t>();
  p.query_position = layout.query_position.data<int32_t>();
  p.bias = args.position_bias ? args.position_bias->data<float>() : nullptr;
  p.bias_width = 2 * args.bias_max_offset + 1;
  p.bias_max_offset = args.bias_max_offset;
  p.head_dim = hd;
  p.inner = static_cast<int64_t>(args.num_heads) * hd;
  p.causal = args.causal;
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  p.vector_loads = hd % N == 0 && p.inner % N == 0 && aligned(keys.raw()) && aligned(values.raw());
  p.padded_dim = (hd + N - 1) / N * N;
  // Lanes read 16-byte packs of rows key_stride apart: an odd number of packs keeps 8 lanes on 8 bank groups.
  p.key_stride = p.padded_dim + ((p.padded_dim / N) % 2 == 0 ? N : 0);
  p.query_stride = (hd + 7) / 8 * 8;
  return p;
}

void check_grid(const AttentionLayout& layout, const AttentionArgs& args, int64_t chunks) {
  if (layout.sequences() > 0x7fffffff || args.num_heads > 65535 || chunks > 65535)
    throw Error("attention: " + std::to_string(layout.sequences()) + " sequences, " + std::to_string(args.num_heads) +
                " heads and up to " + std::to_string(layout.max_queries) + " queries per sequence exceed one launch");
}

template <typename T, int C>
void launch(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
            const AttentionArgs& args, Tensor& out) {
  const Params p = make_params<T>(keys, values, layout, args);
  const int warps = static_cast<int>(std::min<int64_t>(kMaxWarps, layout.max_queries));
  const int64_t chunks = (layout.max_queries + warps - 1) / warps;
  check_grid(layout, args, chunks);
  const size_t smem = static_cast<size_t>(warps) * p.query_stride * sizeof(float) +
                      static_cast<size_t>(kTileKeys) * (p.key_stride + 32 * C) * sizeof(T);
  const dim3 grid(static_cast<unsigned>(layout.sequences()), static_cast<unsigned>(args.num_heads),
                  static_cast<unsigned>(chunks));
  rt::launch(attention_kernel<T, C>, grid, warps * 32, smem, queries.data<T>(), keys.data<T>(), values.data<T>(),
             out.data<T>(), p);
}

// ---- One query per sequence (decode steps) ----
// A block owns (sequence, head) and its warps split the keys. A group of G lanes holds one key row, a 16-byte
// pack per lane (G: the row's packs rounded up to a power of two, so that a warp holds 32 / G keys), so keys and
// values go from global memory straight to registers, with no shared-memory tile and no barrier in the loop, and
// each group has a few keys in flight before it uses the first. Each group keeps an online softmax
// (max, sum, acc) over its keys; groups merge by shuffles within a warp, then warps through shared memory.
constexpr int kDecodeMaxWarps = 8;
// Keys per group and pass: 4 with 16-byte loads; 2 with element loads, whose halves take a register each.
__host__ __device__ constexpr int decode_keys_per_group(bool vector_loads) { return vector_loads ? 4 : 2; }

// A lane's 16 bytes of a row from `src`, of which the first `valid` elements exist (the rest are zero): one
// 16-byte load when the row is whole packs, else element by element. Returned as words: a predicated load then
// lands in zeroed registers, where a pack of halves would be merged with zeros half by half, waiting for the load
// before the next one issues.
template <typename T, bool kVector>
__device__ __forceinline__ uint4 load_words(const T* src, int valid) {
  constexpr int N = 16 / sizeof(T);
  uint4 x = make_uint4(0, 0, 0, 0);
  if constexpr (kVector) {
    if (valid >= N) x = *reinterpret_cast<const uint4*>(src);
  } else {
    Pack<T, N> pack{};
#pragma unroll
    for (int e = 0; e < N; ++e)
      if (e < valid) pack.v[e] = src[e];
    memcpy(&x, &pack, sizeof(x));
  }
  return x;
}

// The first `valid` elements of a lane's 16 bytes to `dst`, as load_words reads them.
template <typename T, bool kVector>
__device__ __forceinline__ void store_words(T* dst, uint4 x, int valid) {
  constexpr int N = 16 / sizeof(T);
  if constexpr (kVector) {
    if (valid >= N) *reinterpret_cast<uint4*>(dst) = x;
  } else {
    Pack<T, N> pack;
    memcpy(&pack, &x, sizeof(pack));
#pragma unroll
    for (int e = 0; e < N; ++e)
      if (e < valid) dst[e] = pack.v[e];
  }
}

template <typename T>
__device__ __forceinline__ Pack<T, 16 / sizeof(T)> unpack(uint4 x) {
  Pack<T, 16 / sizeof(T)> pack;
  memcpy(&pack, &x, sizeof(pack));
  return pack;
}

// (max, sum, acc) of the other half merged into this one's; -inf maxima on both sides stay zero, not NaN.
template <int N>
__device__ __forceinline__ void merge_softmax(float& max, float& sum, float (&acc)[N], float other_max, float other_sum,
                                              const float (&other_acc)[N]) {
  const float new_max = fmaxf(max, other_max);
  const float reference = new_max == -INFINITY ? 0.0f : new_max;
  const float mine = expf(max - reference), theirs = expf(other_max - reference);
  max = new_max;
  sum = sum * mine + other_sum * theirs;
#pragma unroll
  for (int e = 0; e < N; ++e) acc[e] = acc[e] * mine + other_acc[e] * theirs;
}

// kAppend: the block first writes its head's slice of the query's new key and value to key `position`, and reads
// that key from the new rows, not from the cache: no block reads a cache element written during the launch, so
// there is no barrier and the cache stays read-only to the loads (each head's slice is its own block's).
template <typename T, bool kVector, bool kAppend>
__global__ void __launch_bounds__(kDecodeMaxWarps * 32, 1)
    decode_attention_kernel(const T* __restrict__ queries, const T* __restrict__ keys, const T* __restrict__ values,
                            T* __restrict__ out, Params p, int group_shift, Append<T> append) {
  rt::await_previous_kernel();
  constexpr int N = 16 / sizeof(T), U = decode_keys_per_group(kVector);
  __shared__ float warp_max[kDecodeMaxWarps], warp_sum[kDecodeMaxWarps];
  __shared__ float warp_acc[kDecodeMaxWarps][kMaxHeadDim];

  // A sequence without a query sees no key and writes nothing. No early exit and no branch on it: the compiler
  // would defer the other layout loads behind the query range, a second memory round trip ahead of the key loads.
  const int s = blockIdx.x, h = blockIdx.y;
  const int row = p.query_begin[s];
  const bool has_query = p.query_begin[s + 1] > row;
  const int64_t key_row0 = p.key_begin[s];
  const int key_length = p.key_length[s], position = p.query_position[s];
  const int visible = (p.causal ? min(key_length, position + 1) : key_length) & -static_cast<int>(has_query);
  const int G = 1 << group_shift, groups = blockDim.x >> group_shift, group = threadIdx.x >> group_shift;
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int hd = p.head_dim, d0 = (lane & (G - 1)) * N;  // the lane's dimensions: d0 .. d0 + N - 1, those < hd real
  const int valid = hd - d0;
  const int64_t head_offset = static_cast<int64_t>(h) * hd;

  const T* k_lane = keys + key_row0 * p.inner + head_offset + d0;
  const T* v_lane = values + key_row0 * p.inner + head_offset + d0;
  const int64_t new_offset = static_cast<int64_t>(row) * p.inner + head_offset + d0;  // the lane's new key and value
  const int append_at = kAppend && has_query && position >= 0 && position < key_length ? position : -1;
  const float* bias = p.bias ? p.bias + static_cast<int64_t>(h) * p.bias_width + p.bias_max_offset - position
                             : nullptr;  // bias[j] is key j's column

  // Pass by pass group g takes keys base + u * groups + g; keys past `visible` load nothing and score -inf. A
  // pass's loads are issued at the end of the one before (the first with the query's), all before any use.
  uint4 k_words[U], v_words[U];
  float key_bias[U];
  const auto load_pass = [&](int base) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = base + u * groups + group;
      const int64_t offset = static_cast<int64_t>(j) * p.inner;
      const T* k_src = k_lane + offset;
      const T* v_src = v_lane + offset;
      if constexpr (kAppend) {
        if (j == append_at) {
          k_src = append.keys + new_offset;
          v_src = append.values + new_offset;
        }
      }
      k_words[u] = load_words<T, kVector>(k_src, j < visible ? valid : 0);
      v_words[u] = load_words<T, kVector>(v_src, j < visible ? valid : 0);
      key_bias[u] = bias && j < visible ? bias[j] : 0.0f;
    }
  };
  load_pass(0);
  // The query after the first keys' loads are issued: its conversion waits for it.
  const Pack<T, N> q_pack = unpack<T>(
      load_words<T, kVector>(queries + static_cast<int64_t>(row) * p.inner + head_offset + d0, has_query ? valid : 0));
  float q[N];
#pragma unroll
  for (int e = 0; e < N; ++e) q[e] = to_float(q_pack.v[e]);
  if constexpr (kAppend) {
    if (append_at >= 0 && threadIdx.x < G) {  // the first group's lanes cover the head's dimensions
      const int64_t slot = (key_row0 + append_at) * p.inner + head_offset + d0;
      store_words<T, kVector>(append.key_cache + slot, load_words<T, kVector>(append.keys + new_offset, valid), valid);
      store_words<T, kVector>(append.value_cache + slot, load_words<T, kVector>(append.values + new_offset, valid),
                              valid);
    }
  }

  float running_max = -INFINITY, sum = 0.0f, acc[N];
#pragma unroll
  for (int e = 0; e < N; ++e) acc[e] = 0.0f;
  // The bound is block-uniform, so that whole warps meet the shuffles.
  for (int base = 0; base < visible; base += U * groups) {
    float dot[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const Pack<T, N> k = unpack<T>(k_words[u]);
      dot[u] = 0.0f;
#pragma unroll
      for (int e = 0; e < N; ++e) dot[u] = fmaf(q[e], to_float(k.v[e]), dot[u]);
    }
    for (int offset = G / 2; offset > 0; offset /= 2) {  // the group's sum, in every lane of it
#pragma unroll
      for (int u = 0; u < U; ++u) dot[u] += __shfl_xor_sync(0xffffffffu, dot[u], offset);
    }
    float score[U], pass_max = -INFINITY;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      score[u] = base + u * groups + group < visible ? dot[u] + key_bias[u] : -INFINITY;
      pass_max = fmaxf(pass_max, score[u]);
    }
    const float new_max = fmaxf(running_max, pass_max);
    // All scores so far -inf (no key yet, or a -inf bias): keep everything at zero instead of NaN.
    const float reference = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = expf(running_max - reference);
    running_max = new_max;
    sum *= correction;
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] *= correction;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const Pack<T, N> v = unpack<T>(v_words[u]);
      const float prob = expf(score[u] - reference);
      sum += prob;
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] = fmaf(prob, to_float(v.v[e]), acc[e]);
    }
    load_pass(base + U * groups);
  }

  // Lanes G, 2G, ... apart hold the same dimensions for other keys: fold the warp's groups into its first.
  for (int offset = G; offset < 32; offset *= 2) {
    float other_acc[N];
#pragma unroll
    for (int e = 0; e < N; ++e) other_acc[e] = __shfl_xor_sync(0xffffffffu, acc[e], offset);
    const float other_max = __shfl_xor_sync(0xffffffffu, running_max, offset);
    const float other_sum = __shfl_xor_sync(0xffffffffu, sum, offset);
    merge_softmax(running_max, sum, acc, other_max, other_sum, other_acc);
  }
  if (lane < G) {
#pragma unroll
    for (int e = 0; e < N; ++e)
      if (e < valid) warp_acc[warp][d0 + e] = acc[e];
    if (lane == 0) {
      warp_max[warp] = running_max;
      warp_sum[warp] = sum;
    }
  }
  // Warps the block lacks count as empty, so that every thread reads all kDecodeMaxWarps without a branch.
  if (threadIdx.x >= warps && threadIdx.x < kDecodeMaxWarps) {
    warp_max[threadIdx.x] = -INFINITY;
    warp_sum[threadIdx.x] = 0.0f;
  }
  __syncthreads();

  // One output dimension per thread, over the warps' partials.
  if (!has_query) return;
  float block_max = -INFINITY;
#pragma unroll
  for (int w = 0; w < kDecodeMaxWarps; ++w) block_max = fmaxf(block_max, warp_max[w]);
  const float reference = block_max == -INFINITY ? 0.0f : block_max;
  float scale[kDecodeMaxWarps], total = 0.0f;
#pragma unroll
  for (int w = 0; w < kDecodeMaxWarps; ++w) {
    scale[w] = expf(warp_max[w] - reference);
    total += warp_sum[w] * scale[w];
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // no key seen: zeros
  T* o = out + static_cast<int64_t>(row) * p.inner + head_offset;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float weighted = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeMaxWarps; ++w)
      if (w < warps) weighted = fmaf(warp_acc[w][d], scale[w], weighted);
    o[d] = from_float<T>(weighted * inv);
  }
}

template <typename T>
void launch_decode(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
                   const AttentionArgs& args, Tensor& out, const Append<T>& append) {
  constexpr int N = 16 / sizeof(T);
  const Params p = make_params<T>(keys, values, layout, args);
  check_grid(layout, args, 1);
  // 16-byte loads of the query (and new rows) too, where aligned (the model's are).
  const bool vector =
      p.vector_loads && rt::is_aligned(queries.raw()) && rt::is_aligned(append.keys) && rt::is_aligned(append.values);
  int group_shift = 0;  // G = 1 << group_shift lanes per key
  while ((N << group_shift) < args.head_dim) ++group_shift;
  // Enough warps that one pass covers the longest key run, as far as kDecodeMaxWarps goes: a pass costs one
  // memory round trip, a warp more only a few instructions of the merge.
  const int64_t keys_per_warp = (32 >> group_shift) * decode_keys_per_group(vector);
  const int warps =
      static_cast<int>(std::clamp<int64_t>((layout.max_keys + keys_per_warp - 1) / keys_per_warp, 1, kDecodeMaxWarps));
  const dim3 grid(static_cast<unsigned>(layout.sequences()), static_cast<unsigned>(args.num_heads));
  const auto kernel =
      append.keys ? (vector ? decode_attention_kernel<T, true, true> : decode_attention_kernel<T, false, true>)
                  : (vector ? decode_attention_kernel<T, true, false> : decode_attention_kernel<T, false, false>);
  rt::launch(kernel, grid, warps * 32, 0, queries.data<T>(), keys.data<T>(), values.data<T>(), out.data<T>(), p,
             group_shift, append);
}

template <typename T>
void launch_attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
                      const AttentionArgs& args, Tensor& out, const Append<T>& append) {
  if (layout.max_queries == 1) return launch_decode<T>(queries, keys, values, layout, args, out, append);
  if (append.keys) {
    const Params p = make_params<T>(keys, values, layout, args);
    const dim3 grid(static_cast<unsigned>(layout.sequences()),
                    static_cast<unsigned>(std::min<int64_t>(layout.max_queries, 65535)));
    rt::launch(append_kernel<T>, grid, 256, 0, append, p);
  }
  switch ((args.head_dim + 31) / 32) {
    case 1:
      return launch<T, 1>(queries, keys, values, layout, args, out);
    case 2:
      return launch<T, 2>(queries, keys, values, layout, args, out);
    case 3:
      return launch<T, 3>(queries, keys, values, layout, args, out);
    default:
      return launch<T, 4>(queries, keys, values, layout, args, out);
  }
}

void check_head_dim(const AttentionArgs& args) {
  if (args.head_dim > kMaxHeadDim)
    throw Error("attention: head_dim " + std::to_string(args.head_dim) + " is larger than the CUDA kernel's " +
                std::to_string(kMaxHeadDim));
}

}  // namespace

void attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
               const AttentionArgs& args, Tensor& out) {
  check_head_dim(args);
  if (layout.max_queries <= 0) return;  // no sequence has a query
  rt::dispatch_floating(queries.dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    launch_attention<T>(queries, keys, values, layout, args, out, Append<T>{});
  });
}

void attention_with_append(const Tensor& queries, const Tensor& new_keys, const Tensor& new_values, Tensor& key_cache,
                           Tensor& value_cache, const AttentionLayout& layout, const AttentionArgs& args, Tensor& out) {
  check_head_dim(args);
  if (layout.max_queries <= 0) return;  // no sequence has a query, so none appends
  rt::dispatch_floating(queries.dtype(), "attention_with_append", [&](auto tag) {
    using T = decltype(tag);
    const Append<T> append{new_keys.data<T>(), new_values.data<T>(), key_cache.data<T>(), value_cache.data<T>()};
    launch_attention<T>(queries, key_cache, value_cache, layout, args, out, append);
  });
}

}  // namespace elephant::ops::cuda
