// The ops of one decode step of the paper-shaped model (d_model 1024, 16 heads x 64, d_ff 4096, vocab 128,000,
// fp16), each timed alone the way a step runs them: kCopies calls on distinct weights captured in one CUDA graph and
// replayed, so that no weight is in L2 from the previous call. Per call: median time, the HBM floor (bytes read and
// written over 2.96 TB/s) and the fraction of it reached. What a 12-layer decode step spends where (issue 4's
// batch-1 throughput) without a profiler.
//
//   build/bin/bench_cuda_decode --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_cuda.cuh"
#include "core/cuda/runtime.cuh"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/gemm_cuda.h"
#include "ops/kv_cache.h"
#include "ops/moe.h"
#include "ops/rms_norm.h"
#include "ops/topk.h"
#include "quantization/quantized_tensor.h"

namespace elephant {
namespace {

constexpr int64_t kModel = 1024;
constexpr int64_t kFf = 4096;
constexpr int64_t kHeads = 16;
constexpr int64_t kHeadDim = 64;
constexpr int64_t kVocab = 128000;
constexpr int64_t kKeys = 40;  // cached steps / source tokens per row
constexpr int kCopies = 32;    // 32 x 2 MiB (the smallest weight) is past the 50 MB L2
constexpr double kHbmBytesPerSecond = 2.96e12;
constexpr DType kDtype = DType::F16;

// Time per call of `copies` calls replayed from one graph, against `bytes` of HBM traffic per call.
void time_calls(benchmark::State& state, int copies, const std::function<void(int)>& call, double bytes) {
  time_graph_replays(state, copies, call);
  state.counters["floor_us"] = bytes / kHbmBytesPerSecond * 1e6;
  state.counters["of_floor"] =
      benchmark::Counter(bytes / kHbmBytesPerSecond, benchmark::Counter::kIsIterationInvariantRate);
}

std::vector<Tensor> weights(const Shape& shape, int copies, std::mt19937& rng) {
  std::vector<Tensor> w;
  for (int c = 0; c < copies; ++c) w.push_back(random_device(shape, 0.03f, kDtype, rng));
  return w;
}

// x [rows, in] · W^T, W [out, in] through ops::linear, as the model's projections and dense FFN run (the small-m
// kernels up to kSmallMMaxRows rows, float FMAs up to kSmallMFloatMaxRows and tensor cores above, cuBLAS past them;
// GemmPath below times the kernels and cuBLAS side by side).
void BM_Linear(benchmark::State& state, int64_t out, int64_t in) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(1);
  const std::vector<Tensor> w = weights({out, in}, kCopies, rng);
  const Tensor x = random_device({rows, in}, 1.0f, kDtype, rng);
  time_calls(
      state, kCopies, [&](int c) { benchmark::DoNotOptimize(ops::linear(x, w[c]).raw()); },
      2.0 * (out * in + rows * (in + out)));
}

// The same with int8 weights, per channel (--quantize-non-experts): ops::quantized_linear (the weight-streaming
// kernel at 1-4 rows), or the grouped GEMM with the weight as its one expert (what quantized_linear ran before).
void BM_QuantizedLinear(benchmark::State& state, int64_t out, int64_t in, bool grouped) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(1);
  std::vector<QuantizedTensor> w;
  for (int c = 0; c < kCopies; ++c)
    w.push_back(quantize(random_device({out, in}, 0.03f, DType::F32, rng).to(Device::CPU), 8, 0, "w").to(Device::CUDA));
  const Tensor x = random_device({rows, in}, 1.0f, kDtype, rng);
  Tensor y = Tensor::empty({rows, out}, kDtype, Device::CUDA);
  const Tensor offsets = Tensor::from_vector(std::vector<int32_t>{0, static_cast<int32_t>(rows)}, {2}).to(Device::CUDA);
  std::vector<QuantizedTensor> stacked = w;
  for (QuantizedTensor& q : stacked) {
    q.values = q.values.reshape({1, out, q.values.dim(1)});
    q.scales = q.scales.reshape({1, out, q.scales.dim(1)});
    q.shape = {1, out, in};
  }
  time_calls(
      state, kCopies,
      [&](int c) {
        if (grouped) {
          ops::grouped_gemm(x, stacked[c], offsets, y);
        } else {
          ops::quantized_linear(x, w[c], y);
        }
      },
      static_cast<double>(out * in + out * 2 + 2 * rows * (in + out)));
}

