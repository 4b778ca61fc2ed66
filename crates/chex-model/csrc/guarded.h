// What every entry point of the C++ shims does with an exception: keep its message for the
// shim's `*_last_error` and return 1, so that nothing unwinds into Rust; 0 on success.
#pragma once

#include <exception>
#include <string>

namespace chex {

template <class F>
int guarded(std::string& last_error, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

}  // namespace chex
