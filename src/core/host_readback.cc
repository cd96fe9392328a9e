#include "core/host_readback.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "elephant/error.h"

namespace elephant {

#ifdef ELEPHANT_WITH_CUDA
namespace cuda {
void* allocate_pinned(size_t bytes);
void free_pinned(void* pointer);
void* create_event();
void destroy_event(void* event);
void copy_to_host_async(void* destination, const void* source, size_t bytes, void* event);
void wait_event(void* event);
}  // namespace cuda
#endif

#ifndef ELEPHANT_WITH_CUDA
namespace {
[[noreturn]] void no_cuda() { throw UsageError("this build of elephant has no CUDA backend"); }
}  // namespace
#endif

struct HostReadback::Event {
  void* event = nullptr;
  Event() {
#ifdef ELEPHANT_WITH_CUDA
    event = cuda::create_event();
#else
    no_cuda();
#endif
  }
  ~Event() {
#ifdef ELEPHANT_WITH_CUDA
    cuda::destroy_event(event);
#endif
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

HostReadback::HostReadback() = default;
HostReadback::HostReadback(HostReadback&& other) noexcept { *this = std::move(other); }

HostReadback& HostReadback::operator=(HostReadback&& other) noexcept {
  if (this != &other) {
    try {
      if (pending_) wait();
    } catch (...) {  // a device error: the next checked call reports it
    }
    buffer_ = std::move(other.buffer_);
    capacity_ = other.capacity_;
    buffer_device_ = other.buffer_device_;
    event_ = std::move(other.event_);
    host_ = std::move(other.host_);
    pending_ = other.pending_;
    other.capacity_ = 0;
    other.pending_ = false;
  }
  return *this;
}

HostReadback::~HostReadback() {
  try {
    if (pending_) wait();
  } catch (...) {  // a device error: the next checked call reports it
  }
}

void HostReadback::reserve(size_t bytes, Device device) {
  if (buffer_ && capacity_ >= bytes && buffer_device_ == device) return;
  if (pending_) wait();  // the pending copy still writes into the old buffer
  host_ = Tensor();
  buffer_.reset();
  capacity_ = 0;
  const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  if (device == Device::CUDA) {
#ifdef ELEPHANT_WITH_CUDA
    buffer_ = std::shared_ptr<void>(cuda::allocate_pinned(rounded), [](void* p) { cuda::free_pinned(p); });
    if (!event_) event_ = std::make_unique<Event>();
#else
    no_cuda();
#endif
  } else {
    void* data = std::aligned_alloc(64, rounded);
    if (!data) throw std::bad_alloc();
    buffer_ = std::shared_ptr<void>(data, [](void* p) { std::free(p); });
  }
  capacity_ = rounded;
  buffer_device_ = device;
}

void HostReadback::start(const Tensor& source) {
  if (!source.defined()) throw std::invalid_argument("HostReadback::start: undefined tensor");
  const size_t bytes = source.nbytes();
  reserve(bytes, source.device());
  host_ = Tensor::borrow(buffer_.get(), source.shape(), source.dtype(), buffer_);
  if (source.device() == Device::CPU) {
    if (bytes > 0) std::memcpy(buffer_.get(), source.raw(), bytes);
    pending_ = false;
    return;
  }
#ifdef ELEPHANT_WITH_CUDA
  cuda::copy_to_host_async(buffer_.get(), source.raw(), bytes, event_->event);
  pending_ = true;
#endif
}

const Tensor& HostReadback::wait() {
  if (pending_) {
#ifdef ELEPHANT_WITH_CUDA
    cuda::wait_event(event_->event);
#endif
    pending_ = false;
  }
  return host_;
}

}  // namespace elephant
