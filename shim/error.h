// How every shim reports failure (shim/cuda_memory.cpp, shim/script_module.cpp,
// shim/distributed.cpp; the Rust side is src/shim.rs):
//
//   - every `extern "C"` function that can fail returns an `int` status: 0 on success, a
//     negative code on failure (-1 unless the function documents others);
//   - its last parameter is `char** err`: on failure it is set to a malloc'd, NUL-terminated
//     message (libtorch's, without the C++ backtrace c10::Error appends), which the caller
//     frees with `train_shim_free_error`; on success it is left untouched;
//   - results come back through out-parameters, never as the return value;
//   - no C++ exception crosses into Rust: `guarded` turns each into the status and message.
//
// A message is passed whole (no fixed buffer): a TorchScript traceback says what went wrong
// on its last line.

#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

extern "C" void train_shim_free_error(char* err);

namespace train_shim {

// Sets `*err` to a malloc'd copy of `message` (when there is room for it).
inline void set_error(char** err, const std::string& message) {
  if (err == nullptr) return;
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) std::memcpy(out, message.c_str(), message.size() + 1);
  *err = out;
}

// libtorch's message without the C++ stack it appends.
inline std::string message_of(const std::exception& e) {
  if (auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

// Runs `f` (which returns the status), turning any exception into `failure` with its
// message in `*err`.
template <typename F>
int guarded(char** err, int failure, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    set_error(err, message_of(e));
    return failure;
  } catch (...) {
    set_error(err, "unknown C++ error");
    return failure;
  }
}

}  // namespace train_shim
