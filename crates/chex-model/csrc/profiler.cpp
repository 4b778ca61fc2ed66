// PyTorch's own profiler (Kineto) around a caller's libtorch operations, for `chex bench
// --profile` (`src/profiler.rs`). tch binds no profiler API, so this wraps the C++ one that
// `torch.profiler` drives. Every entry point reports a C++ exception through
// `chex_profiler_last_error` instead of unwinding into Rust.
//
// `chex_profiler_stop` sums the recorded events by device and name and returns them as lines of
// `device \t name \t calls \t total nanoseconds` (a string the caller frees with
// `chex_profiler_free`), and writes the whole trace as Chrome-trace JSON when given a path.

#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <set>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "guarded.h"

namespace {

thread_local std::string last_error;

namespace profiler = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

template <class F>
int guarded(F f) {
  return chex::guarded(last_error, f);
}

// Kernel names are C++ signatures: no tab or newline may split a line of the summary.
std::string one_field(std::string name) {
  for (char& c : name) {
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  }
  return name;
}

}  // namespace

extern "C" {

const char* chex_profiler_last_error() { return last_error.c_str(); }

int chex_profiler_start(int with_cuda) {
  return guarded([&] {
    ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (with_cuda) activities.insert(ActivityType::CUDA);
    profiler::prepareProfiler(config, activities);
    profiler::enableProfiler(config, activities);
  });
}

char* chex_profiler_stop(const char* trace_path) {
  char* out = nullptr;
  int status = guarded([&] {
    auto result = profiler::disableProfiler();
    if (!result) throw std::runtime_error("the profiler was not running");
    if (trace_path && *trace_path) result->save(trace_path);
    std::map<std::pair<std::string, std::string>, std::pair<long long, long long>> totals;
    for (const auto& event : result->events()) {
      const char* device = event.deviceType() == c10::DeviceType::CUDA ? "cuda" : "cpu";
      auto& total = totals[{device, one_field(event.name())}];
      total.first += 1;
      total.second += static_cast<long long>(event.durationNs());
    }
    std::ostringstream text;
    for (const auto& [key, total] : totals) {
      text << key.first << '\t' << key.second << '\t' << total.first << '\t' << total.second
           << '\n';
    }
    const std::string s = text.str();
    out = static_cast<char*>(std::malloc(s.size() + 1));
    if (!out) throw std::bad_alloc();
    std::memcpy(out, s.c_str(), s.size() + 1);
  });
  return status == 0 ? out : nullptr;
}

void chex_profiler_free(char* text) { std::free(text); }

}  // extern "C"
