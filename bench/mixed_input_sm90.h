#pragma once

// A candidate for the paper's Table 1, measured next to the engine's kernels: CUTLASS 4.2's Hopper mixed-input
// grouped GEMM (int4 weights converted in registers for wgmma, TMA loads, fp16 scales per output channel). Not an
// engine path: its int4 layout (signed, K-major, two codes a byte) is not the engine's packed layout, so the weights
// here are random bytes in CUTLASS's layout, and only its speed is compared. Built for sm_90a alone.

#include <cstdint>

namespace elephant::bench_sm90 {

// out[r] = (W_e · a[r]) * scale_e for the rows r in [offsets[e], offsets[e + 1]) of each expert: a F16 [rows, k] in
// expert order, weights int4 [experts, n, k] (k / 2 bytes a row), scales F16 [experts, n], out F16 [rows, n],
// offsets I32 [experts + 1] on the device (the shapes are made there, as the engine's sm90 path makes them).
struct Int4GroupedGemm {
  const void* a = nullptr;
  const void* weights = nullptr;
  const void* scales = nullptr;
  const int32_t* offsets = nullptr;
  void* out = nullptr;
  int experts = 0, n = 0, k = 0;
};

// On the calling thread's stream; an sm_90 GPU only (ops::cuda::sm90::available()).
void run(const Int4GroupedGemm& p);

}  // namespace elephant::bench_sm90
