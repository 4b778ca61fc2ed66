// A CUDA graph around a caller's libtorch operations, for the fused decode step
// (`src/fused/graph.rs`). tch binds no CUDA-graph API, so this wraps PyTorch's own
// `at::cuda::CUDAGraph`, which also routes the captured operations' allocations to the graph's
// private memory pool. Every entry point returns 0 on success and 1 on a C++ exception, whose
// message `chex_cuda_graph_last_error` then holds: nothing may unwind into Rust.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>

#include <exception>
#include <optional>
#include <string>

#include "guarded.h"

namespace {

thread_local std::string last_error;

struct Captured {
  at::cuda::CUDAGraph graph;
  // The stream that was current before the side stream (capture needs one that is not the
  // default stream); put back when the capture ends.
  std::optional<c10::cuda::CUDAStream> previous;
  std::optional<c10::cuda::CUDAStream> side;
};

template <class F>
int guarded(F f) {
  return chex::guarded(last_error, f);
}

}  // namespace

extern "C" {

const char* chex_cuda_graph_last_error() { return last_error.c_str(); }

void* chex_cuda_graph_new() {
  Captured* captured = nullptr;
  guarded([&] { captured = new Captured(); });
  return captured;
}

void chex_cuda_graph_free(void* handle) { delete static_cast<Captured*>(handle); }

// Make a side stream of `device` current, after the work queued so far has finished.
int chex_cuda_graph_enter_side_stream(void* handle, int device) {
  return guarded([&] {
    auto* c = static_cast<Captured*>(handle);
    auto index = static_cast<c10::DeviceIndex>(device);
    c->previous = c10::cuda::getCurrentCUDAStream(index);
    c->side = c10::cuda::getStreamFromPool(false, index);
    c->previous->synchronize();
    c10::cuda::setCurrentCUDAStream(*c->side);
  });
}

// Put back the stream that was current, after the side stream's work has finished.
int chex_cuda_graph_leave_side_stream(void* handle) {
  return guarded([&] {
    auto* c = static_cast<Captured*>(handle);
    if (!c->side || !c->previous) return;
    c->side->synchronize();
    c10::cuda::setCurrentCUDAStream(*c->previous);
  });
}

int chex_cuda_graph_capture_begin(void* handle) {
  return guarded([&] { static_cast<Captured*>(handle)->graph.capture_begin(); });
}

int chex_cuda_graph_capture_end(void* handle) {
  return guarded([&] { static_cast<Captured*>(handle)->graph.capture_end(); });
}

// Launch the captured work on the current stream.
int chex_cuda_graph_replay(void* handle) {
  return guarded([&] { static_cast<Captured*>(handle)->graph.replay(); });
}

}  // extern "C"
