// CUTLASS's Hopper mixed-input pointer-array grouped GEMM for int4 experts (see mixed_input_sm90.h), set up as the
// engine's fp16 sm90 path is (ops/grouped_gemm_sm90.cu): the product transposed, out^T = W_e · a_e^T, so that the
// int4 weights are the register operand of wgmma (converted there) and an expert's few tokens the N side of a
// 128 x 16 tile; per-expert shapes and pointers written on the device from `offsets` by one block.

#include <cutlass/cutlass.h>
#include <cutlass/gemm/device/gemm_universal_adapter.h>

#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include "core/cuda/runtime.cuh"
#include "core/tensor.h"
#include "mixed_input_sm90.h"
#include "ops/cutlass_sm90.cuh"

namespace elephant::bench_sm90 {
namespace {

namespace rt = ::elephant::cuda;
using namespace cute;

using Half = cutlass::half_t;
using Int4 = cutlass::int4b_t;
using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (n, rows, k) per expert
using WeightLayout = cutlass::layout::RowMajor;                                     // W_e: [n, k], M x K
using TokenLayout = cutlass::layout::ColumnMajor;                                   // a_e: [rows, k], K x N
using OutLayout = cutlass::layout::ColumnMajor;                                     // out_e: [rows, n], M x N
using TileShape = cute::Shape<_128, _16, _64>;  // decode-sized: 16 tokens of an expert per tile
using ClusterShape = cute::Shape<_1, _1, _1>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, OutLayout*, 8, Half, OutLayout*, 8,
    cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
// The scales ride with the weights: (int4, scale) as the A operand, one scale per output channel (group = k).
using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cute::tuple<Int4, Half>, WeightLayout*, 32, Half, TokenLayout*,
    8, float, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
using Gemm =
    cutlass::gemm::device::GemmUniversalAdapter<cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>>;
using StrideA = typename Gemm::GemmKernel::InternalStrideA;
using StrideB = typename Gemm::GemmKernel::InternalStrideB;
using StrideD = typename Gemm::GemmKernel::InternalStrideD;
using StrideScale = typename Mainloop::StrideScale;

struct GroupArrays {
  ProblemShape::UnderlyingProblemShape* shapes;
  const Int4** weights;
  const Half** scales;
  const Half** tokens;
  Half** out;
  StrideA* stride_a;
  StrideScale* stride_scale;
  StrideB* stride_b;
  StrideD* stride_d;
};

__global__ void write_group_arrays(GroupArrays arrays, const int32_t* __restrict__ offsets, const Half* a,
                                   const Int4* weights, const Half* scales, Half* out, int experts, int n, int k,
                                   StrideA stride_a, StrideScale stride_scale, StrideB stride_b, StrideD stride_d) {
  rt::await_previous_kernel();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const int begin = offsets[e];
    const int rows = max(offsets[e + 1] - begin, 0);
    arrays.shapes[e] = {n, rows, k};
    // Byte addresses: two codes a byte (sizeof(int4b_t) is a byte, so no pointer arithmetic on Int4*).
    arrays.weights[e] = reinterpret_cast<const Int4*>(reinterpret_cast<const unsigned char*>(weights) +
                                                      static_cast<int64_t>(e) * n * k / 2);
    arrays.scales[e] = scales + static_cast<int64_t>(e) * n;
    arrays.tokens[e] = a + static_cast<int64_t>(begin) * k;
    arrays.out[e] = out + static_cast<int64_t>(begin) * n;
    arrays.stride_a[e] = stride_a;
    arrays.stride_scale[e] = stride_scale;
    arrays.stride_b[e] = stride_b;
    arrays.stride_d[e] = stride_d;
  }
}

}  // namespace

void run(const Int4GroupedGemm& p) {
  if (p.experts == 0 || p.n == 0) return;
  const std::vector<size_t> at = ops::cuda::sm90::carve_arrays(
      static_cast<size_t>(p.experts),
      {sizeof(ProblemShape::UnderlyingProblemShape), sizeof(void*), sizeof(void*), sizeof(void*), sizeof(void*),
       sizeof(StrideA), sizeof(StrideScale), sizeof(StrideB), sizeof(StrideD)});
  Tensor storage = Tensor::empty({static_cast<int64_t>(at.back())}, DType::U8, Device::CUDA);
  auto* base = static_cast<unsigned char*>(storage.raw());
  GroupArrays arrays{reinterpret_cast<ProblemShape::UnderlyingProblemShape*>(base + at[0]),
                     reinterpret_cast<const Int4**>(base + at[1]),
                     reinterpret_cast<const Half**>(base + at[2]),
                     reinterpret_cast<const Half**>(base + at[3]),
                     reinterpret_cast<Half**>(base + at[4]),
                     reinterpret_cast<StrideA*>(base + at[5]),
                     reinterpret_cast<StrideScale*>(base + at[6]),
                     reinterpret_cast<StrideB*>(base + at[7]),
                     reinterpret_cast<StrideD*>(base + at[8])};
  // Packed rows: W_e and a_e step k codes a row, out_e n elements a token; the scales are n per expert (one group).
  StrideA stride_a{};
  StrideB stride_b{};
  StrideD stride_d{};
  StrideScale stride_scale{};
  get<0>(stride_a) = p.k;
  get<0>(stride_b) = p.k;
  get<1>(stride_d) = p.n;
  get<1>(stride_scale) = p.n;
  rt::launch(write_group_arrays, 1, 256, 0, arrays, p.offsets, static_cast<const Half*>(p.a),
             static_cast<const Int4*>(p.weights), static_cast<const Half*>(p.scales), static_cast<Half*>(p.out),
             p.experts, p.n, p.k, stride_a, stride_scale, stride_b, stride_d);

  typename Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {p.experts, arrays.shapes, nullptr},
      {arrays.weights, arrays.stride_a, arrays.tokens, arrays.stride_b, arrays.scales, arrays.stride_scale, p.k},
      {{}, nullptr, nullptr, arrays.out, arrays.stride_d},
      ops::cuda::sm90::hardware_info()};
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;
  ops::cuda::sm90::run_gemm<Gemm>(arguments, "int4 grouped GEMM (sm90)");
}

}  // namespace elephant::bench_sm90
