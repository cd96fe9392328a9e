#pragma once

// The experts' grouped GEMM on Hopper's warpgroup MMAs (wgmma, TMA loads): CUTLASS's pointer-array grouped GEMM,
// for the prefill-sized problems (many rows per expert) where mma.sync runs out of tensor-core throughput. Its
// problem sizes stay on the device: a small launch turns `offsets` into the per-expert shapes and pointers (one
// block per GEMM, and blocks that gather a's rows into expert order where asked).
// Built for sm_90a only (grouped_gemm_sm90.cu); `available()` says whether this process can run it.

#include <cstdint>

#include "core/dtype.h"

namespace elephant::ops::cuda::sm90 {

// out[r] = act(W_e · a[r]) for the rows r in [offsets[e], offsets[e + 1]) of each expert e; rows from
// offsets[experts] on are not touched. a: [rows, k] in expert order; weights: [experts, n, k]; out: [rows, n];
// offsets: I32 [experts + 1] on the device. n and k multiples of 8; pointers 16-byte aligned.
struct GroupedGemm {
  DType dtype = DType::F16;  // F16 or BF16
  const void* a = nullptr;
  const void* weights = nullptr;
  const int32_t* offsets = nullptr;
  void* out = nullptr;
  int experts = 0, n = 0, k = 0;
  bool relu = false;
  // Optional: `a` is a buffer of `rows` rows that the launch writing the per-expert arguments fills first, row i
  // with row a_rows[i] of a_source ([source_rows, k]; an index outside it gives a zero row), for the rows the
  // experts own (i < offsets[experts]).
  const void* a_source = nullptr;
  const int32_t* a_rows = nullptr;
  int64_t source_rows = 0, rows = 0;
};

// An sm_90 GPU (the kernels are sm_90a code).
bool available();

// Enqueues the GEMM on the calling thread's stream; no host synchronization.
void run(const GroupedGemm& problem);

// Two GEMMs over the same offsets, the second reading what the first wrote (a MoE layer's wi and wo), as run(first)
// then run(second) but with one launch writing both GEMMs' per-expert arguments ahead of the first: the second
// follows the first directly.
void run_pair(const GroupedGemm& first, const GroupedGemm& second);

}  // namespace elephant::ops::cuda::sm90
