#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

namespace elephant {

// The CUDA work a callable queues on the calling thread's stream, recorded once (nothing runs while it is recorded)
// and replayed as one launch, so that a decode step costs one launch instead of hundreds. Everything the work reads
// or writes must keep its address and shape while the graph is replayed; memory the work allocates and frees
// becomes the graph's own.
class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(CudaGraph&&) noexcept;
  CudaGraph& operator=(CudaGraph&&) noexcept;

  // Replaces the graph with the work `record` queues. If record throws, the capture is abandoned and the
  // exception passes on. Without CUDA: a UsageError.
  void capture(const std::function<void()>& record);
  // Queues the recorded work on the calling thread's stream.
  void replay() const;
  bool empty() const { return !executable_; }

 private:
  struct Executable;
  std::unique_ptr<Executable> executable_;
};

// Host time spent making graphs since the last reset, over all threads: recording the work (the callable queuing it
// into the capture) and instantiating it. A decode captures its step once per row count; bench_translate prints this
// to show what that costs a translate call.
struct CudaGraphCaptureStats {
  int64_t captures = 0;
  double record_seconds = 0.0;
  double instantiate_seconds = 0.0;
};
CudaGraphCaptureStats cuda_graph_capture_stats();
void reset_cuda_graph_capture_stats();

namespace detail {
void add_capture_time(std::chrono::nanoseconds record, std::chrono::nanoseconds instantiate);
}  // namespace detail

}  // namespace elephant
