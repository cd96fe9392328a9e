// CUTLASS's Hopper pointer-array grouped GEMM (TMA loads, warp-specialized wgmma, persistent tile scheduler) for
// the experts' prefill-sized GEMMs. The product is computed transposed, out^T = W_e · a_e^T: the expert's weight
// rows are the M side (n = 1024 or 4096, whole 128-row tiles) and its tokens the N side, so an expert's weight tile
// is read once for all its rows. The group sizes live only on the device: one block per GEMM writes every
// expert's shape and pointers from `offsets` (write_group_arrays), and CUTLASS's scheduler reads them there.

#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/gemm/device/gemm_universal_adapter.h>

#include <algorithm>
#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <string>

#include "core/cuda/runtime.cuh"
#include "core/tensor.h"
#include "ops/cutlass_sm90.cuh"
#include "ops/grouped_gemm_sm90.h"

namespace elephant::ops::cuda::sm90 {
namespace {

namespace rt = ::elephant::cuda;
using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M, N, K) per expert
using WeightLayout = cutlass::layout::RowMajor;                                     // W_e: [n, k], M x K
using TokenLayout = cutlass::layout::ColumnMajor;                                   // a_e: [rows, k], K x N
using OutLayout = cutlass::layout::ColumnMajor;                                     // out_e: [rows, n], M x N
constexpr int kAlignment = 8;                                                       // 16 bytes of half / bfloat16
// Measured on the H100 (the paper's layer at 3840 tokens, 120 rows per expert): cooperative 128 x 128 x 64 284 us,
// ping-pong 128 x 128 x 64 286, cooperative 256 x 128 x 64 292, cooperative 128 x 192 x 64 274 (286 against 274 in
// one later call): 192 tokens cover an expert's ~120 rows in one tile even where routing gives it more than 128.
using TileShape = cute::Shape<_128, _192, _64>;
using ClusterShape = cute::Shape<_1, _1, _1>;

// Fusion: the epilogue's D = act(accumulator) (no C operand).
template <typename Element, bool RELU>
using Fusion =
    std::conditional_t<RELU,
                       cutlass::epilogue::fusion::LinCombEltAct<cutlass::epilogue::thread::ReLu, Element, float, void>,
                       cutlass::epilogue::fusion::LinearCombination<Element, float, void>>;

template <typename Element, bool RELU>
struct Kernel {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, OutLayout*, kAlignment, Element, OutLayout*,
      kAlignment, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, Fusion<Element, RELU>>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, WeightLayout*, kAlignment, Element, TokenLayout*,
      kAlignment, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>>;
  using StrideA = typename Gemm::GemmKernel::InternalStrideA;
  using StrideB = typename Gemm::GemmKernel::InternalStrideB;
  using StrideD = typename Gemm::GemmKernel::InternalStrideD;
};

// The per-expert arguments CUTLASS reads on the device, in one allocation.
template <typename K, typename Element>
struct GroupArrays {
  ProblemShape::UnderlyingProblemShape* shapes;
  const Element** weights;
  const Element** tokens;
  Element** out;
  typename K::StrideA* stride_a;
  typename K::StrideB* stride_b;
  typename K::StrideD* stride_d;
};

// The per-expert shapes and pointers of one GEMM, from `offsets`: what write_group_arrays writes on the device.
template <typename K, typename Element>
struct GroupArgs {
  GroupArrays<K, Element> arrays;
  const int32_t* offsets;
  const Element* a;
  const Element* weights;
  Element* out;
  int experts, n, k;
  typename K::StrideA stride_a;
  typename K::StrideB stride_b;
  typename K::StrideD stride_d;

  __device__ void write(int thread, int threads) const {
    for (int e = thread; e < experts; e += threads) {
      const int begin = offsets[e];
      const int rows = max(offsets[e + 1] - begin, 0);
      arrays.shapes[e] = {n, rows, k};
      arrays.weights[e] = weights + static_cast<int64_t>(e) * n * k;
      arrays.tokens[e] = a + static_cast<int64_t>(begin) * k;
      arrays.out[e] = out + static_cast<int64_t>(begin) * n;
      arrays.stride_a[e] = stride_a;
      arrays.stride_b[e] = stride_b;
      arrays.stride_d[e] = stride_d;
    }
  }
};

// GroupedGemm's optional gather of a's rows, 16 bytes a thread (rows are whole 16-byte units: k % 8 == 0).
struct RowGather {
  const uint4* source = nullptr;  // null: nothing to gather
  const int32_t* rows = nullptr;
  const int32_t* owned = nullptr;  // offsets + experts
  uint4* out = nullptr;
  int64_t source_rows = 0, count = 0;
  int units = 0;  // per row

