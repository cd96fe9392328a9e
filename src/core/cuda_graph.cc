#include "core/cuda_graph.h"

#include "elephant/error.h"

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
