#include "core/host_readback.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <vector>

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

namespace {

#ifdef ELEPHANT_WITH_CUDA
// Pinned buffers outlive their readbacks: cudaMallocHost and cudaFreeHost took 0.45 and 0.22 ms a call on the H100
// machine's host (CUPTI timeline, 2026-11-27), and each search made and dropped two, ~3% of a batch-8 translation.
// Freed buffers wait here for the next readback of their size class (64 B times a power of two) until the process
// exits; classes from kClasses on (past 1 MiB: no decode's flags come near it) are freed at once.
class PinnedPool {
 public:
  static constexpr int kClasses = 15;

  // The process's pool: made at the first readback, after the CUDA runtime, so that it frees its buffers before the
  // runtime tears down at exit (compute-sanitizer counts a buffer still held then as a leak).
  static PinnedPool& instance() {
    static PinnedPool pool;
    return pool;
  }

  ~PinnedPool() {
    destroyed_ = true;
    for (std::vector<void*>& free : free_)
      for (void* buffer : free) cuda::free_pinned(buffer);
  }

  // The smallest class whose buffers hold `bytes`.
  static int size_class(size_t bytes) {
    int size_class = 0;
    while (class_bytes(size_class) < bytes) ++size_class;
    return size_class;
  }
  static size_t class_bytes(int size_class) { return size_t{64} << size_class; }

  // A buffer of class_bytes(size_class) bytes, back in the pool when the last owner drops it.
  std::shared_ptr<void> take(int size_class) {
    void* buffer = nullptr;
    if (size_class < kClasses) {
      const std::lock_guard<std::mutex> lock(mutex_);
      std::vector<void*>& free = free_[size_class];
      if (!free.empty()) {
        buffer = free.back();
        free.pop_back();
      }
    }
    if (!buffer) buffer = cuda::allocate_pinned(class_bytes(size_class));
    return std::shared_ptr<void>(buffer, [this, size_class](void* p) { give_back(p, size_class); });
  }

 private:
  PinnedPool() = default;

  void give_back(void* buffer, int size_class) {
    if (size_class < kClasses && !destroyed_) {
      try {
        const std::lock_guard<std::mutex> lock(mutex_);
        free_[size_class].push_back(buffer);
        return;
      } catch (...) {  // no room to keep it: free it instead
      }
    }
    cuda::free_pinned(buffer);
  }

  // Outside the pool's lifetime: a readback that outlives the pool frees its buffer itself.
  static inline std::atomic<bool> destroyed_{false};
  std::mutex mutex_;
  std::vector<void*> free_[kClasses];
};
#else
[[noreturn]] void no_cuda() { throw UsageError("this build of elephant has no CUDA backend"); }
#endif

}  // namespace

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
  if (device == Device::CUDA) {
#ifdef ELEPHANT_WITH_CUDA
    const int size_class = PinnedPool::size_class(bytes);
    buffer_ = PinnedPool::instance().take(size_class);
    capacity_ = PinnedPool::class_bytes(size_class);
    if (!event_) event_ = std::make_unique<Event>();
#else
    no_cuda();
#endif
  } else {
    const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* data = std::aligned_alloc(64, rounded);
    if (!data) throw std::bad_alloc();
    buffer_ = std::shared_ptr<void>(data, [](void* p) { std::free(p); });
    capacity_ = rounded;
  }
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
