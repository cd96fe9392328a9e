#include "elephant/translator.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <optional>

#include "decoding/search.h"
#include "elephant/error.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "io/tokenizer.h"
#include "io/utf8.h"
#include "models/encoder_decoder.h"
#include "models/switch_transformers.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace elephant {

namespace {

Device resolve_device(DeviceRequest request) {
  const int gpus = cuda_device_count();
  if (request == DeviceRequest::CUDA && gpus == 0)
    throw UsageError("--device cuda: no CUDA device is available (or this build has no CUDA backend)");
  if (request == DeviceRequest::CPU) return Device::CPU;
  return gpus > 0 ? Device::CUDA : Device::CPU;
}

ComputeType resolve_compute_type(ComputeType requested, Device device) {
  if (requested == ComputeType::Auto) return device == Device::CUDA ? ComputeType::FP16 : ComputeType::FP32;
  if (device == Device::CPU && requested != ComputeType::FP32)
    throw UsageError("--dtype " + to_string(requested) + ": the CPU backend computes in fp32 (use --device cuda)");
  return requested;
}

DType dtype_of(ComputeType type) {
  return type == ComputeType::FP16 ? DType::F16 : type == ComputeType::BF16 ? DType::BF16 : DType::F32;
}

void validate(const TranslationOptions& options) {
  const auto check = [](bool ok, const std::string& message) {
    if (!ok) throw UsageError(message);
  };
  check(options.beam_size >= 1, "beam size must be at least 1, got " + std::to_string(options.beam_size));
  check(options.max_batch_size >= 1, "batch size must be at least 1, got " + std::to_string(options.max_batch_size));
  check(options.max_length >= 1, "max length must be at least 1, got " + std::to_string(options.max_length));
  check(options.min_length >= 0 && options.min_length <= options.max_length,
        "min length must be between 0 and the max length, got " + std::to_string(options.min_length));
  check(options.max_input_length >= 2,
        "max input length must be at least 2, got " + std::to_string(options.max_input_length));
  check(options.length_penalty == options.length_penalty, "length penalty must be a number");
}

}  // namespace

class TranslatorImpl {
 public:
  TranslatorImpl(const std::string& model_dir, const TranslatorOptions& options)
      : device_(resolve_device(options.device)),
        compute_type_(resolve_compute_type(options.compute_type, device_)),
        model_(load_model(model_dir, {device_,
                                      dtype_of(compute_type_),
                                      options.cuda_graphs,
                                      {quantization_bits(options.quantization), options.quantization_group_size},
                                      options.quantize_non_experts})),
        tokenizer_path_(model_dir + "/spiece.model") {
    // Text needs the SentencePiece model; token ids (translate_ids, benchmarks) do not.
    if (std::filesystem::exists(tokenizer_path_)) tokenizer_ = Tokenizer::load(tokenizer_path_);
    if (options.num_threads < 0) throw UsageError("number of threads must be >= 0");
    if (options.num_threads > 0) {
      omp_set_num_threads(options.num_threads);
      openblas_set_num_threads(options.num_threads);
    }
  }

