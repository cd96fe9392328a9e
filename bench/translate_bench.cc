// The paper's Table 3 for the engine: input tokens/s of whole translations (encode + decode) of random sources,
// with the output length forced (min length = max length), for each batch size and beam size. The transformers
// baseline is tools/bench/hf_generate_bench.py on the same model, shapes and lengths; scripts/device-check.sh runs
// both in one call. Also reports the engine's peak GPU memory per configuration (the stream-ordered pool's
// high-water mark: weights, activations, caches).
//
//   build/bin/bench_translate MODEL_DIR [--device cuda] [--dtype fp16] [--batch-sizes 1,8,32,96] [--beams 1,2]
//                             [--quantize int8|int4] [--steps-only]
//
// --steps-only times the decode step alone instead: new_tokens - 2 steps of batch x beam rows queued back to back
// (replayed from their CUDA graph), nothing read back and no search around them. In the same process it times the
// two phases of a translation of that batch through the model: the encoder, and the whole search, greedy or beam
// (new_tokens steps with the search's per-step ops, flag read-backs and the step graph's capture). The search minus
// new_tokens back-to-back steps is what the search adds to the steps.
//
// --steps-only --profile-step runs, per batch size, one decode of three steps and brackets the third (replayed from
// its graph) for a profiler started with collection off: `ncu --profile-from-start off` then sees one step's kernels
// (scripts/device-check.sh's stepprofile stage). --steps-only --profile-search brackets one whole search per batch and
// beam size instead (a search of the same shape runs before, outside the bracket): the search's own kernels next to
// its steps'.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/cuda_graph.h"
#include "core/device_memory.h"
#include "decoding/search.h"
#include "elephant/error.h"
#include "elephant/translator.h"
#include "models/encoder_decoder.h"

namespace {

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) values.push_back(std::stoi(item));
  return values;
}

// `batch` random sources of input_length ids, EOS last (no pad, EOS or unknown inside).
std::vector<std::vector<int32_t>> random_sources(const elephant::EncoderDecoderModel& model, int batch,
                                                 int input_length, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> token(3, model.special_tokens().vocab_size - 1);
  std::vector<std::vector<int32_t>> sources(static_cast<size_t>(batch));
  for (auto& source : sources) {
    for (int t = 0; t + 1 < input_length; ++t) source.push_back(token(rng));
    source.push_back(model.special_tokens().eos);
  }
  return sources;
}

// A random id for each of `rows` decoder rows, on the model's device: rows as different as a search's (one id for
// every row could make their routing more alike).
elephant::Tensor random_row_ids(const elephant::EncoderDecoderModel& model, int rows, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> token(3, model.special_tokens().vocab_size - 1);
  std::vector<int32_t> ids(static_cast<size_t>(rows));
  for (auto& id : ids) id = token(rng);
  return elephant::Tensor::from_vector(ids, {rows}, model.options().device);
}

// Seconds per decode step of `batch` random sources with `beam` rows each, steps 2 .. steps - 1 queued back to back
// after a synchronization (step 0 and 1 make and record the graph), the same ids fed every step.
double seconds_per_step(elephant::EncoderDecoderModel& model, int batch, int beam, int input_length, int steps,
                        std::mt19937& rng) {
  using namespace elephant;
  const auto sources = random_sources(model, batch, input_length, rng);
  const Device device = model.options().device;
  const EncoderOutput encoded = model.encode(sources);
  auto state = model.start_decoding(encoded, beam, steps);
  const int rows = batch * beam;
  const Tensor ids = random_row_ids(model, rows, rng);
  model.step(*state, ids);
  model.step(*state, ids);
  device_synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  for (int s = 2; s < steps; ++s) model.step(*state, ids);
  device_synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / (steps - 2);
}

struct PhaseSeconds {
  double encode = 0.0, search = 0.0;
};

