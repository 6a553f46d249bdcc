// The one function of the shims' error convention (shim/error.h) that Rust calls: freeing a
// message a failed call set.

#include "error.h"

extern "C" void train_shim_free_error(char* err) { std::free(err); }
