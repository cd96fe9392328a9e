// A timeline of a CUDA program without Nsight Systems (the GPU machine has no nsys that writes a report): a CUDA
// injection library that records, through CUPTI's activity API, every kernel (graph nodes included), memcpy,
// memset, synchronization and CUDA runtime call with its start and end, and writes them as CSV when the program
// exits. tools/bench/trace_gaps.py reads it: where the GPU idles between kernels, and what the host did meanwhile.
//
//   ELEPHANT_TRACE=trace.csv CUDA_INJECTION64_PATH=build/bin/libelephant_cupti_trace.so build/bin/bench_translate ...
//
// Columns: kind (kernel, memcpy, memset, sync, runtime), name (kernel or API name), start_ns, end_ns (CUPTI's clock,
// host and GPU records alike), correlation (a runtime call and the work it launched share it), graph (the graph of
// a kernel node, 0 outside graphs).
#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace {

constexpr size_t kBufferBytes = 8 << 20;

std::mutex output_mutex;
FILE* output = nullptr;

void check(CUptiResult result, const char* what) {
  if (result == CUPTI_SUCCESS) return;
  const char* message = nullptr;
  cuptiGetResultString(result, &message);
  std::fprintf(stderr, "elephant_cupti_trace: %s: %s\n", what, message ? message : "unknown error");
  std::exit(1);
}

void write_row(const char* kind, const char* name, uint64_t start, uint64_t end, uint32_t correlation, uint32_t graph) {
  // Kernel names come mangled (trace_gaps.py demangles them); quoted all the same.
  std::fprintf(output, "%s,\"%s\",%llu,%llu,%u,%u\n", kind, name, static_cast<unsigned long long>(start),
               static_cast<unsigned long long>(end), correlation, graph);
}

void write_record(const CUpti_Activity* record) {
  switch (record->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
    case CUPTI_ACTIVITY_KIND_KERNEL: {
      const auto* kernel = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      write_row("kernel", kernel->name ? kernel->name : "unknown", kernel->start, kernel->end, kernel->correlationId,
                kernel->graphId);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      const auto* copy = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
      const std::string name = "memcpy " + std::to_string(copy->bytes) + " B kind " + std::to_string(copy->copyKind);
      write_row("memcpy", name.c_str(), copy->start, copy->end, copy->correlationId, copy->graphId);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      const auto* set = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
      const std::string name = "memset " + std::to_string(set->bytes) + " B";
      write_row("memset", name.c_str(), set->start, set->end, set->correlationId, set->graphId);
      break;
    }
    case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION: {
      const auto* sync = reinterpret_cast<const CUpti_ActivitySynchronization2*>(record);
      const std::string name = "sync type " + std::to_string(static_cast<int>(sync->type));
      write_row("sync", name.c_str(), sync->start, sync->end, sync->correlationId, 0);
      break;
    }
    case CUPTI_ACTIVITY_KIND_RUNTIME: {
      const auto* call = reinterpret_cast<const CUpti_ActivityAPI*>(record);
      const char* name = nullptr;
      if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, call->cbid, &name) != CUPTI_SUCCESS || !name)
        name = "unknown";
      write_row("runtime", name, call->start, call->end, call->correlationId, 0);
      break;
    }
    default:
      break;
  }
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  {
    const std::lock_guard<std::mutex> lock(output_mutex);
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) write_record(record);
    size_t dropped = 0;
    cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
    if (dropped) std::fprintf(stderr, "elephant_cupti_trace: %zu records dropped\n", dropped);
  }
  std::free(buffer);
}

void finish() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  const std::lock_guard<std::mutex> lock(output_mutex);
  std::fclose(output);
  output = nullptr;
}

}  // namespace

// Called by the CUDA driver when it loads this library from CUDA_INJECTION64_PATH, before the program's first CUDA
// call returns.
extern "C" int InitializeInjection() {
  const char* path = std::getenv("ELEPHANT_TRACE");
  output = std::fopen(path && *path ? path : "trace.csv", "w");
  if (!output) {
    std::fprintf(stderr, "elephant_cupti_trace: cannot write %s\n", path && *path ? path : "trace.csv");
    return 0;
  }
  std::fprintf(output, "kind,name,start_ns,end_ns,correlation,graph\n");
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
  for (const CUpti_ActivityKind kind :
       {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET,
        CUPTI_ACTIVITY_KIND_SYNCHRONIZATION, CUPTI_ACTIVITY_KIND_RUNTIME})
    check(cuptiActivityEnable(kind), "cuptiActivityEnable");
  std::atexit(finish);
  return 1;
}
