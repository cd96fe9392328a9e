#include "elephant/error.h"
#include "elephant/translator.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "models/switch_transformers.h"

namespace elephant {

namespace {

[[noreturn]] void unsupported(const JsonConfig& json, const std::string& model_type) {
  throw ModelError(json.path() + ": unsupported model_type \"" + model_type + "\" (supported: switch_transformers)");
}

}  // namespace

std::unique_ptr<EncoderDecoderModel> load_model(const std::string& model_dir, const ModelOptions& options) {
  if (options.device == Device::CPU && options.dtype != DType::F32)
    throw UsageError("the CPU backend computes in fp32; " + dtype_name(options.dtype) + " needs --device cuda");
  if (!is_floating(options.dtype)) throw UsageError("unsupported compute dtype " + dtype_name(options.dtype));
  const JsonConfig json = JsonConfig::load(model_dir + "/config.json");
  const std::string model_type = json.get_string("model_type");
  if (model_type != "switch_transformers") unsupported(json, model_type);
  const auto config = SwitchTransformersConfig::parse(json);
  Checkpoint checkpoint = Checkpoint::open(model_dir);
  return std::make_unique<SwitchTransformersModel>(config, checkpoint, options);
}

ModelInfo inspect_model(const std::string& model_dir) {
  const JsonConfig json = JsonConfig::load(model_dir + "/config.json");
  const std::string model_type = json.get_string("model_type");
  if (model_type != "switch_transformers") unsupported(json, model_type);
  return SwitchTransformersModel::describe(SwitchTransformersConfig::parse(json), Checkpoint::open(model_dir));
}

}  // namespace elephant
