// CPU benchmarks: the MoE FFN layer and one decoder step, in GFLOP/s next to the BLAS sgemm rate
// measured in the same run. Run: build/bin/bench_cpu --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "io/safetensors.h"
#include "layers/transformer_layers.h"
#include "models/encoder_decoder.h"
#include "ops/gemm.h"

namespace elephant {
namespace {

constexpr int kModel = 512;
constexpr int kFf = 2048;
constexpr int kExperts = 8;

Tensor random_tensor(const Shape& shape, float scale, std::mt19937& rng) {
  Tensor t = Tensor::empty(shape);
  std::normal_distribution<float> normal(0.0f, scale);
  float* data = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) data[i] = normal(rng);
  return t;
}

// The sgemm rate the other numbers are compared with: a [m, d_model] x [d_ff, d_model]^T product.
void BM_Sgemm(benchmark::State& state) {
  std::mt19937 rng(1);
  const int64_t m = state.range(0);
  const Tensor a = random_tensor({m, kModel}, 1.0f, rng);
  const Tensor b = random_tensor({kFf, kModel}, 1.0f, rng);
  Tensor c = Tensor::empty({m, kFf});
  for (auto _ : state) {
    ops::gemm(a, b, c);
    benchmark::DoNotOptimize(c.raw());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * kModel * kFf, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Sgemm)->Arg(1)->Arg(8)->Arg(64)->Arg(256)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();

// One top-1 MoE FFN layer: routing, grouping by expert, one GEMM pair per expert hit, un-permute.
void BM_MoeLayer(benchmark::State& state) {
  std::mt19937 rng(2);
  const int64_t tokens = state.range(0);
  layers::FeedForward ffn;
  layers::MixtureOfExperts moe;
  moe.router = random_tensor({kExperts, kModel}, 1.0f, rng);
  moe.wi.dense = random_tensor({kExperts, kFf, kModel}, 0.05f, rng);
  moe.wo.dense = random_tensor({kExperts, kModel, kFf}, 0.05f, rng);
  ffn.moe = std::move(moe);
  const Tensor x = random_tensor({tokens, kModel}, 1.0f, rng);
  Tensor hidden = Tensor::zeros({tokens, kModel});
  for (auto _ : state) {
    layers::add_feed_forward(ffn, x, hidden);
    benchmark::DoNotOptimize(hidden.raw());
  }
  // Each token runs one expert: two GEMMs of 2 * d_model * d_ff FLOPs (the router is negligible).
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * tokens * kModel * kFf, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_MoeLayer)->Arg(1)->Arg(8)->Arg(64)->Arg(256)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();

// A random switch_transformers checkpoint on disk, loaded through the normal path.
class RandomModel {
 public:
  RandomModel() {
    dir_ = std::filesystem::temp_directory_path() / ("elephant_bench_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "config.json") << R"({"model_type": "switch_transformers", "d_model": 512, "d_ff": 2048,
      "d_kv": 64, "num_heads": 8, "num_layers": 4, "num_decoder_layers": 2, "num_sparse_encoder_layers": 2,
      "num_sparse_decoder_layers": 1, "num_experts": 8, "vocab_size": 8000})";
    std::mt19937 rng(3);
    std::vector<std::pair<std::string, Tensor>> tensors;
    const auto add = [&](const std::string& name, const Shape& shape, float scale) {
      tensors.emplace_back(name, random_tensor(shape, scale, rng));
    };
    add("shared.weight", {8000, 512}, 1.0f);
    const auto attention = [&](const std::string& p) {
      for (const char* w : {".q.weight", ".k.weight", ".v.weight"}) add(p + w, {512, 512}, 0.04f);
      add(p + ".o.weight", {512, 512}, 0.04f);
    };
    const auto ffn = [&](const std::string& p, bool sparse) {
      if (!sparse) {
        add(p + ".wi.weight", {2048, 512}, 0.04f);
        add(p + ".wo.weight", {512, 2048}, 0.02f);
        return;
      }
      add(p + ".router.classifier.weight", {8, 512}, 1.0f);
      for (int e = 0; e < 8; ++e) {
        add(p + ".experts.expert_" + std::to_string(e) + ".wi.weight", {2048, 512}, 0.04f);
        add(p + ".experts.expert_" + std::to_string(e) + ".wo.weight", {512, 2048}, 0.02f);
      }
    };
    for (int i = 0; i < 4; ++i) {
      const std::string b = "encoder.block." + std::to_string(i);
      add(b + ".layer.0.layer_norm.weight", {512}, 1.0f);
      attention(b + ".layer.0.SelfAttention");
      add(b + ".layer.1.layer_norm.weight", {512}, 1.0f);
      ffn(b + ".layer.1.mlp", i % 2 == 1);
    }
    for (int i = 0; i < 2; ++i) {
      const std::string b = "decoder.block." + std::to_string(i);
      for (int l = 0; l < 3; ++l) add(b + ".layer." + std::to_string(l) + ".layer_norm.weight", {512}, 1.0f);
      attention(b + ".layer.0.SelfAttention");
      attention(b + ".layer.1.EncDecAttention");
      ffn(b + ".layer.2.mlp", i == 1);
    }
    add("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {32, 8}, 0.5f);
    add("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {32, 8}, 0.5f);
    add("encoder.final_layer_norm.weight", {512}, 1.0f);
    add("decoder.final_layer_norm.weight", {512}, 1.0f);
    write_safetensors((dir_ / "model.safetensors").string(), tensors);
    model = load_model(dir_.string());
  }
  ~RandomModel() { std::filesystem::remove_all(dir_); }

  std::unique_ptr<EncoderDecoderModel> model;

 private:
  std::filesystem::path dir_;
};

// One decoder step (2 layers, one MoE) for `rows` live rows with 40-token sources, after 8 steps of history.
void BM_DecodeStep(benchmark::State& state) {
  static RandomModel random_model;
  EncoderDecoderModel& model = *random_model.model;
  const int64_t rows = state.range(0);
  std::vector<std::vector<int32_t>> sources(rows);
  for (int64_t r = 0; r < rows; ++r)
    for (int t = 0; t < 40; ++t) sources[r].push_back(static_cast<int32_t>((r * 131 + t * 17) % 7999) + 1);
  const EncoderOutput encoded = model.encode(sources);
  const std::vector<int32_t> tokens(rows, 5);
  constexpr int kHistory = 8;
  constexpr int kCapacity = 64;
  auto decoder = model.start_decoding(encoded, 1, kCapacity);
  for (int i = 0; i < kHistory; ++i) model.step(*decoder, tokens);
  for (auto _ : state) {
    if (decoder->steps_done() == kCapacity) {
      state.PauseTiming();
      decoder = model.start_decoding(encoded, 1, kCapacity);
      for (int i = 0; i < kHistory; ++i) model.step(*decoder, tokens);
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(model.step(*decoder, tokens).raw());
  }
  // Per row: self q,k,v,o + cross q,o (6 * d^2 each layer), the FFNs (2 layers x 2 * d * d_ff) and the
  // vocabulary projection, all times 2 FLOPs per multiply-add. Attention scores are a small remainder.
  const double per_row = 2.0 * (2 * 6.0 * 512 * 512 + 2 * 2.0 * 512 * 2048 + 512.0 * 8000);
  state.counters["GFLOP/s"] =
      benchmark::Counter(per_row * rows, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_DecodeStep)->Arg(1)->Arg(8)->Arg(32)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace elephant

BENCHMARK_MAIN();