// Self-attention's query, key and value projections in one launch (ops::linear_stack).
void BM_LinearStack(benchmark::State& state) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(8);
  const std::vector<Tensor> w = weights({3, kModel, kModel}, kCopies, rng);
  const Tensor x = random_device({rows, kModel}, 1.0f, kDtype, rng);
  Tensor y = Tensor::empty({3, rows, kModel}, kDtype, Device::CUDA);
  time_calls(
      state, kCopies, [&](int c) { ops::linear_stack(x, w[c], y); }, 2.0 * (3 * kModel * kModel + 4 * rows * kModel));
}

// The two CUDA paths of ops::gemm and ops::linear_stack side by side on the same weights and output buffer:
// cuBLAS, and the small-m kernel that the ops pick for 1 to kSmallMMaxRows half-precision rows (every hand-written
// kernel is timed against the library). small_m(c) launches the kernel on copy c and says whether it applied.
template <typename Library, typename SmallM>
void time_path(benchmark::State& state, bool library, Library&& cublas, SmallM&& small_m, double bytes) {
  if (!library && !small_m(0)) {
    state.SkipWithError("the small-m kernel does not apply");
    return;
  }
  time_calls(
      state, kCopies,
      [&](int c) {
        if (library)
          cublas(c);
        else
          small_m(c);
      },
      bytes);
}

void BM_GemmPath(benchmark::State& state, int64_t out, int64_t in, bool library) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(9);
  const std::vector<Tensor> w = weights({out, in}, kCopies, rng);
  const Tensor x = random_device({rows, in}, 1.0f, kDtype, rng);
  Tensor y = Tensor::empty({rows, out}, kDtype, Device::CUDA);
  ops::GemmArgs args;
  args.b_is_weight = true;  // as ops::linear passes it: the small-m kernel streams the weight before its wait
  time_path(
      state, library, [&](int c) { ops::cuda::gemm_cublas(x, w[c], y, args); },
      [&](int c) { return ops::cuda::small_m_gemm(x, w[c], y, args); }, 2.0 * (out * in + rows * (in + out)));
}

void BM_LinearStackPath(benchmark::State& state, bool library) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(10);
  const std::vector<Tensor> w = weights({3, kModel, kModel}, kCopies, rng);
  const Tensor x = random_device({rows, kModel}, 1.0f, kDtype, rng);
  Tensor y = Tensor::empty({3, rows, kModel}, kDtype, Device::CUDA);
  time_path(
      state, library, [&](int c) { ops::cuda::linear_stack_cublas(x, w[c], y); },
      [&](int c) { return ops::cuda::small_m_linear_stack(x, w[c], y); },
      2.0 * (3 * kModel * kModel + 4 * rows * kModel));
}

// The lm_head: float32 logits over the whole vocabulary.
void BM_Logits(benchmark::State& state) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(2);
  const int copies = 4;  // 4 x 262 MB
  const std::vector<Tensor> w = weights({kVocab, kModel}, copies, rng);
  const Tensor x = random_device({rows, kModel}, 1.0f, kDtype, rng);
  Tensor logits = Tensor::empty({rows, kVocab}, DType::F32, Device::CUDA);
  time_calls(
      state, copies, [&](int c) { ops::gemm(x, w[c], logits); }, 2.0 * kVocab * kModel + 4.0 * rows * kVocab);
}

void BM_RmsNorm(benchmark::State& state) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(3);
  const Tensor x = random_device({rows, kModel}, 1.0f, kDtype, rng);
  const Tensor weight = random_device({kModel}, 1.0f, kDtype, rng);
  Tensor y = Tensor::empty(x.shape(), kDtype, Device::CUDA);
  time_calls(
      state, kCopies, [&](int) { ops::rms_norm(x, weight, 1e-6f, y); }, 2.0 * (2 * rows + 1) * kModel);
}

// A sublayer's norm and first projection (1024x1024, or the q,k,v stack): ops::rms_norm_linear, one launch up to
// kSmallMMaxRows rows, against rms_norm then the projection, two launches.
void BM_RmsNormLinear(benchmark::State& state, int64_t count, bool fused) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(11);
  const std::vector<Tensor> w = weights(count ? Shape{count, kModel, kModel} : Shape{kModel, kModel}, kCopies, rng);
  const Tensor x = random_device({rows, kModel}, 1.0f, kDtype, rng);
  const Tensor g = random_device({kModel}, 1.0f, kDtype, rng);
  Tensor normalized = Tensor::empty(x.shape(), kDtype, Device::CUDA);
  Tensor y = Tensor::empty(count ? Shape{count, rows, kModel} : Shape{rows, kModel}, kDtype, Device::CUDA);
  const int64_t outputs = std::max<int64_t>(count, 1) * kModel;
  time_calls(
      state, kCopies,
      [&](int c) {
        if (fused) {
          ops::rms_norm_linear(x, g, 1e-6f, w[c], y);
          return;
        }
        ops::rms_norm(x, g, 1e-6f, normalized);
        if (count)
          ops::linear_stack(normalized, w[c], y);
        else
          ops::gemm(normalized, w[c], y, ops::GemmArgs{true, 1.0f, 0.0f, true});
      },
      2.0 * (outputs * kModel + kModel + rows * (kModel + outputs)));
}

