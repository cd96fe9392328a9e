#include "test_utils.h"

#include <stdlib.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "io/safetensors.h"

#ifndef ELEPHANT_GOLDENS_DIR
#error "ELEPHANT_GOLDENS_DIR must be defined (tests/CMakeLists.txt sets it)"
#endif
#ifndef ELEPHANT_CLI_PATH
#error "ELEPHANT_CLI_PATH must be defined (tests/CMakeLists.txt sets it)"
#endif

namespace elephant {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "elephant_test_XXXXXX").string();
  if (!mkdtemp(pattern.data()))
    throw std::runtime_error("cannot create a temporary directory from " + pattern + ": " + std::strerror(errno));
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::file(const std::string& name) const { return path_ + "/" + name; }

void write_text_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot open " + path + " for writing");
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

void rewrite_checkpoint(const std::string& dir, const std::function<void(NamedTensors&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  NamedTensors tensors;
  {
    const SafetensorsFile file = SafetensorsFile::open(path);
    for (const TensorInfo& info : file.tensors()) tensors.emplace_back(info.name, file.tensor(info.name).clone());
  }
  edit(tensors);
  write_safetensors(path, tensors);
}

std::string goldens_dir() { return ELEPHANT_GOLDENS_DIR; }

CliOutcome run_cli(const std::string& args, const std::string& stdin_text, const std::string& environment) {
  TempDir dir;
  write_text_file(dir.file("stdin"), stdin_text);
  const std::string command = environment + std::string(ELEPHANT_CLI_PATH) + " " + args + " <" + dir.file("stdin") +
                              " >" + dir.file("stdout") + " 2>" + dir.file("stderr");
  const int status = std::system(command.c_str());
  CliOutcome outcome;
  outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  outcome.out = read_text_file(dir.file("stdout"));
  outcome.err = read_text_file(dir.file("stderr"));
  return outcome;
}

}  // namespace elephant
