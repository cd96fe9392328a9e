#pragma once

#include <cstddef>
#include <memory>

#include "core/tensor.h"

namespace elephant {

// A small tensor (a few flags a step) copied to the host without waiting for the whole device. start() queues the
// copy on the calling thread's stream, into pinned host memory, and records an event after it; wait() waits for that
// event only, so that work queued after start() (the next decode step) keeps the device busy while the host reads.
// A CPU tensor is copied at once. The buffer is kept for the next start(); a start() while a copy is pending
// replaces that copy (both land in stream order, the host reads the later one).
class HostReadback {
 public:
  HostReadback();
  ~HostReadback();  // waits for a pending copy before its memory goes
  HostReadback(HostReadback&&) noexcept;
  HostReadback& operator=(HostReadback&&) noexcept;
  HostReadback(const HostReadback&) = delete;
  HostReadback& operator=(const HostReadback&) = delete;

  // Queues the copy of `source` (any device, any dtype) as it will be once the work queued so far has run.
  void start(const Tensor& source);
  bool pending() const { return pending_; }
  // The copy of the last start(), once it has landed: a CPU tensor of the source's shape and dtype, valid until the
  // next start(). Undefined before the first start().
  const Tensor& wait();

 private:
  struct Event;
  void reserve(size_t bytes, Device device);

  std::shared_ptr<void> buffer_;  // pinned host memory for a CUDA source, heap memory for a CPU one
  size_t capacity_ = 0;
  Device buffer_device_ = Device::CPU;  // the device of the sources the buffer is for
  std::unique_ptr<Event> event_;        // recorded after the copy (CUDA only)
  Tensor host_;
  bool pending_ = false;
};

}  // namespace elephant