void BM_AddInPlace(benchmark::State& state) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(4);
  Tensor hidden = random_device({rows, kModel}, 1.0f, kDtype, rng);
  const Tensor y = random_device({rows, kModel}, 1.0f, kDtype, rng);
  time_calls(
      state, kCopies, [&](int) { ops::add_in_place(hidden, y); }, 2.0 * 3 * rows * kModel);
}

void BM_WriteCacheStep(benchmark::State& state) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(5);
  const Tensor values = random_device({rows, kHeads * kHeadDim}, 1.0f, kDtype, rng);
  Tensor cache = Tensor::empty({rows, kKeys, kHeads * kHeadDim}, kDtype, Device::CUDA);
  std::vector<int32_t> slots;
  for (int64_t r = 0; r < rows; ++r) slots.push_back(static_cast<int32_t>(r * kKeys + kKeys / 2));
  const Tensor slot_tensor = Tensor::from_vector(slots, {rows}, Device::CUDA);
  time_calls(
      state, kCopies, [&](int) { ops::write_cache_step(values, slot_tensor, cache); },
      2.0 * 2 * rows * kHeads * kHeadDim);
}

// One query per row against kKeys keys of its own (self-attention over the cache; cross-attention is the same
// shape at 40 source tokens).
void BM_DecodeAttention(benchmark::State& state) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(6);
  const int64_t inner = kHeads * kHeadDim;
  const Tensor queries = random_device({rows, inner}, 1.0f, kDtype, rng);
  const Tensor keys = random_device({rows * kKeys, inner}, 1.0f, kDtype, rng);
  const Tensor values = random_device({rows * kKeys, inner}, 1.0f, kDtype, rng);
  std::vector<int32_t> query_begin, key_begin, key_length, position;
  for (int64_t r = 0; r < rows; ++r) {
    query_begin.push_back(static_cast<int32_t>(r));
    key_begin.push_back(static_cast<int32_t>(r * kKeys));
    key_length.push_back(static_cast<int32_t>(kKeys));
    position.push_back(static_cast<int32_t>(kKeys - 1));
  }
  query_begin.push_back(static_cast<int32_t>(rows));
  const ops::AttentionLayout layout =
      ops::AttentionLayout::from_host(query_begin, key_begin, key_length, position, Device::CUDA);
  ops::AttentionArgs args;
  args.num_heads = kHeads;
  args.head_dim = kHeadDim;
  Tensor out = Tensor::empty(queries.shape(), kDtype, Device::CUDA);
  time_calls(
      state, kCopies, [&](int) { ops::attention(queries, keys, values, layout, args, out); },
      2.0 * (2 * rows * inner + 2 * rows * kKeys * inner));
}

// A decode step's self-attention: one query per row against its kKeys cache slots, the last of which is this step's
// key and value. Separate: write_cache_step for keys and values, then attention (three launches, as the decoder ran
// before ops::attention_with_append); fused: attention_with_append (one).
void BM_SelfAttentionStep(benchmark::State& state, bool fused) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(12);
  const int64_t inner = kHeads * kHeadDim;
  const Tensor queries = random_device({rows, inner}, 1.0f, kDtype, rng);
  const Tensor new_keys = random_device({rows, inner}, 1.0f, kDtype, rng);
  const Tensor new_values = random_device({rows, inner}, 1.0f, kDtype, rng);
  Tensor key_cache = random_device({rows, kKeys, inner}, 1.0f, kDtype, rng);
  Tensor value_cache = random_device({rows, kKeys, inner}, 1.0f, kDtype, rng);
  Tensor keys = key_cache.reshape({-1, inner}), values = value_cache.reshape({-1, inner});
  std::vector<int32_t> query_begin, key_begin, key_length, position;
  for (int64_t r = 0; r < rows; ++r) {
    query_begin.push_back(static_cast<int32_t>(r));
    key_begin.push_back(static_cast<int32_t>(r * kKeys));
    key_length.push_back(static_cast<int32_t>(kKeys));
    position.push_back(static_cast<int32_t>(kKeys - 1));
  }
  query_begin.push_back(static_cast<int32_t>(rows));
  const ops::AttentionLayout layout =
      ops::AttentionLayout::from_host(query_begin, key_begin, key_length, position, Device::CUDA);
  ops::AttentionArgs args;
  args.num_heads = kHeads;
  args.head_dim = kHeadDim;
  Tensor out = Tensor::empty(queries.shape(), kDtype, Device::CUDA);
  time_calls(
      state, kCopies,
      [&](int) {
        if (fused) {
          ops::attention_with_append(queries, new_keys, new_values, keys, values, layout, args, out);
          return;
        }
        ops::write_cache_step(new_keys, layout.query_position, key_cache);
        ops::write_cache_step(new_values, layout.query_position, value_cache);
        ops::attention(queries, keys, values, layout, args, out);
      },
      2.0 * (6 * rows * inner + 2 * rows * (kKeys - 1) * inner));
}

