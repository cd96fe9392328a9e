#include "elephant/device.h"

#include "elephant/error.h"

namespace elephant {

DeviceRequest parse_device_request(const std::string& name) {
  if (name == "auto") return DeviceRequest::Auto;
  if (name == "cpu") return DeviceRequest::CPU;
  if (name == "cuda") return DeviceRequest::CUDA;
  throw UsageError("unknown device \"" + name + "\" (expected cpu, cuda or auto)");
}

std::string to_string(Device device) { return device == Device::CUDA ? "cuda" : "cpu"; }

#ifndef ELEPHANT_WITH_CUDA
int cuda_device_count() { return 0; }
#endif

}  // namespace elephant
