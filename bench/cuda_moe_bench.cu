// One MoE FFN layer of the paper's shape on the GPU (issue 4, benchmark b): d_model 1024, d_ff 4096, 32 experts,
// ReLU, fp16 or bf16, top-1. The routing is a fixed pseudo-random assignment (expert of token t =
// splitmix64(1234 + t) % 32), the same as tools/bench/moe_layer_torch.py, so that torch._grouped_mm runs the
// same problem. Timed the way decode steps run: the layer (sort by expert, grouped GEMM wi + ReLU reading the rows
// in expert order, grouped GEMM wo adding its scaled rows to the residual) is captured in a CUDA graph and
// replayed; the graph holds kCopies layers with their own weights, so the experts of one call are never in L2 from
// the previous one. Reported per layer: median time (--benchmark_repetitions), experts hit, the HBM floor (bytes of
// the experts hit + x read + hidden read and written, over 2.96 TB/s) and the fraction of it reached.
//
// MoeLayerPart/FORMAT/{sort,wi,wo}/TOKENS times each of those kernels alone, replayed the same way: where a
// decode-sized layer's time goes. MoeRoute/DTYPE/TOKENS times the routing the layer runs before them (the router
// GEMM, softmax, top-1 and sort), which MoeLayer's fixed routing leaves out.
//
// With quantized experts (issue 5): MoeLayer/int8 and MoeLayer/int4 run the same layer with per-channel int8 / int4
// experts and fp16 activations; ExpertGemm/FORMAT/E is the paper's Table 1, the wi grouped GEMM alone (A = 40 x 1024
// tokens spread evenly over E of the 32 experts, B = 4096 x 1024 per expert) in fp16, int8 and int4. Their floors
// count the packed weights and the scales of the experts hit.
//
//   build/bin/bench_cuda_moe --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <random>
#include <set>
#include <string>
#include <vector>

#include "bench_cuda.cuh"
#include "core/cuda/runtime.cuh"
#include "core/device_memory.h"
#include "layers/transformer_layers.h"
#include "mixed_input_sm90.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm_sm90.h"
#include "ops/moe.h"
#include "quantization/quantized_tensor.h"