// Greedy's argmax over the vocabulary (outside the step's graph in the search, timed here the same way).
void BM_Argmax(benchmark::State& state) {
  const int64_t rows = state.range(0);
  std::mt19937 rng(7);
  const Tensor logits = random_device({rows, kVocab}, 1.0f, DType::F32, rng);
  Tensor values = Tensor::empty({rows, 1}, DType::F32, Device::CUDA);
  Tensor indices = Tensor::empty({rows, 1}, DType::I32, Device::CUDA);
  time_calls(
      state, kCopies, [&](int) { ops::topk(logits, 1, values, indices); }, 4.0 * rows * kVocab);
}

}  // namespace

void register_benchmarks() {
  const auto add = [](const char* name, auto&& fn) {
    auto* b = benchmark::RegisterBenchmark(name, fn);
    b->Arg(1)->Arg(8)->Arg(16)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
  };
  add("Linear/1024x1024", [](benchmark::State& s) { BM_Linear(s, kModel, kModel); });
  add("Linear/4096x1024", [](benchmark::State& s) { BM_Linear(s, kFf, kModel); });
  add("Linear/1024x4096", [](benchmark::State& s) { BM_Linear(s, kModel, kFf); });
  add("LinearStack/3x1024x1024", BM_LinearStack);
  for (bool grouped : {false, true}) {
    const std::string how = grouped ? "/grouped" : "/linear";
    add(("QuantizedLinear/int8/1024x1024" + how).c_str(),
        [=](benchmark::State& s) { BM_QuantizedLinear(s, kModel, kModel, grouped); });
    add(("QuantizedLinear/int8/4096x1024" + how).c_str(),
        [=](benchmark::State& s) { BM_QuantizedLinear(s, kFf, kModel, grouped); });
    add(("QuantizedLinear/int8/1024x4096" + how).c_str(),
        [=](benchmark::State& s) { BM_QuantizedLinear(s, kModel, kFf, grouped); });
  }
  for (bool library : {true, false}) {
    const std::string path = library ? "/cublas" : "/small_m";
    const auto add_path = [&](const std::string& name, auto&& fn) {
      benchmark::RegisterBenchmark((name + path).c_str(), fn)
          ->ArgsProduct({{1, 2, 4, 5, 8, 12, ops::cuda::kSmallMMaxRows}})
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond)
          ->MinTime(0.1);
    };
    add_path("GemmPath/1024x1024", [=](benchmark::State& s) { BM_GemmPath(s, kModel, kModel, library); });
    add_path("GemmPath/4096x1024", [=](benchmark::State& s) { BM_GemmPath(s, kFf, kModel, library); });
    add_path("GemmPath/1024x4096", [=](benchmark::State& s) { BM_GemmPath(s, kModel, kFf, library); });
    add_path("LinearStackPath/3x1024x1024", [=](benchmark::State& s) { BM_LinearStackPath(s, library); });
  }
  add("Logits/128000x1024", BM_Logits);
  add("RmsNorm", BM_RmsNorm);
  for (bool fused : {true, false}) {
    const std::string how = fused ? "/fused" : "/separate";
    add(("RmsNormLinear/1024x1024" + how).c_str(), [=](benchmark::State& s) { BM_RmsNormLinear(s, 0, fused); });
    add(("RmsNormLinear/3x1024x1024" + how).c_str(), [=](benchmark::State& s) { BM_RmsNormLinear(s, 3, fused); });
  }
  add("AddInPlace", BM_AddInPlace);
  add("WriteCacheStep", BM_WriteCacheStep);
  add("Attention/40keys", BM_DecodeAttention);
  for (bool fused : {true, false}) {
    const std::string how = fused ? "/fused" : "/separate";
    add(("SelfAttentionStep/40keys" + how).c_str(), [=](benchmark::State& s) { BM_SelfAttentionStep(s, fused); });
  }
  add("Argmax/128000", BM_Argmax);
}

}  // namespace elephant

int main(int argc, char** argv) {
  return elephant::run_cuda_benchmarks(argc, argv, "bench_cuda_decode", elephant::register_benchmarks);
}
