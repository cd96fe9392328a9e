#pragma once

#include <string>

namespace elephant {

enum class Device { CPU, CUDA };

// What the user asked for: a concrete device, or Auto (CUDA when a GPU can run the model, else CPU).
enum class DeviceRequest { Auto, CPU, CUDA };

DeviceRequest parse_device_request(const std::string& name);  // throws UsageError

// The dtype a model computes in (its weights and activations). Auto: fp32 on the CPU, fp16 on CUDA.
enum class ComputeType { Auto, FP32, FP16, BF16 };
enum class Quantization { None, Int8, Int4 };

ComputeType parse_compute_type(const std::string& name);  // "auto", "fp32", "fp16", "bf16"; throws UsageError
std::string to_string(ComputeType type);
Quantization parse_quantization(const std::string& name);  // "none", "int8", "int4"; throws UsageError
int quantization_bits(Quantization quantization);          // 0, 8 or 4
std::string to_string(Device device);

// Number of CUDA devices visible to this process; 0 when built without CUDA or when none is present.
int cuda_device_count();

}  // namespace elephant
