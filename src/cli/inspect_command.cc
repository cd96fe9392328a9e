#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "elephant/quantize.h"
#include "elephant/translator.h"

namespace elephant::cli {

std::string human_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  std::ostringstream out;
  out << std::fixed << std::setprecision(unit ? 2 : 0) << value << ' ' << units[unit];
  return out.str();
}

namespace {

int run_inspect(const std::string& model_dir) {
  const ModelInfo info = inspect_model(model_dir);
  std::cout << "architecture       " << info.architecture << '\n'
            << "d_model            " << info.d_model << '\n'
            << "d_ff               " << info.d_ff << '\n'
            << "heads x d_kv       " << info.num_heads << " x " << info.d_kv << '\n'
            << "vocabulary         " << info.vocab_size << '\n'
            << "encoder layers     " << info.encoder_layers << " (" << info.sparse_encoder_layers << " MoE)\n"
            << "decoder layers     " << info.decoder_layers << " (" << info.sparse_decoder_layers << " MoE)\n"
            << "experts per layer  " << info.num_experts << " (top-1)\n"
            << "parameters         " << info.parameters << " (" << info.expert_parameters << " in experts)\n"
            << "quantized experts  " << quantization_description(info.quantized_bits, info.quantization_group_size)
            << '\n'
            << "quantized others   "
            << (info.quantized_non_experts ? quantization_description(8, info.quantization_group_size) : "none")
            << '\n';
  int64_t total = 0;
  for (const auto& [dtype, bytes] : info.bytes_by_dtype) {
    std::cout << "bytes " << std::left << std::setw(13) << dtype << human_bytes(bytes) << " (" << bytes << ")\n";
    total += bytes;
  }
  std::cout << "bytes total        " << human_bytes(total) << " (" << total << ")\n";
  return 0;
}

}  // namespace

Runner add_inspect_command(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>();
  CLI::App* cmd =
      app.add_subcommand("inspect", "Print a model's architecture, parameter count, quantization and bytes by dtype");
  cmd->add_option("model", *model_dir, "Model directory")->required()->check(CLI::ExistingDirectory);
  return [model_dir] { return run_inspect(*model_dir); };
}

}  // namespace elephant::cli
