#pragma once

#include <CLI/CLI.hpp>

namespace elephant::cli {

// Each command registers its subcommand and flags, and returns the function that runs it once parsed.
using Runner = std::function<int()>;

Runner add_translate_command(CLI::App& app);
Runner add_inspect_command(CLI::App& app);
Runner add_quantize_command(CLI::App& app);

// "27.04 MiB"
std::string human_bytes(int64_t bytes);

}  // namespace elephant::cli