// A search with `beam` beams (1: greedy) of exactly `steps` tokens.
elephant::SearchOptions forced_search(int beam, int steps) {
  elephant::SearchOptions options;
  options.beam_size = beam;
  options.max_length = options.min_length = steps;
  return options;
}

// A translation of `batch` random sources through the model with `beam` beams (1: greedy), `steps` tokens forced:
// the encoder, then the search (which returns its ids on the host), each timed from a synchronized device.
PhaseSeconds phase_seconds(elephant::EncoderDecoderModel& model, int batch, int beam, int input_length, int steps,
                           std::mt19937& rng) {
  using namespace elephant;
  const auto sources = random_sources(model, batch, input_length, rng);
  const Device device = model.options().device;
  const SearchOptions options = forced_search(beam, steps);
  device_synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  const EncoderOutput encoded = model.encode(sources);
  device_synchronize(device);
  const auto encoded_at = std::chrono::steady_clock::now();
  const auto results = generate(model, encoded, options);
  const auto done = std::chrono::steady_clock::now();
  if (static_cast<int>(results.size()) != batch || static_cast<int>(results.front().size()) != steps)
    throw Error("a search did not give the forced length");
  return {std::chrono::duration<double>(encoded_at - start).count(),
          std::chrono::duration<double>(done - encoded_at).count()};
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// One decode of `batch` random sources: steps 0 and 1 run (kernel by kernel, then recorded), step 2 replays inside
// the profiler's bracket.
void profile_one_step(elephant::EncoderDecoderModel& model, int batch, int input_length, std::mt19937& rng) {
  using namespace elephant;
  const EncoderOutput encoded = model.encode(random_sources(model, batch, input_length, rng));
  auto state = model.start_decoding(encoded, 1, 3);
  const Device device = model.options().device;
  const Tensor ids = random_row_ids(model, batch, rng);
  model.step(*state, ids);
  model.step(*state, ids);
  device_synchronize(device);
  cuda_profiler_start();
  model.step(*state, ids);
  device_synchronize(device);
  cuda_profiler_stop();
}

// One search of `batch` random sources with `beam` beams (1: greedy), `steps` tokens forced, inside the profiler's
// bracket, after one of the same shape outside it (graphs recorded, first-use work done): the search's own kernels
// next to the steps'.
void profile_one_search(elephant::EncoderDecoderModel& model, int batch, int beam, int input_length, int steps,
                        std::mt19937& rng) {
  using namespace elephant;
  const SearchOptions options = forced_search(beam, steps);
  generate(model, model.encode(random_sources(model, batch, input_length, rng)), options);
  const EncoderOutput encoded = model.encode(random_sources(model, batch, input_length, rng));
  device_synchronize(model.options().device);
  cuda_profiler_start();
  generate(model, encoded, options);
  device_synchronize(model.options().device);
  cuda_profiler_stop();
}

// What --steps-only brackets for a profiler instead of timing (--profile-search over --profile-step).
enum class Profile { None, Step, Search };

int time_steps_only(const std::string& model_dir, const elephant::ModelOptions& options,
                    const std::vector<int>& batch_sizes, const std::vector<int>& beams, int input_length, int steps,
                    int batches, int seed, Profile profile) {
  using namespace elephant;
  if (steps < 3) throw UsageError("--steps-only needs --new-tokens of at least 3");
  auto model = load_model(model_dir, options);
  std::mt19937 rng(static_cast<unsigned>(seed));
  if (profile == Profile::Search) {
    for (const int beam : beams)
      for (const int batch : batch_sizes) profile_one_search(*model, batch, beam, input_length, steps, rng);
    std::printf("profiled one search of %d steps per batch and beam size\n", steps);
    return 0;
  }
  if (profile == Profile::Step) {
    for (const int batch : batch_sizes) profile_one_step(*model, batch, input_length, rng);
    std::printf("profiled one replayed decode step per batch size\n");
    return 0;
  }
  std::printf(
      "| batch | beam | decode step ms (steps queued back to back) | encoder ms | search ms (%d steps) | search - %d "
      "steps ms |\n|---|---|---|---|---|---|\n",
      steps, steps);
  for (const int beam : beams)
    for (const int batch : batch_sizes) {
      std::vector<double> step, encode, search;
      phase_seconds(*model, batch, beam, input_length, steps, rng);  // warm-up: graphs, first-use work
      for (int i = 0; i < batches; ++i) {
        step.push_back(seconds_per_step(*model, batch, beam, input_length, steps, rng));
        const PhaseSeconds phases = phase_seconds(*model, batch, beam, input_length, steps, rng);
        encode.push_back(phases.encode);
        search.push_back(phases.search);
      }
      const double step_ms = median(step) * 1e3, search_ms = median(search) * 1e3;
      std::printf("| %d | %d | %.3f | %.2f | %.2f | %.2f |\n", batch, beam, step_ms, median(encode) * 1e3, search_ms,
                  search_ms - steps * step_ms);
      std::fflush(stdout);
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"elephant: Table 3 throughput (input tokens/s) with forced output length"};
  std::string model_dir, device = "cuda", dtype = "fp16", batch_sizes = "1,8,32,96", beams = "1,2", json_path,
                         quantize = "none";
  int input_length = 40, new_tokens = 40, batches = 5, warmup = 1, seed = 0;
  bool no_cuda_graphs = false, no_pipeline = false, quantize_non_experts = false, steps_only = false,
       profile_step = false, profile_search = false;
  app.add_option("model_dir", model_dir)->required();
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype)->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  app.add_option("--batch-sizes", batch_sizes);
  app.add_option("--beams", beams);
  app.add_option("--input-length", input_length, "source tokens, EOS included")->check(CLI::Range(2, 4096));
  app.add_option("--new-tokens", new_tokens, "generated tokens, forced")->check(CLI::Range(1, 4096));
  app.add_option("--batches", batches, "timed batches per configuration (median)")->check(CLI::Range(1, 1000));
  app.add_option("--warmup", warmup)->check(CLI::Range(0, 100));
  app.add_option("--seed", seed);
  app.add_option("--json", json_path);
  app.add_option("--quantize", quantize, "expert weights quantized at load time (per channel)")
      ->check(CLI::IsMember({"none", "int8", "int4"}));
  app.add_flag("--quantize-non-experts", quantize_non_experts, "attention and dense FFN weights in int8 too");
  app.add_flag("--no-cuda-graphs", no_cuda_graphs, "decode steps kernel by kernel (the comparison for graphs)");
  app.add_flag("--steps-only", steps_only,
               "time the decode step alone (batch x beam rows, steps queued back to back, no search), then the search");
  app.add_flag("--profile-step", profile_step,
               "with --steps-only: one replayed step per batch size between cudaProfilerStart and Stop, nothing timed");
  app.add_flag("--profile-search", profile_search,
               "with --steps-only: one whole search per batch and beam size between cudaProfilerStart and Stop");
  app.add_flag("--no-pipeline", no_pipeline,
               "each search step on CUDA waits for the last one's flags (the comparison)");
  CLI11_PARSE(app, argc, argv);

  try {
    using namespace elephant;
    if (steps_only) {
      ModelOptions options;
      options.device = device == "cpu" ? Device::CPU : Device::CUDA;
      options.dtype = dtype == "fp32" ? DType::F32 : dtype == "bf16" ? DType::BF16 : DType::F16;
      options.cuda_graphs = !no_cuda_graphs;
      options.quantize = {quantize == "int8" ? 8 : quantize == "int4" ? 4 : 0, 0};
      options.quantize_non_experts = quantize_non_experts;
      return time_steps_only(model_dir, options, parse_list(batch_sizes), parse_list(beams), input_length, new_tokens,
                             batches, seed,
                             profile_search ? Profile::Search
                             : profile_step ? Profile::Step
                                            : Profile::None);
    }
    if (profile_step || profile_search) throw UsageError("--profile-step and --profile-search need --steps-only");
    TranslatorOptions translator_options;
    translator_options.device = parse_device_request(device);
    translator_options.compute_type = parse_compute_type(dtype);
    translator_options.cuda_graphs = !no_cuda_graphs;
    translator_options.quantization = parse_quantization(quantize);
    translator_options.quantize_non_experts = quantize_non_experts;
    Translator translator(model_dir, translator_options);
    const int vocab = static_cast<int>(translator.info().vocab_size);
    std::mt19937 rng(static_cast<unsigned>(seed));
    std::uniform_int_distribution<int> token(3, vocab - 1);  // no pad (0), eos (1) or unk (2) inside a source
    nlohmann::json rows = nlohmann::json::array();
    std::printf(
        "| batch | beam | input tok/s | median batch ms | peak GPU memory GiB | graph captures per batch | capture ms "
        "per batch (record + instantiate) |\n|---|---|---|---|---|---|---|\n");
    for (const int beam : parse_list(beams)) {
      for (const int batch : parse_list(batch_sizes)) {
        TranslationOptions options;
        options.beam_size = beam;
        options.max_batch_size = batch;
        options.max_length = options.min_length = new_tokens;
        options.max_input_length = input_length;
        options.pipeline_steps = !no_pipeline;
        std::vector<double> seconds;
        reset_cuda_peak_memory();
        for (int i = 0; i < warmup + batches; ++i) {
          if (i == warmup) reset_cuda_graph_capture_stats();
          std::vector<std::vector<int>> sources(static_cast<size_t>(batch));
          for (auto& source : sources) {
            for (int t = 0; t + 1 < input_length; ++t) source.push_back(token(rng));
            source.push_back(1);
          }
          const auto start = std::chrono::steady_clock::now();
          const auto results = translator.translate_ids(sources, options);  // returns on the host: synchronized
          const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          for (const auto& r : results)
            if (static_cast<int>(r.size()) != new_tokens)
              throw elephant::Error("an output does not have the forced length");
          if (i >= warmup) seconds.push_back(elapsed);
        }
        std::sort(seconds.begin(), seconds.end());
        const double median = seconds[seconds.size() / 2];
        const double tokens_per_second = static_cast<double>(batch) * input_length / median;
        const double peak_gib = static_cast<double>(cuda_memory_usage().peak_bytes) / (1u << 30);
        const CudaGraphCaptureStats graphs = cuda_graph_capture_stats();
        const double captures = static_cast<double>(graphs.captures) / batches;
        const double record_ms = graphs.record_seconds * 1e3 / batches;
        const double instantiate_ms = graphs.instantiate_seconds * 1e3 / batches;
        std::printf("| %d | %d | %.0f | %.1f | %.2f | %.1f | %.2f + %.2f |\n", batch, beam, tokens_per_second,
                    median * 1e3, peak_gib, captures, record_ms, instantiate_ms);
        std::fflush(stdout);
        rows.push_back({{"batch", batch},
                        {"beam", beam},
                        {"input_tokens_per_s", tokens_per_second},
                        {"median_batch_s", median},
                        {"peak_gpu_bytes", cuda_memory_usage().peak_bytes},
                        {"graph_captures_per_batch", captures},
                        {"graph_record_ms_per_batch", record_ms},
                        {"graph_instantiate_ms_per_batch", instantiate_ms}});
      }
    }
    if (!json_path.empty())
      std::ofstream(json_path) << nlohmann::json{
          {"model", model_dir},
          {"device", device},
          {"dtype", dtype},
          {"input_length", input_length},
          {"new_tokens", new_tokens},
          {"cuda_graphs", !no_cuda_graphs},
          {"pipeline_steps", !no_pipeline},
          {"rows", rows}}.dump(1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_translate: %s\n", e.what());
    return 1;
  }
  return 0;
}
