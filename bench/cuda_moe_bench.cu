// One MoE FFN layer of the paper's shape on the GPU (issue 4, benchmark b): d_model 1024, d_ff 4096, 32 experts,
// ReLU, fp16 or bf16, top-1. The routing is a fixed pseudo-random assignment (expert of token t =
// splitmix64(1234 + t) % 32), the same as tools/bench/moe_layer_torch.py, so that torch._grouped_mm runs the
// same problem. Timed the way decode steps run: the layer (sort by expert, grouped GEMM wi + ReLU reading the rows
// in expert order, grouped GEMM wo adding its scaled rows to the residual) is captured in a CUDA graph and
// replayed; the graph holds kCopies layers with their own weights, so the experts of one call are never in L2 from
// the previous one. Reported per layer: median time (--benchmark_repetitions), experts hit, the HBM floor (bytes of
// the experts hit + x read + hidden read and written, over 2.96 TB/s) and the fraction of it reached.
//
//   build/bin/bench_cuda_moe --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <random>
#include <set>
#include <vector>

#include "bench_cuda.cuh"
#include "core/cuda/runtime.cuh"
#include "ops/elementwise.h"
#include "ops/moe.h"

namespace elephant {
namespace {

constexpr int64_t kModel = 1024;
constexpr int64_t kFf = 4096;
constexpr int kExperts = 32;
constexpr int kCopies = 16;  // 16 x 512 MiB of fp16 experts: far past the 50 MB L2
constexpr double kHbmBytesPerSecond = 2.96e12;

uint64_t splitmix64(uint64_t x) {
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

struct Layer {
  Tensor wi, wo;
};
std::vector<Layer> g_layers[2];

namespace {

void moe_layer(const Layer& layer, const Tensor& x, const Tensor& expert, const Tensor& probability, Tensor& hidden) {
  const int64_t tokens = x.dim(0);
  Tensor sorted = Tensor::empty({tokens}, DType::I32, Device::CUDA);
  Tensor offsets = Tensor::empty({kExperts + 1}, DType::I32, Device::CUDA);
  ops::sort_by_expert(expert, kExperts, sorted, offsets);
  Tensor inner = Tensor::empty({tokens, kFf}, x.dtype(), Device::CUDA);
  ops::GroupedGemmArgs wi_args;
  wi_args.activation = ops::Activation::ReLU;
  wi_args.a_rows = &sorted;
  ops::grouped_gemm(x, layer.wi, offsets, inner, wi_args);
  ops::GroupedGemmArgs wo_args;
  wo_args.out_rows = &sorted;
  wo_args.out_scale = &probability;
  ops::grouped_gemm(inner, layer.wo, offsets, hidden, wo_args);
}

void BM_MoeLayer(benchmark::State& state, DType dtype) {
  const int64_t tokens = state.range(0);
  std::mt19937 rng(7);
  // Weights are made once per dtype and kept until main() ends: 8 GiB per dtype.
  std::vector<Layer>& copies = g_layers[dtype == DType::F16 ? 0 : 1];
  if (copies.empty())
    for (int c = 0; c < kCopies; ++c)
      copies.push_back({random_device({kExperts, kFf, kModel}, 0.03f, dtype, rng),
                        random_device({kExperts, kModel, kFf}, 0.03f, dtype, rng)});
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
  const double bytes = hit * 2.0 * kFf * kModel * element + 3.0 * tokens * kModel * element;
  state.counters["experts_hit"] = hit;
  state.counters["floor_us"] = bytes / kHbmBytesPerSecond * 1e6;
  // Seconds of HBM floor per iteration: divided by the measured time per iteration, the fraction of the floor.
  state.counters["of_floor"] =
      benchmark::Counter(bytes / kHbmBytesPerSecond, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

void register_benchmarks() {
  for (const auto& [name, dtype] : {std::pair{"MoeLayer/fp16", DType::F16}, std::pair{"MoeLayer/bf16", DType::BF16}}) {
    auto* b = benchmark::RegisterBenchmark(name, BM_MoeLayer, dtype);
    for (int64_t tokens : {1, 8, 40, 96, 320, 1280, 3840}) b->Arg(tokens);
    b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.2);
  }
}

}  // namespace elephant

int main(int argc, char** argv) {
  const int status = elephant::run_cuda_benchmarks(argc, argv, "bench_cuda_moe", elephant::register_benchmarks);
  for (auto& layers : elephant::g_layers) layers.clear();  // while the CUDA context is still alive
  return status;
}
