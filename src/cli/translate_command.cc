#include <unistd.h>

#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "elephant/error.h"
#include "elephant/translator.h"

namespace elephant::cli {

namespace {

struct TranslateFlags {
  std::string model;
  std::string input;
  std::string output;
  std::string device = "auto";
  std::string dtype = "auto";
  std::string quantize = "none";
  int group_size = 0;
  int threads = 0;
  TranslationOptions options;
  bool quantize_non_experts = false;
  bool no_pruning = false;
  bool no_cuda_graphs = false;
  bool no_pipeline = false;
};

std::vector<std::string> read_lines(std::istream& in) {
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

void draw_progress(size_t done, size_t total) {
  constexpr int width = 40;
  const int filled = total ? static_cast<int>(width * done / total) : width;
  std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] " << done << '/' << total
            << (done == total ? "\n" : "") << std::flush;
}

int run_translate(const TranslateFlags& flags) {
  TranslatorOptions translator_options;
  translator_options.device = parse_device_request(flags.device);
  translator_options.compute_type = parse_compute_type(flags.dtype);
  translator_options.num_threads = flags.threads;
  translator_options.quantization = parse_quantization(flags.quantize);
  translator_options.quantization_group_size = flags.group_size;
  translator_options.quantize_non_experts = flags.quantize_non_experts;
  translator_options.cuda_graphs = !flags.no_cuda_graphs;
  TranslationOptions options = flags.options;
  options.prune_finished = !flags.no_pruning;
  options.pipeline_steps = !flags.no_pipeline;

  std::vector<std::string> lines;
  if (flags.input.empty() || flags.input == "-") {
    lines = read_lines(std::cin);
  } else {
    std::ifstream in(flags.input, std::ios::binary);
    if (!in) throw InputError(flags.input + ": cannot open input file");
    lines = read_lines(in);
  }

  Translator translator(flags.model, translator_options);
  const ProgressCallback progress = isatty(STDERR_FILENO) ? ProgressCallback(draw_progress) : ProgressCallback();
  const std::vector<TranslationResult> results = translator.translate(lines, options, progress);

  std::ofstream file;
  if (!flags.output.empty() && flags.output != "-") {
    file.open(flags.output, std::ios::binary);
    if (!file) throw InputError(flags.output + ": cannot open output file");
  }
  std::ostream& out = file.is_open() ? file : std::cout;
  for (const TranslationResult& result : results) out << result.text << '\n';
  out.flush();
  if (!out) throw Error((flags.output.empty() ? std::string("standard output") : flags.output) + ": write failed");
  return 0;
}

}  // namespace

Runner add_translate_command(CLI::App& app) {
  auto flags = std::make_shared<TranslateFlags>();
  CLI::App* cmd = app.add_subcommand("translate", "Translate lines of text, one sentence per line");
  cmd->add_option("--model", flags->model, "Model directory (config.json, *.safetensors, spiece.model)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--input", flags->input, "Input file, one sentence per line (default: standard input)");
  cmd->add_option("--output", flags->output, "Output file (default: standard output)");
  cmd->add_option("--beam-size", flags->options.beam_size, "Beam size; 1 is greedy search")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_option("--batch-size", flags->options.max_batch_size, "Sentences per batch")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--max-length", flags->options.max_length, "Maximum generated tokens per sentence")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--min-length", flags->options.min_length, "Generated tokens before EOS is allowed")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--max-input-length", flags->options.max_input_length, "Longer inputs are truncated, with a warning")
      ->check(CLI::Range(2, 65536))
      ->capture_default_str();
  cmd->add_option("--length-penalty", flags->options.length_penalty, "Beam score = log-prob / length^penalty")
      ->check(CLI::Range(-10.0f, 10.0f))
      ->capture_default_str();
  cmd->add_option("--target-lang", flags->options.target_lang,
                  "Target language code; its tag <2CODE> is prepended to every source");
  cmd->add_option("--device", flags->device, "cpu, cuda or auto (CUDA when a GPU is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  cmd->add_option("--dtype", flags->dtype, "Compute dtype: fp32, fp16, bf16 or auto (fp16 on CUDA, fp32 on the CPU)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "auto"}))
      ->capture_default_str();
  cmd->add_option("--quantize", flags->quantize,
                  "Quantize the expert weights at load time: int8, int4 or none (as the checkpoint stores them)")
      ->check(CLI::IsMember({"int8", "int4", "none"}))
      ->capture_default_str();
  cmd->add_option(
         "--group-size", flags->group_size,
         "With --quantize or --quantize-non-experts: input features per scale (0: one scale per output channel)")
      ->check(CLI::IsMember({0, 64, 128}))
      ->capture_default_str();
  cmd->add_flag("--quantize-non-experts", flags->quantize_non_experts,
                "Quantize the attention and dense FFN weights to int8 at load time too (scales as --group-size says)");
  cmd->add_option("--threads", flags->threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_flag("--no-pruning", flags->no_pruning, "Keep finished sentences in the batch (for testing)");
  cmd->add_flag("--no-cuda-graphs", flags->no_cuda_graphs,
                "Launch each decode step kernel by kernel instead of replaying CUDA graphs (for testing)");
  cmd->add_flag("--no-pipeline", flags->no_pipeline,
                "Wait for each beam-search step's flags before queuing the next step (for testing)");
  return [flags] { return run_translate(*flags); };
}

}  // namespace elephant::cli
