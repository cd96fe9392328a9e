#include "elephant/device.h"

#include "elephant/error.h"

namespace elephant {

DeviceRequest parse_device_request(const std::string& name) {
  if (name == "auto") return DeviceRequest::Auto;
  if (name == "cpu") return DeviceRequest::CPU;
  if (name == "cuda") return DeviceRequest::CUDA;
  throw UsageError("unknown device \"" + name + "\" (expected cpu, cuda or auto)");
}

ComputeType parse_compute_type(const std::string& name) {
  if (name == "auto") return ComputeType::Auto;
  if (name == "fp32") return ComputeType::FP32;
  if (name == "fp16") return ComputeType::FP16;
  if (name == "bf16") return ComputeType::BF16;
  throw UsageError("unknown dtype \"" + name + "\" (expected fp32, fp16, bf16 or auto)");
}

Quantization parse_quantization(const std::string& name) {
  if (name == "none") return Quantization::None;
  if (name == "int8") return Quantization::Int8;
  if (name == "int4") return Quantization::Int4;
  throw UsageError("unknown quantization \"" + name + "\" (expected int8, int4 or none)");
}

int quantization_bits(Quantization quantization) {
  switch (quantization) {
    case Quantization::Int8:
      return 8;
    case Quantization::Int4:
      return 4;
    default:
      return 0;
  }
}

std::string to_string(ComputeType type) {
  switch (type) {
    case ComputeType::FP32:
      return "fp32";
    case ComputeType::FP16:
      return "fp16";
    case ComputeType::BF16:
      return "bf16";
    case ComputeType::Auto:
      break;
  }
  return "auto";
}

std::string to_string(Device device) { return device == Device::CUDA ? "cuda" : "cpu"; }

#ifndef ELEPHANT_WITH_CUDA
int cuda_device_count() { return 0; }
#endif

}  // namespace elephant
