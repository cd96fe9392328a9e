#include "core/device_memory.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "elephant/error.h"

namespace elephant {

#ifdef ELEPHANT_WITH_CUDA
namespace cuda {
void* allocate(size_t bytes);
void free(void* pointer);
void copy(void* destination, bool destination_on_device, const void* source, bool source_on_device, size_t bytes);
void fill_zero(void* destination, size_t bytes);
void synchronize();
DeviceMemoryUsage memory_usage();
void reset_peak_memory();
void profiler(bool collect);
}  // namespace cuda
#define ELEPHANT_ON_CUDA(call) return cuda::call
#else
#define ELEPHANT_ON_CUDA(call) throw UsageError("this build of elephant has no CUDA backend")
#endif

void* device_allocate(Device device, size_t bytes) {
  if (device == Device::CUDA) ELEPHANT_ON_CUDA(allocate(bytes));
  const size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) return nullptr;
  void* data = std::aligned_alloc(64, rounded);
  if (!data) throw std::bad_alloc();
  return data;
}

void device_free(Device device, void* pointer) {
  if (device == Device::CUDA) ELEPHANT_ON_CUDA(free(pointer));
  std::free(pointer);
}

void device_copy(void* destination, Device destination_device, const void* source, Device source_device, size_t bytes) {
  if (bytes == 0) return;
  if (destination_device == Device::CUDA || source_device == Device::CUDA)
    ELEPHANT_ON_CUDA(
        copy(destination, destination_device == Device::CUDA, source, source_device == Device::CUDA, bytes));
  std::memcpy(destination, source, bytes);
}

void device_fill_zero(void* destination, Device device, size_t bytes) {
  if (bytes == 0) return;
  if (device == Device::CUDA) ELEPHANT_ON_CUDA(fill_zero(destination, bytes));
  std::memset(destination, 0, bytes);
}

void device_synchronize(Device device) {
  if (device == Device::CUDA) ELEPHANT_ON_CUDA(synchronize());
}

DeviceMemoryUsage cuda_memory_usage() {
#ifdef ELEPHANT_WITH_CUDA
  if (cuda_device_count() > 0) return cuda::memory_usage();
#endif
  return {};
}

void reset_cuda_peak_memory() {
#ifdef ELEPHANT_WITH_CUDA
  if (cuda_device_count() > 0) cuda::reset_peak_memory();
#endif
}

void cuda_profiler_start() {
#ifdef ELEPHANT_WITH_CUDA
  if (cuda_device_count() > 0) cuda::profiler(true);
#endif
}

void cuda_profiler_stop() {
#ifdef ELEPHANT_WITH_CUDA
  if (cuda_device_count() > 0) cuda::profiler(false);
#endif
}

}  // namespace elephant
