// The `elephant` program end to end: exit codes (0 ok, 2 bad usage, 1 other errors), one-line errors that
// name the file, tensor or line, and the translate/inspect/quantize happy paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>

#include "core/tensor.h"
#include "elephant/device.h"
#include "io/safetensors.h"
#include "test_utils.h"

namespace elephant {
namespace {

namespace fs = std::filesystem;

using Outcome = CliOutcome;

int count_lines(const std::string& text) { return static_cast<int>(std::count(text.begin(), text.end(), '\n')); }

std::string golden_model() { return goldens_dir() + "/tiny_e4/model"; }

// A writable copy of a golden model directory, to corrupt.
void copy_model(const std::string& from, const std::string& to) {
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

TEST(Cli, TranslatesStdinToStdoutOneLinePerLine) {
  const Outcome o =
      run_cli("translate --model " + golden_model() + " --max-length 8", "File not found\nSave\n\nOpen the file\n");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(count_lines(o.out), 4);
  // The empty line gives an empty translation, in place.
  EXPECT_NE(o.out.find("\n\n"), std::string::npos);
}

TEST(Cli, ReadsInputFileAndWritesOutputFile) {
  TempDir dir;
  write_text_file(dir.file("in.txt"), "Save the file\nQuit\n");
  const Outcome o = run_cli("translate --model " + golden_model() + " --beam-size 2 --max-length 6 --input " +
                            dir.file("in.txt") + " --output " + dir.file("out.txt"));
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_TRUE(o.out.empty());
  EXPECT_EQ(count_lines(read_text_file(dir.file("out.txt"))), 2);
}

TEST(Cli, InvalidUtf8LineIsAnErrorNamingTheLine) {
  const Outcome o = run_cli("translate --model " + golden_model(), "good line\nbad \xC3\x28 line\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("line 2"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("UTF-8"), std::string::npos) << o.err;
  EXPECT_EQ(count_lines(o.err), 1);
}

TEST(Cli, OverlongLineIsTruncatedWithOneWarning) {
  std::string line;
  for (int i = 0; i < 300; ++i) line += "file ";
  const Outcome o =
      run_cli("translate --model " + golden_model() + " --max-input-length 16 --max-length 4", "Save\n" + line + "\n");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(count_lines(o.out), 2);
  EXPECT_EQ(count_lines(o.err), 1) << o.err;
  EXPECT_NE(o.err.find("line 2"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("truncated"), std::string::npos) << o.err;
}

TEST(Cli, BadFlagValuesExitWithUsageError) {
  const std::string model = " --model " + golden_model();
  for (const std::string& args :
       std::vector<std::string>{"translate" + model + " --beam-size 0", "translate" + model + " --beam-size two",
                                "translate" + model + " --batch-size -1", "translate" + model + " --max-length 0",
                                "translate" + model + " --device gpu", "translate" + model + " --no-such-flag",
                                "translate", "translate --model /no/such/dir", "", "frobnicate", "inspect"}) {
    const Outcome o = run_cli(args);
    EXPECT_EQ(o.exit_code, 2) << args << "\n" << o.err;
    EXPECT_FALSE(o.err.empty()) << args;
  }
}

TEST(Cli, UnknownTargetLanguageIsAnError) {
  const Outcome o = run_cli("translate --model " + golden_model() + " --target-lang xx", "Save\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("<2xx>"), std::string::npos) << o.err;
}

// With every GPU hidden (so that this runs the same on the GPU machine and without one). Not named *Cuda*: it is
// no GPU test, and compute-sanitizer (which runs the *Cuda* tests) shows its GPUs to child processes anyway.
TEST(Cli, GpuDeviceWithEveryGpuHiddenIsAUsageError) {
  const Outcome o =
      run_cli("translate --model " + golden_model() + " --device cuda", "Save\n", "CUDA_VISIBLE_DEVICES= ");
  EXPECT_EQ(o.exit_code, 2);
  EXPECT_NE(o.err.find("--device cuda"), std::string::npos) << o.err;
}

TEST(Cli, CudaTranslatesOnTheGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "GPU test: no CUDA device in this build or machine";
  for (const char* dtype : {"fp32", "fp16", "bf16"}) {
    const Outcome o = run_cli("translate --model " + golden_model() + " --device cuda --max-length 8 --dtype " + dtype,
                              "File not found\nSave\n");
    ASSERT_EQ(o.exit_code, 0) << dtype << ": " << o.err;
    EXPECT_EQ(count_lines(o.out), 2) << dtype;
  }
}

TEST(Cli, HalfPrecisionOnTheCpuIsAUsageError) {
  for (const char* dtype : {"fp16", "bf16"}) {
    const Outcome o = run_cli("translate --model " + golden_model() + " --device cpu --dtype " + dtype, "Save\n");
    EXPECT_EQ(o.exit_code, 2) << dtype;
    EXPECT_NE(o.err.find("fp32"), std::string::npos) << o.err;
  }
  const Outcome o = run_cli("translate --model " + golden_model() + " --dtype fp8", "Save\n");
  EXPECT_EQ(o.exit_code, 2);
}

TEST(Cli, InspectPrintsArchitectureAndBytes) {
  const Outcome o = run_cli("inspect " + golden_model());
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("switch_transformers"), std::string::npos);
  EXPECT_NE(o.out.find("encoder layers     4 (2 MoE)"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("bytes F32"), std::string::npos) << o.out;
}

TEST(Cli, MissingConfigIsAnErrorNamingTheFile) {
  TempDir dir;
  copy_model(golden_model(), dir.path());
  fs::remove(dir.file("config.json"));
  for (const std::string command : {"translate --model ", "inspect "}) {
    const Outcome o = run_cli(command + dir.path(), "Save\n");
    EXPECT_EQ(o.exit_code, 1);
    EXPECT_NE(o.err.find("config.json"), std::string::npos) << o.err;
  }
}

TEST(Cli, UnknownModelTypeIsAnError) {
  TempDir dir;
  copy_model(golden_model(), dir.path());
  std::string config = read_text_file(dir.file("config.json"));
  config.replace(config.find("\"switch_transformers\""), 21, "\"bert\"");
  write_text_file(dir.file("config.json"), config);
  const Outcome o = run_cli("translate --model " + dir.path(), "Save\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("model_type \"bert\""), std::string::npos) << o.err;
}

TEST(Cli, MissingTensorIsAnErrorNamingTheTensor) {
  TempDir dir;
  copy_model(golden_model(), dir.path());
  rewrite_checkpoint(dir.path(), [](auto& tensors) {
    tensors.erase(std::find_if(tensors.begin(), tensors.end(), [](const auto& t) {
      return t.first == "encoder.block.1.layer.1.mlp.experts.expert_2.wo.weight";
    }));
  });
  const Outcome o = run_cli("translate --model " + dir.path(), "Save\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("encoder.block.1.layer.1.mlp.experts.expert_2.wo.weight"), std::string::npos) << o.err;
}

TEST(Cli, WrongShapeIsAnErrorNamingTensorAndShapes) {
  TempDir dir;
  copy_model(golden_model(), dir.path());
  rewrite_checkpoint(dir.path(), [](auto& tensors) {
    for (auto& [name, tensor] : tensors)
      if (name == "decoder.final_layer_norm.weight") tensor = Tensor::zeros({tensor.dim(0) + 1});
  });
  const Outcome o = run_cli("translate --model " + dir.path(), "Save\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("decoder.final_layer_norm.weight"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("[33]"), std::string::npos) << o.err;
}

TEST(Cli, LeftoverTensorIsAnError) {
  TempDir dir;
  copy_model(golden_model(), dir.path());
  rewrite_checkpoint(dir.path(),
                     [](auto& tensors) { tensors.emplace_back("encoder.block.9.extra.weight", Tensor::zeros({2})); });
  const Outcome o = run_cli("translate --model " + dir.path(), "Save\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("encoder.block.9.extra.weight"), std::string::npos) << o.err;
}

TEST(Cli, TruncatedCheckpointIsAnErrorNamingTheFile) {
  TempDir dir;
  copy_model(golden_model(), dir.path());
  const std::string path = dir.file("model.safetensors");
  fs::resize_file(path, fs::file_size(path) - 100);
  const Outcome o = run_cli("translate --model " + dir.path(), "Save\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("model.safetensors"), std::string::npos) << o.err;
}

TEST(Cli, MissingTokenizerIsAnErrorNamingTheFile) {
  TempDir dir;
  copy_model(golden_model(), dir.path());
  fs::remove(dir.file("spiece.model"));
  const Outcome o = run_cli("translate --model " + dir.path(), "Save\n");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.err.find("spiece.model"), std::string::npos) << o.err;
}

TEST(Cli, QuantizeBadFlagsAreUsageErrors) {
  TempDir dir;
  const std::string model = " --model " + golden_model(), output = " --output " + dir.file("out");
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"quantize" + model + " --bits 5" + output, "--bits: 5 not in {8,4}"},
           {"quantize" + model + " --bits 4 --group-size 32" + output, "--group-size: 32 not in {0,64,128}"},
           {"quantize" + model + output, "--bits is required"},
           {"quantize" + model + " --bits 8", "--output is required"},
           {"quantize --bits 8" + output, "--model is required"},
       }) {
    const Outcome o = run_cli(args);
    EXPECT_EQ(o.exit_code, 2) << args << "\n" << o.err;
    EXPECT_CONTAINS(o.err, message);
    EXPECT_EQ(count_lines(o.err), 1) << o.err;
  }
  EXPECT_FALSE(fs::exists(dir.file("out")));
}

TEST(Cli, QuantizeRefusesANonEmptyOutputAndAQuantizedModel) {
  TempDir dir;
  write_text_file(dir.file("keep.txt"), "mine");
  const Outcome taken = run_cli("quantize --model " + golden_model() + " --bits 8 --output " + dir.path());
  EXPECT_EQ(taken.exit_code, 2) << taken.err;
  EXPECT_CONTAINS(taken.err, dir.path() + ": the directory is not empty");
  EXPECT_EQ(read_text_file(dir.file("keep.txt")), "mine");

  ASSERT_EQ(run_cli("quantize --model " + golden_model() + " --bits 8 --output " + dir.file("q")).exit_code, 0);
  const Outcome again = run_cli("quantize --model " + dir.file("q") + " --bits 4 --output " + dir.file("q4"));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_CONTAINS(again.err, dir.file("q") + " is already quantized to int8, per channel");
  EXPECT_FALSE(fs::exists(dir.file("q4")));
}

TEST(Cli, QuantizedModelInspectsAndTranslates) {
  TempDir dir;
  const std::string quantized = dir.file("int4");
  const Outcome made = run_cli("quantize --model " + golden_model() + " --bits 4 --output " + quantized);
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_CONTAINS(made.out, "quantized 24 expert matrices to int4, per channel");

  const Outcome original = run_cli("inspect " + golden_model());
  EXPECT_CONTAINS(original.out, "quantized experts  none\n");
  const Outcome inspected = run_cli("inspect " + quantized);
  ASSERT_EQ(inspected.exit_code, 0) << inspected.err;
  EXPECT_CONTAINS(inspected.out, "quantized experts  int4, per channel\n");
  EXPECT_CONTAINS(inspected.out, "bytes U8           24.00 KiB (24576)");
  // The same logical parameter count as the original, not the packed bytes.
  const auto parameters_line = [](const std::string& text) {
    const size_t begin = text.find("parameters");
    return text.substr(begin, text.find('\n', begin) - begin);
  };
  EXPECT_EQ(parameters_line(inspected.out), parameters_line(original.out));

  const std::string lines = "File not found\nSave the file\nQuit the program now please\n";
  const Outcome from_checkpoint = run_cli("translate --max-length 12 --model " + quantized, lines);
  ASSERT_EQ(from_checkpoint.exit_code, 0) << from_checkpoint.err;
  const Outcome at_load = run_cli("translate --max-length 12 --quantize int4 --model " + golden_model(), lines);
  EXPECT_EQ(from_checkpoint.out, at_load.out);

  const Outcome requantized = run_cli("translate --quantize int8 --model " + quantized, lines);
  EXPECT_EQ(requantized.exit_code, 1);
  EXPECT_CONTAINS(requantized.err, "is already quantized to int4, per channel; load it without --quantize");
}

// --quantize-non-experts: the attention and dense FFN weights in int8 at load time, or stored so by `quantize
// --non-experts`. A model whose Linear widths are not multiples of 32 is refused, naming the first weight that cannot
// be quantized.
TEST(Cli, QuantizeNonExpertsTranslatesOrNamesTheWeight) {
  const std::string lines = "File not found\nSave the file\nQuit the program now please\n";
  const Outcome translated =
      run_cli("translate --max-length 12 --quantize-non-experts --model " + golden_model(), lines);
  ASSERT_EQ(translated.exit_code, 0) << translated.err;
  EXPECT_EQ(std::count(translated.out.begin(), translated.out.end(), '\n'), 3);

  TempDir dir;
  const std::string quantized = dir.file("int8_all");
  const Outcome made = run_cli("quantize --non-experts --model " + golden_model() + " --bits 8 --output " + quantized);
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_CONTAINS(made.out, "quantized 24 expert matrices to int8, per channel, and 38 non-expert matrices to int8");
  EXPECT_CONTAINS(run_cli("inspect " + golden_model()).out, "quantized others   none\n");
  EXPECT_CONTAINS(run_cli("inspect " + quantized).out, "quantized others   int8, per channel\n");
  const Outcome from_checkpoint = run_cli("translate --max-length 12 --model " + quantized, lines);
  ASSERT_EQ(from_checkpoint.exit_code, 0) << from_checkpoint.err;
  const Outcome at_load =
      run_cli("translate --max-length 12 --quantize int8 --quantize-non-experts --model " + golden_model(), lines);
  EXPECT_EQ(from_checkpoint.out, at_load.out);

  const Outcome refused =
      run_cli("translate --quantize-non-experts --model " + goldens_dir() + "/e3_sharded/model", lines);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_CONTAINS(refused.err,
                  "encoder.block.0.layer.0.SelfAttention.q.weight: 24 input features; quantized weights need a "
                  "multiple of 32");
}

}  // namespace
}  // namespace elephant
