// Top-k per row for decoding. Each thread keeps its own best K (a sorted list in registers, K a power of two >= k),
// then k rounds of a block-wide argmax pick the block's best, each round's winner popping its head. k is small (beam
// search takes 2 x beam), rows are long (a vocabulary, or beams x vocabulary): one block per row would leave most
// SMs idle (108 us for one row of 128,000 on an H100), so a row is split into chunks, each block writes its chunk's
// best k, and a second launch picks the best k of those candidates, one block per row.

#include <algorithm>
#include <cfloat>
#include <climits>
#include <type_traits>

#include "core/cuda/runtime.cuh"
#include "ops/backends.h"
#include "ops/softmax_cuda.cuh"
#include "ops/topk_cuda.h"

namespace elephant::ops::cuda {
namespace {

namespace rt = ::elephant::cuda;

constexpr int kThreads = 256;

struct Entry {
  float value;
  int index;
};

// Larger value first; equal values by smaller index; the empty entry (-inf, INT_MAX) loses to every number.
__device__ __forceinline__ bool better(const Entry& a, const Entry& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ Entry best_of(Entry a, Entry b) { return better(b, a) ? b : a; }

// Where a block's entries come from: a chunk of a row of x (index = column), or the candidates the chunks of a
// row left (their indices; an empty candidate, index INT_MAX, never enters).
struct RowChunk {
  const float* x;
  int64_t n, chunk;  // row length, columns per chunk
  __device__ int64_t begin() const { return blockIdx.y * chunk; }
  __device__ int64_t end() const { return min(n, begin() + chunk); }
  __device__ Entry at(int64_t i) const { return {x[blockIdx.x * n + i], static_cast<int>(i)}; }
};
struct Candidates {
  const float* values;
  const int* indices;
  int64_t count;  // per row
  __device__ int64_t begin() const { return 0; }
  __device__ int64_t end() const { return count; }
  __device__ Entry at(int64_t i) const {
    const int64_t at = blockIdx.x * count + i;
    return {values[at], indices[at]};
  }
};

// Entry e into a thread's list (best first, K long) if it beats the last; NaN never enters.
template <int K>
__device__ __forceinline__ void push(Entry (&list)[K], const Entry& e) {
  if (e.value != e.value || !better(e, list[K - 1])) return;
  list[K - 1] = e;
#pragma unroll
  for (int j = K - 1; j > 0; --j)
    if (better(list[j], list[j - 1])) {
      const Entry t = list[j];
      list[j] = list[j - 1];
      list[j - 1] = t;
    }
}

template <int K>
__device__ __forceinline__ void clear(Entry (&list)[K]) {
#pragma unroll
  for (int j = 0; j < K; ++j) list[j] = {-FLT_MAX * 2.0f, INT_MAX};  // -inf, empty
}

// The block's best k entries of its threads' lists, in k rounds of a block-wide argmax, each round's winner popping
// its owner's head: thread 0 calls store(round, winner). Blocks of up to 1024 threads; every thread calls it.
template <int K, typename Store>
__device__ void block_best(Entry (&list)[K], int k, const Store& store) {
  __shared__ Entry warp_best[32];
  __shared__ Entry winner;
  for (int round = 0; round < k; ++round) {
    Entry b = list[0];
    for (int offset = 16; offset > 0; offset >>= 1)
      b = best_of(b,
                  Entry{__shfl_xor_sync(0xffffffffu, b.value, offset), __shfl_xor_sync(0xffffffffu, b.index, offset)});
    if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = b;
    __syncthreads();
    if (threadIdx.x == 0) {
      Entry w = warp_best[0];
      for (int i = 1; i < static_cast<int>(blockDim.x / 32); ++i) w = best_of(w, warp_best[i]);
      winner = w;
      store(round, w);
    }
    __syncthreads();
    // Indices are unique, so exactly one thread owns the winner: it pops its head.
    if (list[0].index == winner.index && winner.index != INT_MAX) {
#pragma unroll
      for (int j = 0; j + 1 < K; ++j) list[j] = list[j + 1];
      list[K - 1] = {-FLT_MAX * 2.0f, INT_MAX};
    }
    __syncthreads();
  }
}

// Loads a thread keeps in flight while it scans: one at a time, every element waited an L2 round trip (an argmax
// over 8 rows of 128,000 took ~11 us a launch on an H100). Fewer for long lists, whose registers they share.
template <int K>
constexpr int kAhead = K <= 4   ? 8
                       : K <= 8 ? 4
                                : 2;

// f(i, v) for the elements i of [begin, end) that thread threadIdx.x of the block scans (begin + threadIdx.x, then a
// block's width on), with the values load(i) loaded kAhead<K> at a time.
template <int K, typename Value, typename Load, typename F>
__device__ __forceinline__ void scan(int64_t begin, int64_t end, const Load& load, const F& f) {
  constexpr int kBatch = kAhead<K>;
  for (int64_t base = begin + threadIdx.x; base < end; base += int64_t{kBatch} * blockDim.x) {
    Value v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int64_t i = base + int64_t{u} * blockDim.x;
      if (i < end) v[u] = load(i);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int64_t i = base + int64_t{u} * blockDim.x;
      if (i < end) f(i, v[u]);
    }
  }
}

// Block (row, chunk) writes its best k to values/indices [rows, chunks, k] (chunks: gridDim.y).
template <int K, typename Source>
__global__ void topk_kernel(Source source, int k, float* __restrict__ values, int* __restrict__ indices) {
  rt::await_previous_kernel();
  Entry list[K];
  clear(list);
  scan<K, Entry>(
      source.begin(), source.end(), [&](int64_t i) { return source.at(i); },
      [&](int64_t, const Entry& e) { push(list, e); });
  block_best(list, k, [&](int round, const Entry& w) {
    const int64_t at = (static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y) * k + round;
    const bool empty = w.index == INT_MAX;
    if (gridDim.y == 1) {  // the row's result
      values[at] = empty ? NAN : w.value;
      indices[at] = empty ? -1 : w.index;
    } else {  // a candidate for the second pass
      values[at] = w.value;
      indices[at] = w.index;
    }
  });
}

// Beam search's candidates in three launches, the rows spread over the GPU: one block per row (log_softmax's shape)
// read a 128,000-word row at one SM's pace, at batch 1 with 2 beams on two SMs of 132.
//
// 1. Warp w of the row's log_softmax block, in a block of its own (up to 4 such warps a block): its threads' packs
//    and its butterfly, as log_softmax_kernel computes them; lane 0 writes the warp's statistics.
template <int N>
__global__ void __launch_bounds__(128)
    beam_row_stats_kernel(const float* __restrict__ logits, int64_t vocab, int row_warps,
                          softmax_detail::Stats* __restrict__ warp_stats) {
  rt::await_previous_kernel();
  const int warp = blockIdx.y * (blockDim.x / 32) + threadIdx.x / 32;
  if (warp >= row_warps) return;  // whole warps: the butterfly needs all 32 lanes
  const auto* row = reinterpret_cast<const rt::Pack<float, N>*>(logits + blockIdx.x * vocab);
  const softmax_detail::Stats s = softmax_detail::warp_stats(softmax_detail::thread_stats<float, N>(
      row, vocab / N, warp * 32 + threadIdx.x % 32, static_cast<int64_t>(row_warps) * 32));
  if (threadIdx.x % 32 == 0) warp_stats[static_cast<int64_t>(blockIdx.x) * row_warps + warp] = s;
}

// 2. Block (row, chunk): the row's statistics from its warps' as log_softmax's warp 0 adds them, then the chunk's best
//    k of the log-probs (column `excluded` at -inf) plus the row's value, indexed into the source's beams x vocabulary,
//    to candidates [rows, chunks, k].
template <int K>
__global__ void __launch_bounds__(1024)
    beam_chunk_candidates_kernel(const float* __restrict__ logits, int64_t vocab, int64_t chunk,
                                 const softmax_detail::Stats* __restrict__ warp_stats, int row_warps,
                                 const float* __restrict__ row_values, int beam, int64_t excluded, int k,
                                 float* __restrict__ values, int* __restrict__ indices) {
  rt::await_previous_kernel();
  __shared__ softmax_detail::Stats total;
  if (threadIdx.x < 32) {
    const softmax_detail::Stats s =
        softmax_detail::warps_stats(warp_stats + static_cast<int64_t>(blockIdx.x) * row_warps, row_warps);
    if (threadIdx.x == 0) total = s;
  }
  __syncthreads();
  const softmax_detail::Stats s = total;
  const float log_sum = logf(s.sum);
  const float add = row_values[blockIdx.x];
  const int64_t offset = (blockIdx.x % beam) * vocab;
  const float* x = logits + blockIdx.x * vocab;
  Entry list[K];
  clear(list);
  scan<K, float>(
      blockIdx.y * chunk, min(vocab, (blockIdx.y + 1) * chunk), [&](int64_t i) { return x[i]; },
      [&](int64_t i, float logit) {
        float v = logit - s.max - log_sum;  // as log_softmax_kernel computes it
        if (i == excluded) v = -INFINITY;
        v += add;
        push(list, Entry{v, static_cast<int>(offset + i)});
      });
  block_best(list, k, [&](int round, const Entry& w) {
    const int64_t at = (static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y) * k + round;
    values[at] = w.value;
    indices[at] = w.index;
  });
}

__global__ void add_row_values_kernel(float* __restrict__ x, const float* __restrict__ row_values, int64_t n) {
  rt::await_previous_kernel();
  const float add = row_values[blockIdx.y];
  float* row = x + blockIdx.y * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    row[i] += add;
}

__global__ void fill_column_kernel(float* __restrict__ x, int64_t rows, int64_t n, int64_t column, float value) {
  rt::await_previous_kernel();
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x)
    x[r * n + column] = value;
}

// Chunks a row of `columns` is split into: about two blocks per SM over all rows, each chunk at least 4096 columns
// (and a chunk's best k are few next to its columns); 65535 chunks at most (gridDim.y).
int64_t chunks_for(int64_t rows, int64_t columns) {
  constexpr int64_t kMinChunk = 4096;
  const int64_t want = 2LL * rt::device_properties().multiProcessorCount;
  return std::clamp<int64_t>(std::min(want / std::max<int64_t>(rows, 1), columns / kMinChunk), 1, int64_t{65535});
}

template <int K>
void launch_topk(const Tensor& x, int k, Tensor& values, Tensor& indices) {
  const int64_t rows = x.dim(0), n = x.dim(1);
  const int64_t chunks = chunks_for(rows, n);
  const int64_t chunk = (n + chunks - 1) / chunks;
  const dim3 first(static_cast<unsigned>(rows), static_cast<unsigned>(chunks));
  if (chunks == 1) {
    rt::launch(topk_kernel<K, RowChunk>, first, kThreads, 0, RowChunk{x.data<float>(), n, chunk}, k,
               values.data<float>(), indices.data<int32_t>());
    return;
  }
  Tensor candidate_values = Tensor::empty({rows, chunks * k}, DType::F32, Device::CUDA);
  Tensor candidate_indices = Tensor::empty({rows, chunks * k}, DType::I32, Device::CUDA);
  rt::launch(topk_kernel<K, RowChunk>, first, kThreads, 0, RowChunk{x.data<float>(), n, chunk}, k,
             candidate_values.data<float>(), candidate_indices.data<int32_t>());
  rt::launch(topk_kernel<K, Candidates>, dim3(static_cast<unsigned>(rows), 1), kThreads, 0,
             Candidates{candidate_values.data<float>(), candidate_indices.data<int32_t>(), chunks * k}, k,
             values.data<float>(), indices.data<int32_t>());
}

// f(std::integral_constant<int, K>) for the list length K that k takes: the smallest power of two >= k, up to MAX.
template <int MAX, int K = 1, typename F>
void with_list_length(int k, const F& f) {
  if constexpr (K < MAX) {
    if (k > K) return with_list_length<MAX, 2 * K>(k, f);
  }
  f(std::integral_constant<int, K>{});
}

template <int K>
void launch_beam_candidates(const Tensor& logits, const Tensor& row_values, int beam, int64_t excluded, int k,
                            Tensor& values, Tensor& indices) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  // log_softmax's launch for these rows: its block's warps, each a warp of the statistics launch.
  const bool vector = vocab % 4 == 0 && rt::is_aligned(logits.raw());  // as log_softmax reads an F32 row
  const softmax_detail::Launch l = softmax_detail::launch_for(logits, vector ? vocab / 4 : vocab);
  const int row_warps = l.threads / 32;
  Tensor warp_stats = Tensor::empty({rows, row_warps, 2}, DType::F32, Device::CUDA);
  auto* stats = reinterpret_cast<softmax_detail::Stats*>(warp_stats.data<float>());
  static_assert(sizeof(softmax_detail::Stats) == 2 * sizeof(float));
  const int stats_warps = std::min(row_warps, 4);
  const dim3 stats_grid(l.rows, static_cast<unsigned>((row_warps + stats_warps - 1) / stats_warps));
  if (vector)
    rt::launch(beam_row_stats_kernel<4>, stats_grid, stats_warps * 32, 0, logits.data<float>(), vocab, row_warps,
               stats);
  else
    rt::launch(beam_row_stats_kernel<1>, stats_grid, stats_warps * 32, 0, logits.data<float>(), vocab, row_warps,
               stats);

