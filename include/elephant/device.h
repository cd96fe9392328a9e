#pragma once

#include <string>

namespace elephant {

enum class Device { CPU, CUDA };

// What the user asked for: a concrete device, or Auto (CUDA when a GPU can run the model, else CPU).
enum class DeviceRequest { Auto, CPU, CUDA };

DeviceRequest parse_device_request(const std::string& name);  // throws UsageError
std::string to_string(Device device);

// Number of CUDA devices visible to this process; 0 when built without CUDA or when none is present.
int cuda_device_count();

}  // namespace elephant
