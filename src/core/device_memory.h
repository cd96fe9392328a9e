#pragma once

#include <cstddef>

#include "elephant/device.h"

namespace elephant {

// Raw memory on a device. CUDA memory comes from the stream-ordered pool of the current thread's stream
// (cudaMallocAsync with the pool keeping what is freed), so steady-state steps never reach cudaMalloc.
void* device_allocate(Device device, size_t bytes);
void device_free(Device device, void* pointer);
// Copies between any two devices. A copy to the CPU waits for it; the others are ordered on the stream.
void device_copy(void* destination, Device destination_device, const void* source, Device source_device, size_t bytes);
void device_fill_zero(void* destination, Device device, size_t bytes);
// Waits until the device has finished all work queued by this thread.
void device_synchronize(Device device);

// Bytes of CUDA memory the engine holds (every tensor comes from one stream-ordered pool; replayed decode steps
// keep their temporaries in CUDA graph memory) and the most it held since the last reset. Zero without CUDA.
struct DeviceMemoryUsage {
  size_t current_bytes = 0;
  size_t peak_bytes = 0;
};
DeviceMemoryUsage cuda_memory_usage();
void reset_cuda_peak_memory();

// Brackets the work to profile when a profiler starts with collection off (Nsight Compute's --profile-from-start
// off): only what runs between the two is profiled. Nothing without a GPU.
void cuda_profiler_start();
void cuda_profiler_stop();

}  // namespace elephant
