#include "core/cuda_graph.h"

#include <atomic>

#include "elephant/error.h"

namespace elephant {
namespace {

std::atomic<int64_t> g_captures{0};
std::atomic<int64_t> g_record_ns{0};
std::atomic<int64_t> g_instantiate_ns{0};

}  // namespace

CudaGraphCaptureStats cuda_graph_capture_stats() {
  return {g_captures.load(), static_cast<double>(g_record_ns.load()) * 1e-9,
          static_cast<double>(g_instantiate_ns.load()) * 1e-9};
}

void reset_cuda_graph_capture_stats() {
  g_captures = 0;
  g_record_ns = 0;
  g_instantiate_ns = 0;
}

void detail::add_capture_time(std::chrono::nanoseconds record, std::chrono::nanoseconds instantiate) {
  g_captures += 1;
  g_record_ns += record.count();
  g_instantiate_ns += instantiate.count();
}

}  // namespace elephant

// Without the CUDA backend a graph can be made and dropped but never captured: nothing runs on a GPU.
#ifndef ELEPHANT_WITH_CUDA
namespace elephant {

struct CudaGraph::Executable {};

CudaGraph::CudaGraph() = default;
CudaGraph::~CudaGraph() = default;
CudaGraph::CudaGraph(CudaGraph&&) noexcept = default;
CudaGraph& CudaGraph::operator=(CudaGraph&&) noexcept = default;

void CudaGraph::capture(const std::function<void()>&) {
  throw UsageError("CUDA graphs: this build of elephant has no CUDA backend");
}

void CudaGraph::replay() const { throw UsageError("CUDA graphs: this build of elephant has no CUDA backend"); }

}  // namespace elephant
#endif