  // Options are validated by the caller.
  std::vector<std::vector<int>> translate_ids(const std::vector<std::vector<int>>& sources,
                                              const TranslationOptions& options, const ProgressCallback& progress) {
    const SpecialTokens& special = model_->special_tokens();
    std::vector<std::vector<int>> results(sources.size());
    // Longest first, so that a batch holds sentences of similar length.
    std::vector<size_t> order;
    for (size_t i = 0; i < sources.size(); ++i) {
      for (int id : sources[i])
        if (id < 0 || id >= special.vocab_size)
          throw InputError("source " + std::to_string(i + 1) + ": token id " + std::to_string(id) +
                           " outside the vocabulary of " + std::to_string(special.vocab_size));
      if (!sources[i].empty()) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return sources[a].size() > sources[b].size(); });
    SearchOptions search;
    search.beam_size = options.beam_size;
    search.max_length = options.max_length;
    search.min_length = options.min_length;
    search.length_penalty = options.length_penalty;
    search.prune_finished = options.prune_finished;
    if (!options.pipeline_steps) search.pipeline_steps = false;  // else the search's default: on CUDA only
    size_t done = sources.size() - order.size();
    for (size_t begin = 0; begin < order.size(); begin += options.max_batch_size) {
      const size_t end = std::min(order.size(), begin + options.max_batch_size);
      std::vector<std::vector<int32_t>> batch;
      for (size_t i = begin; i < end; ++i) batch.emplace_back(sources[order[i]].begin(), sources[order[i]].end());
      const EncoderOutput encoded = model_->encode(batch);
      std::vector<std::vector<int32_t>> generated = generate(*model_, encoded, search);
      for (size_t i = begin; i < end; ++i) {
        std::vector<int32_t>& ids = generated[i - begin];
        if (!ids.empty() && ids.back() == special.eos) ids.pop_back();
        results[order[i]].assign(ids.begin(), ids.end());
      }
      done += end - begin;
      if (progress) progress(done, sources.size());
    }
    return results;
  }

  std::vector<TranslationResult> translate(const std::vector<std::string>& lines, const TranslationOptions& options,
                                           const ProgressCallback& progress, const WarningCallback& warn) {
    validate(options);
    if (!tokenizer_)
      throw ModelError(tokenizer_path_ +
                       ": SentencePiece model not found (translating text needs it; token ids do not)");
    const auto warning = [&](const std::string& message) {
      if (warn)
        warn(message);
      else
        std::cerr << "warning: " << message << '\n';
    };
    // A source is [<2xx> id] + pieces(sentence) + [EOS], as tools/train builds training examples: the tag
    // piece is not run through SentencePiece, which would put a lone "▁" piece before it.
    std::vector<int> prefix;
    if (!options.target_lang.empty()) {
      const std::string tag = "<2" + options.target_lang + ">";
      const int id = tokenizer_->piece_to_id(tag);
      if (id < 0)
        throw InputError("unknown target language \"" + options.target_lang + "\": the tokenizer has no piece " + tag);
      prefix.push_back(id);
    }
    const int eos = model_->special_tokens().eos;
    std::vector<TranslationResult> results(lines.size());
    std::vector<std::vector<int>> sources(lines.size());
    for (size_t i = 0; i < lines.size(); ++i) {
      size_t error_offset = 0;
      if (!is_valid_utf8(lines[i], &error_offset))
        throw InputError("line " + std::to_string(i + 1) + ": invalid UTF-8 at byte " + std::to_string(error_offset));
      std::vector<int> pieces = tokenizer_->encode(lines[i]);
      if (pieces.empty()) continue;  // an empty line translates to an empty line
      std::vector<int>& ids = sources[i];
      ids = prefix;
      ids.insert(ids.end(), pieces.begin(), pieces.end());
      ids.push_back(eos);
      if (static_cast<int>(ids.size()) > options.max_input_length) {
        warning("line " + std::to_string(i + 1) + ": " + std::to_string(ids.size()) + " tokens, truncated to " +
                std::to_string(options.max_input_length) + " (the maximum input length)");
        ids.resize(options.max_input_length - 1);
        ids.push_back(eos);
        results[i].truncated_input = true;
      }
    }
    const std::vector<std::vector<int>> generated = translate_ids(sources, options, progress);
    for (size_t i = 0; i < lines.size(); ++i) {
      results[i].ids = generated[i];
      results[i].text = tokenizer_->decode(generated[i]);
    }
    return results;
  }

  Device device() const { return device_; }
  ComputeType compute_type() const { return compute_type_; }
  const ModelInfo& info() const { return model_->info(); }

 private:
  Device device_;
  ComputeType compute_type_;
  std::unique_ptr<EncoderDecoderModel> model_;
  std::string tokenizer_path_;
  std::optional<Tokenizer> tokenizer_;
};

Translator::Translator(const std::string& model_dir, const TranslatorOptions& options)
    : impl_(std::make_unique<TranslatorImpl>(model_dir, options)) {}
Translator::~Translator() = default;

std::vector<TranslationResult> Translator::translate(const std::vector<std::string>& lines,
                                                     const TranslationOptions& options,
                                                     const ProgressCallback& progress, const WarningCallback& warn) {
  return impl_->translate(lines, options, progress, warn);
}

std::vector<std::vector<int>> Translator::translate_ids(const std::vector<std::vector<int>>& sources,
                                                        const TranslationOptions& options) {
  validate(options);
  return impl_->translate_ids(sources, options, {});
}

const ModelInfo& Translator::info() const { return impl_->info(); }
Device Translator::device() const { return impl_->device(); }
ComputeType Translator::compute_type() const { return impl_->compute_type(); }

}  // namespace elephant
