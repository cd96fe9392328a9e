#include <iostream>

#include "cli/commands.h"
#include "elephant/quantize.h"

namespace elephant::cli {

namespace {

struct QuantizeFlags {
  std::string model;
  std::string output;
  int bits = 0;
  int group_size = 0;
  bool non_experts = false;
};

int run_quantize(const QuantizeFlags& flags) {
  QuantizeOptions options;
  options.bits = flags.bits;
  options.group_size = flags.group_size;
  options.non_experts = flags.non_experts;
  const QuantizeSummary summary = quantize_model(flags.model, flags.output, options);
  std::cout << "quantized " << summary.quantized_matrices << " expert matrices to "
            << quantization_description(flags.bits, flags.group_size);
  if (flags.non_experts)
    std::cout << ", and " << summary.quantized_non_expert_matrices << " non-expert matrices to "
              << quantization_description(8, flags.group_size);
  std::cout << ": " << human_bytes(summary.input_bytes) << " -> " << human_bytes(summary.output_bytes)
            << " of tensors in " << flags.output << '\n';
  return 0;
}

}  // namespace

Runner add_quantize_command(CLI::App& app) {
  auto flags = std::make_shared<QuantizeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "Write a copy of a model with its expert weights quantized to int8 or int4 (fp16 scales)");
  cmd->add_option("--model", flags->model, "Model directory (a Hugging Face Switch Transformers checkpoint)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--bits", flags->bits, "8 or 4")->required()->check(CLI::IsMember({8, 4}));
  cmd->add_option("--group-size", flags->group_size, "Input features per scale (0: one scale per output channel)")
      ->check(CLI::IsMember({0, 64, 128}))
      ->capture_default_str();
  cmd->add_flag("--non-experts", flags->non_experts,
                "Quantize the attention and dense FFN matrices to int8 too, with --group-size's scales");
  cmd->add_option("--output", flags->output, "Directory to write; must not exist or be empty")->required();
  return [flags] { return run_quantize(*flags); };
}

}  // namespace elephant::cli