namespace elephant {
namespace {

constexpr int64_t kModel = 1024;
constexpr int64_t kFf = 4096;
constexpr int kExperts = 32;
constexpr int kCopies = 16;  // 16 x 512 MiB of fp16 experts: far past the 50 MB L2
constexpr double kHbmBytesPerSecond = 2.96e12;

__host__ __device__ uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<int32_t> fixed_routing(int64_t tokens) {
  std::vector<int32_t> expert(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) expert[t] = static_cast<int32_t>(splitmix64(1234 + t) % kExperts);
  return expert;
}

}  // namespace

// Expert weights of each matrix kind: fp16/bf16, or quantized (per channel) with fp16 scales.
struct Layer {
  layers::Weight wi, wo;
};
std::vector<Layer> g_layers[4];  // fp16, bf16, int8, int4
// ExpertGemmCutlass's weights: the int4 codes (CUTLASS's layout) and scales of each copy.
std::vector<std::pair<Tensor, Tensor>> g_cutlass_int4;

namespace {

// Random codes and scales in the packed layout (any bytes are valid codes): the kernels' speed does not depend on
// the values.
__global__ void fill_bytes(uint8_t* out, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = static_cast<uint8_t>(splitmix64(seed + static_cast<uint64_t>(i)) >> 56);
}

layers::Weight random_experts(int64_t n, int64_t k, int bits, DType dtype, std::mt19937& rng) {
  if (bits == 16) return {random_device({kExperts, n, k}, 0.03f, dtype, rng), {}};
  QuantizedTensor q;
  q.bits = bits;
  q.shape = {kExperts, n, k};
  q.values = Tensor::empty({kExperts, n, k * bits / 8}, bits == 8 ? DType::I8 : DType::U8, Device::CUDA);
  fill_bytes<<<1024, 256, 0, cuda::stream()>>>(static_cast<uint8_t*>(q.values.raw()), q.values.numel(), rng());
  ELEPHANT_CHECK_LAUNCH();
  q.scales = random_device({kExperts, n, 1}, 1e-3f, DType::F16, rng);
  q.layout = cuda_layout(bits, q.shape);  // as QuantizedTensor::to(Device::CUDA) would store real codes
  return {Tensor(), q};
}

// Bytes of one expert's matrix of n x k: the codes (or halves) and the scales.
double expert_bytes(int64_t n, int64_t k, int bits) {
  return static_cast<double>(n) * k * bits / 8 + (bits == 16 ? 0.0 : 2.0 * n);
}

// The layers of one weight format, made once and kept until main() ends (4 to 8 GiB each).
std::vector<Layer>& layers_of(int bits, DType dtype) {
  std::vector<Layer>& copies = g_layers[bits == 8 ? 2 : bits == 4 ? 3 : dtype == DType::F16 ? 0 : 1];
  std::mt19937 rng(11 + bits);
  if (copies.empty())
    for (int c = 0; c < kCopies; ++c)
      copies.push_back({random_experts(kFf, kModel, bits, dtype, rng), random_experts(kModel, kFf, bits, dtype, rng)});
  return copies;
}

void moe_layer(const Layer& layer, const Tensor& x, const Tensor& expert, const Tensor& probability, Tensor& hidden) {
  const int64_t tokens = x.dim(0);
  Tensor sorted = Tensor::empty({tokens}, DType::I32, Device::CUDA);
  Tensor offsets = Tensor::empty({kExperts + 1}, DType::I32, Device::CUDA);
  ops::sort_by_expert(expert, kExperts, sorted, offsets);
  layers::add_expert_outputs(layer.wi, layer.wo, ops::Activation::ReLU, x, offsets, sorted, probability, hidden);
}

void BM_MoeLayer(benchmark::State& state, DType dtype, int bits) {
  const int64_t tokens = state.range(0);
  std::mt19937 rng(7);
  const std::vector<Layer>& copies = layers_of(bits, dtype);
  const std::vector<int32_t> routing = fixed_routing(tokens);
  const Tensor expert = Tensor::from_vector(routing, {tokens}, Device::CUDA);
  std::vector<float> p(static_cast<size_t>(tokens));
  for (auto& v : p) v = std::uniform_real_distribution<float>(0.2f, 1.0f)(rng);
  const Tensor probability = Tensor::from_vector(p, {tokens}, Device::CUDA);
  const Tensor x = random_device({tokens, kModel}, 1.0f, dtype, rng);
  Tensor hidden = random_device({tokens, kModel}, 1.0f, dtype, rng);

  // One layer per call, each with its own weights.
  time_graph_replays(state, kCopies, [&](int c) { moe_layer(copies[c], x, expert, probability, hidden); });

  const auto hit = static_cast<double>(std::set<int32_t>(routing.begin(), routing.end()).size());
  const double element = static_cast<double>(dtype_size(dtype));
  const double bytes =
      hit * (expert_bytes(kFf, kModel, bits) + expert_bytes(kModel, kFf, bits)) + 3.0 * tokens * kModel * element;
  state.counters["experts_hit"] = hit;
  state.counters["floor_us"] = bytes / kHbmBytesPerSecond * 1e6;
  // Seconds of HBM floor per iteration: divided by the measured time per iteration, the fraction of the floor.
  state.counters["of_floor"] =
      benchmark::Counter(bytes / kHbmBytesPerSecond, benchmark::Counter::kIsIterationInvariantRate);
}

// One kernel of moe_layer alone, replayed the same way, to see where a decode-sized layer's time goes: the sort, the
// wi GEMM (reading the rows in expert order) or the wo GEMM (adding its rows to the residual, its weights streamed
// ahead of its wait as after wi). Routing, sorted rows and offsets are made once, outside the timed graph.
enum class LayerPart { Sort, Wi, Wo };

void BM_MoeLayerPart(benchmark::State& state, DType dtype, int bits, LayerPart part) {
  const int64_t tokens = state.range(0);
  std::mt19937 rng(7);
  const std::vector<Layer>& copies = layers_of(bits, dtype);
  const Tensor expert = Tensor::from_vector(fixed_routing(tokens), {tokens}, Device::CUDA);
  const Tensor probability = random_device({tokens}, 1.0f, DType::F32, rng);
  const Tensor x = random_device({tokens, kModel}, 1.0f, dtype, rng);
  Tensor hidden = random_device({tokens, kModel}, 1.0f, dtype, rng);
  Tensor inner = random_device({tokens, kFf}, 1.0f, dtype, rng);
  Tensor sorted = Tensor::empty({tokens}, DType::I32, Device::CUDA);
  Tensor offsets = Tensor::empty({kExperts + 1}, DType::I32, Device::CUDA);
  ops::sort_by_expert(expert, kExperts, sorted, offsets);
  const layers::ExpertGemmArgs args(ops::Activation::ReLU, sorted, probability);
  time_graph_replays(state, kCopies, [&](int c) {
    switch (part) {
      case LayerPart::Sort:
        ops::sort_by_expert(expert, kExperts, sorted, offsets);
        break;
      case LayerPart::Wi:
        layers::grouped_gemm(x, copies[c].wi, offsets, inner, args.wi);
        break;
      case LayerPart::Wo:
        layers::grouped_gemm(inner, copies[c].wo, offsets, hidden, args.wo);
        break;
    }
  });
}

// The layer's routing alone (ops::route_and_sort_top1: router GEMM, softmax, top-1 and the sort by expert, one launch
// at decode sizes), fp32 router weights as the engine keeps them, x as the layer gets it (just written: in L2). The
// graph holds kRouterCopies routers, 64 MiB, so a call's router weights come from HBM as in a step, where ~100 MB of
// other weights pass through L2 between two routings.
constexpr int kRouterCopies = 512;

void BM_MoeRoute(benchmark::State& state, DType dtype) {
  const int64_t tokens = state.range(0);
  std::mt19937 rng(5);
  std::vector<Tensor> routers;
  for (int c = 0; c < kRouterCopies; ++c) routers.push_back(random_device({kExperts, kModel}, 0.03f, DType::F32, rng));
  const Tensor x = random_device({tokens, kModel}, 1.0f, dtype, rng);
  Tensor probability = Tensor::empty({tokens}, DType::F32, Device::CUDA);
  Tensor sorted = Tensor::empty({tokens}, DType::I32, Device::CUDA);
  Tensor offsets = Tensor::empty({kExperts + 1}, DType::I32, Device::CUDA);
  time_graph_replays(state, kRouterCopies, [&](int c) {
    ops::route_and_sort_top1(x, routers[c], nullptr, nullptr, probability, sorted, offsets);
  });
  const double bytes = 4.0 * kExperts * kModel + static_cast<double>(tokens) * kModel * dtype_size(dtype) +
                       tokens * 8.0 + (kExperts + 1) * 4.0;
  state.counters["floor_us"] = bytes / kHbmBytesPerSecond * 1e6;
  state.counters["of_floor"] =
      benchmark::Counter(bytes / kHbmBytesPerSecond, benchmark::Counter::kIsIterationInvariantRate);
}

constexpr int64_t kTable1Tokens = 40;

// Table 1's routing: experts 0 .. active-1 get 40 / active rows each (the first ones one more when it does not
// divide).
Tensor table1_offsets(int active) {
  std::vector<int32_t> offsets(kExperts + 1, 0);
  for (int e = 0; e < kExperts; ++e)
    offsets[e + 1] = offsets[e] + (e < active ? kTable1Tokens / active + (e < kTable1Tokens % active ? 1 : 0) : 0);
  return Tensor::from_vector(offsets, {kExperts + 1}, Device::CUDA);
}

void set_table1_counters(benchmark::State& state, int active, int bits) {
  const double bytes = active * expert_bytes(kFf, kModel, bits) + 2.0 * kTable1Tokens * (kModel + kFf);
  state.counters["experts_hit"] = active;
  state.counters["floor_us"] = bytes / kHbmBytesPerSecond * 1e6;
  state.counters["of_floor"] =
      benchmark::Counter(bytes / kHbmBytesPerSecond, benchmark::Counter::kIsIterationInvariantRate);
}

// The paper's Table 1: the wi GEMM of 40 tokens spread evenly over `active` experts, fp16 activations.
void BM_ExpertGemm(benchmark::State& state, int bits) {
  constexpr int64_t kTokens = kTable1Tokens;
  const auto active = static_cast<int>(state.range(0));
  std::mt19937 rng(9);
  const std::vector<Layer>& copies = layers_of(bits, DType::F16);
  const Tensor offsets_device = table1_offsets(active);
  const Tensor a = random_device({kTokens, kModel}, 1.0f, DType::F16, rng);
  Tensor out = Tensor::empty({kTokens, kFf}, DType::F16, Device::CUDA);
  time_graph_replays(state, kCopies, [&](int c) { layers::grouped_gemm(a, copies[c].wi, offsets_device, out); });
  set_table1_counters(state, active, bits);
}

// Table 1's int4 GEMM through CUTLASS's Hopper mixed-input grouped GEMM (mixed_input_sm90.h), the candidate for the
// int4 decode path: random codes in CUTLASS's layout, so only its speed compares with ExpertGemm/int4.
void BM_ExpertGemmCutlassInt4(benchmark::State& state) {
  if (!ops::cuda::sm90::available()) {
    state.SkipWithError("CUTLASS's sm90 kernels need an sm_90 GPU");
    return;
  }
  const auto active = static_cast<int>(state.range(0));
  std::mt19937 rng(9);
  std::vector<std::pair<Tensor, Tensor>>& weights = g_cutlass_int4;
  if (weights.empty())
    for (int c = 0; c < kCopies; ++c) {
      Tensor codes = Tensor::empty({kExperts, kFf, kModel / 2}, DType::U8, Device::CUDA);
      fill_bytes<<<1024, 256, 0, cuda::stream()>>>(static_cast<uint8_t*>(codes.raw()), codes.numel(), rng());
      ELEPHANT_CHECK_LAUNCH();
      weights.emplace_back(std::move(codes), random_device({kExperts, kFf}, 1e-3f, DType::F16, rng));
    }
  const Tensor offsets = table1_offsets(active);
  const Tensor a = random_device({kTable1Tokens, kModel}, 1.0f, DType::F16, rng);
  Tensor out = Tensor::empty({kTable1Tokens, kFf}, DType::F16, Device::CUDA);
  const auto call = [&](int c) {
    bench_sm90::Int4GroupedGemm p;
    p.a = a.raw();
    p.weights = weights[c].first.raw();
    p.scales = weights[c].second.raw();
    p.offsets = offsets.data<int32_t>();
    p.out = out.raw();
    p.experts = kExperts;
    p.n = kFf;
    p.k = kModel;
    bench_sm90::run(p);
  };
  try {  // CUTLASS refusing the arguments shows here, outside any capture
    call(0);
    device_synchronize(Device::CUDA);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  time_graph_replays(state, kCopies, call);
  set_table1_counters(state, active, 4);
}

}  // namespace

void register_benchmarks() {
  struct Format {
    const char* name;
    DType dtype;
    int bits;
  };
  for (const Format& f : {Format{"fp16", DType::F16, 16}, Format{"bf16", DType::BF16, 16},
                          Format{"int8", DType::F16, 8}, Format{"int4", DType::F16, 4}}) {
    auto* b = benchmark::RegisterBenchmark((std::string("MoeLayer/") + f.name).c_str(), BM_MoeLayer, f.dtype, f.bits);
    for (int64_t tokens : {1, 2, 8, 40, 96, 320, 1280, 3840}) b->Arg(tokens);
    b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
  }
  for (const Format& f : {Format{"fp16", DType::F16, 16}, Format{"int8", DType::F16, 8}, Format{"int4", DType::F16, 4}})
    for (const auto& [name, part] :
         {std::pair{"sort", LayerPart::Sort}, std::pair{"wi", LayerPart::Wi}, std::pair{"wo", LayerPart::Wo}}) {
      auto* b = benchmark::RegisterBenchmark((std::string("MoeLayerPart/") + f.name + "/" + name).c_str(),
                                             BM_MoeLayerPart, f.dtype, f.bits, part);
      for (int64_t tokens : {1, 8, 40}) b->Arg(tokens);
      b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
    }
  for (const Format& f : {Format{"fp16", DType::F16, 16}, Format{"bf16", DType::BF16, 16}}) {
    auto* b = benchmark::RegisterBenchmark((std::string("MoeRoute/") + f.name).c_str(), BM_MoeRoute, f.dtype);
    for (int64_t tokens : {1, 2, 8, 16, 40, 96, 320, 1280, 3840}) b->Arg(tokens);
    // The minimum counts the time per routing, 1/512 of a replay: 0.05 s of it took ~25 s a row on the H100.
    b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.002);
  }
  for (const Format& f :
       {Format{"fp16", DType::F16, 16}, Format{"int8", DType::F16, 8}, Format{"int4", DType::F16, 4}}) {
    auto* b = benchmark::RegisterBenchmark((std::string("ExpertGemm/") + f.name).c_str(), BM_ExpertGemm, f.bits);
    for (int64_t active : {1, 2, 4, 8, 16, 32}) b->Arg(active);
    b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
  }
  auto* cutlass_int4 = benchmark::RegisterBenchmark("ExpertGemmCutlass/int4", BM_ExpertGemmCutlassInt4);
  for (int64_t active : {1, 2, 4, 8, 16, 32}) cutlass_int4->Arg(active);
  cutlass_int4->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
}

}  // namespace elephant

int main(int argc, char** argv) {
  const int status = elephant::run_cuda_benchmarks(argc, argv, "bench_cuda_moe", elephant::register_benchmarks);
  for (auto& layers : elephant::g_layers) layers.clear();  // while the CUDA context is still alive
  elephant::g_cutlass_int4.clear();
  return status;
}
