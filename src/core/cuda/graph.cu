#include "core/cuda/runtime.cuh"
#include "core/cuda_graph.h"

namespace elephant {

struct CudaGraph::Executable {
  cudaGraphExec_t exec = nullptr;
  ~Executable() {
    if (exec) cudaGraphExecDestroy(exec);
  }
};

CudaGraph::CudaGraph() = default;
CudaGraph::~CudaGraph() = default;
CudaGraph::CudaGraph(CudaGraph&&) noexcept = default;
CudaGraph& CudaGraph::operator=(CudaGraph&&) noexcept = default;

void CudaGraph::capture(const std::function<void()>& record) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  cudaStream_t stream = cuda::stream();
  // Thread-local mode: another thread's decode (its own stream) may keep allocating and launching meanwhile.
  ELEPHANT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    record();
  } catch (...) {
    cudaGraph_t abandoned = nullptr;
    cudaStreamEndCapture(stream, &abandoned);
    if (abandoned) cudaGraphDestroy(abandoned);
    cudaGetLastError();
    throw;
  }
  const Clock::time_point recorded = Clock::now();
  cudaGraph_t graph = nullptr;
  ELEPHANT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  auto executable = std::make_unique<Executable>();
  const cudaError_t instantiated = cudaGraphInstantiate(&executable->exec, graph, 0);
  cudaGraphDestroy(graph);
  ELEPHANT_CUDA_CHECK(instantiated);
  executable_ = std::move(executable);
  detail::add_capture_time(recorded - start, Clock::now() - recorded);
}

void CudaGraph::replay() const {
  if (!executable_) throw Error("CudaGraph::replay: nothing was captured");
  ELEPHANT_CUDA_CHECK(cudaGraphLaunch(executable_->exec, cuda::stream()));
}

}  // namespace elephant