  // Block b of `blocks` copies rows b, b + blocks, ...
  __device__ void copy(int64_t block, int64_t blocks) const {
    const int64_t end = min(count, static_cast<int64_t>(*owned));
    for (int64_t i = block; i < end; i += blocks) {
      const int32_t r = rows[i];
      const bool valid = r >= 0 && r < source_rows;
      for (int c = threadIdx.x; c < units; c += blockDim.x)
        out[i * units + c] = valid ? source[static_cast<int64_t>(r) * units + c] : make_uint4(0, 0, 0, 0);
    }
  }
};

constexpr int kWriteThreads = 128;
constexpr int64_t kMaxGatherBlocks = 8192;

// One block per GEMM writes its arguments (both GEMMs of a pair in one launch); the blocks after them gather the
// first GEMM's rows, so that the gather costs no launch of its own ahead of CUTLASS (whose grouped kernels wait for
// the whole previous grid: no programmatic overlap). Measured on the H100 (one build), the paper's MoE layer at 3840
// tokens: fp16 271.5 -> 270.7 us, bf16 270.0 -> 269.2; at 320 and 1280 tokens within 0.1 us.
template <typename K, typename Element, typename K2 = K>
__global__ void __launch_bounds__(kWriteThreads)
    write_group_arrays(GroupArgs<K, Element> first, GroupArgs<K2, Element> second, bool pair, RowGather gather) {
  rt::await_previous_kernel();
  const int writers = pair ? 2 : 1;
  if (blockIdx.x == 0) {
    first.write(threadIdx.x, blockDim.x);
  } else if (blockIdx.x < writers) {
    second.write(threadIdx.x, blockDim.x);
  } else {
    gather.copy(blockIdx.x - writers, gridDim.x - writers);
  }
}

RowGather row_gather(const GroupedGemm& p, int element_bytes) {
  RowGather gather;
  if (p.a_source == nullptr) return gather;
  gather.source = static_cast<const uint4*>(p.a_source);
  gather.rows = p.a_rows;
  gather.owned = p.offsets + p.experts;
  gather.out = static_cast<uint4*>(const_cast<void*>(p.a));  // the gather's buffer, which the GEMM then reads
  gather.source_rows = p.source_rows;
  gather.count = p.rows;
  gather.units = p.k * element_bytes / 16;
  return gather;
}

// The argument writers and, with a gather, one block per gathered row (at most kMaxGatherBlocks).
unsigned write_blocks(int writers, const RowGather& gather) {
  return static_cast<unsigned>(writers + (gather.source ? std::min(gather.count, kMaxGatherBlocks) : 0));
}

// A GEMM's device-side arguments (in `storage`, from the stream-ordered pool) and CUTLASS's arguments pointing at them.
template <typename Element, bool RELU>
struct Prepared {
  using K = Kernel<Element, RELU>;
  Tensor storage;
  GroupArgs<K, Element> group;
  typename K::Gemm::Arguments arguments;
};

template <typename Element, bool RELU>
Prepared<Element, RELU> prepare(const GroupedGemm& p) {
  using K = Kernel<Element, RELU>;
  Prepared<Element, RELU> prepared;
  const std::vector<size_t> at =
      carve_arrays(static_cast<size_t>(p.experts),
                   {sizeof(ProblemShape::UnderlyingProblemShape), sizeof(void*), sizeof(void*), sizeof(void*),
                    sizeof(typename K::StrideA), sizeof(typename K::StrideB), sizeof(typename K::StrideD)});
  prepared.storage = Tensor::empty({static_cast<int64_t>(at.back())}, DType::U8, Device::CUDA);
  auto* base = static_cast<unsigned char*>(prepared.storage.raw());
  GroupArrays<K, Element> arrays{reinterpret_cast<ProblemShape::UnderlyingProblemShape*>(base + at[0]),
                                 reinterpret_cast<const Element**>(base + at[1]),
                                 reinterpret_cast<const Element**>(base + at[2]),
                                 reinterpret_cast<Element**>(base + at[3]),
                                 reinterpret_cast<typename K::StrideA*>(base + at[4]),
                                 reinterpret_cast<typename K::StrideB*>(base + at[5]),
                                 reinterpret_cast<typename K::StrideD*>(base + at[6])};
  // Packed rows, the same for every expert: W_e and a_e step k elements a row, out_e n elements a token.
  typename K::StrideA stride_a{};
  typename K::StrideB stride_b{};
  typename K::StrideD stride_d{};
  get<0>(stride_a) = p.k;
  get<0>(stride_b) = p.k;
  get<1>(stride_d) = p.n;
  prepared.group = {arrays,
                    p.offsets,
                    static_cast<const Element*>(p.a),
                    static_cast<const Element*>(p.weights),
                    static_cast<Element*>(p.out),
                    p.experts,
                    p.n,
                    p.k,
                    stride_a,
                    stride_b,
                    stride_d};
  prepared.arguments = {cutlass::gemm::GemmUniversalMode::kGrouped,
                        {p.experts, arrays.shapes, nullptr},
                        {arrays.weights, arrays.stride_a, arrays.tokens, arrays.stride_b},
                        {{}, nullptr, nullptr, arrays.out, arrays.stride_d},
                        hardware_info()};
  prepared.arguments.epilogue.thread.alpha = 1.0f;
  prepared.arguments.epilogue.thread.beta = 0.0f;
  return prepared;
}

template <typename Element, bool RELU>
void run_typed(const GroupedGemm& p) {
  const Prepared<Element, RELU> prepared = prepare<Element, RELU>(p);
  const RowGather gather = row_gather(p, sizeof(Element));
  rt::launch(write_group_arrays<typename Prepared<Element, RELU>::K, Element>, write_blocks(1, gather), kWriteThreads,
             0, prepared.group, prepared.group, false, gather);
  run_gemm<typename Prepared<Element, RELU>::K::Gemm>(prepared.arguments, "grouped_gemm (sm90)");
}

template <typename Element, bool RELU1, bool RELU2>
void run_pair_typed(const GroupedGemm& first, const GroupedGemm& second) {
  const Prepared<Element, RELU1> one = prepare<Element, RELU1>(first);
  const Prepared<Element, RELU2> two = prepare<Element, RELU2>(second);
  const RowGather gather = row_gather(first, sizeof(Element));
  rt::launch(write_group_arrays<typename Prepared<Element, RELU1>::K, Element, typename Prepared<Element, RELU2>::K>,
             write_blocks(2, gather), kWriteThreads, 0, one.group, two.group, true, gather);
  run_gemm<typename Prepared<Element, RELU1>::K::Gemm>(one.arguments, "grouped_gemm (sm90)");
  run_gemm<typename Prepared<Element, RELU2>::K::Gemm>(two.arguments, "grouped_gemm (sm90)");
}

template <typename Element>
void run_pair_of(const GroupedGemm& first, const GroupedGemm& second) {
  if (first.relu) {
    second.relu ? run_pair_typed<Element, true, true>(first, second)
                : run_pair_typed<Element, true, false>(first, second);
  } else {
    second.relu ? run_pair_typed<Element, false, true>(first, second)
                : run_pair_typed<Element, false, false>(first, second);
  }
}

}  // namespace