  const int64_t chunks = chunks_for(rows, vocab);
  const int64_t chunk = (vocab + chunks - 1) / chunks;
  // One chunk a row (many rows): a block as wide as log_softmax's, so that a row still streams at full width.
  const int threads = chunks == 1 ? l.threads : kThreads;
  Tensor candidate_values = Tensor::empty({rows, chunks, k}, DType::F32, Device::CUDA);
  Tensor candidate_indices = Tensor::empty({rows, chunks, k}, DType::I32, Device::CUDA);
  rt::launch(beam_chunk_candidates_kernel<K>, dim3(l.rows, static_cast<unsigned>(chunks)), threads, 0,
             logits.data<float>(), vocab, chunk, stats, row_warps, row_values.data<float>(), beam, excluded, k,
             candidate_values.data<float>(), candidate_indices.data<int32_t>());
  // A source's beams are consecutive rows: its candidates are beam x chunks x k consecutive entries.
  rt::launch(topk_kernel<K, Candidates>, dim3(static_cast<unsigned>(rows / beam), 1), kThreads, 0,
             Candidates{candidate_values.data<float>(), candidate_indices.data<int32_t>(), beam * chunks * k}, k,
             values.data<float>(), indices.data<int32_t>());
}

}  // namespace

bool beam_candidates(const Tensor& logits, const Tensor& row_values, int beam_size, int64_t excluded, int k,
                     Tensor& values, Tensor& indices) {
  constexpr int kMaxK = 16;  // longer lists do not fit 1024 threads' registers (topk_cuda.h)
  if (k > kMaxK) return false;
  with_list_length<kMaxK>(k, [&](auto length) {
    launch_beam_candidates<decltype(length)::value>(logits, row_values, beam_size, excluded, k, values, indices);
  });
  return true;
}

void topk(const Tensor& x, int k, Tensor& values, Tensor& indices) {
  with_list_length<kMaxTopK>(k, [&](auto length) { launch_topk<decltype(length)::value>(x, k, values, indices); });
}

void add_row_values(Tensor& x, const Tensor& row_values) {
  const dim3 grid(std::min<unsigned>(rt::blocks_for(x.dim(1), kThreads), 64), static_cast<unsigned>(x.dim(0)));
  rt::launch(add_row_values_kernel, grid, kThreads, 0, x.data<float>(), row_values.data<float>(), x.dim(1));
}

void fill_column(Tensor& x, int64_t column, float value) {
  rt::launch(fill_column_kernel, std::min<unsigned>(rt::blocks_for(x.dim(0), kThreads), 64), kThreads, 0,
             x.data<float>(), x.dim(0), x.dim(1), column, value);
}

}  // namespace elephant::ops::cuda
