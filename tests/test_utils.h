#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "elephant/error.h"

namespace elephant {

// A fresh directory under /tmp, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const;  // path() + "/" + name

 private:
  std::string path_;
};

// Binary-safe: the content is written and read back byte for byte. Throw std::runtime_error on failure.
void write_text_file(const std::string& path, const std::string& content);
std::string read_text_file(const std::string& path);

// Rewrites DIR/model.safetensors after `edit` changed its (name, tensor) list: corrupted checkpoints for error tests.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
void rewrite_checkpoint(const std::string& dir, const std::function<void(NamedTensors&)>& edit);

// tests/goldens in the source tree (the ELEPHANT_GOLDENS_DIR compile definition).
std::string goldens_dir();

// What a run of the `elephant` program gave.
struct CliOutcome {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs the CLI through the shell with `stdin_text` as standard input; `environment` prefixes the command
// (e.g. "CUDA_VISIBLE_DEVICES= ").
CliOutcome run_cli(const std::string& args, const std::string& stdin_text = "", const std::string& environment = "");

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

// The message of the exception of type E that `function` throws; a test failure if it throws none.
template <typename E, typename Function>
std::string error_of(Function&& function) {
  try {
    function();
  } catch (const E& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected an exception of the type asked for";
  return {};
}

// The message of the ModelError `function` throws; a test failure if it throws none.
template <typename Function>
std::string model_error_of(Function&& function) {
  return error_of<ModelError>(std::forward<Function>(function));
}

}  // namespace elephant