bool available() {
  static const bool sm90 = [] {
    const cudaDeviceProp& properties = rt::device_properties();
    return properties.major == 9 && properties.minor == 0;
  }();
  return sm90;
}

void run_pair(const GroupedGemm& first, const GroupedGemm& second) {
  if (first.dtype != second.dtype)
    throw Error("grouped_gemm (sm90): a pair of " + dtype_name(first.dtype) + " and " + dtype_name(second.dtype));
  if (second.a_source != nullptr) throw Error("grouped_gemm (sm90): the second GEMM of a pair gathers no rows");
  if (first.experts == 0 || first.n == 0 || second.n == 0) {
    run(first);
    run(second);
  } else if (first.dtype == DType::F16) {
    run_pair_of<cutlass::half_t>(first, second);
  } else if (first.dtype == DType::BF16) {
    run_pair_of<cutlass::bfloat16_t>(first, second);
  } else {
    throw Error("grouped_gemm (sm90): " + dtype_name(first.dtype) + " is not F16 or BF16");
  }
}

void run(const GroupedGemm& problem) {
  if (problem.experts == 0 || problem.n == 0) return;
  if (problem.dtype == DType::F16) {
    problem.relu ? run_typed<cutlass::half_t, true>(problem) : run_typed<cutlass::half_t, false>(problem);
  } else if (problem.dtype == DType::BF16) {
    problem.relu ? run_typed<cutlass::bfloat16_t, true>(problem) : run_typed<cutlass::bfloat16_t, false>(problem);
  } else {
    throw Error("grouped_gemm (sm90): " + dtype_name(problem.dtype) + " is not F16 or BF16");
  }
}

}  // namespace elephant::ops::cuda::sm90
